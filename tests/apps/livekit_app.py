"""LiveKit Agents' OpenAI realtime model (livekit-plugins-openai) doing one turn with a tool
call against the simulator at URL. The plugin's model needs no LiveKit room: its
RealtimeSession (model.session()) is driven directly, as an AgentSession drives it
(generate_reply, the generation's function stream, the tool's output through
update_chat_ctx, a second generate_reply), over its own aiohttp ws_connect. Run under
`rtcap run` with the venv `make test` makes; prints the tool called, then whether the
final reply had text."""

import asyncio
import sys

import aiohttp
from livekit.agents import function_tool, llm
from livekit.plugins import openai

URL, KEY = sys.argv[1], sys.argv[2]


@function_tool
async def get_weather(location: str) -> str:
    """The weather at a location."""
    return "sunny"


async def reply(session, **options) -> tuple[list, str]:
    generation = await session.generate_reply(**options)
    calls = []
    text = []

    async def messages() -> None:
        async for message in generation.message_stream:
            async for chunk in message.text_stream:
                text.append(chunk)

    async def functions() -> None:
        async for call in generation.function_stream:
            calls.append(call)

    await asyncio.gather(messages(), functions())
    return calls, "".join(text)


async def main() -> None:
    async with aiohttp.ClientSession() as http:
        model = openai.realtime.RealtimeModel(base_url=URL + "/v1", api_key=KEY, http_session=http, modalities=["text"])
        session = model.session()
        await session.update_instructions("You are a weather assistant.")
        await session.update_tools([get_weather])
        calls, _ = await reply(session, instructions="What is the weather in Paris?")
        [call] = calls
        print(call.name)
        context = session.chat_ctx.copy()
        context.items.append(call)
        context.items.append(
            llm.FunctionCallOutput(call_id=call.call_id, name=call.name, output="sunny", is_error=False)
        )
        await session.update_chat_ctx(context)
        _, text = await reply(session)
        print(bool(text))
        await session.aclose()
        await model.aclose()


asyncio.run(main())
