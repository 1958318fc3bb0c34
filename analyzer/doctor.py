"""``rtcap doctor``: the realtime troubleshooting checklist, run on recorded sessions.

Each check gives ``pass``, ``warn`` or ``fail`` per session, with evidence (values and seq
numbers) and advice; thresholds are SPEC's. Two checks need words defined:

- A *retry* is a ``response.create`` that asks again for a response that failed: the first
  one after the failure, with no new input (:func:`recorder.events.adds_input`: an item the
  client added, audio the server committed) since the failed response began (or since the
  failure, for one outside a response). A failure here is a failed ``response.done`` or an
  ``error`` event, of a response or of the server's class; a client's mistake outside any
  response (a bad ``session.update``) has nothing to retry. The check fails on a *tight*
  retry, one within 1 s of the failure: no backoff. The user's next turn after a failure
  (new audio, a new message) is not a retry, however soon it comes.
- A *reconnect* is a session that opens within 5 s after one of its chain (the
  ``sessions`` view's ``chain_id``: the same conversation label, or the same labels,
  host, URL path and model) closed abnormally, with the same ``User-Agent`` request header
  (or none in both). Sessions of two chains are never each other's reconnects.
- The protocol linter's checks (:mod:`analyzer.lint`) follow the nine, in the same rows.
"""

from __future__ import annotations

import base64
import binascii
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa

from recorder import events, telemetry
from recorder.capture import CaptureError, read_capture

from .lint import lint
from .views import Captures, batched

MAX_APPEND_BYTES = 15 * 1024 * 1024
ADVICE = {
    "audio format": (
        "Send audio in the format the session declares (session.update), and confirm it in session.updated; "
        "PCM16 chunks must hold whole 16-bit samples."
    ),
    "chunk size": (
        "Send audio in chunks of 20-200 ms (the SDK example uses 20 ms, Azure advises about 100 ms); "
        "never more than 15 MiB."
    ),
    "base64": "Encode audio with standard base64 (RFC 4648, with padding), one chunk per append.",
    "bursts": "Pace audio at about real time (at most 1.5x over any second) and keep under 50 client events a second.",
    "prompt size": "Keep input tokens under 8k (instructions, tools and conversation); trim or summarise old items.",
    "session age": "Start a new session before the old one reaches its maximum duration (expires_at).",
    "rate limits": "Slow down or spread load before the remaining rate limit reaches zero.",
    "retries": "Retry a failed response with exponential backoff, not at once.",
    "reconnects": "Reconnect with backoff after an abnormal close, and find out why it closed.",
    "repeat failures": (
        "After a server error a session can stay broken (reported on Azure: every later response fails): "
        "start a new session instead of asking again in the same one, and report the session id."
    ),
}
PCM16_FORMATS = [fmt for fmt in events.BYTES_PER_MS if fmt not in events.SILENCE_BYTE]
"""The formats whose samples are 16 bits (the G.711 ones are 8)."""


def _row(session: str, check: str, status: str, evidence: str) -> dict[str, str]:
    return {
        "session_id": session,
        "check": check,
        "status": status,
        "evidence": evidence,
        "advice": "" if status == "pass" else ADVICE[check],
    }


_PAYLOAD_TYPES = (telemetry.RATE_LIMITS_UPDATED, events.ERROR)
"""Server events whose payload a check reads (``session.*`` ones too)."""


COLUMNS = ("session_id", "check", "status", "evidence", "advice")


@batched
def diagnose(captures: Captures, session_id: str | None = None) -> pa.Table:
    """Checklist rows for one session, or for every session of the views when
    ``session_id`` is None: ``session_id, check, status (pass|warn|fail), evidence, advice``."""
    rows = _checks(captures, session_id)
    return pa.Table.from_pylist(rows, schema=pa.schema([(name, pa.string()) for name in COLUMNS]))


