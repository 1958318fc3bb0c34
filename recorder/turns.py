"""What realtime events mean for a conversation's turns, and for a client's own mistakes.

This is :mod:`recorder.events`' section on turns, kept in a module of its own because
``events.py`` is at its size limit; it builds on that module's rules and restates none:

- a *user turn* and the response that answers it, with the seqs and times of its steps,
  its latencies and whether the user barged in (:class:`TurnTracker`);
- what the protocol allows a client to do at a given moment: start a response, cancel
  one, name an id, change the audio format (:class:`ClientState`);
- how old a session may grow.

Standard library only, like :mod:`recorder.events`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from recorder import events

# ---------------------------------------------------------------------------
# Event names of a turn

SPEECH_STARTED = "input_audio_buffer.speech_started"
SPEECH_STOPPED = "input_audio_buffer.speech_stopped"
COMMITTED = events.INPUT_ADDED[events.RECEIVED][0]
"""The server took the input audio buffer as an item: a voice turn's commit."""
ITEM_CREATE = events.INPUT_ADDED[events.SENT][0]
CLIENT_COMMIT = "input_audio_buffer.commit"
"""The client's commit (push to talk); the server's ``committed`` that follows marks the turn."""
RESPONSE_CANCEL = "response.cancel"
TRUNCATE = "conversation.item.truncate"
OUTPUT_AUDIO_CLEAR = "output_audio_buffer.clear"
ITEM_DELETED = "conversation.item.deleted"
SESSION_UPDATE = "session.update"
SESSION_CREATED = "session.created"

USER_ROLE = "user"
ITEM_ROLE_PATH = ("item", "role")
"""Where a ``conversation.item.create`` names who speaks: a ``user`` message is a turn."""

FIRST_AUDIO = ("response.output_audio.delta", events.BETA_NAMES["response.output_audio.delta"])
"""The deltas whose first one is a response's first audio (GA, beta)."""
FIRST_TEXT = tuple(
    name
    for ga in ("response.output_audio_transcript.delta", "response.output_text.delta")
    for name in (ga, events.BETA_NAMES[ga])
)
"""The deltas whose first one is a response's first text: its transcript, or its text
when it speaks none (GA, beta)."""

BARGE_IN_CLIENT = (RESPONSE_CANCEL, TRUNCATE, OUTPUT_AUDIO_CLEAR)
"""Client events that cut a response short, or its playback: a barge-in."""

TURN_EVENTS = (
    SPEECH_STARTED,
    SPEECH_STOPPED,
    CLIENT_COMMIT,
    COMMITTED,
    ITEM_CREATE,
    events.RESPONSE_CREATE,
    events.RESPONSE_STARTED,
    events.RESPONSE_DONE,
    *BARGE_IN_CLIENT,
)
"""The event types :class:`TurnTracker` reads, besides the first deltas of a response."""

MARKS = (
    "speech_started",
    "speech_stopped",
    "committed",
    "response_create",
    "response_created",
    "first_audio",
    "first_text",
    "response_done",
)
"""The steps of a turn, in the order they usually come."""

LATENCIES = {
    "speech_end_to_first_audio_ms": ("speech_end", "first_audio"),
    "commit_to_created_ms": ("committed", "response_created"),
    "created_to_first_audio_ms": ("response_created", "first_audio"),
}
"""Each latency of a turn, in ms: from one step to another. ``speech_end`` is
``speech_stopped``, or the commit in a turn without server VAD (push to talk: the user
stopped when the client committed)."""


def is_user_item(direction: str, kind: str | None, role: str | None) -> bool:
    """Whether a client's ``conversation.item.create`` is the user saying something (a
    text turn); a tool's output or an assistant item is not a turn."""
    return direction == events.SENT and kind == ITEM_CREATE and role == USER_ROLE


