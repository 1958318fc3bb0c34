"""``rtcap serve``: a recorded server, played to whatever client connects.

Each client gets the recording's server messages from the start; a server message is
released once as many client messages as preceded it in the recording have arrived, and
not before its recorded gap (divided by ``speed``) after the previous one: the same
:class:`~.pacing.Pacer` as replay's, from the other side. Client messages that differ from
the recording are reported, not refused: the point is to debug the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from recorder import events
from recorder.capture import RECEIVED, SENT, Capture
from recorder.serving import serve_until_stopped
from recorder.session import SessionRecorder, now_ns

from .pacing import Done, Pacer, Wait, idle, serve_plan


def _kind(data: bytes | str) -> str:
    event = events.parse(data)
    return str(events.event_type(event)) if event is not None else "(non-json)"


class Player:
    """Plays one capture's server side to each client that connects.

    ``timeout``: how long a server message waits for the client messages that preceded it
    in the recording before it goes anyway (reported); ``None``, the default, waits for
    ever, as a recorded server cannot know what an absent message would have said."""

    def __init__(
        self,
        capture: Capture,
        *,
        speed: float = 1.0,
        captures: Path | None = None,
        report: Callable[[str], None] | None = None,
        timeout: float | None = None,
    ) -> None:
        self.capture = capture
        self.speed = speed
        self.captures = captures
        self.timeout = timeout
        self.report = report or (lambda line: print(line, file=sys.stderr, flush=True))
        self.expected = [m.data() for m in capture.messages if m.direction == events.SENT]
        self.script = serve_plan(capture, speed)
        self.recorded_subprotocol = capture.header.get("subprotocol")

    def serve(self, host: str, port: int) -> Any:
        """The websockets server (an async context manager)."""
        return serve(self._play, host, port, select_subprotocol=self._subprotocol, max_size=None, compression=None)

    def _subprotocol(self, connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
        wanted = self.recorded_subprotocol
        return Subprotocol(wanted) if isinstance(wanted, str) and wanted in offered else None

    def difference(self, index: int, message: str | bytes) -> str | None:
        """How client message ``index`` differs from the recording's, if it does."""
        data = message.encode() if isinstance(message, str) else message
        if index >= len(self.expected):
            return f"rtcap serve: client message {index} is beyond the recording ({_kind(data)})"
        if data != self.expected[index]:
            want, got = _kind(self.expected[index]), _kind(data)
            return f"rtcap serve: client message {index} differs from the recording ({want} -> {got})"
        return None

    async def _play(self, ws: ServerConnection) -> None:
        recorder = self._recorder(ws) if self.captures is not None else None
        loop = asyncio.get_running_loop()
        # Client messages are counted, not read: each one is a unit, whatever it holds.
        pacer = Pacer(self.script, start=loop.time(), timeout=self.timeout, absolute=True, peer="client")
        woken = asyncio.Event()

        async def listen() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for message in ws:
                    if recorder is not None:
                        recorder.message(SENT, message, now_ns())
                    line = self.difference(pacer.units.count, message)
                    if line is not None:
                        self.report(line)
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
                    self.report(f"rtcap serve: {action.note}")
                if recorder is not None:
                    recorder.message(RECEIVED, action.data, now_ns())
                await ws.send(action.data)
            if not pacer.closed:
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
