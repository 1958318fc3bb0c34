"""The protocol linter: the client's own mistakes, as doctor rows.

Each check reads a session's events in order against the protocol's state as a careful
client tracks it (:class:`recorder.turns.ClientState`) and gives one row, with the seqs
of what it found as evidence:

- ``overlapping response``: a ``response.create`` sent while an in-conversation response
  was active (by the protocol's own state, not by the server's error);
- ``cancel without response``: a ``response.cancel`` with no active response;
- ``unknown ids``: a client message naming an item, response or call id the server
  never gave, or an item it had deleted;
- ``stuck response``: no ``response.done`` within :data:`STUCK_S` of ``response.created``,
  and the client neither cancelled it nor closed the connection;
- ``tool outputs``: a tool call of a completed response whose output never came, or an
  output sent for a call of a response that did not complete;
- ``format change``: a ``session.update`` changing the audio format after audio flowed;
- ``max age``: a ``response.create`` sent after :data:`LATE_SHARE` of the session's
  maximum age (:func:`recorder.turns.max_session_s`), instead of a new session.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

from recorder import events, turns

from .views import Captures, batched

STUCK_S = 30.0
"""How long a response may go without ``response.done`` before the client should act."""
LATE_SHARE = 0.9
"""The share of a session's maximum age after which starting a response is a mistake."""

ADVICE = {
    "overlapping response": (
        "Wait for response.done before the next response.create (or cancel the active one first); "
        "use response.conversation='none' for out-of-band responses."
    ),
    "cancel without response": "Send response.cancel only between response.created and response.done.",
    "unknown ids": "Name only ids the server gave in this session (items, responses, calls), and none it deleted.",
    "stuck response": f"Time out a response with no response.done after {STUCK_S:.0f} s: cancel it, or reconnect.",
    "tool outputs": (
        "Answer every function call of a completed response with a function_call_output item; "
        "do not answer calls of failed or cancelled responses."
    ),
    "format change": "Set the audio formats in the first session.update, before any audio is sent or received.",
    "max age": "Start a new session before the current one nears its maximum age (60 min OpenAI, 30 min Azure).",
}
CHECKS = tuple(ADVICE)

_STATUS = {
    "overlapping response": "fail",
    "cancel without response": "warn",
    "unknown ids": "fail",
    "stuck response": "warn",
    "tool outputs": "warn",
    "format change": "fail",
    "max age": "warn",
}
_PASS = {
    "overlapping response": "no response.create while a response was active",
    "cancel without response": "no response.cancel without an active response",
    "unknown ids": "every id named was given by the server",
    "stuck response": f"every response ended within {STUCK_S:.0f} s or was acted on",
    "tool outputs": "every tool call of a completed response was answered",
    "format change": "the audio formats did not change after audio flowed",
    "max age": f"no response started after {LATE_SHARE:.0%} of the session's maximum age",
}


@batched
def lint(captures: Captures, sessions: list[dict[str, Any]]) -> dict[str, list[dict[str, str]]]:
    """The linter's rows for each of ``sessions`` (rows of the sessions view, with
    ``session_id, host, started_at, expires_at, duration_s, close_by``), by session id, in
    :data:`CHECKS` order."""
    ids = [session["session_id"] for session in sessions]
    found: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for row in captures.sql(
        """
        SELECT session_id, seq, t_s, direction, type, payload::VARCHAR AS payload FROM events
        WHERE session_id IN (SELECT unnest(?::VARCHAR[])) AND type IS NOT NULL
              AND (direction = ? OR (NOT ends_with(type, '.delta') AND type NOT LIKE 'conversation.item.input_audio%'))
        UNION ALL
        SELECT session_id, min(seq), arg_min(t_s, seq), ?, arg_min(type, seq), NULL FROM events
        WHERE session_id IN (SELECT unnest(?::VARCHAR[])) AND type IN (SELECT unnest(?::VARCHAR[]))
        GROUP BY session_id
        ORDER BY session_id, seq
        """,
        [ids, events.SENT, events.RECEIVED, ids, list(turns.FIRST_AUDIO)],
    ).to_pylist():
        found[row["session_id"]].append((row["seq"], row["t_s"], row["direction"], row["type"], row["payload"]))
    return {sid: _session(sid, found.get(sid, []), session) for sid, session in zip(ids, sessions, strict=True)}


