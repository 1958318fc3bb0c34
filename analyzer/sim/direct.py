"""A simulated session with no socket: its steps carried out on a fake clock.

The server loop (:mod:`analyzer.sim.simulator`) carries out a session's steps on a socket
and a real clock. :class:`DirectConnection` carries them out the same way on a fake one:
the session's opening, then the client's messages one at a time (the next is read once the
previous one's steps are done), each response streaming alongside, ``Stall`` and send delays
moving the clock forward instead of sleeping, and expiry at ``max_session_s``. The client
sends with :meth:`~DirectConnection.send` and waits with :meth:`~DirectConnection.wait_for`,
which runs the server until the event it waits for. With a
:class:`~recorder.session.SessionRecorder`, both directions are recorded as the proxy would
have recorded them, timed by the fake clock: a session of minutes takes milliseconds.
"""

from __future__ import annotations

import collections
import datetime as dt
import heapq
import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from recorder.session import RECEIVED, SENT, SessionRecorder

from .simsession import Close, Drop, SimSession, Stall, StartResponse, Step

DROPPED = 1006
"""The close code a recording shows for a connection cut without a close frame."""

Process = Iterator[float]
"""Work in progress: each ``next`` runs it until it waits, and says until when (a time on
the fake clock, or :data:`_PARK`)."""
_PARK = -1.0  # no time: wake me when the client sends something


class Ended(Exception):
    """The client sent on a connection that had ended."""


class DirectConnection:
    """One simulated session on a fake clock (seconds since the handshake)."""

    def __init__(self, session: SimSession, recorder: SessionRecorder | None = None) -> None:
        self.session = session
        self.recorder = recorder
        self.now = 0.0
        self.ended = False
        self.closed_by: str | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self._queue: list[tuple[float, int, Process]] = []
        self._order = itertools.count()  # breaks ties between processes due at once: first come, first run
        self._inbox: collections.deque[str] = collections.deque()
        self._parked: Process | None = None
        self._unseen: collections.deque[dict[str, Any]] = collections.deque()
        self.timeline: list[tuple[float, dict[str, Any]]] = []
        """Every event the server sent, with the time on the fake clock it sent it: the
        simulator's own account of its timing."""

    def open(self, wall: dt.datetime | None = None) -> None:
        """The handshake is done: time zero (at ``wall``, else now, on the wall clock). The
        server's opening runs as the fake clock moves."""
        if self.recorder is not None:
            self.recorder.start(0, wall=wall)
        self._schedule(0.0, self._serve())
        self._schedule(self.session.max_session_s, self._expire())

    def send(self, message: str) -> None:
        """The client sends ``message`` now."""
        if self.ended:
            raise Ended
        self._record(SENT, message)
        self._inbox.append(message)
        if self._parked is not None:
            self._schedule(self.now, self._parked)
            self._parked = None

    def wait_for(self, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        """Run the server until it sends an event ``wanted`` accepts, and return it; the
        events before it are passed over. ``None`` once the connection has ended."""
        while True:
            while self._unseen:
                event = self._unseen.popleft()
                if wanted(event):
                    return event
            if self.ended or not self._queue:
                return None
            self._step()

    def idle(self, seconds: float) -> None:
        """The client does nothing for ``seconds``: the server's own doings in that time
        happen (its events wait, unread, for the next :meth:`wait_for`)."""
        until = self.now + seconds
        while self._queue and self._queue[0][0] <= until and not self.ended:
            self._step()
        self.now = max(self.now, until)

    def _step(self) -> None:
        """Move the clock to the next scheduled process and run it until it waits again."""
        self.now, _, process = heapq.heappop(self._queue)
        wake = next(process, None)
        if wake == _PARK:
            self._parked = process
        elif wake is not None:
            self._schedule(wake, process)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """The client closes the connection (nothing happens if it has ended already)."""
        self._end("client", code, reason)

    # -- the server's side -------------------------------------------------------------

    def _serve(self) -> Process:
        """The connection's main loop: the opening, then each client message in turn."""
        yield from self._steps(self.session.opening())
        while not self.ended:
            if not self._inbox:
                yield _PARK
                continue
            yield from self._steps(self.session.receive(self._inbox.popleft(), self.now))

    def _expire(self) -> Process:
        # A process of its own, so the session makes its expiry error only if it expires.
        yield from self._steps(self.session.expire())

    def _steps(self, steps: Iterable[Step]) -> Process:
        for step in steps:
            if self.ended:
                return
            if isinstance(step, StartResponse):
                self._schedule(self.now, self._steps(self.session.stream(step.response)))
            elif isinstance(step, Stall):
                yield self.now + step.seconds
            elif isinstance(step, Close):
                self._end("server", step.code, step.reason)
            elif isinstance(step, Drop):
                self._end("server", DROPPED, "")
            else:
                if step.delay:
                    yield self.now + step.delay
                    if self.ended:
                        return
                text = json.dumps(step.event, separators=(",", ":"))
                self._record(RECEIVED, text)
                self._unseen.append(json.loads(text))
                self.timeline.append((self.now, self._unseen[-1]))
                yield self.now  # the client may act on it before anything else happens

    def _schedule(self, at: float, process: Process) -> None:
        heapq.heappush(self._queue, (at, next(self._order), process))

    def _record(self, direction: int, message: str) -> None:
        if self.recorder is not None:
            self.recorder.message(direction, message, round(self.now * 1e9))

    def _end(self, by: str, code: int, reason: str) -> None:
        if self.ended:
            return
        self.ended = True
        self.closed_by, self.close_code, self.close_reason = by, code, reason
        self._queue.clear()
        if self.recorder is not None:
            self.recorder.end(round(self.now * 1e9), closed_by=by, code=code, reason=reason)
