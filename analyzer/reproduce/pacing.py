"""When to send what, when a recorded conversation is played again: the pure core of
``rtcap replay`` and ``rtcap serve``.

:func:`plan` turns a capture's client messages into :class:`Step` s (:func:`serve_plan`
does the same for its server messages); :class:`IdMap` rewrites the ids the server assigned
in the recording to the ones it assigns now; :class:`Pacer` decides, from the events that
arrive and the time, whether to send the next step or wait.

Nothing here touches a socket or reads a clock: every call takes the time as an argument.
The network loops around it feed it arrivals (:meth:`Pacer.on_event`), the end of the
connection (:meth:`Pacer.on_close`), and ask :meth:`Pacer.next` what to do::

    pacer = Pacer(plan(capture), start=clock())
    while not isinstance(action := pacer.next(clock()), Done):
        if isinstance(action, Wait):
            ...  # until action.until, or the next arrival, whichever comes first
        else:
            send(action.data)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from recorder import events
from recorder.capture import Capture, Message

PACES = ("causal", "timed", "asap")
"""``causal``: after the server messages that preceded a message in the recording, and not
before its recorded gap; ``timed``: at its recorded time; ``asap``: at once."""


@dataclasses.dataclass
class Step:
    """Send one recorded message."""

    recorded_seq: int
    data: str | bytes
    after_server: int
    """How many units of the other side (a run of deltas counts as one) must have arrived
    first: since the previous step when replaying (``causal``), since the start when
    serving (client messages, each one a unit)."""
    not_before_s: float
    """Seconds after the previous step (``causal``) or after the start (``timed``)."""
    needs: list[str]
    """Recorded server ids this message refers to, which must be mapped first."""
    after_done: bool = False
    """A response ended before this message in the recording: once the replayed one ends,
    the message goes even if fewer server messages came (``causal``)."""
    kind: str | None = None
    """The recorded message's event type, to name it in notes."""


def event_of(message: Message) -> dict[str, Any] | None:
    """The event a recorded message holds, if it is a text frame with a JSON object."""
    # A binary frame that happens to start with "{" is still not an event.
    return events.parse(message.data()) if message.opcode == "text" else None


def recorded_events(capture: Capture) -> list[tuple[int, dict[str, Any] | None]]:
    """The recording's server side as ``(seq, event)``, ``None`` for non-events."""
    return [(m.seq, event_of(m)) for m in capture.messages if m.direction == events.RECEIVED]


def _payload(message: Message) -> str | bytes:
    return message.data().decode("utf-8", errors="replace") if message.opcode == "text" else message.data()


def describe(message: Message) -> str:
    """A recorded message in a word, for notes: its event type, else what it is."""
    if message.opcode != "text":
        return f"binary, {len(message.data())} bytes"
    return events.event_type(event_of(message)) or f"text, {len(message.data())} bytes, not an event"


def plan(capture: Capture, pace: str = "causal", speed: float = 1.0) -> list[Step]:
    """The steps that send a capture's client messages again."""
    assigned: set[str] = set()
    steps: list[Step] = []
    server_since: list[str | None] = []  # types of the server events since the last step
    previous_t = 0
    for message in capture.messages:
        event = event_of(message)
        if message.direction == events.RECEIVED:
            server_since.append(events.event_type(event))
            if event:
                assigned.update(i for _, i in events.server_ids(event))
            continue
        needs = sorted({s for s in events.strings(event) if s in assigned}) if event else []
        gap = (message.t_ns - previous_t) / 1e9 / speed
        at = message.t_ns / 1e9 / speed
        data = _payload(message)
        if pace == "causal":
            ended = events.RESPONSE_DONE in server_since
            steps.append(Step(message.seq, data, events.count_units(server_since), gap, needs, ended))
        elif pace == "timed":
            steps.append(Step(message.seq, data, 0, at, needs))
        else:
            steps.append(Step(message.seq, data, 0, 0.0, needs))
        server_since = []
        previous_t = message.t_ns
    return steps


def serve_plan(capture: Capture, speed: float = 1.0) -> list[Step]:
    """The steps that play a capture's server messages to a client: each after as many
    client messages as preceded it in the recording (counted from the start, each message
    one: a client sends no deltas), and not before its recorded gap divided by ``speed``."""
    steps: list[Step] = []
    clients = 0
    previous_t = 0
    for message in capture.messages:
        if message.direction == events.SENT:
            clients += 1
            continue
        gap = (message.t_ns - previous_t) / 1e9 / speed
        steps.append(Step(message.seq, _payload(message), clients, max(0.0, gap), [], kind=describe(message)))
        previous_t = message.t_ns
    return steps


def client_messages(capture: Capture) -> list[Message]:
    """The recording's client messages, in order: what :func:`serve_plan` counts."""
    return [m for m in capture.messages if m.direction == events.SENT]