def _session(sid: str, rows: list[tuple[Any, ...]], info: dict[str, Any]) -> list[dict[str, str]]:
    state = turns.ClientState()
    mistakes: dict[str, list[str]] = defaultdict(list)
    created: dict[str, tuple[int, float]] = {}
    done: dict[str, tuple[int, float, str | None]] = {}
    cancels: list[float] = []
    calls: dict[str, tuple[int, str | None]] = {}  # call id -> (seq of its response.done, status)
    outputs: dict[str, int] = {}
    creates: list[tuple[int, float]] = []
    for seq, t_s, direction, kind, payload in rows:
        event = events.parse(payload) if payload else {"type": kind}
        if event is None:
            continue
        for check, evidence in state.add(seq, direction, event):
            mistakes[check].append(evidence)
        response_id = events.dig(event, ("response", "id"))
        if direction == events.RECEIVED and kind == events.RESPONSE_STARTED and isinstance(response_id, str):
            created[response_id] = (seq, t_s)
        elif direction == events.RECEIVED and kind == events.RESPONSE_DONE and isinstance(response_id, str):
            done[response_id] = (seq, t_s, events.response_status(event))
            for call in turns.tool_calls(event):
                calls[call] = (seq, events.response_status(event))
        elif direction == events.SENT and kind == turns.RESPONSE_CANCEL:
            cancels.append(t_s)
        elif direction == events.SENT and kind == events.RESPONSE_CREATE:
            creates.append((seq, t_s))
        for id_kind, value in turns.referred_ids(event) if direction == events.SENT else []:
            if id_kind == "call" and kind == turns.ITEM_CREATE:
                outputs.setdefault(value, seq)
    end_t = info["duration_s"] or 0.0
    for response_id, (seq, t_s) in created.items():
        finished = done.get(response_id)
        until = finished[1] if finished else end_t
        if until - t_s <= STUCK_S or any(t_s < c <= until for c in cancels):
            continue
        if finished is None and info["close_by"] == "client":
            continue  # the client gave up on it
        waited = f"{until - t_s:.1f} s" + (f" (response.done at seq {finished[0]})" if finished else ", never ended")
        mistakes["stuck response"].append(f"response.created at seq {seq} waited {waited} with no cancel")
    for call, (seq, status) in calls.items():
        if status == "completed" and call not in outputs:
            mistakes["tool outputs"].append(f"call {call} of response.done at seq {seq} never got its output")
        elif status != "completed" and call in outputs:
            mistakes["tool outputs"].append(
                f"output for call {call} at seq {outputs[call]} after its response ended {status} (seq {seq})"
            )
    started, expires = info["started_at"], info["expires_at"]
    expires_in = (expires - started).total_seconds() if isinstance(expires, dt.datetime) and started else None
    limit = turns.max_session_s(info["host"], expires_in)
    late = [(seq, t_s) for seq, t_s in creates if t_s >= LATE_SHARE * limit]
    if late:
        seq, t_s = late[0]
        mistakes["max age"].append(
            f"response.create at seq {seq} at {t_s / 60:.1f} min of a {limit / 60:.0f}-minute session"
            + (f" ({len(late) - 1} more after it)" if len(late) > 1 else "")
        )
    return [_row(sid, check, mistakes.get(check, [])) for check in CHECKS]


def _row(sid: str, check: str, found: list[str]) -> dict[str, str]:
    if not found:
        return {"session_id": sid, "check": check, "status": "pass", "evidence": _PASS[check], "advice": ""}
    evidence = "; ".join(found[:3]) + (f"; and {len(found) - 3} more" if len(found) > 3 else "")
    return {"session_id": sid, "check": check, "status": _STATUS[check], "evidence": evidence, "advice": ADVICE[check]}
