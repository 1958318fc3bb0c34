"""Seeded, varied voice-agent traffic, for the demo and the precursor tests.

Every session updates its session with decoy settings and a tool, then runs voice turns:
audio appends of varied lengths, sometimes an input_audio_buffer.clear, sometimes one long
chunk, sometimes a burst of tiny appends, and a response.create whose fields vary freely
(tool_choice: auto, none, required, or an object naming the tool; metadata). A tool call is
answered with its output and a new response. Which of these the simulator punishes is up
to its fault rules.

What a client sends is :func:`client`, plain code; two drivers carry it out.
:func:`record` runs it over real sockets, through the recording proxy to a simulator
server. :func:`record_direct` runs it against :class:`~analyzer.sim.simsession.SimSession`
on a fake clock (:mod:`analyzer.sim.direct`), recording what the proxy would have: the same
kind of captures in a fraction of the time, for tests that are not about sockets.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import json
import random
from collections.abc import Generator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from recorder import events
from recorder.proxy import RecordingProxy
from recorder.serving import ServerThread, serve_until_stopped
from recorder.session import SessionRecorder

from .direct import DROPPED, DirectConnection
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


def session_update(rng: random.Random, vad: bool = False) -> dict[str, Any]:
    """A GA session.update with decoy settings and the tool; turn detection off unless
    ``vad`` (then the server's VAD, as a session starts with it, ends each turn)."""
    audio_input: dict[str, Any] = {} if vad else {"turn_detection": None}
    return {
        "type": "realtime",
        "instructions": rng.choice(INSTRUCTIONS),
        "tools": [TOOL],
        "audio": {"input": audio_input, "output": {"voice": rng.choice(VOICES)}},
    }


def silence(ms: int) -> str:
    """PCM16 silence of ``ms`` milliseconds, base64."""
    return base64.b64encode(b"\x00\x00" * 24 * ms).decode()


def vad_turn(rng: random.Random) -> list[dict[str, Any]]:
    """The client events of one voice turn under server VAD: speech, then enough silence
    for the server to end the turn, commit it and answer; no commit, no response.create."""
    turn = [{"type": "input_audio_buffer.append", "audio": tone(rng.choice([100, 200, 300]))} for _ in range(3)]
    return turn + [{"type": "input_audio_buffer.append", "audio": silence(100)} for _ in range(6)]


DECOY = {"type": "output_audio_buffer.clear"}
"""What a client with ``late`` set sends more often as a session goes on."""


def turn_events(rng: random.Random, turn: int = 0, late: float = 0.0) -> list[dict[str, Any]]:
    """The client events of one voice turn, ending with its response.create. With ``late``,
    the turn also sends :data:`DECOY` with probability ``late * turn`` (capped at 1): a
    habit that grows with the session and causes nothing by itself."""
    out: list[dict[str, Any]] = []
    if late and rng.random() < min(1.0, late * turn):
        out.append(dict(DECOY))
    return out + _voice_turn(rng)


def _voice_turn(rng: random.Random) -> list[dict[str, Any]]:
    turn: list[dict[str, Any]] = []
    for _ in range(rng.randint(2, 4)):
        turn.append({"type": "input_audio_buffer.append", "audio": tone(rng.choice([100, 150, 200, 300]))})
    if rng.random() < 0.2:
        turn.append({"type": "input_audio_buffer.append", "audio": tone(600)})
    if rng.random() < 0.2:
        turn += [{"type": "input_audio_buffer.append", "audio": tone(20)} for _ in range(40)]
    if rng.random() < 0.2:
        turn.append({"type": "input_audio_buffer.clear"})
        turn.append({"type": "input_audio_buffer.append", "audio": tone(200)})
    turn.append({"type": "input_audio_buffer.commit"})
    options = {"tool_choice": rng.choice(TOOL_CHOICES), "metadata": {"topic": rng.choice(TOPICS)}}
    turn.append({"type": "response.create", "response": options})
    return turn


Client = Generator[list[dict[str, Any]], dict[str, Any], None]


def client(rng: random.Random, turns: tuple[int, int] = (3, 6), late: float = 0.0, vad: bool = False) -> Client:
    """The client's side of one seeded session, after ``session.created``: between
    ``turns[0]`` and ``turns[1]`` voice turns (see :func:`turn_events` for ``late``; with
    ``vad``, :func:`vad_turn` instead). Each value it yields is the events to send at once;
    the driver then waits for the next ``response.done`` and sends it in (the function call
    in it gets its output)."""
    batch = [{"type": "session.update", "session": session_update(rng, vad)}]
    for turn in range(rng.randint(*turns)):
        done = yield batch + (vad_turn(rng) if vad else turn_events(rng, turn, late))
        batch = []
        output = (done.get("response") or {}).get("output") or []
        if output and output[0].get("type") == "function_call":
            result = {"type": "function_call_output", "call_id": output[0]["call_id"], "output": '{"celsius": 21}'}
            yield [
                {"type": "conversation.item.create", "item": result},
                {"type": "response.create", "response": {"tool_choice": "auto"}},
            ]


def is_response_done(event: dict[str, Any]) -> bool:
    """Whether a server event ends a response (what the client waits for)."""
    return events.event_type(event) == events.RESPONSE_DONE


# -- over sockets ------------------------------------------------------------------------


async def _session(url: str, rng: random.Random) -> None:
    async with connect(url, max_size=None) as ws:
        await ws.recv()
        script = client(rng)
        try:
            batch = next(script)
            while True:
                for event in batch:
                    await ws.send(json.dumps(event))
                batch = script.send(await _until_done(ws))
        except (ConnectionClosed, StopIteration):
            return


async def _until_done(ws: Any) -> dict[str, Any]:
    while True:
        event = json.loads(await ws.recv())
        if is_response_done(event):
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


# -- without sockets -----------------------------------------------------------------------

DIRECT_URL = "ws://simulator.invalid/v1/realtime?model=gpt-realtime"
"""The URL direct sessions are recorded as having: the simulator's GA route."""


def record_direct(
    root: Path,
    faults: list[str],
    *,
    sessions: int = 60,
    seed: int = 0,
    labels: dict[str, str] | None = None,
    url: str = DIRECT_URL,
    turns: tuple[int, int] = (3, 6),
    late: float = 0.0,
    think: float = 0.0,
    reconnect: float | None = None,
    conversation: bool = True,
    log: list[Connection] | None = None,
    vad: bool = False,
    audio: bool = True,
) -> None:
    """Record ``sessions`` varied sessions into ``root`` as :func:`record` does, without
    a socket: each runs on a fake clock in simulated real time (a response takes its
    seconds on the clock, none on the wall), and is recorded as the proxy records (recorder
    ``proxy``). With the same seed and faults that do not look at time, the sessions say
    what :func:`record` with ``parallel=1`` has them say. ``turns`` and ``late`` shape the
    client (see :func:`client`); with ``think``, the user pauses up to that many seconds
    before each turn after the first (drawn apart, so the client's script is unchanged).

    With ``reconnect`` (seconds), ``sessions`` is a number of conversations: when the
    server drops a connection, the client opens a new one that many seconds later, sends
    its ``session.update`` again, repeats the turn the drop cut short and goes on. The
    connections are then laid out one after another on the wall clock (a minute apart
    between conversations), and each carries the label ``conversation=<seed>/<n>`` unless
    ``conversation`` is false; the client gives up after :data:`MAX_RECONNECTS`. ``log``
    receives a :class:`Connection` for every connection made: the simulator's own account
    of its reconnects and its timing. With ``vad``, the client leaves turn detection on and
    lets the server's VAD end its turns (:func:`vad_turn`). Without ``audio``, the
    captures keep audio lengths but not the audio, as ``--no-audio`` records them."""
    simulator = Simulator(faults, seed=seed)
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    wall = dt.datetime.now(dt.UTC)
    for n in range(sessions):
        tags = dict(labels or {"corpus": "precursors"})
        if reconnect is not None and conversation:
            tags[CONVERSATION_LABEL] = f"{seed}/{n}"
        pauses = random.Random(f"{seed}/{n}/think") if think else None
        script = client(random.Random(f"{seed}/{n}"), turns, late, vad)
        previous: Connection | None = None
        for attempt in range(MAX_RECONNECTS + 1):
            session = simulator.new_session(path, (), now=0.0)
            recorder = SessionRecorder.create(
                root, url=url, request_headers=[], recorder="proxy", labels=tags, audio=audio
            )
            connection = DirectConnection(session, recorder)
            connection.open(wall if reconnect is not None else None)
            previous = Connection(recorder.session_id, n, previous.session_id if previous else None, connection, wall)
            if log is not None:
                log.append(previous)
            resend = _direct_session(connection, script, pauses, think, reconnect is not None)
            if reconnect is None:
                break
            wall = previous.started_at + dt.timedelta(seconds=connection.now)
            if resend is None or attempt == MAX_RECONNECTS:
                wall += dt.timedelta(seconds=60)
                break
            wall += dt.timedelta(seconds=reconnect)
            script = _again(resend, script)


@dataclasses.dataclass
class Connection:
    """One connection :func:`record_direct` made: its recorded session, the conversation it
    belongs to, the session it reconnected after (``None`` for a conversation's first),
    the simulator's side of it and when it started on the wall clock."""

    session_id: str
    conversation: int
    follows: str | None
    connection: DirectConnection
    started_at: dt.datetime


MAX_RECONNECTS = 3
"""How many times a client reconnects in one conversation before it gives up."""
CONVERSATION_LABEL = "conversation"
"""The label :func:`record_direct` gives every connection of one conversation."""


def _again(batch: list[dict[str, Any]], script: Client) -> Client:
    """A client's script after a reconnect: ``batch`` first, then the rest of ``script``."""
    done = yield batch
    while True:
        try:
            following = script.send(done)
        except StopIteration:
            return
        done = yield following


def _direct_session(
    connection: DirectConnection, script: Client, pauses: random.Random | None, think: float, reconnects: bool = False
) -> list[dict[str, Any]] | None:
    """Run ``script`` on one connection. With ``reconnects``, a connection the server
    dropped returns what to send on the next one (the session's settings and the batch
    that was cut short); otherwise, and when the script ends, ``None``."""
    settings: list[dict[str, Any]] = []
    batch: list[dict[str, Any]] = []
    try:
        if connection.wait_for(lambda event: True) is None:  # session.created
            return None
        batch = next(script)
        while True:
            if not settings:
                settings = [event for event in batch if event.get("type") == "session.update"][:1]
            for event in batch:
                connection.send(json.dumps(event))
            done = connection.wait_for(is_response_done)
            if done is None:
                if reconnects and connection.close_code == DROPPED:
                    return settings + [event for event in batch if event.get("type") != "session.update"]
                return None
            batch = script.send(done)
            if pauses is not None:
                connection.idle(pauses.uniform(0, think))
    except StopIteration:
        return None
    finally:
        connection.close()
