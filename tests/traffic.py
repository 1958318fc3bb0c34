"""Seeded, varied voice-agent traffic recorded through `rtcap proxy` from the simulator:
the corpora the precursor tests (and anyone trying rtcap) analyse.

Every session updates its session with decoy settings, then runs voice turns: audio
appends of varied lengths, sometimes an input_audio_buffer.clear, sometimes one long chunk,
sometimes a burst of tiny appends, and a response.create whose decoy fields vary freely
(tool_choice, metadata). Which of these the simulator punishes is up to its fault rules.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from analyzer.simulator import RunningSimulator, Simulator
from recorder.proxy import RecordingProxy
from recorder.serving import ServerThread, serve_until_stopped

VOICES = ["alloy", "echo", "shimmer", "verse"]
TOPICS = ["billing", "weather", "orders", "travel", "support"]
INSTRUCTIONS = ["Be brief.", "Be friendly.", "Answer in English.", "Keep it short and kind."]


def tone(ms: int) -> str:
    """Loud PCM16 audio of ``ms`` milliseconds, base64."""
    return base64.b64encode(b"\x00\x30" * 24 * ms).decode()


async def _session(url: str, rng: random.Random) -> None:
    async with connect(url, max_size=None) as ws:
        await ws.recv()
        update = {
            "type": "realtime",
            "instructions": rng.choice(INSTRUCTIONS),
            "audio": {"input": {"turn_detection": None}, "output": {"voice": rng.choice(VOICES)}},
        }
        await ws.send(json.dumps({"type": "session.update", "session": update}))
        for _ in range(rng.randint(3, 6)):
            for _ in range(rng.randint(2, 4)):
                await ws.send(
                    json.dumps({"type": "input_audio_buffer.append", "audio": tone(rng.choice([100, 150, 200, 300]))})
                )
            if rng.random() < 0.2:
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": tone(600)}))
            if rng.random() < 0.2:
                for _ in range(40):
                    await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": tone(20)}))
            if rng.random() < 0.2:
                await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": tone(200)}))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            options = {
                "tool_choice": rng.choice(["auto", "none", "required"]),
                "metadata": {"topic": rng.choice(TOPICS)},
            }
            await ws.send(json.dumps({"type": "response.create", "response": options}))
            try:
                while True:
                    event = json.loads(await ws.recv())
                    if event["type"] == "response.done":
                        break
            except ConnectionClosed:
                return


async def _drive(url: str, sessions: int, seed: int, parallel: int) -> None:
    gate = asyncio.Semaphore(parallel)

    async def one(n: int) -> None:
        async with gate:
            await _session(url, random.Random(f"{seed}/{n}"))

    await asyncio.gather(*(one(n) for n in range(sessions)))


def record(root: Path, faults: list[str], *, sessions: int = 60, seed: int = 0, parallel: int = 8) -> None:
    """Record ``sessions`` varied sessions into ``root`` through the proxy, from a
    simulator failing by ``faults`` (fast: the simulator runs at speed 1000)."""
    simulator = RunningSimulator(Simulator(faults, speed=1000, seed=seed)).start()
    proxy = RecordingProxy(simulator.url, root, labels={"corpus": "precursors"}, log=lambda line: None)
    relay = ServerThread(
        lambda ready, stop: serve_until_stopped(proxy.serve("127.0.0.1", 0), lambda u: u, ready=ready, stop=stop)
    )
    relay.start()
    try:
        asyncio.run(_drive(relay.url + "/v1/realtime?model=gpt-realtime", sessions, seed, parallel))
    finally:
        relay.stop()
        simulator.stop()
