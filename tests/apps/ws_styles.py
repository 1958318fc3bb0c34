"""A websockets client using every API style the shim must record, one connection each,
to the simulator at URL (with ?style=NAME). Run under `rtcap run`; prints the websockets
version it used. The simulator closes a session (1000, "done") on the response that
follows an input_audio_buffer.clear."""

import asyncio
import inspect
import json
import sys
import warnings

import websockets
from websockets.asyncio.client import connect
from websockets.sync.client import connect as sync_connect

URL = sys.argv[1]
CREATE = json.dumps({"type": "response.create"})
CLEAR = json.dumps({"type": "input_audio_buffer.clear"})
UPDATE = ['{"type":"session.update",', '"session":{"type":"realtime",', '"instructions":"Be brief."}}']


def url(style: str) -> str:
    return f"{URL}/v1/realtime?model=gpt-realtime&style={style}"


def kind(message) -> str:
    return json.loads(message)["type"]


class MyConnect(connect):
    """Subclassed, as the openai SDK does."""


async def awaited() -> None:
    ws = await connect(url("awaited"))
    await ws.recv()
    await ws.send(CREATE)
    while kind(await ws.recv()) != "response.done":
        pass
    await ws.close()


async def context_manager() -> None:
    async with connect(url("context")) as ws:
        assert isinstance(await ws.recv(decode=False), bytes)
        await ws.send(b"\x00\x01 binary")
        assert kind(await ws.recv()) == "error"
        await ws.send(UPDATE)  # one message in three frames
        assert kind(await ws.recv()) == "session.updated"

        async def chunks():
            for part in UPDATE:
                yield part

        await ws.send(chunks())
        assert kind(await ws.recv()) == "session.updated"


async def iterator_and_streaming() -> None:
    async def use(ws) -> None:
        async for fragment in ws.recv_streaming():
            assert fragment
        await ws.send("plain text")
        await ws.send(CLEAR)
        await ws.send(CREATE)
        async for message in ws:  # ends when the server closes
            assert kind(message)

    if hasattr(connect, "__aiter__"):  # the reconnecting iterator came in websockets 14
        async for ws in connect(url("iterator")):
            await use(ws)
            break
    else:
        async with connect(url("iterator")) as ws:
            await use(ws)


async def subclassed() -> None:
    async with MyConnect(url("subclassed")) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "instructions": "hi"}}))
        await ws.recv()


async def legacy() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # legacy is deprecated from 14 on
        from websockets.legacy.client import connect as legacy_connect

    async with legacy_connect(url("legacy")) as ws:
        await ws.recv()
        await ws.send(UPDATE)
        assert kind(await ws.recv()) == "session.updated"
        await ws.send(b"legacy bytes")
        assert kind(await ws.recv()) == "error"
    try:
        await legacy_connect(f"{URL}/legacy-rejected")
    except websockets.InvalidStatusCode as e:
        assert e.status_code == 404


async def rejected() -> None:
    try:
        await connect(f"{URL}/rejected")
    except websockets.InvalidStatus as e:
        assert e.response.status_code == 404


def sync_styles() -> None:
    with sync_connect(url("sync")) as ws:
        # The sync recv(decode=...) came in websockets 14.
        recv_bytes = (lambda: ws.recv(decode=False)) if "decode" in inspect.signature(ws.recv).parameters else ws.recv
        ws.recv()
        ws.send(CREATE)
        while kind(recv_bytes()) != "response.done":
            pass
        ws.send(UPDATE)
        for fragment in ws.recv_streaming():
            assert fragment
        ws.send(CLEAR)
        ws.send(CREATE)
        for _ in ws:
            pass


async def main() -> None:
    for style in (awaited, context_manager, iterator_and_streaming, subclassed, legacy, rejected):
        await style()
    sync_styles()
    print(websockets.__version__)


asyncio.run(main())