@dataclasses.dataclass
class Turn:
    """One user turn and the response that answered it, or a response started without one
    (``user`` false). ``marks`` maps each of :data:`MARKS` reached to ``(seq, t_ns)``."""

    index: int
    user: bool
    response_id: str | None = None
    marks: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    barge_in: bool = False

    def mark(self, name: str, seq: int, t_ns: int) -> None:
        """Note a step, once: the first of its kind counts."""
        self.marks.setdefault(name, (seq, t_ns))

    def latencies(self) -> dict[str, float | None]:
        """:data:`LATENCIES` of this turn, ``None`` where a step is missing."""
        at = {name: t for name, (_, t) in self.marks.items()}
        end = at.get("speech_stopped", at.get("committed"))
        if end is not None:
            at["speech_end"] = end
        return {name: (at[b] - at[a]) / 1e6 if a in at and b in at else None for name, (a, b) in LATENCIES.items()}


class TurnTracker:
    """Finds a session's turns from its events, fed in order with :meth:`add`.

    - A user turn begins at ``speech_started`` (server VAD), or, when no turn is waiting
      for its commit, at the client's ``input_audio_buffer.commit``, the server's
      ``input_audio_buffer.committed`` or a client's user message
      (``conversation.item.create`` with role ``user``); the last two mark its commit.
    - A client's ``response.create`` and then the server's ``response.created`` belong to
      the latest turn that has no response yet; with none, they begin a row of their own
      (a tool's follow-up, an out-of-band response).
    - The first audio delta, first text delta and ``response.done`` belong to the row of
      their ``response_id``.
    - The user barged in on a response when speech started while it was active, or the
      client cancelled it, truncated an item or cleared output audio after it was created
      and before the next turn's response."""

    def __init__(self) -> None:
        self.turns: list[Turn] = []
        self._by_response: dict[str, Turn] = {}
        self._active: list[Turn] = []

    def add(
        self,
        seq: int,
        t_ns: int,
        direction: str,
        kind: str | None,
        response_id: str | None = None,
        role: str | None = None,
    ) -> None:
        """Take note of one event (``role``: a created item's, for user messages)."""
        received = direction == events.RECEIVED
        if received and kind == SPEECH_STARTED:
            for turn in self._active:
                turn.barge_in = True
            self._new(True).mark("speech_started", seq, t_ns)
        elif received and kind == SPEECH_STOPPED:
            self._user_turn().mark("speech_stopped", seq, t_ns)
        elif not received and kind == CLIENT_COMMIT:
            self._user_turn()
        elif (received and kind == COMMITTED) or is_user_item(direction, kind, role):
            self._user_turn().mark("committed", seq, t_ns)
        elif not received and kind == events.RESPONSE_CREATE:
            waiting = self._waiting()
            turn = waiting if waiting is not None and "response_create" not in waiting.marks else self._new(False)
            turn.mark("response_create", seq, t_ns)
        elif received and kind == events.RESPONSE_STARTED:
            turn = self._waiting() or self._new(False)
            turn.mark("response_created", seq, t_ns)
            turn.response_id = response_id
            if response_id is not None:
                self._by_response[response_id] = turn
            self._active.append(turn)
        elif not received and kind in BARGE_IN_CLIENT:
            answered = [row for row in self.turns if "response_created" in row.marks]
            if answered:
                answered[-1].barge_in = True
        elif received and kind in FIRST_AUDIO + FIRST_TEXT + (events.RESPONSE_DONE,):
            owner = self._by_response.get(response_id or "")
            if owner is None:
                return
            name = "first_audio" if kind in FIRST_AUDIO else "first_text" if kind in FIRST_TEXT else "response_done"
            owner.mark(name, seq, t_ns)
            if name == "response_done" and owner in self._active:
                self._active.remove(owner)

    def _user_turn(self) -> Turn:
        """The user turn waiting for its commit, or a new one."""
        turn = self._waiting()
        if turn is None or "committed" in turn.marks or not turn.user:
            turn = self._new(True)
        return turn

    def _waiting(self) -> Turn | None:
        """The latest row, if its response has not been created yet."""
        if self.turns and "response_created" not in self.turns[-1].marks:
            return self.turns[-1]
        return None

    def _new(self, user: bool) -> Turn:
        turn = Turn(len(self.turns), user)
        self.turns.append(turn)
        return turn


