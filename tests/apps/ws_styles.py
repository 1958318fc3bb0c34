"""A websockets client using every API style the shim must record, one connection each,
to URL/<style>. Run under `rtcap run`; prints the websockets version it used."""

import asyncio
import inspect
import json
import sys
import warnings

import websockets
from websockets.asyncio.client import connect
from websockets.sync.client import connect as sync_connect

URL = sys.argv[1]
CLOSE = json.dumps({"type": "test.close", "code": 1000, "reason": "done"})


class MyConnect(connect):
    """Subclassed, as the openai SDK does."""


async def awaited() -> None:
    ws = await connect(f"{URL}/awaited")
    await ws.recv()
    await ws.send(json.dumps({"type": "response.create"}))
    while json.loads(await ws.recv())["type"] != "response.done":
        pass
    await ws.close()


async def context_manager() -> None:
    async with connect(f"{URL}/context") as ws:
        assert isinstance(await ws.recv(decode=False), bytes)
        await ws.send(b"\x00\x01 binary")
        assert await ws.recv() == b"\x00\x01 binary"
        await ws.send(["frag", "mented ", "text"])  # one message in three frames
        assert await ws.recv() == "fragmented text"

        async def chunks():
            yield b"async "
            yield b"fragments"

        await ws.send(chunks())
        assert await ws.recv() == b"async fragments"


async def iterator_and_streaming() -> None:
    async def use(ws) -> None:
        async for fragment in ws.recv_streaming():
            assert fragment
        await ws.send("plain text")
        await ws.send(CLOSE)
        async for message in ws:
            assert message == "plain text"

    if hasattr(connect, "__aiter__"):  # the reconnecting iterator came in websockets 14
        async for ws in connect(f"{URL}/iterator"):
            await use(ws)
            break
    else:
        async with connect(f"{URL}/iterator") as ws:
            await use(ws)


async def subclassed() -> None:
    async with MyConnect(f"{URL}/subclassed") as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "session.update", "session": {"instructions": "hi"}}))
        await ws.recv()


async def legacy() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # legacy is deprecated from 14 on
        from websockets.legacy.client import connect as legacy_connect

    async with legacy_connect(f"{URL}/legacy") as ws:
        await ws.recv()
        await ws.send(["legacy ", "fragments"])
        assert await ws.recv() == "legacy fragments"
        await ws.send(b"legacy bytes")
        assert await ws.recv() == b"legacy bytes"
    try:
        await legacy_connect(f"{URL}/legacy-rejected", extra_headers={"Authorization": "Bearer reject-me"})
    except websockets.InvalidStatusCode as e:
        assert e.status_code == 401


async def rejected() -> None:
    try:
        await connect(f"{URL}/rejected", additional_headers={"Authorization": "Bearer reject-me"})
    except websockets.InvalidStatus as e:
        assert e.response.status_code == 401


def sync_styles() -> None:
    with sync_connect(f"{URL}/sync") as ws:
        # The sync recv(decode=...) came in websockets 14.
        recv_bytes = (lambda: ws.recv(decode=False)) if "decode" in inspect.signature(ws.recv).parameters else ws.recv
        ws.recv()
        ws.send(json.dumps({"type": "response.create"}))
        while json.loads(recv_bytes())["type"] != "response.done":
            pass
        ws.send(["sync ", "fragments"])
        for fragment in ws.recv_streaming():
            assert fragment
        ws.send(CLOSE)
        for _ in ws:
            pass


async def main() -> None:
    for style in (awaited, context_manager, iterator_and_streaming, subclassed, legacy, rejected):
        await style()
    sync_styles()
    print(websockets.__version__)


asyncio.run(main())
