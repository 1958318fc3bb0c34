"""A soak run of ``rtcap proxy``: many voice-like sessions at once, for a minute.

``--sessions`` (200) WebSocket sessions each send an ``input_audio_buffer.append`` of
20 ms of PCM16 audio (24 kHz, 960 bytes) 50 times a second, and the source server
echoes each one back: audio both ways, 10,000 messages a second each way in all. The
clients and the echo server are websockets' sans-I/O protocols on asyncio transports, so
that they are not what saturates the machine. The same load runs twice, for ``--seconds`` each:

    direct       clients -> source server
    bare relay   clients -> bench/bare_relay.py (records nothing) -> source server
    rtcap proxy  clients -> python -m analyzer proxy (records) -> source server

The bare relay's run is the reference for what any relay adds on this machine (a
process more on the way, scheduled on the same cores).

The clients are spread over ``--workers`` processes. Reported: the round trip of every
message (send to echo received) after a warm-up, as p50 and p99, and what the proxy adds
(its percentile minus direct's); the proxy process's CPU (user + system, as a share of
one core) and RSS (start, peak, end) over its run; messages that never came back.

This is a benchmark, not a test: nothing here fails on a slow figure. Run it with
``make bench`` (``rtcap proxy`` on asyncio's event loop, as the default install has it).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import OP_BINARY, OP_CONT, OP_TEXT
from websockets.http11 import Request, Response
from websockets.protocol import OPEN
from websockets.server import ServerProtocol
from websockets.uri import WebSocketURI, parse_uri

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy_bench import BenchError, Child, load_average, percentile, start_bare, start_rtcap  # noqa: E402

try:
    import psutil
except ImportError:  # reported in main(): the benchmark needs it
    psutil = None

RATE = 50  # messages a second, each way, per session
AUDIO_BYTES = 960  # 20 ms of PCM16 mono at 24 kHz
WARM_UP = 5.0  # seconds at the start whose round trips are not counted
HEAD = '{"type":"input_audio_buffer.append","event_id":"event_soak_'  # then the sequence number


def appends(count: int) -> list[tuple[str, str]]:
    """A few distinct append events, each split where its sequence number goes."""
    rng = random.Random(0)
    out = []
    for _ in range(count):
        audio = base64.b64encode(rng.randbytes(AUDIO_BYTES)).decode()
        out.append((HEAD, f'","audio":"{audio}"}}'))
    return out


# ---------------------------------------------------------------------------
# A worker process: some of the sessions, its round trips printed as JSON


class Session(asyncio.Protocol):
    """One voice-like client session on websockets' sans-I/O client protocol: a light
    client, so that the load generator is not what saturates the machine. Each echo's
    round trip (ns) goes to ``samples`` once ``counting`` is set."""

    def __init__(self, uri: WebSocketURI, samples: list[int]) -> None:
        self.ws = ClientProtocol(uri, max_size=None)
        self.samples = samples
        self.sent: dict[int, int] = {}
        self.seq = 0
        self.counting = False
        self.transport: Any = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.ws.send_request(self.ws.connect())
        self.flush()

    def data_received(self, data: bytes) -> None:
        self.ws.receive_data(data)
        now = time.perf_counter_ns()
        for event in self.ws.events_received():
            if isinstance(event, Response):
                if not self.opened.done():
                    self.opened.set_result(None)
            elif event.opcode is OP_TEXT:
                at = self.sent.pop(int(event.data[len(HEAD) : len(HEAD) + 10]), None)
                if at is not None and at >= 0:
                    self.samples.append(now - at)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ws.receive_eof()
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("the session's connection was lost"))

    def send(self, event: tuple[bytes, bytes]) -> None:
        """Send the next append, its sequence number in its event id."""
        if self.ws.state is not OPEN:
            return
        head, tail = event
        self.sent[self.seq] = time.perf_counter_ns() if self.counting else -1
        self.ws.send_text(b"%s%010d%s" % (head, self.seq, tail))
        self.seq += 1
        self.flush()

    def flush(self) -> None:
        for chunk in self.ws.data_to_send():
            if chunk and not self.transport.is_closing():
                self.transport.write(chunk)

    def lost(self) -> int:
        """Counted messages whose echo never came."""
        return sum(1 for at in self.sent.values() if at >= 0)


async def worker(url: str, sessions: int, seconds: float) -> dict[str, object]:
    """``sessions`` sessions against ``url``; each sends RATE appends a second for
    ``seconds``, the sessions spread evenly over each 1/RATE interval."""
    loop = asyncio.get_running_loop()
    uri = parse_uri(url)
    samples: list[int] = []
    clients = []
    for _ in range(sessions):
        _, client = await loop.create_connection(lambda: Session(uri, samples), uri.host, uri.port)
        await asyncio.wait_for(client.opened, 60)
        clients.append(client)
    events = [(head.encode(), tail.encode()) for head, tail in appends(4)]
    interval = 1 / RATE
    start = loop.time() + 0.5
    ticks = int(seconds * RATE)
    for tick in range(ticks):
        if tick == int(WARM_UP * RATE):
            for client in clients:
                client.counting = True
        for n, client in enumerate(clients):
            # Session n sends at its own offset within the interval.
            due = start + tick * interval + n * interval / sessions
            delay = due - loop.time()
            if delay > 0.001:  # sends closer together than that go out together
                await asyncio.sleep(delay)
            client.send(events[(tick + n) % len(events)])
    deadline = loop.time() + 5
    while any(client.lost() for client in clients) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    lost = sum(client.lost() for client in clients)
    for client in clients:
        client.transport.abort()
    return {"samples": samples, "lost": lost}


class Echo(asyncio.Protocol):
    """The echo server's side of one connection: every data frame sent back as it came."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.ws = ServerProtocol(max_size=None)

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Request):
                ws.send_response(ws.accept(event))
            elif ws.state is OPEN:
                if event.opcode is OP_TEXT:
                    ws.send_text(event.data, event.fin)
                elif event.opcode is OP_BINARY:
                    ws.send_binary(event.data, event.fin)
                elif event.opcode is OP_CONT:
                    ws.send_continuation(event.data, event.fin)
        for chunk in ws.data_to_send():
            if chunk:
                self.transport.write(chunk)
            elif self.transport.can_write_eof():
                self.transport.write_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ws.receive_eof()