def turns(stream: Iterable[tuple[int, int, str, Mapping[str, Any] | None]]) -> list[Turn]:
    """The turns of a session's ``(seq, t_ns, direction, event)`` stream."""
    tracker = TurnTracker()
    for seq, t_ns, direction, event in stream:
        if event is None:
            continue
        response_id, _ = events.event_ids(event, direction)
        role = events.dig(event, ITEM_ROLE_PATH)
        tracker.add(
            seq, t_ns, direction, events.event_type(event), response_id, role if isinstance(role, str) else None
        )
    return tracker.turns


# ---------------------------------------------------------------------------
# What a client may do: the protocol's state, as the client should track it

OUT_OF_BAND_PATH = ("response", "conversation")
"""``response.create``'s ``response.conversation``: ``none`` makes an out-of-band response,
which may run beside another (only in-conversation responses exclude each other)."""
OUT_OF_BAND = "none"
ROOT_ITEM = "root"
"""A ``previous_item_id`` that names the conversation's start (beta), not an item."""
FUNCTION_CALL = "function_call"
FUNCTION_CALL_OUTPUT = "function_call_output"
RESPONSE_OUTPUT_PATH = ("response", "output")

MAX_SESSION_S = {"azure": 1800.0, "openai": 3600.0}
"""How long a session may last: 30 minutes on Azure, 60 on OpenAI."""
AZURE_HOST_SUFFIX = ".azure.com"


def max_session_s(host: str | None, expires_in_s: float | None = None) -> float:
    """A session's maximum age in seconds: what its ``expires_at`` says when known, else
    the limit of its host's vendor (:data:`MAX_SESSION_S`)."""
    if expires_in_s is not None and expires_in_s > 0:
        return expires_in_s
    azure = (host or "").lower().endswith(AZURE_HOST_SUFFIX)
    return MAX_SESSION_S["azure" if azure else "openai"]


