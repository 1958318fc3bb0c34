"""``rtcap simulate``: a realtime server to test against, with faults on demand.

A real WebSocket server (websockets) that speaks the OpenAI and Azure realtime protocols
(see :mod:`analyzer.sim.simsession` for what a session does) and fails in the ways real
servers do when fault rules (:mod:`analyzer.sim.faults`) say so. Runs are reproducible: each
session's random generator is seeded from ``seed`` and the session's number, and only the
server's ``sess_`` session id differs from run to run (it names one session for good).

For tests, :func:`running` starts one on port 0 in a thread of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from recorder import events
from recorder.capture import RECEIVED, SENT
from recorder.serving import DEFAULT_PORTS, ServerThread, serve_until_stopped
from recorder.session import SessionRecorder, now_ns

from .faults import Rule, parse_rules
from .simsession import Close, Drop, SimSession, Stall, StartResponse, Step

DEFAULT_PORT = DEFAULT_PORTS["simulate"]


@dataclasses.dataclass
class SessionLog:
    """What one connection looked like from the simulator (kept with ``keep_log``)."""

    path: str
    headers: Any
    subprotocol: str | None
    dialect: str
    received: list[str | bytes] = dataclasses.field(default_factory=list)
    sent: list[str | bytes] = dataclasses.field(default_factory=list)
    close_code: int | None = None
    close_reason: str | None = None
    done: threading.Event = dataclasses.field(default_factory=threading.Event)


def route(path: str) -> tuple[str, str] | None:
    """``(dialect, model)`` for a realtime URL path of OpenAI or Azure, else ``None``.

    ``/v1/realtime?model=M`` (OpenAI), ``/openai/v1/realtime?model=D`` (Azure GA) and
    ``/openai/realtime?api-version=V&deployment=D`` (Azure preview, the beta dialect)."""
    parts = urlsplit(path)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    route_path = parts.path.rstrip("/")
    if route_path in ("/v1/realtime", "/openai/v1/realtime", "/realtime"):
        return "ga", query.get("model") or query.get("deployment") or "gpt-realtime"
    if route_path == "/openai/realtime" and "api-version" in query:
        return "beta", query.get("deployment") or query.get("model") or "gpt-4o-realtime-preview"
    return None


class Simulator:
    """The simulated realtime server; ``serve(host, port)`` is its websockets server."""

    def __init__(
        self,
        faults: Iterable[str | Rule] = (),
        *,
        seed: int = 0,
        speed: float = 1.0,
        max_session_s: float = 1800,
        api_key: str | None = None,
        record: bool = False,
        captures: Path | None = None,
        keep_log: bool = False,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.faults = [f if isinstance(f, Rule) else parse_rules([f])[0] for f in faults]
        self.seed = seed
        self.speed = speed
        self.max_session_s = max_session_s
        self.api_key = api_key
        self.record = record
        self.captures = captures
        self.keep_log = keep_log
        self.sessions: list[SessionLog] = []
        self.log = log or (lambda line: None)
        self._count = 0

    def serve(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> Any:
        """The websockets server (an async context manager) listening on ``host:port``."""
        return serve(
            self._handle,
            host,
            port,
            process_request=self._check,
            select_subprotocol=_select_subprotocol,
            max_size=None,
            compression=None,
        )

    def _check(self, connection: ServerConnection, request: Request) -> Response | None:
        if route(request.path) is None:
            return _json_response(
                connection, 404, "invalid_request_error", "not_found", f"Unknown realtime endpoint: {request.path}"
            )
        if self.api_key is not None:
            given = request.headers.get("api-key") or request.headers.get("Authorization", "").removeprefix("Bearer ")
            protocols = ",".join(request.headers.get_all("Sec-WebSocket-Protocol"))
            given = given or next(
                (p.strip()[24:] for p in protocols.split(",") if p.strip().startswith("openai-insecure-api-key.")), ""
            )
            if given != self.api_key:
                masked = f"{given[:3]}***{given[-4:]}" if len(given) > 8 else "***"
                message = f"Incorrect API key provided: {masked}. You can find your API key at https://platform.openai.com/account/api-keys."
                return _json_response(connection, 401, "invalid_request_error", "invalid_api_key", message)
        return None

    def new_session(self, path: str, headers: Iterable[tuple[str, str]], now: float) -> SimSession:
        """The session of a new connection to ``path`` (a realtime URL's path and query)
        with these handshake headers: dialect and model from them, random generator
        seeded from ``seed`` and the connection's number, ``now`` on the caller's clock."""
        _, model = route(path) or ("ga", "gpt-realtime")
        index = self._count
        self._count += 1
        return SimSession(
            dialect=events.dialect(path, headers),
            model=model,
            rng=random.Random(f"{self.seed}/{index}"),
            faults=self.faults,
            now=now,
            max_session_s=self.max_session_s,
            expires_at=int(time.time() + self.max_session_s),
        )

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        request = ws.request
        session = self.new_session(request.path, request.headers.raw_items(), time.monotonic())
        log = SessionLog(request.path, request.headers, ws.subprotocol, session.dialect)
        if self.keep_log:
            self.sessions.append(log)
        recorder = self._recorder(ws, request) if self.record else None
        connection = _Connection(ws, session, log if self.keep_log else None, recorder, self.speed)
        self.log(f"session {session.session_id} opened ({session.dialect}, {session.model})")
        try:
            await connection.run(self.max_session_s)
        finally:
            log.close_code, log.close_reason = ws.close_code, ws.close_reason
            log.done.set()
            if recorder is not None:
                recorder.end(now_ns(), closed_by=connection.closed_by, code=ws.close_code, reason=ws.close_reason)
            self.log(f"session {session.session_id} closed ({ws.close_code})")

    def _recorder(self, ws: ServerConnection, request: Request) -> SessionRecorder:
        host = request.headers.get("Host", "127.0.0.1")
        recorder = SessionRecorder.create(
            self.captures or Path("captures").absolute(),
            url=f"ws://{host}{request.path}",
            request_headers=request.headers.raw_items(),
            recorder="simulator",
        )
        response = ws.response.headers.raw_items() if ws.response else ()
        recorder.start(now_ns(), wall=dt.datetime.now(dt.UTC), response_headers=response, subprotocol=ws.subprotocol)
        return recorder


class _Done(Exception):
    """The simulator ended the connection."""


class _Connection:
    """Runs one session: replies to client events, streams responses, expires."""

    def __init__(
        self,
        ws: ServerConnection,
        session: SimSession,
        log: SessionLog | None,
        recorder: SessionRecorder | None,
        speed: float,
    ) -> None:
        self.ws = ws
        self.session = session
        self.log = log
        self.recorder = recorder
        self.speed = speed
        self.closed_by: str | None = "client"
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self, max_session_s: float) -> None:
        expiry = asyncio.get_running_loop().call_later(max_session_s, self._expire)
        try:
            await self._steps(self.session.opening())
            async for message in self.ws:
                if self.log is not None:
                    self.log.received.append(message)
                if self.recorder is not None:
                    self.recorder.message(SENT, message, now_ns())
                await self._steps(self.session.receive(message, time.monotonic()))
        except (_Done, ConnectionClosed):
            pass
        finally:
            expiry.cancel()
            for task in self.tasks:
                task.cancel()

    def _expire(self) -> None:
        self._spawn(self._quietly(self.session.expire()))

    async def _quietly(self, steps: Iterable[Step]) -> None:
        """Run steps from a task of their own, where the connection ending is no error."""
        with contextlib.suppress(_Done, ConnectionClosed):
            await self._steps(steps)

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _steps(self, steps: Iterable[Step]) -> None:
        for step in steps:
            await self._do(step)

    async def _do(self, step: Step) -> None:
        if isinstance(step, StartResponse):
            self._spawn(self._quietly(self.session.stream(step.response)))
        elif isinstance(step, Stall):
            await asyncio.sleep(step.seconds / self.speed)
        elif isinstance(step, Close):
            self.closed_by = "server"
            await self.ws.close(step.code, step.reason)
            raise _Done
        elif isinstance(step, Drop):
            self.closed_by = "server"
            self.ws.transport.abort()
            raise _Done
        else:
            if step.delay:
                await asyncio.sleep(step.delay / self.speed)
            text = json.dumps(step.event, separators=(",", ":"))
            if self.log is not None:
                self.log.sent.append(text)
            if self.recorder is not None:
                self.recorder.message(RECEIVED, text, now_ns())
            await self.ws.send(text)


def _select_subprotocol(connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    for protocol in offered:
        if protocol == "realtime":
            return protocol
    return None


def _json_response(connection: ServerConnection, status: int, kind: str, code: str, message: str) -> Response:
    body = json.dumps({"error": {"type": kind, "code": code, "message": message, "param": None}})
    response = connection.respond(status, body)
    response.headers["Content-Type"] = "application/json"
    response.headers["x-request-id"] = f"req_{random.getrandbits(64):016x}"
    return response


async def run_simulator(
    simulator: Simulator,
    host: str,
    port: int,
    *,
    ready: Callable[[str], None],
    stop: asyncio.Future[None] | None = None,
) -> None:
    """Serve until ``stop`` resolves (or SIGINT/SIGTERM); ``ready`` gets the first line."""
    await serve_until_stopped(simulator.serve(host, port), lambda url: f"rtcap simulate: {url}", ready=ready, stop=stop)


class RunningSimulator(ServerThread):
    """A simulator serving on 127.0.0.1, port 0, in a thread of its own."""

    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator
        super().__init__(lambda ready, stop: run_simulator(simulator, "127.0.0.1", 0, ready=ready, stop=stop))

    @property
    def sessions(self) -> list[SessionLog]:
        return self.simulator.sessions


@contextlib.contextmanager
def running(*faults: str, **options: Any) -> Iterator[RunningSimulator]:
    """``with running("fail nth=2", seed=1, speed=1000) as sim:`` serves ``sim.url``."""
    simulator = RunningSimulator(Simulator(faults, keep_log=options.pop("keep_log", True), **options))
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.stop()
