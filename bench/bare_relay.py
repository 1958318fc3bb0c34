"""The floor ``rtcap proxy`` is compared with: a WebSocket relay that records nothing.

Run as ``python bench/bare_relay.py ws://UPSTREAM``; it listens on 127.0.0.1, a free
port, and prints that port as its first line. Each client is connected to the upstream
(same path and query) and messages are pumped both ways with the plainest loop the
websockets library allows, so the gap between this and ``rtcap proxy`` is what
recording costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable

from websockets.asyncio.client import connect
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed


async def pump(src: Connection, dst: Connection) -> None:
    """Forward ``src`` to ``dst`` until ``src`` ends, then close ``dst`` too."""
    with contextlib.suppress(ConnectionClosed):
        async for message in src:
            await dst.send(message)
    await dst.close()


def relay_to(upstream: str) -> Callable[[ServerConnection], Awaitable[None]]:
    async def relay(client: ServerConnection) -> None:
        path = client.request.path if client.request else "/"
        async with connect(upstream.rstrip("/") + path, max_size=None, compression=None) as server:
            await asyncio.gather(pump(client, server), pump(server, client))

    return relay


async def main(upstream: str) -> None:
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    async with serve(relay_to(upstream), "127.0.0.1", 0, max_size=None, compression=None) as server:
        print(next(iter(server.sockets)).getsockname()[1], flush=True)
        await stop


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: bare_relay.py ws://UPSTREAM")
    asyncio.run(main(sys.argv[1]))