def referred_ids(event: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The server-given ids a client event names, as ``(kind, id)``: the item it
    retrieves, truncates, deletes or inserts after, the response it cancels, the items a
    response takes as input, the call a tool output answers. A client's new item's own
    ``id`` is not one: the client chooses it."""
    found: list[tuple[str, str]] = []
    for key in ("item_id", "previous_item_id"):
        value = event.get(key)
        if isinstance(value, str) and value and value != ROOT_ITEM:
            found.append(("item", value))
    if event_type(event) == RESPONSE_CANCEL and isinstance(event.get("response_id"), str):
        found.append(("response", event["response_id"]))
    for part in events.dig(event, ("response", "input")) or []:
        if isinstance(part, dict) and part.get("type") == "item_reference" and isinstance(part.get("id"), str):
            found.append(("item", part["id"]))
    item = event.get("item")
    if isinstance(item, dict) and item.get("type") == FUNCTION_CALL_OUTPUT and isinstance(item.get("call_id"), str):
        found.append(("call", item["call_id"]))
    return found


def event_type(event: Mapping[str, Any]) -> str | None:
    """:func:`recorder.events.event_type` (here for this module's own rules)."""
    return events.event_type(event)


def tool_calls(event: Mapping[str, Any]) -> list[str]:
    """The call ids of the function calls a ``response.done`` holds."""
    output = events.dig(event, RESPONSE_OUTPUT_PATH)
    return [
        item["call_id"]
        for item in (output if isinstance(output, list) else [])
        if isinstance(item, dict) and item.get("type") == FUNCTION_CALL and isinstance(item.get("call_id"), str)
    ]


def is_out_of_band(event: Mapping[str, Any]) -> bool:
    """Whether a ``response.create`` asks for an out-of-band response."""
    return events.dig(event, OUT_OF_BAND_PATH) == OUT_OF_BAND


class ClientState:
    """The protocol's state as a careful client tracks it, fed every event in order
    (:meth:`add`), with what the client did that the state forbids.

    - In-conversation responses exclude each other: one is active from ``response.created``
      until its ``response.done``, and a ``response.create`` sent meanwhile is refused by
      the server (``conversation_already_has_active_response``); an out-of-band one is not.
    - A ``response.cancel`` needs an active response (else ``response_cancel_not_active``).
    - Ids a client names must be ones the server gave (:func:`recorder.events.server_ids`)
      and has not deleted (``conversation.item.deleted``).
    - The audio formats change only before audio flows."""

    def __init__(self) -> None:
        self.active: dict[str, int] = {}  # in-conversation response id -> seq of its response.created
        self.known: set[tuple[str, str]] = set()
        self.deleted: set[tuple[str, str]] = set()
        self.formats = events.AudioFormats()
        self.audio_seen: int | None = None
        self._pending: list[bool] = []  # out-of-band flags of creates not yet answered

    def add(self, seq: int, direction: str, event: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Take note of one event; returns the mistakes it is, as ``(kind, evidence)``
        with kind one of ``overlapping response``, ``cancel without response``,
        ``unknown ids``, ``format change``."""
        kind = events.event_type(event)
        found: list[tuple[str, str]] = []
        if direction == events.RECEIVED:
            self.known.update(events.server_ids(event))
            if kind == events.RESPONSE_STARTED:
                out_of_band = self._pending.pop(0) if self._pending else False
                response_id = events.dig(event, ("response", "id"))
                if not out_of_band:
                    self.active[str(response_id)] = seq
            elif kind == events.RESPONSE_DONE:
                self.active.pop(str(events.dig(event, ("response", "id"))), None)
                # its output items were given as they streamed; a recording may hold only this
                for item in events.dig(event, RESPONSE_OUTPUT_PATH) or []:
                    self.known.update(events.server_ids({"item": item}) if isinstance(item, dict) else [])
            elif kind == ITEM_DELETED and isinstance(event.get("item_id"), str):
                self.deleted.add(("item", event["item_id"]))
            elif events.is_audio_delta(kind):
                self.audio_seen = seq if self.audio_seen is None else self.audio_seen
            self.formats.follow(event)
            return found
        if kind == events.AUDIO_APPEND and self.audio_seen is None:
            self.audio_seen = seq
        if kind == events.RESPONSE_CREATE:
            out_of_band = is_out_of_band(event)
            if not out_of_band and self.active:
                found.append(
                    (
                        "overlapping response",
                        f"response.create at seq {seq} while response created at seq "
                        f"{min(self.active.values())} was active",
                    )
                )
            self._pending.append(out_of_band)
        elif kind == RESPONSE_CANCEL:
            named = event.get("response_id")
            if not self.active or (isinstance(named, str) and named not in self.active):
                found.append(("cancel without response", f"response.cancel at seq {seq} with no active response"))
        for id_kind, value in referred_ids(event):
            if (id_kind, value) in self.deleted:
                found.append(("unknown ids", f"{kind} at seq {seq} names {id_kind} {value}, already deleted"))
            elif (id_kind, value) not in self.known:
                found.append(("unknown ids", f"{kind} at seq {seq} names {id_kind} {value}, never given by the server"))
        if kind == SESSION_UPDATE:
            before = dict(self.formats.formats)
            if self.formats.follow(event) and self.audio_seen is not None:
                after = self.formats.formats
                change = ", ".join(f"{before[side]} -> {after[side]}" for side in after if before[side] != after[side])
                found.append(
                    (
                        "format change",
                        f"session.update at seq {seq} changes the audio format ({change}) "
                        f"after audio flowed (seq {self.audio_seen})",
                    )
                )
        return found