def _checks(captures: Captures, session_id: str | None) -> list[dict[str, str]]:
    # The sessions view is the costly one (its chains span every session): it is read once,
    # and the statements after it name the chosen sessions by id.
    every = captures.sql(
        "SELECT session_id, started_at, ended_at, expires_at, duration_s, host, close_by, close_code, file, "
        "chain_id FROM sessions ORDER BY started_at, session_id"
    ).to_pylist()
    sessions = [row for row in every if session_id is None or row["session_id"] == session_id]
    if not sessions:
        return []
    ids = [row["session_id"] for row in sessions]
    chosen = "SELECT unnest(?::VARCHAR[])"
    params: list[Any] = [ids]
    server_types = [*events.SESSION_EVENTS, *_PAYLOAD_TYPES, *events.INPUT_ADDED[events.RECEIVED]]
    rows = captures.sql(
        f"""
        SELECT session_id, seq, t_s, direction, type, bytes, audio_ms,
               CASE WHEN type LIKE 'session.%' OR type IN (SELECT unnest(?::VARCHAR[]))
                         OR (type = ? AND audio_ms IS NULL)
                    THEN payload::VARCHAR END AS payload
        FROM events
        WHERE session_id IN ({chosen}) AND (direction = ? OR type IN (SELECT unnest(?::VARCHAR[])))
        ORDER BY session_id, seq
        """,
        [list(_PAYLOAD_TYPES), events.AUDIO_APPEND, *params, events.SENT, server_types],
    ).to_pylist()
    by_session = defaultdict(list)
    formats: dict[str, events.AudioFormats] = defaultdict(events.AudioFormats)
    for row in rows:
        sid, kind, payload = row["session_id"], row["type"], row["payload"]
        event = events.parse(payload) if payload else None
        if event is not None:
            formats[sid].follow(event)
        audio_bytes = 0
        if row["audio_ms"]:
            fmt = formats[sid].of(row["direction"])
            audio_bytes = round(row["audio_ms"] * events.BYTES_PER_MS[fmt])
        by_session[sid].append(
            (row["seq"], row["t_s"], audio_bytes, row["direction"], kind, row["bytes"], row["audio_ms"], event)
        )
    tokens: dict[str, int] = {}
    outcomes: dict[str, list[tuple[int, str]]] = defaultdict(list)
    created: dict[tuple[str, str], int | None] = {}
    for row in captures.sql(
        "SELECT session_id, response_id, created_seq, status, input_tokens FROM responses "
        f"WHERE session_id IN ({chosen}) ORDER BY session_id, created_seq",
        params,
    ).to_pylist():
        sid = row["session_id"]
        created[sid, row["response_id"]] = row["created_seq"]
        if row["input_tokens"] is not None:
            tokens[sid] = max(tokens.get(sid, 0), row["input_tokens"])
        if row["created_seq"] is not None:
            outcomes[sid].append((row["created_seq"], row["status"]))
    failures = defaultdict(list)
    for row in captures.sql(
        f"""
        SELECT session_id, seq, t_s, response_id FROM failures
        WHERE session_id IN ({chosen}) AND source IN (?, ?) AND (response_id IS NOT NULL OR "class" = ?)
        ORDER BY t_s
        """,
        [*params, events.ERROR, events.RESPONSE_DONE, "server"],
    ).to_pylist():
        response = created.get((row["session_id"], row["response_id"]))
        failures[row["session_id"]].append((row["seq"], row["t_s"], response))
    linted = lint(captures, sessions)
    out: list[dict[str, str]] = []
    for session in sessions:
        sid, started, ended, expires = (session[k] for k in ("session_id", "started_at", "ended_at", "expires_at"))
        found = by_session[sid]
        out += [
            _audio_format(sid, found),
            _chunk_size(sid, found),
            _base64(sid, found),
            _bursts(sid, found),
            _prompt(sid, tokens.get(sid)),
            _age(sid, started, ended, expires, found),
            _rate_limits(sid, found),
            _retries(sid, found, failures[sid]),
            _repeat_failures(sid, outcomes[sid]),
            *linted.get(sid, []),
        ]
    out += _reconnects(captures, every, ids)
    return out


