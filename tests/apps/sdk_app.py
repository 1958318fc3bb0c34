"""An app on the openai SDK: one async and one sync realtime session against URL, and
one through the openai-agents realtime model. Run under `rtcap run`."""

import asyncio
import base64
import sys

from openai import AsyncOpenAI, OpenAI

URL = sys.argv[1]
KEY = sys.argv[2]
AUDIO = base64.b64encode(bytes(range(256)) * 30).decode()


async def async_session() -> None:
    client = AsyncOpenAI(api_key=KEY, websocket_base_url=f"{URL}/v1")
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(session={"type": "realtime", "instructions": "Be brief."})
        await conn.input_audio_buffer.append(audio=AUDIO)
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        async for event in conn:
            if event.type == "response.done":
                break


def sync_session() -> None:
    client = OpenAI(api_key=KEY, websocket_base_url=f"{URL}/v1")
    with client.realtime.connect(model="gpt-realtime") as conn:
        conn.response.create()
        for event in conn:
            if event.type == "response.done":
                break


async def agents_session() -> None:
    from agents.realtime.openai_realtime import OpenAIRealtimeWebSocketModel

    done = asyncio.Event()

    class Listener:
        async def on_event(self, event) -> None:
            if getattr(event, "type", None) == "raw_server_event" and event.data.get("type") == "response.done":
                done.set()

    model = OpenAIRealtimeWebSocketModel()
    model.add_listener(Listener())
    await model.connect({"api_key": KEY, "url": f"{URL}/v1/realtime?model=gpt-realtime", "initial_model_settings": {}})
    from agents.realtime.model_inputs import RealtimeModelSendRawMessage

    await model.send_event(RealtimeModelSendRawMessage(message={"type": "response.create"}))
    await asyncio.wait_for(done.wait(), 10)
    await model.close()


asyncio.run(async_session())
sync_session()
if "--agents" in sys.argv:
    asyncio.run(agents_session())
print("ok")