def count_responses(capture: Capture) -> int:
    """How many responses the recording started: a replay waits for as many to end.

    Started, not ended: a recording that ends during a response (a dropped connection)
    holds a failure, and only a replay that waits for its own response to end, one way
    or the other, can see whether that failure comes back."""
    started = events.RESPONSE_STARTED
    return sum(1 for _, event in recorded_events(capture) if events.event_type(event) == started)


class IdMap:
    """Recorded server ids to the replay's, matched by kind and order of appearance."""

    def __init__(self, capture: Capture) -> None:
        self.recorded: dict[str, list[str]] = {kind: [] for kind in events.ID_KINDS}
        for _, event in recorded_events(capture):
            for kind, value in events.server_ids(event) if event else []:
                if value not in self.recorded[kind]:
                    self.recorded[kind].append(value)
        self.seen: dict[str, list[str]] = {kind: [] for kind in events.ID_KINDS}
        self.mapping: dict[str, str] = {}

    def learn(self, event: Mapping[str, Any]) -> None:
        """Take note of the ids a replayed server event assigns."""
        for kind, value in events.server_ids(event):
            if value in self.seen[kind]:
                continue
            index = len(self.seen[kind])
            self.seen[kind].append(value)
            if index < len(self.recorded[kind]):
                self.mapping[self.recorded[kind][index]] = value

    def rewrite(self, data: str | bytes) -> str | bytes:
        """A client message with every mapped id replaced."""
        if not isinstance(data, str) or not self.mapping:
            return data
        try:
            event = json.loads(data)
        except ValueError:
            return data
        changed = False

        def swap(value: Any) -> Any:
            nonlocal changed
            if isinstance(value, str) and value in self.mapping:
                changed = True
                return self.mapping[value]
            if isinstance(value, dict):
                return {k: swap(v) for k, v in value.items()}
            if isinstance(value, list):
                return [swap(v) for v in value]
            return value

        rewritten = swap(event)
        return json.dumps(rewritten, separators=(",", ":"), ensure_ascii=False) if changed else data


# ---------------------------------------------------------------------------
# The pacer


@dataclasses.dataclass(frozen=True)
class Send:
    """Send step ``index`` now. ``data`` has its ids mapped; ``note`` says why it goes
    without what it waited for, when it timed out."""

    index: int
    step: Step
    data: str | bytes
    note: str | None = None


@dataclasses.dataclass(frozen=True)
class Wait:
    """Nothing to send before ``until`` (``None``: no deadline); ask again then, or as soon
    as something arrives."""

    until: float | None


@dataclasses.dataclass(frozen=True)
class Done:
    """Nothing more to send or wait for: every step went (and the responses the recording
    ended ended, or the time to wait for them ran out), or the connection is gone."""


DONE = Done()

# The phases of the step in hand, in order.
_PEER, _IDS, _GAP = "peer", "ids", "gap"


