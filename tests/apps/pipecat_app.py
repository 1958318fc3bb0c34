"""Pipecat's OpenAI realtime service doing one turn with a tool call against the simulator at
URL: a pipeline of the context aggregators around the service, as Pipecat's realtime examples
build it, with no transport (the turn is started with LLMRunFrame). The tool is registered
with register_function; its result goes back through the service, which asks for the next
reply. Run under `rtcap run` with the venv made by `make test`; prints the tool called and
whether the final reply had text."""

import asyncio
import sys

from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import EndFrame, LLMFullResponseEndFrame, LLMRunFrame, LLMTextFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import PipelineRunner
from pipecat.pipeline.task import PipelineTask
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.openai.realtime import events
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService

URL, KEY = sys.argv[1], sys.argv[2]
called: list[str] = []
text: list[str] = []


async def get_weather(params) -> None:
    called.append(params.function_name)
    await params.result_callback({"conditions": "sunny"})


class Watch(FrameProcessor):
    """Ends the pipeline after the reply that follows the tool's result."""

    def __init__(self) -> None:
        super().__init__()
        self.task: PipelineTask | None = None

    async def process_frame(self, frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMTextFrame) and called:
            text.append(frame.text)
        if isinstance(frame, LLMFullResponseEndFrame) and called and text:
            await self.task.queue_frame(EndFrame())
        await self.push_frame(frame, direction)


async def main() -> None:
    weather = FunctionSchema(
        name="get_weather",
        description="The weather at a location.",
        properties={"location": {"type": "string"}},
        required=["location"],
    )
    llm = OpenAIRealtimeLLMService(
        api_key=KEY,
        base_url=URL + "/v1/realtime",
        settings=OpenAIRealtimeLLMService.Settings(
            session_properties=events.SessionProperties(output_modalities=["text"], instructions="Weather only.")
        ),
    )
    llm.register_function("get_weather", get_weather)
    context = LLMContext([{"role": "user", "content": "What is the weather in Paris?"}], ToolsSchema([weather]))
    aggregators = LLMContextAggregatorPair(context)
    watch = Watch()
    task = PipelineTask(Pipeline([aggregators.user(), llm, watch, aggregators.assistant()]))
    watch.task = task
    await task.queue_frame(LLMRunFrame())
    await asyncio.wait_for(PipelineRunner(handle_sigint=False).run(task), 30)
    print(",".join(called))
    print(bool(text))


asyncio.run(main())
