"""``rtcap serve``: a recorded server, played to whatever client connects.

Each client gets the recording's server messages from the start; a server message is
released once as many client messages as preceded it in the recording have arrived, and
not before its recorded gap (divided by ``speed``) after the previous one: the same
:class:`~.pacing.Pacer` as replay's, from the other side.

The point is to debug the client, so each client message that differs from the recording
is reported in one line saying where (:func:`difference`), and a server message that waited
``timeout`` for a client message says which. By default the served messages carry on
regardless; ``strict`` ends that client's connection instead, with close code 1008 (policy
violation) and the line as its reason, and keeps the line in :attr:`Player.problems` (the
pytest fixture fails the test with it). Other clients are served on either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from recorder import events
from recorder.capture import RECEIVED, SENT, Capture, Message
from recorder.serving import serve_until_stopped
from recorder.session import SessionRecorder, now_ns

from .pacing import Done, Pacer, Wait, client_messages, describe, idle, serve_plan

MISSING = object()
"""A JSON value that is not there (a key one side lacks, a list too short)."""
SHORT = 40
"""About how many characters of a value a difference shows."""
POLICY_VIOLATION = 1008
"""The close code of a strict server's answer to a client that left the recording."""
MAX_REASON_BYTES = 123
"""The longest close reason a WebSocket close frame holds (RFC 6455)."""


def difference(recorded: Message, got: str | bytes) -> str | None:
    """How a client message differs from the recorded one, in a few words: where
    (`` at response.tool_choice: "auto" -> {...}``), or what (``: A -> B``) when the event
    types, the opcodes or the JSON-ness differ; ``None`` when it says the same. Fields a
    client makes up afresh (:func:`recorder.events.without_client_chosen`) are left out."""
    want = recorded.data()
    got_bytes = got.encode() if isinstance(got, str) else got
    if want == got_bytes and (recorded.opcode == "text") == isinstance(got, str):
        return None
    what = f": {describe(recorded)} -> {_describe(got)}"
    if (recorded.opcode == "text") != isinstance(got, str):
        return what
    if isinstance(got, bytes):
        return f": binary, {len(want)} bytes -> {len(got_bytes)} bytes"
    want_event, got_event = events.parse(want), events.parse(got_bytes)
    if want_event is None or got_event is None or events.event_type(want_event) != events.event_type(got_event):
        return what
    found = first_difference(events.without_client_chosen(want_event), events.without_client_chosen(got_event))
    if found is None:
        return None
    path, left, right = found
    return f" at {path}: {_short(left, right)} -> {_short(right, left)}"


def _describe(data: str | bytes) -> str:
    """A client's message in a word, as :func:`~.pacing.describe` says a recorded one."""
    if isinstance(data, bytes):
        return f"binary, {len(data)} bytes"
    return events.event_type(events.parse(data)) or f"text, {len(data.encode())} bytes, not an event"


