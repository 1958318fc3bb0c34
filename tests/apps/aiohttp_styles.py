"""An aiohttp client using every way of connecting, sending and reading the shim must
record, one connection each, to the simulator at URL (with ?style=NAME). Run under
`rtcap run`; prints the aiohttp version it used. The simulator closes a session (1000,
"done") on the response that follows an input_audio_buffer.clear, and drops it (no close
frame) on a response.create whose metadata says drop=yes."""

import asyncio
import json
import socket
import sys

import aiohttp

URL = sys.argv[1]
CREATE = json.dumps({"type": "response.create"})
CLEAR = json.dumps({"type": "input_audio_buffer.clear"})
UPDATE = {"type": "session.update", "session": {"type": "realtime", "instructions": "Be brief."}}
DROP = {"type": "response.create", "response": {"metadata": {"drop": "yes"}}}


def url(style: str) -> str:
    return f"{URL}/v1/realtime?model=gpt-realtime&style={style}"


async def awaited(session: aiohttp.ClientSession) -> None:
    ws = await session.ws_connect(url("awaited"), headers={"Authorization": "Bearer sk-aiohttp-canary-1234"})
    assert json.loads(await ws.receive_str())["type"] == "session.created"
    await ws.send_str(CREATE)
    while (await ws.receive_json())["type"] != "response.done":
        pass
    await ws.ping(b"are you there")  # aiohttp's own ping: answered, never recorded
    await ws.close()  # the client closes: 1000


async def context_manager(session: aiohttp.ClientSession) -> None:
    async with session.ws_connect(url("context"), protocols=("realtime",), heartbeat=0.05) as ws:
        assert ws.protocol == "realtime"
        assert (await ws.receive()).type == aiohttp.WSMsgType.TEXT
        await ws.send_bytes(b"\x00\x01 binary")
        assert (await ws.receive_json())["type"] == "error"
        await ws.send_json(UPDATE)
        assert (await ws.receive_json())["type"] == "session.updated"

        async def later() -> None:
            # While the app reads, long enough for aiohttp's heartbeat to ping a few times
            # (aiohttp 3.9 sees the pong only inside receive).
            await asyncio.sleep(0.2)
            await ws.send_str(CLEAR)
            await ws.send_str(CREATE)

        task = asyncio.create_task(later())
        async for message in ws:  # ends when the server closes
            assert json.loads(message.data)["type"]
        await task
        assert ws.close_code == 1000


async def dropped(session: aiohttp.ClientSession) -> None:
    async with session.ws_connect(url("dropped")) as ws:
        await ws.receive()
        await ws.send_json(DROP)
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break


async def rejected(session: aiohttp.ClientSession) -> None:
    try:
        await session.ws_connect(f"{URL}/rejected")
    except aiohttp.WSServerHandshakeError as e:
        assert e.status == 404


async def unreachable(session: aiohttp.ClientSession) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        await session.ws_connect(f"ws://127.0.0.1:{port}/v1/realtime?style=unreachable")
    except aiohttp.ClientConnectorError:
        pass


async def main() -> None:
    async with aiohttp.ClientSession() as session:
        for style in (awaited, context_manager, dropped, rejected, unreachable):
            await style(session)
    print(aiohttp.__version__)


asyncio.run(main())
