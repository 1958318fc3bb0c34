from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import serve

from analyzer.sim.simulator import RunningSimulator, Simulator
from recorder.proxy import RecordingProxy, run_proxy
from recorder.redact import Redactor
from recorder.serving import ServerThread, serve_until_stopped
from recorder.session import SessionRecorder, capture_path

PROXY_VARS = (
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "ALL_PROXY",
    "https_proxy",
    "http_proxy",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
)
REALTIME = "/v1/realtime?model=gpt-realtime"

# The files that take longest (a JVM, browsers, an S3 server, corpora, many CLI runs), slowest
# first. xdist hands whole files to its two workers in collection order (the Makefile turns
# its reordering by test count off), so a long file handed out last would leave one worker
# idle while the other finishes it.
SLOWEST_FIRST = (
    "test_precursors.py",
    "test_spark.py",
    "test_store.py",
    "test_confounds.py",
    "test_interrupts.py",
    "test_ui.py",
    "test_stacks.py",
    "test_analyzer.py",
    "test_sandbox.py",
    "test_shim.py",
    "test_damage.py",
    "test_page.py",
    "test_doctor.py",
    "test_paths.py",
    "test_replay.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole, in order


class ListSink:
    """A recorder's sink that keeps the records it is given, in memory."""

    def __init__(self) -> None:
        self.records: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.records.append(data)

    def close(self) -> None:
        self.closed = True

    def bytes(self) -> bytes:
        return b"".join(self.records)


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # websockets' connect honours HTTPS_PROXY; tests talk to loopback only.
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    for name in ("RTCAP_LABELS", "RTCAP_REDACT", "RTCAP_CAPTURES"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def start_simulator() -> Iterator[Any]:
    """Start `rtcap simulate` servers (fast, seeded, logging every message) on port 0."""
    started: list[RunningSimulator] = []

    def start(*faults: str, **options: Any) -> RunningSimulator:
        options.setdefault("speed", 1000)
        simulator = RunningSimulator(Simulator(faults, keep_log=True, **options)).start()
        started.append(simulator)
        return simulator

    yield start
    for simulator in started:
        simulator.stop()


@pytest.fixture
def simulator(start_simulator: Any) -> RunningSimulator:
    return start_simulator()


class ProxyThread(ServerThread):
    """``rtcap proxy`` in a thread of its own, listening on port 0."""

    def __init__(self, proxy: RecordingProxy) -> None:
        self.proxy = proxy
        self.lines: list[str] = []  # the lines the proxy prints: sessions opened and closed
        proxy.log = self.lines.append
        super().__init__(lambda ready, stop: run_proxy(proxy, "127.0.0.1", 0, ready=ready, stop=stop))

    def __enter__(self) -> ProxyThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@pytest.fixture
def captures(tmp_path: Path) -> Path:
    return tmp_path / "captures"


@pytest.fixture
def start_proxy(captures: Path) -> Iterator[Any]:
    started: list[ProxyThread] = []

    def start(upstream: str, **kwargs: Any) -> ProxyThread:
        redactor = Redactor(kwargs.pop("redact_headers", ()), kwargs.pop("redact_query", ()))
        thread = ProxyThread(RecordingProxy(upstream, kwargs.pop("captures", captures), redactor=redactor, **kwargs))
        started.append(thread.__enter__())
        return thread

    yield start
    for thread in started:
        thread.__exit__(None, None, None)


class CaptureMaker:
    """Writes capture files directly, as a recorder would, without a socket: for tests
    whose subject is what is in a capture, not how it got there."""

    URL = "wss://api.openai.com/v1/realtime?model=gpt-realtime"

    def __init__(self, root: Path) -> None:
        self.root = root

    def open(
        self,
        *,
        root: Path | None = None,
        url: str = URL,
        headers: Iterable[tuple[str, str]] = (),
        recorder: str = "proxy",
        labels: dict[str, str] | None = None,
    ) -> SessionRecorder:
        """A recorder whose capture file exists and holds its header (time zero is 0)."""
        session = SessionRecorder.create(
            root or self.root, url=url, request_headers=list(headers), recorder=recorder, labels=labels
        )
        session.start(0)
        return session

    def __call__(
        self,
        messages: Iterable[tuple[float, int, dict[str, Any] | str | bytes]],
        *,
        end_code: int = 1000,
        closed_by: str = "client",
        **options: Any,
    ) -> Path:
        """A whole capture: ``(seconds, SENT|RECEIVED, event or data)`` in order, then an
        end record just after the last message."""
        session = self.open(**options)
        t_ns = 0
        for seconds, direction, data in messages:
            t_ns = round(seconds * 1e9)
            session.message(direction, data if isinstance(data, str | bytes) else json.dumps(data), t_ns)
        session.end(t_ns + 1, closed_by=closed_by, code=end_code)
        return capture_path(options.get("root") or self.root, session.session_id)


@pytest.fixture
def make_capture(captures: Path) -> CaptureMaker:
    """Write captures under the test's capture root (see :class:`CaptureMaker`)."""
    return CaptureMaker(captures)


class EchoServer(ServerThread):
    """A loopback server that takes any path and any payload: it sends what ``greet``
    makes of the request, then echoes every message back."""

    def __init__(self, greet: Any = None) -> None:
        self.requests: list[Any] = []

        async def echo(ws: Any) -> None:
            self.requests.append(ws.request)
            for message in greet(ws.request) if greet else []:
                await ws.send(message)
            async for message in ws:
                await ws.send(message)

        super().__init__(
            lambda ready, stop: serve_until_stopped(
                serve(echo, "127.0.0.1", 0, max_size=None, compression=None),
                lambda url: f"echo: {url}",
                ready=ready,
                stop=stop,
            )
        )

    def __enter__(self) -> EchoServer:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium driven by Playwright, one browser for a test module (Playwright's
    own browser download is unreachable; .ci/run installs chromium)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium)
        yield launched
        launched.close()