def first_difference(left: Any, right: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first place two JSON values differ, as ``(path, left's, right's)``, with a
    dotted path (``response.tools[0].name``) and :data:`MISSING` for what one lacks."""
    if isinstance(left, dict) and isinstance(right, dict):
        for key in [*left, *(k for k in right if k not in left)]:
            where = f"{path}.{key}" if path else str(key)
            found = first_difference(left.get(key, MISSING), right.get(key, MISSING), where)
            if found is not None:
                return found
        return None
    if isinstance(left, list) and isinstance(right, list):
        for index in range(max(len(left), len(right))):
            a = left[index] if index < len(left) else MISSING
            b = right[index] if index < len(right) else MISSING
            found = first_difference(a, b, f"{path}[{index}]")
            if found is not None:
                return found
        return None
    # The types too: in Python True == 1, in JSON true and 1 differ.
    if left is MISSING or right is MISSING or type(left) is not type(right) or left != right:
        return path, left, right
    return None


def _json(value: Any) -> str:
    return "(absent)" if value is MISSING else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _short(value: Any, other: Any) -> str:
    """``value`` as JSON in about :data:`SHORT` characters. When it begins as ``other``
    does for longer than that (two chunks of audio, say), it is shown from a little before
    where they part, with its length."""
    text, versus = _json(value), _json(other)
    if len(text) <= SHORT:
        return text
    parts = next((i for i, (a, b) in enumerate(zip(text, versus, strict=False)) if a != b), len(versus))
    if parts < SHORT - 3:
        return text[: SHORT - 3] + "..."
    begin = parts - 10
    end = begin + SHORT - 6
    return f"...{text[begin:end]}{'...' if end < len(text) else ''} ({len(text)} chars)"


def _reason(line: str) -> str:
    """``line`` cut to fit a close frame's reason."""
    data = line.encode()
    if len(data) <= MAX_REASON_BYTES:
        return line
    return data[: MAX_REASON_BYTES - 3].decode("utf-8", errors="ignore") + "..."


class Player:
    """Plays one capture's server side to each client that connects.

    ``timeout``: how long a server message waits for the client messages that preceded it
    in the recording before it goes anyway, with a line naming the client message it waited
    for; ``None`` waits for ever. ``strict``: a client message that differs from the
    recording, or a wait that times out, ends that client's connection (1008, the line as
    its reason) and is kept in :attr:`problems`. ``report`` gets each line (by default
    printed on stderr after ``rtcap serve:``)."""

    def __init__(
        self,
        capture: Capture,
        *,
        speed: float = 1.0,
        captures: Path | None = None,
        report: Callable[[str], None] | None = None,
        timeout: float | None = None,
        strict: bool = False,
    ) -> None:
        self.capture = capture
        self.speed = speed
        self.captures = captures
        self.timeout = timeout
        self.strict = strict
        self.report = report or (lambda line: print(f"rtcap serve: {line}", file=sys.stderr, flush=True))
        self.problems: list[str] = []
        """With ``strict``: what ended a client's connection, a line each."""
        self.expected = client_messages(capture)
        self.script = serve_plan(capture, speed)
        self.recorded_subprotocol = capture.header.get("subprotocol")
        self._playing = 0
        self._idle = threading.Condition()

    def serve(self, host: str, port: int) -> Any:
        """The websockets server (an async context manager)."""
        return serve(self._play, host, port, select_subprotocol=self._subprotocol, max_size=None, compression=None)

    def settle(self, timeout: float) -> bool:
        """Wait, ``timeout`` seconds at most, until no client is being played to (every
        message a client sent before it closed has then been compared); returns whether
        that happened. Thread-safe: the server runs in a thread or loop of its own."""
        with self._idle:
            return self._idle.wait_for(lambda: self._playing == 0, timeout)

    def difference(self, index: int, message: str | bytes) -> str | None:
        """The line saying how client message ``index`` differs from the recording's, if
        it does."""
        if index >= len(self.expected):
            return f"client message {index} is beyond the recording ({_describe(message)})"
        found = difference(self.expected[index], message)
        return None if found is None else f"client message {index} differs from the recording{found}"

    def _subprotocol(self, connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
        wanted = self.recorded_subprotocol
        return Subprotocol(wanted) if isinstance(wanted, str) and wanted in offered else None

    async def _play(self, ws: ServerConnection) -> None:
        with self._idle:
            self._playing += 1
        try:
            await self._play_to(ws)
        finally:
            with self._idle:
                self._playing -= 1
                self._idle.notify_all()

    async def _play_to(self, ws: ServerConnection) -> None:
        recorder = self._recorder(ws) if self.captures is not None else None
        loop = asyncio.get_running_loop()
        # Client messages are counted, not read: each one is a unit, whatever it holds.
        pacer = Pacer(
            self.script,
            start=loop.time(),
            timeout=self.timeout,
            absolute=True,
            peer="client",
            peer_kinds=[describe(m) for m in self.expected],
        )
        woken = asyncio.Event()

        async def refuse(line: str) -> None:
            self.problems.append(line)
            await ws.close(POLICY_VIOLATION, _reason(line))

        async def listen() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for message in ws:
                    if recorder is not None:
                        recorder.message(SENT, message, now_ns())
                    line = self.difference(pacer.units.count, message)
                    if line is not None:
                        self.report(line)
                        if self.strict:
                            await refuse(line)
                            break
                    pacer.on_event(None, loop.time())
                    woken.set()
            pacer.on_close(loop.time())
            woken.set()

        listener = asyncio.ensure_future(listen())
        try:
            while not isinstance(action := pacer.next(loop.time()), Done):
                if isinstance(action, Wait):
                    await idle(action, woken, loop.time())
                    continue
                if action.note is not None:
                    self.report(action.note)
                    if self.strict:
                        await refuse(action.note)
                        break
                if recorder is not None:
                    recorder.message(RECEIVED, action.data, now_ns())
                await ws.send(action.data)
            if not pacer.closed and ws.close_code is None:
                await self._end(ws)
            await listener
        except ConnectionClosed:
            pass
        finally:
            listener.cancel()
            if recorder is not None:
                recorder.end(
                    now_ns(),
                    closed_by="client" if ws.close_code in (None, 1000) else "server",
                    code=ws.close_code,
                    reason=ws.close_reason,
                )

    async def _end(self, ws: ServerConnection) -> None:
        """End the connection as the recording's server did, if it did."""
        end = self.capture.end or {}
        if end.get("closed_by") != "server":
            return
        code = end.get("code")
        if code == 1006:
            ws.transport.abort()
        elif code is not None:
            await ws.close(code if code != 1005 else 1000, end.get("reason") or "")

    def _recorder(self, ws: ServerConnection) -> SessionRecorder:
        request = ws.request
        recorder = SessionRecorder.create(
            self.captures or Path("captures"),
            url=f"ws://{request.headers.get('Host', '')}{request.path}" if request else "",
            request_headers=request.headers.raw_items() if request else [],
            recorder="serve",
            replay_of=self.capture.session_id,
        )
        recorder.start(now_ns(), subprotocol=ws.subprotocol)
        return recorder


async def run_player(
    player: Player, host: str, port: int, *, ready: Callable[[str], None], stop: asyncio.Future[None] | None = None
) -> None:
    """Serve until ``stop`` resolves (or SIGINT/SIGTERM); ``ready`` gets the first line."""
    first = lambda url: f"rtcap serve: {url} plays {player.capture.session_id}"  # noqa: E731
    await serve_until_stopped(player.serve(host, port), first, ready=ready, stop=stop)
