"""The benchmark's upstream: a stand-in for a realtime API that streams events on request.

Run as ``python bench/source_server.py``; it listens on 127.0.0.1, a free port, and
prints that port as its first line. On each connection:

- ``{"type":"bench.stream","kind":"small"|"audio","count":N}`` (compact JSON, this
  prefix exactly) makes it send N events
  as fast as it can, then ``{"type":"bench.done"}``. ``small`` events are GA transcript
  deltas (about 200 bytes), ``audio`` events carry 100 ms of PCM16 at 24 kHz (4,800
  bytes, 6,400 in base64), like ``response.output_audio.delta`` does;
- any other message is sent back unchanged at once (the round-trip probe).
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import signal

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

DONE = '{"type":"bench.done"}'
STREAM_PREFIX = '{"type":"bench.stream"'

AUDIO_BYTES = 4800  # 100 ms of PCM16 mono at 24 kHz
VARIANTS = 8  # distinct payloads, so nothing downstream can get away with caching one
WORDS = ["Sure", "the", "weather", "in", "Lisbon", "is", "sunny", "today", "with", "a", "light", "breeze."]


def _templates(kind: str) -> list[tuple[str, str]]:
    """Each event as (text before the event id counter, text after it).

    Building an event is then one concatenation per message, so the server stays far
    faster than anything it is measured through.
    """
    rng = random.Random(kind)
    ids = (
        '","response_id":"resp_CAbVxZ2wQ3kLm9NpRt7Yu","item_id":"item_CAbVxa8HsJ4dKf1GhP0Qe",'
        '"output_index":0,"content_index":0,"delta":'
    )
    out = []
    for n in range(VARIANTS):
        if kind == "small":
            event_type, delta = "response.output_audio_transcript.delta", WORDS[n % len(WORDS)] + " "
        else:
            event_type, delta = "response.output_audio.delta", base64.b64encode(rng.randbytes(AUDIO_BYTES)).decode()
        out.append((f'{{"type":"{event_type}","event_id":"event_CAbVx', ids + json.dumps(delta) + "}"))
    return out


TEMPLATES = {kind: _templates(kind) for kind in ("small", "audio")}


async def stream(connection: ServerConnection, kind: str, count: int) -> None:
    """Send ``count`` events of ``kind``, then the end marker."""
    templates = TEMPLATES[kind]
    send = connection.send
    for i in range(count):
        head, tail = templates[i % VARIANTS]
        await send(f"{head}{i:016d}{tail}")
    await send(DONE)


async def handle(connection: ServerConnection) -> None:
    try:
        async for message in connection:
            # Only stream requests are parsed: the echo path must cost next to nothing.
            if isinstance(message, str) and message.startswith(STREAM_PREFIX):
                request = json.loads(message)
                await stream(connection, request["kind"], int(request["count"]))
            else:
                await connection.send(message)
    except ConnectionClosed:
        pass


async def main() -> None:
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    async with serve(handle, "127.0.0.1", 0, max_size=None, compression=None) as server:
        print(next(iter(server.sockets)).getsockname()[1], flush=True)
        await stop


if __name__ == "__main__":
    asyncio.run(main())