class Pacer:
    """Decides when each step goes, from what arrived and when.

    Each step waits, in turn: for the other side (``after_server`` units, or a pending
    ``response.done`` for an ``after_done`` step; ``timeout`` seconds at most, after which
    it goes anyway and a note says so); for the server ids it refers to (``timeout`` seconds
    more at most); and for its time (``not_before_s`` after the previous step for
    ``causal``, after ``start`` for ``timed``, none for ``asap``). After the last step it
    waits, ``timeout`` seconds at most, for ``expected_done`` responses to have ended
    (``response.done``; the end of the connection ends them all).

    ``absolute`` counts the other side from the start instead of since the previous step
    (serve: a server message goes once as many client messages as preceded it have come);
    once it has waited ``timeout`` for a message of the other side, the steps after it that
    wait for no later one go without waiting again: a missing message costs one timeout,
    not one per step. ``timeout=None`` waits for the other side for ever. ``peer`` names
    it in notes, and ``peer_kinds`` (with ``absolute``) its recorded messages, in order.
    """

    def __init__(
        self,
        steps: Iterable[Step],
        *,
        pace: str = "causal",
        start: float = 0.0,
        timeout: float | None = 10.0,
        ids: IdMap | None = None,
        expected_done: int = 0,
        absolute: bool = False,
        peer: str = "server",
        peer_kinds: Sequence[str] = (),
    ) -> None:
        if pace not in PACES:
            raise ValueError(f"unknown pace {pace!r}: expected one of {', '.join(PACES)}")
        self.steps = list(steps)
        self.pace = pace
        self.start = start
        self.timeout = timeout
        self.ids = ids
        """Rewrites ids when given; without it, messages go as recorded, waiting for none."""
        self.expected_done = expected_done
        self.absolute = absolute
        self.peer = peer
        self.peer_kinds = list(peer_kinds)
        self._given_up = 0  # absolute: steps waiting for fewer units than this go at once
        self.units = events.Units()
        """What the other side sent, counted (a run of deltas is one)."""
        self.dones = 0
        self.index = 0
        """The step in hand (``len(steps)`` once all went)."""
        self.closed = False
        self.notes: list[str] = []
        """One line per step that went without what it waited for."""
        self._phase = _PEER
        self._deadline = self._after(start)
        self._note: str | None = None
        self._mark_units = self._mark_dones = 0
        self._mark_t = start

    def _after(self, t: float) -> float | None:
        return None if self.timeout is None else t + self.timeout

    def on_event(self, event: Mapping[str, Any] | None, t: float) -> None:
        """Something arrived from the other side at ``t``: its event, or ``None`` for a
        message that is not one (or that is not looked into: serve counts client
        messages, it does not read them)."""
        kind = events.event_type(event)
        self.units.add(kind)
        self.dones += kind == events.RESPONSE_DONE
        if self.ids is not None and event is not None:
            self.ids.learn(event)
        self._advance(t)

    def on_close(self, t: float) -> None:
        """The connection ended at ``t``: nothing more will be sent."""
        self.closed = True

    @property
    def waiting_for(self) -> int | None:
        """While the step in hand waits for the other side: the number (from 0, counted
        as :attr:`units`) of the message it waits for next; else ``None``."""
        if self.closed or self.index >= len(self.steps) or self._phase != _PEER:
            return None
        return None if self._ready(self.steps[self.index]) else self.units.count

    def next(self, now: float) -> Send | Wait | Done:
        """What to do at ``now``. A :class:`Send` counts as sent at ``now``."""
        if self.closed:
            return DONE
        self._advance(now)
        if self.index >= len(self.steps):
            late = self._deadline is not None and now >= self._deadline
            return DONE if self.dones >= self.expected_done or late else Wait(self._deadline)
        if self._phase != _GAP:
            return Wait(self._deadline)
        step = self.steps[self.index]
        if self.pace != "asap":
            send_at = (self._mark_t if self.pace == "causal" else self.start) + step.not_before_s
            if send_at > now:
                return Wait(send_at)
        action = Send(self.index, step, self.ids.rewrite(step.data) if self.ids else step.data, self._note)
        self.index += 1
        self._mark_units, self._mark_dones, self._mark_t = self.units.count, self.dones, now
        self._phase, self._deadline, self._note = _PEER, self._after(now), None
        # The next step may need nothing more: its waits start now, not when asked next.
        self._advance(now)
        return action

    def _ready(self, step: Step) -> bool:
        if self.absolute and step.after_server <= self._given_up:
            return True
        base = 0 if self.absolute else self._mark_units
        # A pending response.done counts: once the replayed response has ended, a shorter
        # stream than the recorded one is no reason to wait for more.
        return self.units.count >= base + step.after_server or (step.after_done and self.dones > self._mark_dones)

    def _timed_out(self, step: Step) -> str:
        """The note for a step that waited ``timeout`` for the other side."""
        if not self.absolute:
            return f"waited {self.timeout:g} s for the {self.peer} before seq {step.recorded_seq}"
        self._given_up = step.after_server
        awaited = self.units.count
        kind = f" ({self.peer_kinds[awaited]})" if awaited < len(self.peer_kinds) else ""
        own = "server" if self.peer == "client" else "client"
        about = f"{step.kind}, seq {step.recorded_seq}" if step.kind else f"seq {step.recorded_seq}"
        return (
            f"waited {self.timeout:g} s for {self.peer} message {awaited}{kind} "
            f"before {own} message {self.index} ({about})"
        )

    def _mapped(self, step: Step) -> bool:
        return self.ids is None or all(n in self.ids.mapping for n in step.needs)

    def _advance(self, now: float) -> None:
        """Move the step in hand through its phases as far as ``now`` allows."""
        if self.closed or self.index >= len(self.steps):
            return
        step = self.steps[self.index]
        expired = self._deadline is not None and now >= self._deadline
        if self._phase == _PEER:
            at = now
            if not self._ready(step):
                if not expired:
                    return
                self._note = self._timed_out(step)
                self.notes.append(self._note)
                # The wait for ids starts when this one ended, however late we were told.
                at = self._deadline if self._deadline is not None else now
            self._phase, self._deadline = _IDS, self._after(at)
            expired = self._deadline is not None and now >= self._deadline
        if self._phase == _IDS and (self._mapped(step) or expired):
            self._phase = _GAP


async def idle(action: Wait, woken: Any, now: float) -> None:
    """For a driver: sleep until ``action.until`` or until ``woken`` (an
    ``asyncio.Event`` set on every arrival) is set, whichever comes first."""
    import asyncio
    import contextlib

    woken.clear()
    delay = None if action.until is None else max(0.0, action.until - now)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(woken.wait(), delay)