def _repeat_failures(sid: str, responses: list[tuple[int, str]]) -> dict[str, str]:
    """Failures that follow failures: the session-level face of precursors' clustering."""
    statuses = [status for _, status in responses]
    if events.FAILED not in statuses:
        return _row(sid, "repeat failures", "pass", "no failed response")
    first = statuses.index(events.FAILED)
    later = statuses[first + 1 :]
    seq = responses[first][0]
    if len(later) >= 2 and all(status == events.FAILED for status in later):
        return _row(
            sid,
            "repeat failures",
            "fail",
            f"every response after the first failure (response at seq {seq}) failed: {len(later)} of {len(later)}",
        )
    repeats = [responses[i + 1][0] for i in range(len(statuses) - 1) if statuses[i] == statuses[i + 1] == "failed"]
    if repeats:
        return _row(
            sid, "repeat failures", "warn", f"a failed response right after a failed one (seq {_seqs(repeats)})"
        )
    return _row(sid, "repeat failures", "pass", "no failed response followed a failed one")


def _audio_format(sid: str, rows: list[tuple[Any, ...]]) -> dict[str, str]:
    declared: list[str | None] = [None, None]
    confirmed: list[str | None] = [None, None]
    declared_seq = None
    for seq, _, _, _, kind, _, _, event in rows:
        if event is None:
            continue
        if kind == "session.update":
            for i, fmt in enumerate(events.session_formats(event)):
                if fmt:
                    declared[i], declared_seq = fmt, seq
        elif kind in events.SESSION_EVENTS:
            for i, fmt in enumerate(events.session_formats(event)):
                if fmt:
                    confirmed[i] = fmt
    for side, (want, got) in enumerate(zip(declared, confirmed, strict=True)):
        if want and got and want != got:
            name = "input" if side == 0 else "output"
            return _row(
                sid,
                "audio format",
                "fail",
                f"{name} format declared {want} (seq {declared_seq}) but the session says {got}",
            )
    input_format = confirmed[0] or declared[0] or events.DEFAULT_FORMAT
    odd = [
        seq
        for seq, _, audio_bytes, _, kind, _, _, _ in rows
        if kind == events.AUDIO_APPEND and input_format in PCM16_FORMATS and audio_bytes % 2
    ]
    if odd:
        return _row(sid, "audio format", "fail", f"{len(odd)} PCM16 appends with an odd byte count (seq {_seqs(odd)})")
    return _row(sid, "audio format", "pass", f"input {input_format}")


def _appends(rows: list[tuple[Any, ...]]) -> list[tuple[int, float, float, int]]:
    return [
        (seq, t_s, audio_ms or 0.0, size)
        for seq, t_s, _, _, kind, size, audio_ms, _ in rows
        if kind == events.AUDIO_APPEND
    ]


def _seqs(seqs: list[int]) -> str:
    return ", ".join(str(s) for s in seqs[:5]) + (", ..." if len(seqs) > 5 else "")


def _chunk_size(sid: str, rows: list[tuple[Any, ...]]) -> dict[str, str]:
    appends = [a for a in _appends(rows) if a[2] > 0]
    if not appends:
        return _row(sid, "chunk size", "pass", "no audio appended")
    sizes = [ms for _, _, ms, _ in appends]
    huge = [seq for seq, _, ms, size in appends if ms > 1000 or size > MAX_APPEND_BYTES]
    if huge:
        return _row(
            sid, "chunk size", "fail", f"{len(huge)} chunks over 1 s (seq {_seqs(huge)}); largest {max(sizes):.0f} ms"
        )
    odd = [seq for seq, _, ms, _ in appends if ms < 20 or ms > 200]
    if odd:
        return _row(
            sid,
            "chunk size",
            "warn",
            f"{len(odd)} of {len(appends)} chunks outside 20-200 ms (seq {_seqs(odd)}); "
            f"{min(sizes):.0f}-{max(sizes):.0f} ms",
        )
    return _row(sid, "chunk size", "pass", f"{len(appends)} chunks of {min(sizes):.0f}-{max(sizes):.0f} ms")


