"""``rtcap serve``: a recorded server, played to whatever client connects.

Each client gets the recording's server messages from the start; a server message is
released once as many client messages as preceded it in the recording have arrived, and
not before its recorded gap (divided by ``speed``). Client messages that differ from the
recording are reported, not refused: the point is to debug the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from recorder import events
from recorder.capture import RECEIVED, SENT, Capture
from recorder.serving import serve_until_stopped
from recorder.session import SessionRecorder, now_ns


def _kind(data: bytes | str) -> str:
    event = events.parse(data)
    return str(events.event_type(event)) if event is not None else "(non-json)"


class Player:
    """Plays one capture's server side to each client that connects."""

    def __init__(
        self,
        capture: Capture,
        *,
        speed: float = 1.0,
        captures: Path | None = None,
        report: Callable[[str], None] | None = None,
    ) -> None:
        self.capture = capture
        self.speed = speed
        self.captures = captures
        self.report = report or (lambda line: print(line, file=sys.stderr, flush=True))
        self.expected = [m.data() for m in capture.messages if m.direction == events.SENT]
        self.script: list[tuple[int, float, bytes | str]] = []  # (client messages before, t_s, data)
        clients = 0
        for message in capture.messages:
            if message.direction == events.SENT:
                clients += 1
            else:
                data = message.data()
                self.script.append((clients, message.t_ns / 1e9, data.decode() if message.opcode == "text" else data))
        self.recorded_subprotocol = capture.header.get("subprotocol")

    def serve(self, host: str, port: int) -> Any:
        """The websockets server (an async context manager)."""
        return serve(self._play, host, port, select_subprotocol=self._subprotocol, max_size=None, compression=None)

    def _subprotocol(self, connection: ServerConnection, offered: Any) -> str | None:
        wanted = self.recorded_subprotocol
        return wanted if wanted in offered else None

    async def _play(self, ws: ServerConnection) -> None:
        recorder = self._recorder(ws) if self.captures is not None else None
        arrived = asyncio.Condition()
        count = 0

        async def listen() -> None:
            nonlocal count
            with contextlib.suppress(ConnectionClosed):
                async for message in ws:
                    if recorder is not None:
                        recorder.message(SENT, message, now_ns())
                    data = message.encode() if isinstance(message, str) else message
                    if count < len(self.expected) and data != self.expected[count]:
                        want, got = _kind(self.expected[count]), _kind(data)
                        self.report(f"rtcap serve: client message {count} differs from the recording ({want} -> {got})")
                    elif count >= len(self.expected):
                        self.report(f"rtcap serve: client message {count} is beyond the recording ({_kind(data)})")
                    count += 1
                    async with arrived:
                        arrived.notify_all()
            async with arrived:
                arrived.notify_all()

        listener = asyncio.ensure_future(listen())
        previous_t = 0.0
        try:
            for needed, t_s, data in self.script:
                async with arrived:
                    await arrived.wait_for(lambda n=needed: count >= n or listener.done())
                if count < needed:
                    return
                await asyncio.sleep(max(0.0, t_s - previous_t) / self.speed)
                previous_t = t_s
                if recorder is not None:
                    recorder.message(RECEIVED, data, now_ns())
                await ws.send(data)
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