async def echo_server() -> None:
    """Serve :class:`Echo` on a free port of 127.0.0.1, printed first, until killed."""
    server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


def start_echo(stack: contextlib.ExitStack) -> str:
    child = Child("echo server", [sys.executable, __file__, "--echo"], ready=r"^(\d+)$")
    stack.callback(child.stop)
    return f"ws://127.0.0.1:{child.wait_ready().group(1)}"


# ---------------------------------------------------------------------------
# The run


class Sampler:
    """Samples a process's RSS once a second in a thread; CPU from its start to stop."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.rss: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.rss.append(self.process.memory_info().rss / 1e6)
            self._stop.wait(1.0)

    def __enter__(self) -> Sampler:
        self._cpu = self.process.cpu_times()
        self._wall = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        cpu = self.process.cpu_times()
        self.cpu_share = (cpu.user + cpu.system - self._cpu.user - self._cpu.system) / (time.monotonic() - self._wall)


def load(url: str, args: argparse.Namespace) -> dict[str, object]:
    """Run the sessions against ``url`` in ``args.workers`` processes; their results merged."""
    per = [args.sessions // args.workers + (n < args.sessions % args.workers) for n in range(args.workers)]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", url, str(n), str(args.seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in per
        if n
    ]
    samples: list[int] = []
    lost = 0
    for proc in procs:
        out, _ = proc.communicate(timeout=args.seconds + 120)
        if proc.returncode != 0:
            raise BenchError(f"a worker failed (status {proc.returncode})")
        result = json.loads(out)
        samples += result["samples"]
        lost += result["lost"]
    if not samples:
        raise BenchError("no round trip was measured")
    return {"samples": samples, "lost": lost}


def run(args: argparse.Namespace) -> None:
    if psutil is None:
        raise BenchError("psutil is not installed: run `make bench`, which installs the bench extra")
    print(
        f"rtcap proxy soak: {args.sessions} sessions, {RATE} audio messages/s each way each,"
        f" {args.seconds:g} s a run, {args.workers} client processes"
    )
    print(f"  load average before the run: {load_average()} (anything else busy on these cores skews the figures)")
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rtcap-soak-")))
        source = start_echo(stack)
        print("direct ...", flush=True)
        direct = load(source, args)
        print("through the bare relay ...", flush=True)
        bare = load(start_bare(stack, source), args)
        url, proxy = start_rtcap(stack, source, tmp / "captures")
        print("through rtcap proxy ...", flush=True)
        with Sampler(proxy.pid) as sampler:
            proxied = load(url, args)
        capture_bytes = sum(p.stat().st_size for p in (tmp / "captures").rglob("*") if p.is_file())
    print()
    print("Round trip of a 20 ms audio append, send to echo, ms (after a 5 s warm-up)")
    print(f"  {'':<13} {'p50':>8} {'p99':>8} {'samples':>10} {'lost':>6}")
    p = {}
    for name, result in (("direct", direct), ("bare relay", bare), ("rtcap proxy", proxied)):
        samples = result["samples"]
        assert isinstance(samples, list)
        p[name] = {q: percentile(samples, q) / 1e6 for q in (50, 99)}
        print(f"  {name:<13} {p[name][50]:>8.3f} {p[name][99]:>8.3f} {len(samples):>10,} {result['lost']:>6,}")
    for name in ("bare relay", "rtcap proxy"):
        added = {q: p[name][q] - p["direct"][q] for q in (50, 99)}
        print(f"  added by {name} (its p - direct p): p50 {added[50]:.3f} ms, p99 {added[99]:.3f} ms")
    rss = sampler.rss
    print(
        f"rtcap proxy process: CPU {sampler.cpu_share:.0%} of one core;"
        f" RSS {rss[0]:.1f} MB at start, peak {max(rss):.1f} MB, {rss[-1]:.1f} MB at the end"
    )
    print(f"  capture written: {capture_bytes / 1e6:.0f} MB; load average after the run: {load_average()}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--sessions", type=int, default=200, help="concurrent sessions (default: %(default)s)")
    add("--seconds", type=float, default=60.0, help="length of each run (default: %(default)s)")
    add("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)), help="client processes")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--echo"]:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(echo_server())
        return 0
    if argv[:1] == ["--worker"]:
        url, sessions, seconds = argv[1], int(argv[2]), float(argv[3])
        print(json.dumps(asyncio.run(worker(url, sessions, seconds))))
        return 0
    args = parse_args(argv)
    try:
        run(args)
    except BenchError as e:
        print(f"soak_bench: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