def _base64(sid: str, rows: list[tuple[Any, ...]]) -> dict[str, str]:
    bad = []
    for seq, _, _, _, kind, _, audio_ms, event in rows:
        if kind == events.AUDIO_APPEND and audio_ms is None and event is not None:
            audio = event.get("audio")
            try:
                base64.b64decode(audio if isinstance(audio, str) else "", validate=True)
            except (binascii.Error, ValueError):
                bad.append(seq)
    if bad:
        return _row(sid, "base64", "fail", f"{len(bad)} appends whose audio is not valid base64 (seq {_seqs(bad)})")
    return _row(sid, "base64", "pass", "all audio decodes")


def _bursts(sid: str, rows: list[tuple[Any, ...]]) -> dict[str, str]:
    sent = [(seq, t_s, audio_ms or 0.0) for seq, t_s, _, direction, _, _, audio_ms, _ in rows if direction == "sent"]
    worst_audio = worst_events = (0.0, None)
    start = 0
    audio = 0.0
    for end, (seq, t_s, ms) in enumerate(sent):
        audio += ms
        while t_s - sent[start][1] > 1.0:
            audio -= sent[start][2]
            start += 1
        if audio > worst_audio[0]:
            worst_audio = (audio, seq)
        if end - start + 1 > worst_events[0]:
            worst_events = (end - start + 1, seq)
    evidence = f"up to {worst_audio[0]:.0f} ms of audio and {worst_events[0]:.0f} events in one second"
    if worst_audio[0] > 1500 or worst_events[0] > 50:
        at = worst_audio[1] if worst_audio[0] > 1500 else worst_events[1]
        return _row(sid, "bursts", "warn", f"{evidence} (at seq {at})")
    return _row(sid, "bursts", "pass", evidence)


def _prompt(sid: str, tokens: int | None) -> dict[str, str]:
    if tokens is None:
        return _row(sid, "prompt size", "pass", "no response usage recorded")
    status = "fail" if tokens > 14_000 else "warn" if tokens >= 8_000 else "pass"
    return _row(sid, "prompt size", status, f"largest prompt {tokens} input tokens")


def _age(sid: str, started: Any, ended: Any, expires: Any, rows: list[tuple[Any, ...]]) -> dict[str, str]:
    expired = [seq for seq, _, _, _, _, _, _, event in rows if event is not None and _code(event) == "session_expired"]
    if expired:
        return _row(sid, "session age", "fail", f"session_expired at seq {expired[0]}")
    if started is None or ended is None or expires is None or expires <= started:
        return _row(sid, "session age", "pass", "no expiry recorded")
    used = (ended - started) / (expires - started)
    if ended >= expires:
        return _row(sid, "session age", "fail", f"ran past expires_at ({expires.isoformat()})")
    status = "warn" if used >= 0.8 else "pass"
    return _row(sid, "session age", status, f"used {used:.0%} of its maximum duration")


def _code(event: dict[str, Any]) -> str | None:
    fields = events.failure_fields(event)
    return fields[2] if fields else None


