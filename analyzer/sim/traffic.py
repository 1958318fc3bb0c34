"""Seeded, varied voice-agent traffic, for the demo and the precursor tests.

Every session updates its session with decoy settings and a tool, then runs voice turns:
audio appends of varied lengths, sometimes an input_audio_buffer.clear, sometimes one long
chunk, sometimes a burst of tiny appends, and a response.create whose fields vary freely
(tool_choice: auto, none, required, or an object naming the tool; metadata). A tool call is
answered with its output and a new response. Which of these the simulator punishes is up
to its fault rules.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from recorder.proxy import RecordingProxy
from recorder.serving import ServerThread, serve_until_stopped

from .simulator import RunningSimulator, Simulator

VOICES = ["alloy", "echo", "shimmer", "verse"]
TOPICS = ["billing", "weather", "orders", "travel", "support"]
INSTRUCTIONS = ["Be brief.", "Be friendly.", "Answer in English.", "Keep it short and kind."]
TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TOOL_CHOICES: list[Any] = ["auto", "none", "required", {"type": "function", "name": "get_weather"}]


def tone(ms: int) -> str:
    """Loud PCM16 audio of ``ms`` milliseconds, base64."""
    return base64.b64encode(b"\x00\x30" * 24 * ms).decode()


def session_update(rng: random.Random) -> dict[str, Any]:
    """A GA session.update with decoy settings and the tool."""
    return {
        "type": "realtime",
        "instructions": rng.choice(INSTRUCTIONS),
        "tools": [TOOL],
        "audio": {"input": {"turn_detection": None}, "output": {"voice": rng.choice(VOICES)}},
    }


def turn_events(rng: random.Random) -> list[dict[str, Any]]:
    """The client events of one voice turn, ending with its response.create."""
    events: list[dict[str, Any]] = []
    for _ in range(rng.randint(2, 4)):
        events.append({"type": "input_audio_buffer.append", "audio": tone(rng.choice([100, 150, 200, 300]))})
    if rng.random() < 0.2:
        events.append({"type": "input_audio_buffer.append", "audio": tone(600)})
    if rng.random() < 0.2:
        events += [{"type": "input_audio_buffer.append", "audio": tone(20)} for _ in range(40)]
    if rng.random() < 0.2:
        events.append({"type": "input_audio_buffer.clear"})
        events.append({"type": "input_audio_buffer.append", "audio": tone(200)})
    events.append({"type": "input_audio_buffer.commit"})
    options = {"tool_choice": rng.choice(TOOL_CHOICES), "metadata": {"topic": rng.choice(TOPICS)}}
    events.append({"type": "response.create", "response": options})
    return events


async def _session(url: str, rng: random.Random) -> None:
    async with connect(url, max_size=None) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "session.update", "session": session_update(rng)}))
        try:
            for _ in range(rng.randint(3, 6)):
                for event in turn_events(rng):
                    await ws.send(json.dumps(event))
                done = await _until_done(ws)
                output = (done.get("response") or {}).get("output") or []
                if output and output[0].get("type") == "function_call":
                    result = {
                        "type": "function_call_output",
                        "call_id": output[0]["call_id"],
                        "output": '{"celsius": 21}',
                    }
                    await ws.send(json.dumps({"type": "conversation.item.create", "item": result}))
                    await ws.send(json.dumps({"type": "response.create", "response": {"tool_choice": "auto"}}))
                    await _until_done(ws)
        except ConnectionClosed:
            return


async def _until_done(ws: Any) -> dict[str, Any]:
    while True:
        event = json.loads(await ws.recv())
        if event["type"] == "response.done":
            return event


async def drive(url: str, sessions: int, seed: int, parallel: int) -> None:
    """Run ``sessions`` seeded sessions against ``url``, ``parallel`` at a time."""
    gate = asyncio.Semaphore(parallel)

    async def one(n: int) -> None:
        async with gate:
            await _session(url, random.Random(f"{seed}/{n}"))

    await asyncio.gather(*(one(n) for n in range(sessions)))


def proxied(simulator_url: str, root: Path, labels: dict[str, str]) -> ServerThread:
    """A recording proxy to the simulator, in a thread, recording into ``root``."""
    proxy = RecordingProxy(simulator_url, root, labels=labels, log=lambda line: None)
    return ServerThread(
        lambda ready, stop: serve_until_stopped(proxy.serve("127.0.0.1", 0), lambda u: u, ready=ready, stop=stop)
    ).start()


def record(root: Path, faults: list[str], *, sessions: int = 60, seed: int = 0, parallel: int = 8) -> None:
    """Record ``sessions`` varied sessions into ``root`` through the proxy, from a
    simulator failing by ``faults`` (fast: the simulator runs at speed 1000)."""
    simulator = RunningSimulator(Simulator(faults, speed=1000, seed=seed)).start()
    relay = proxied(simulator.url, root, {"corpus": "precursors"})
    try:
        asyncio.run(drive(relay.url + "/v1/realtime?model=gpt-realtime", sessions, seed, parallel))
    finally:
        relay.stop()
        simulator.stop()
