"""Running a server until told to stop: from a command (SIGINT/SIGTERM), or in a thread of
its own (tests, and servers embedded in other programs)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from .listen import DEFAULT_PORTS as DEFAULT_PORTS
from .listen import parse_listen as parse_listen

T = TypeVar("T")


def _resolve(future: asyncio.Future[Any], value: Any = None) -> None:
    if not future.done():
        future.set_result(value)


def ws_url(host: str, port: int) -> str:
    """The ws:// URL a server listening on ``host:port`` is reached at."""
    return f"ws://[{host}]:{port}" if ":" in host else f"ws://{host}:{port}"


async def serve_until_stopped(
    server: Any,
    first_line: Callable[[str], str],
    *,
    ready: Callable[[str], None],
    stop: asyncio.Future[Any] | None = None,
) -> None:
    """Run ``server`` (an async context manager whose value has ``sockets``: a websockets
    server, or ``RecordingProxy.serve``'s) until ``stop`` resolves or SIGINT or
    SIGTERM arrives. ``ready`` gets ``first_line(url)`` once it listens: the line a server
    command prints first, with the real port. Stopped by SIGINT (Ctrl-C), it raises
    ``KeyboardInterrupt`` once the server has closed, so that a command says it was
    interrupted (exit 130); SIGTERM is an orderly stop."""
    loop = asyncio.get_running_loop()
    stop = stop or loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, _resolve, stop, sig)
    async with server as running:
        host, port = next(iter(running.sockets)).getsockname()[:2]
        ready(first_line(ws_url(host, port)))
        stopped_by = await stop
    if stopped_by == signal.SIGINT:
        raise KeyboardInterrupt


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, on uvloop's event loop when uvloop is installed (the
    ``uvloop`` extra) unless ``RTCAP_UVLOOP=0``."""
    if os.environ.get("RTCAP_UVLOOP", "1") != "0":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)


class ServerThread:
    """Runs ``main(ready, stop)`` (a coroutine like :func:`serve_until_stopped`) in a thread
    with its own event loop; ``url`` is the first ws:// URL of its first line."""

    def __init__(self, main: Callable[[Callable[[str], None], asyncio.Future[None]], Awaitable[None]]) -> None:
        self.main = main
        self.url = ""
        self.first_line = ""
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Future[None] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="rtcap-server")

    def _run(self) -> None:
        async def run() -> None:
            self._stop = asyncio.get_running_loop().create_future()
            await self.main(self._started, self._stop)

        self._loop.run_until_complete(run())

    def _started(self, line: str) -> None:
        self.first_line = line
        self.url = next(word for word in line.split() if word.startswith("ws://"))
        self._ready.set()

    def start(self) -> ServerThread:
        """Start serving; returns once the server listens."""
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the server did not start")
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread to end."""
        if self._thread.is_alive():
            if self._stop is not None:
                self._loop.call_soon_threadsafe(_resolve, self._stop)
            self._thread.join(10)