def _rate_limits(sid: str, rows: list[tuple[Any, ...]]) -> dict[str, str]:
    lowest = None
    for seq, _, _, _, kind, _, _, event in rows:
        if kind != telemetry.RATE_LIMITS_UPDATED or event is None:
            continue
        for name, limit in telemetry.rate_limits(event).items():
            if limit.get("limit") and "remaining" in limit:  # a limit without both says nothing
                remaining = limit["remaining"]
                share = remaining / limit["limit"]
                if lowest is None or share < lowest[0]:
                    lowest = (share, name, remaining, seq)
    if lowest is None:
        return _row(sid, "rate limits", "pass", "no rate limits recorded")
    share, name, remaining, seq = lowest
    status = "fail" if remaining == 0 else "warn" if share <= 0.10 else "pass"
    return _row(sid, "rate limits", status, f"lowest {name} remaining {remaining} ({share:.0%}) at seq {seq}")


def _retries(sid: str, rows: list[tuple[Any, ...]], failures: list[tuple[int, float, int | None]]) -> dict[str, str]:
    """Tight retries (see the module's docstring): the first ``response.create`` after a
    failure, with no new input since the failed response began, within 1 s of it."""
    tight = []
    for failure_seq, failure_t, created_seq in failures:
        began = failure_seq if created_seq is None else created_seq
        for seq, t_s, _, direction, kind, *_ in rows:
            if seq <= began:
                continue
            if events.adds_input(direction, kind):
                break  # the user said something new: what follows asks about that
            if seq > failure_seq and direction == events.SENT and kind == events.RESPONSE_CREATE:
                if t_s - failure_t <= 1.0:
                    tight.append((failure_seq, seq, t_s - failure_t))
                break
    if tight:
        pairs = "; ".join(
            f"failure at seq {f} then response.create at seq {c} {gap:.2f} s later, nothing new said"
            for f, c, gap in tight[:3]
        )
        return _row(sid, "retries", "fail", f"tight retry loop without backoff: {pairs}")
    return _row(sid, "retries", "pass", f"{len(failures)} failed responses, none asked for again within 1 s")


def _user_agent(path: Path) -> str | None:
    """The ``User-Agent`` a capture's client sent, if it sent one."""
    # The views keep no request headers, so the capture's own header is read: only for
    # the few sessions that could be reconnects.
    try:
        headers = read_capture(path, max_messages=0).header.get("request_headers")
    except CaptureError:
        return None
    for pair in headers if isinstance(headers, list) else []:
        if isinstance(pair, list | tuple) and len(pair) == 2 and str(pair[0]).lower() == "user-agent":
            return str(pair[1])
    return None


RECONNECT_S = 5.0
"""How soon after an abnormal close a new session from the same app is a reconnect."""


def _reconnects(captures: Captures, found: list[dict[str, Any]], chosen: list[str]) -> list[dict[str, str]]:
    """Reconnects (see the module's docstring) for the ``chosen`` sessions; the sessions
    they follow may be any of ``found`` (every session of the views, by start)."""
    agents: dict[str, str | None] = {}

    def user_agent(session: dict[str, Any]) -> str | None:
        if session["session_id"] not in agents:
            agents[session["session_id"]] = _user_agent(captures.index.root / session["file"])
        return agents[session["session_id"]]

    out = []
    wanted = set(chosen)
    for i, session in enumerate(found):
        if session["session_id"] not in wanted:
            continue
        quick = None
        for previous in found[:i]:
            code, ended, started = previous["close_code"], previous["ended_at"], session["started_at"]
            if code is None or not events.abnormal_close(code) or ended is None or started is None:
                continue
            gap = (started - ended).total_seconds()
            if 0 <= gap <= RECONNECT_S and previous["chain_id"] == session["chain_id"]:
                if user_agent(previous) == user_agent(session):
                    quick = (previous["session_id"], code, gap)
        if quick:
            previous_id, code, gap = quick
            evidence = f"opened {gap:.1f} s after {previous_id}, of its chain, closed abnormally ({code})"
            out.append(_row(session["session_id"], "reconnects", "warn", evidence))
        else:
            out.append(_row(session["session_id"], "reconnects", "pass", "no reconnect right after an abnormal close"))
    order = {sid: n for n, sid in enumerate(chosen)}
    return sorted(out, key=lambda row: order[row["session_id"]])
