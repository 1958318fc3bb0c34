"""recorder.install() and recorder.uninstall() around aiohttp, already imported, in one
process: python aiohttp_install.py URL CAPTURES. Connections made while installed are
recorded, aiohttp is restored exactly as it was after, and later connections are not.
Prints "ok"."""

import asyncio
import sys

import aiohttp
import aiohttp.client
from aiohttp.client_ws import ClientWebSocketResponse
from aiohttp.http import WebSocketWriter

import recorder

URL, CAPTURES = sys.argv[1], sys.argv[2]
QUEUE = "WebSocketDataQueue" if "WebSocketDataQueue" in vars(aiohttp.client) else "FlowControlDataQueue"
SEND = "send_frame" if "send_frame" in vars(WebSocketWriter) else "_send_frame"


def hooked() -> list:
    return [
        vars(aiohttp.ClientSession)["_ws_connect"],
        vars(aiohttp.client)[QUEUE],
        vars(WebSocketWriter)[SEND],
        vars(ClientWebSocketResponse)["close"],
    ]


async def talk(run: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{URL}/v1/realtime?model=gpt-realtime&run={run}") as ws:
            await ws.receive()
            await ws.send_str("hello")
            assert (await ws.receive_json())["error"]["code"] == "invalid_json"


before = hooked()
with recorder.recording(captures=CAPTURES, labels={"via": "api"}):
    assert all(a is not b for a, b in zip(hooked(), before, strict=True))
    asyncio.run(talk("recorded"))
assert hooked() == before
asyncio.run(talk("not-recorded"))
print("ok")
