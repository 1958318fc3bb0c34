"""How much ``rtcap proxy`` costs, measured side by side with its baselines in one run.

Everything runs on loopback, each server and proxy in its own process, the client in
this one::

    direct       client -> source server                      (bench/source_server.py)
    rtcap proxy  client -> python -m analyzer proxy (records) -> source server
    rtcap+uvloop the same on uvloop's event loop (only when uvloop is installed)
    bare relay   client -> bench/bare_relay.py (records nothing) -> source server
    mitmproxy    client -> mitmdump 11.0.2 --mode reverse      -> source server

``rtcap proxy`` runs with ``RTCAP_UVLOOP=0``: the default install has no uvloop, and
its targets are met (or missed) without it; uvloop's figures are a line of their own.

Measured:

- throughput: messages per second the client receives for small transcript deltas and
  for 100 ms audio deltas; several rounds, the variants alternating within each round
  (in a rotating order). Each comparison is a ratio taken within each round, and the
  median of those ratios is reported, so a round slowed down by something else on the
  machine slows both sides of its ratio;
- added latency: round trips of a small message, one at a time, direct and through the
  proxies in interleaved chunks; the proxy's p50 and p99 minus direct's;
- memory: the RSS of a fresh ``rtcap proxy`` while 100,000 audio messages go through
  one session, growth counted from the end of the first (warm-up) batch.

Targets are printed with PASS or MISS; this is a benchmark, not a test, so a miss does
not fail it. The exit status is 1 only when something could not run (mitmproxy not
installed, a process that would not start, a stream that stalled).

Run it with ``make bench``, which also creates ``.venv-mitmproxy``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

try:
    import psutil
except ImportError:  # reported in main(): the benchmark needs it
    psutil = None

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
MITMDUMP = ROOT / ".venv-mitmproxy" / "bin" / "mitmdump"

DONE = '{"type":"bench.done"}'
# The round-trip probe: a small client event, about the size of a real control message.
PING = (
    '{"type":"conversation.item.create","event_id":"event_bench_ping",'
    '"item":{"type":"message","role":"user","content":[{"type":"input_text","text":"ping"}]}}'
)

STREAM_TIMEOUT = 120.0  # seconds one measured stream may take before the run is called stalled
START_TIMEOUT = 30.0  # seconds a child process may take to be ready

# Targets from the issues (18: the frame-level relay).
MIN_RATIOS = {"direct": 0.5, "bare relay": 0.9, "mitmproxy": 15.0}  # rtcap proxy msgs/s over each
RTCAP, UVLOOP = "rtcap proxy", "rtcap+uvloop"
MAX_ADDED_P50_MS = 0.5
MAX_RSS_GROWTH_MB = 10.0


class BenchError(Exception):
    """Something the benchmark needs could not run."""


# ---------------------------------------------------------------------------
# Child processes


class Child:
    """A process started for the benchmark, its output drained so it never blocks.

    A thread reads stdout (stderr merged in) line by line: it notes the first line that
    matches ``ready`` and keeps the last few lines to explain a failure.
    """

    def __init__(self, name: str, argv: list[str], ready: str | None = None, env: dict[str, str] | None = None) -> None:
        self.name = name
        self._ready = re.compile(ready) if ready else None
        self._ready_event = threading.Event()
        self.match: re.Match[str] | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=20)
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env={**os.environ, **(env or {})},
        )
        self._reader = threading.Thread(target=self._drain, name=f"drain-{name}", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.tail.append(line.rstrip("\n"))
            if self._ready and self.match is None:
                self.match = self._ready.search(line)
                if self.match:
                    self._ready_event.set()
        self._ready_event.set()  # end of output: wake a waiter, who will see no match

    def wait_ready(self, timeout: float = START_TIMEOUT) -> re.Match[str]:
        """The match of the ready line; raises ``BenchError`` if it does not come."""
        self._ready_event.wait(timeout)
        if self.match is None:
            raise BenchError(f"{self.name} did not start: {self.explain()}")
        return self.match

    def wait_port(self, port: int, timeout: float = START_TIMEOUT) -> None:
        """Wait until something accepts connections on 127.0.0.1:``port``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                return
            time.sleep(0.1)
        raise BenchError(f"{self.name} is not accepting connections on port {port}: {self.explain()}")

    def explain(self) -> str:
        code = self.proc.poll()
        state = "still running" if code is None else f"exited with status {code}"
        output = "\n    ".join(self.tail) or "(no output)"
        return f"{state}; its last output:\n    {output}"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 5 seconds."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)


def free_port() -> int:
    """A port nothing listens on now (for mitmdump, which cannot report one it picked)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_source(stack: contextlib.ExitStack) -> str:
    child = Child("source server", [sys.executable, str(BENCH / "source_server.py")], ready=r"^(\d+)$")
    stack.callback(child.stop)
    return f"ws://127.0.0.1:{child.wait_ready().group(1)}"


def has_uvloop() -> bool:
    """Whether uvloop is installed here (``rtcap proxy`` then runs on it unless told not to)."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def start_rtcap(
    stack: contextlib.ExitStack, upstream: str, captures: Path, *, uvloop: bool = False
) -> tuple[str, Child]:
    """``rtcap proxy`` in a process of its own, on asyncio's event loop unless ``uvloop``."""
    argv = [sys.executable, "-m", "analyzer", "proxy", "--upstream", upstream]
    argv += ["--listen", "127.0.0.1:0", "--captures", str(captures)]
    name = UVLOOP if uvloop else RTCAP
    env = {"RTCAP_UVLOOP": "1" if uvloop else "0"}
    child = Child(name, argv, ready=r"^rtcap proxy: ws://127\.0\.0\.1:(\d+) -> ", env=env)
    stack.callback(child.stop)
    return f"ws://127.0.0.1:{child.wait_ready().group(1)}", child


def start_bare(stack: contextlib.ExitStack, upstream: str) -> str:
    child = Child("bare relay", [sys.executable, str(BENCH / "bare_relay.py"), upstream], ready=r"^(\d+)$")
    stack.callback(child.stop)
    return f"ws://127.0.0.1:{child.wait_ready().group(1)}"


def start_mitmproxy(stack: contextlib.ExitStack, upstream: str, confdir: Path) -> str:
    port = free_port()
    argv = [str(MITMDUMP), "-q", "--mode", f"reverse:{upstream.replace('ws://', 'http://')}"]
    argv += ["--listen-host", "127.0.0.1", "--listen-port", str(port)]
    argv += ["--set", f"confdir={confdir}"]  # its CA certificates go in the temp dir, not ~/.mitmproxy
    child = Child("mitmproxy", argv)
    stack.callback(child.stop)
    child.wait_port(port)
    return f"ws://127.0.0.1:{port}"


# ---------------------------------------------------------------------------
# Measurements (the client side, in this process)


@dataclass
class Variant:
    name: str
    url: str
    scale: int = 1  # streams are this many times shorter (mitmproxy is too slow for full ones)


def stream_request(kind: str, count: int) -> str:
    """The message that makes the source server stream (compact: it matches on the prefix)."""
    return json.dumps({"type": "bench.stream", "kind": kind, "count": count}, separators=(",", ":"))


def _connect(url: str) -> connect:
    return connect(url, max_size=None, compression=None, open_timeout=START_TIMEOUT)


async def stream_rate(variant: Variant, kind: str, count: int) -> float:
    """Messages per second received for one ``bench.stream`` of ``count`` events.

    The clock runs from sending the request to receiving the end marker, on an open
    connection, so the handshake is not counted.
    """
    request = stream_request(kind, count)
    async with _connect(variant.url) as ws:
        received = 0
        try:
            async with asyncio.timeout(STREAM_TIMEOUT):
                start = time.perf_counter()
                await ws.send(request)
                while (await ws.recv()) != DONE:
                    received += 1
                elapsed = time.perf_counter() - start
        except TimeoutError:
            raise BenchError(
                f"{variant.name}: {kind} stream stalled after {received:,} of {count:,} messages"
            ) from None
    if received != count:
        raise BenchError(f"{variant.name}: {kind} stream delivered {received:,} messages, expected {count:,}")
    return count / elapsed


async def round_trips(ws: ClientConnection, count: int) -> list[int]:
    """``count`` round trips of ``PING``, one at a time, in nanoseconds."""
    samples = []
    clock = time.perf_counter_ns
    try:
        async with asyncio.timeout(STREAM_TIMEOUT):
            for _ in range(count):
                start = clock()
                await ws.send(PING)
                await ws.recv()
                samples.append(clock() - start)
    except TimeoutError:
        raise BenchError(f"round trips stalled after {len(samples):,} of {count:,}") from None
    return samples


def percentile(samples: list[int], q: float) -> float:
    """The nearest-rank ``q`` percentile of ``samples`` (0 < q <= 100)."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def rotated(items: list[Variant], by: int) -> list[Variant]:
    by %= len(items)
    return items[by:] + items[:by]


async def measure_throughput(variants: list[Variant], args: argparse.Namespace) -> dict[tuple[str, str], list[float]]:
    """Messages/s per (variant, kind), one per round, over ``args.rounds`` alternating rounds."""
    counts = {"small": args.small, "audio": args.audio}
    # Warm-up: first connection, imports and caches of every process, not counted.
    for variant in variants:
        for kind in counts:
            await stream_rate(variant, kind, max(100, counts[kind] // 10 // variant.scale))
    rates: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for r in range(args.rounds):
        # Rotate who goes first, so no variant always runs right after the same one.
        order = rotated(variants, r)
        line = []
        for kind in counts:
            for variant in order:
                rate = await stream_rate(variant, kind, counts[kind] // variant.scale)
                rates[variant.name, kind].append(rate)
                line.append(f"{kind} {variant.name} {rate:,.0f}")
        print(f"  round {r + 1}/{args.rounds}: " + ", ".join(line), flush=True)
    return rates


async def measure_latency(variants: list[Variant], args: argparse.Namespace) -> dict[str, list[int]]:
    """Round-trip times per variant, ``args.rtt`` each, in interleaved chunks."""
    chunks = 5
    per_chunk = math.ceil(args.rtt / chunks)
    samples: dict[str, list[int]] = {v.name: [] for v in variants}
    async with contextlib.AsyncExitStack() as stack:
        sockets = {v.name: await stack.enter_async_context(_connect(v.url)) for v in variants}
        for ws in sockets.values():
            await round_trips(ws, 500)  # warm-up, not counted
        for chunk in range(chunks):
            for variant in rotated(variants, chunk):
                samples[variant.name] += await round_trips(sockets[variant.name], per_chunk)
    return samples


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 1e6


@dataclass
class RssRun:
    start: float  # MB, before the first message
    after: list[float]  # MB, after each batch; after[0] is the end of the warm-up batch
    peak: float  # MB, highest seen, sampled every 1,000 messages too
    messages: int
    rate: float  # messages/s over the whole run

    @property
    def growth(self) -> float:
        return self.after[-1] - self.after[0]


async def measure_rss(url: str, pid: int, args: argparse.Namespace) -> RssRun:
    """RSS of the proxy while ``args.rss_messages`` audio messages go through one session,
    in 10 batches on one connection."""
    batches = 10
    per_batch = args.rss_messages // batches
    request = stream_request("audio", per_batch)
    after: list[float] = []
    peak = start_rss = rss_mb(pid)
    start = time.perf_counter()
    async with _connect(url) as ws:
        for _ in range(batches):
            await ws.send(request)
            received = 0
            try:
                async with asyncio.timeout(STREAM_TIMEOUT):
                    while (await ws.recv()) != DONE:
                        received += 1
                        if received % 1000 == 0:
                            peak = max(peak, rss_mb(pid))
            except TimeoutError:
                raise BenchError(f"RSS run: a batch stalled after {received:,} of {per_batch:,} messages") from None
            if received != per_batch:
                raise BenchError(f"RSS run: a batch delivered {received:,} messages, expected {per_batch:,}")
            after.append(rss_mb(pid))
    elapsed = time.perf_counter() - start
    return RssRun(start_rss, after, max(peak, *after), batches * per_batch, batches * per_batch / elapsed)


# ---------------------------------------------------------------------------
# Report


def machine_info() -> list[str]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mitm = subprocess.run([str(MITMDUMP), "--version"], capture_output=True, text=True, timeout=60).stdout
    mitm_version = next((line.split()[-1] for line in mitm.splitlines() if line.startswith("Mitmproxy")), "?")
    return [
        f"cpus: {os.cpu_count()} ({len(os.sched_getaffinity(0))} usable) {model}",
        f"python: {platform.python_version()} ({sys.executable})",
        f"websockets: {websockets.__version__}, psutil: {psutil.__version__}, mitmproxy: {mitm_version}",
        f"platform: {platform.platform()}",
        f"code measured: {code_version()}",
        f"load average before the run: {load_average()} (anything else busy on these cores skews the figures)",
    ]


def code_version() -> str:
    """The commit of the proxy code measured, and whether it has uncommitted changes."""
    try:
        git = ["git", "-C", str(ROOT)]
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        changed = subprocess.run(
            [*git, "status", "--porcelain", "recorder", "analyzer"], capture_output=True, text=True, timeout=10
        )
    except OSError:
        return "unknown (no git)"
    if commit.returncode != 0:
        return "unknown (not a git checkout)"
    return commit.stdout.strip() + (
        " + uncommitted changes in recorder/ or analyzer/" if changed.stdout.strip() else ""
    )


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Targets:
    """Checks figures against targets and counts how many were met."""

    def __init__(self) -> None:
        self.met = self.total = 0

    def at_least(self, value: float, floor: float) -> str:
        """``value`` (a ratio) against a floor; a miss says how many times faster it must get."""
        return self._verdict(value >= floor, f"{value:.2f}x", f"needs {floor / value:.2f}x")

    def below(self, value: float, ceiling: float, unit: str, digits: int) -> str:
        """``value`` against a ceiling; a miss says by how much it is over."""
        return self._verdict(value < ceiling, f"{value:.{digits}f} {unit}", f"over by {value - ceiling:.{digits}f}")

    def _verdict(self, ok: bool, shown: str, shortfall: str) -> str:
        self.met, self.total = self.met + ok, self.total + 1
        return f"{shown} PASS" if ok else f"{shown} MISS ({shortfall})"


def ratios(samples: dict[tuple[str, str], list[float]], a: str, b: str, kind: str) -> list[float]:
    """``a``'s rate over ``b``'s, one ratio per round (both measured in that round)."""
    return [x / y for x, y in zip(samples[a, kind], samples[b, kind], strict=True)]


def report(
    variants: list[Variant],
    samples: dict[tuple[str, str], list[float]],
    rtts: dict[str, list[int]],
    rss: RssRun,
    capture_bytes: int,
    args: argparse.Namespace,
) -> None:
    kinds = ("small", "audio")
    names = [v.name for v in variants]
    rates = {key: statistics.median(values) for key, values in samples.items()}
    print()
    print(f"Throughput, messages/s received: median of {args.rounds} rounds [slowest - fastest round]")
    print(f"  {'variant':<13} {'small':>25} {'audio':>25}   messages per stream (small / audio)")
    for v in variants:
        cells = [
            f"{rates[v.name, kind]:,.0f} [{min(samples[v.name, kind]):,.0f} - {max(samples[v.name, kind]):,.0f}]"
            for kind in kinds
        ]
        n = f"{args.small // v.scale:,} / {args.audio // v.scale:,}"
        note = f"  ({v.scale}x shorter: mitmproxy is slow; a rate, so still comparable)" if v.scale > 1 else ""
        print(f"  {v.name:<13} {cells[0]:>25} {cells[1]:>25}   {n}{note}")
    # Both relays pump messages the same way, so the difference in time per message is
    # what recording costs (including its share of the CPU the two cores are short of).
    cost = {kind: (1 / rates[RTCAP, kind] - 1 / rates["bare relay", kind]) * 1e6 for kind in kinds}
    print(f"  rtcap - bare, time per message: small {cost['small']:.1f} us, audio {cost['audio']:.1f} us")

    print()
    print(f"Round-trip time of a {len(PING)}-byte message, one at a time, ms")
    print(f"  {'variant':<13} {'p50':>8} {'p99':>8} {'samples':>8}")
    p = {name: {q: percentile(times, q) / 1e6 for q in (50, 99)} for name, times in rtts.items()}
    for name, times in rtts.items():
        print(f"  {name:<13} {p[name][50]:>8.3f} {p[name][99]:>8.3f} {len(times):>8,}")
    added = {name: {q: p[name][q] - p["direct"][q] for q in (50, 99)} for name in rtts if name != "direct"}
    for name, by_q in added.items():
        print(f"  added by {name} (its p - direct p): p50 {by_q[50]:.3f} ms, p99 {by_q[99]:.3f} ms")

    print()
    print(f"{RTCAP} memory, {rss.messages:,} audio messages in one session ({len(rss.after)} batches)")
    print(
        f"  RSS at start {rss.start:.1f} MB, after the warm-up batch {rss.after[0]:.1f} MB,"
        f" at the end {rss.after[-1]:.1f} MB, peak {rss.peak:.1f} MB"
    )
    print(f"  RSS after each batch, MB: {' '.join(f'{x:.1f}' for x in rss.after)}")
    print(
        f"  capture written: {capture_bytes / 1e6:.1f} MB ({capture_bytes / rss.messages:,.0f} bytes/message);"
        f" relayed at {rss.rate:,.0f} messages/s"
    )

    targets = Targets()
    print()
    print(f"Summary: ratios are medians of {args.rounds} per-round ratios [lowest - highest]")
    print(f"  {'measure':<36} {'target':<9} {'small':<26} audio")
    for v in variants:
        small, audio = (f"{rates[v.name, kind]:,.0f}/s" for kind in kinds)
        print(f"  {'msgs/s ' + v.name:<36} {'':<9} {small:<26} {audio}")
    for mine in [name for name in (RTCAP, UVLOOP) if name in names]:
        for other, floor in MIN_RATIOS.items():
            cells = []
            for kind in kinds:
                r = ratios(samples, mine, other, kind)
                spread = f" [{min(r):.2f}-{max(r):.2f}]"
                if mine == RTCAP:  # the default install is what the targets are about
                    cells.append(targets.at_least(statistics.median(r), floor) + spread)
                else:
                    cells.append(f"{statistics.median(r):.2f}x{spread}")
            target = f">= {floor:g}x" if mine == RTCAP else "-"
            print(f"  {f'{mine} / {other}':<36} {target:<9} {cells[0]:<26} {cells[1]}")
    small, audio = (f"{statistics.median(ratios(samples, 'bare relay', 'direct', kind)):.2f}x" for kind in kinds)
    print(f"  {'bare relay / direct (reference)':<36} {'-':<9} {small:<26} {audio}")
    print(
        f"  {'added latency p50 (rtcap - direct)':<36} {f'< {MAX_ADDED_P50_MS:g} ms':<9}"
        f" {targets.below(added[RTCAP][50], MAX_ADDED_P50_MS, 'ms', 3)}"
    )
    print(f"  {'added latency p99 (rtcap - direct)':<36} {'-':<9} {added[RTCAP][99]:.3f} ms (no target)")
    label = f"RSS growth over {rss.messages:,} audio msgs"
    print(f"  {label:<36} {f'< {MAX_RSS_GROWTH_MB:g} MB':<9} {targets.below(rss.growth, MAX_RSS_GROWTH_MB, 'MB', 1)}")
    print(f"  {targets.met} of {targets.total} targets met (by {RTCAP}, on asyncio's event loop)")
    print(f"  load average after the run: {load_average()}")


# ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--rounds", type=int, default=5, help="throughput rounds (default: %(default)s)")
    add("--small", type=int, default=50_000, help="small events per stream (default: %(default)s)")
    add("--audio", type=int, default=20_000, help="audio events per stream (default: %(default)s)")
    add("--mitm-scale", type=int, default=10, help="mitmproxy streams are N times shorter (default: %(default)s)")
    add("--rtt", type=int, default=10_000, help="round trips per variant (default: %(default)s)")
    add("--rss-messages", type=int, default=100_000, help="audio messages in the RSS run (default: %(default)s)")
    return parser.parse_args(argv)


@contextlib.contextmanager
def timed(title: str) -> Iterator[None]:
    print(f"{title} ...", flush=True)
    start = time.monotonic()
    yield
    print(f"  ({time.monotonic() - start:.0f} s)", flush=True)


def run(args: argparse.Namespace) -> None:
    if psutil is None:
        raise BenchError("psutil is not installed: run `make bench`, which installs the bench extra")
    if not os.access(MITMDUMP, os.X_OK):
        raise BenchError(f"mitmproxy is missing: {MITMDUMP.relative_to(ROOT)} not found; `make bench` creates it")
    print("rtcap proxy benchmark (loopback, one process per server and proxy)")
    for line in machine_info():
        print(f"  {line}")
    with contextlib.ExitStack() as stack:
        # Entered first, so it is removed last, after every process writing to it stopped.
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rtcap-bench-")))
        source = start_source(stack)
        rtcap_url, _ = start_rtcap(stack, source, tmp / "captures")
        variants = [Variant("direct", source), Variant(RTCAP, rtcap_url)]
        if has_uvloop():
            variants.append(Variant(UVLOOP, start_rtcap(stack, source, tmp / "captures-uvloop", uvloop=True)[0]))
        variants += [
            Variant("bare relay", start_bare(stack, source)),
            Variant("mitmproxy", start_mitmproxy(stack, source, tmp / "mitmproxy"), scale=args.mitm_scale),
        ]
        with timed(f"throughput: {args.rounds} rounds, variants alternating"):
            samples = asyncio.run(measure_throughput(variants, args))
        with timed(f"latency: {args.rtt:,} round trips per variant, in 5 interleaved chunks"):
            rtts = asyncio.run(measure_latency([v for v in variants if v.name != "mitmproxy"], args))
        with timed(f"memory: {args.rss_messages:,} audio messages through a fresh rtcap proxy"):
            rss_captures = tmp / "rss-captures"
            url, proxy = start_rtcap(stack, source, rss_captures)
            rss = asyncio.run(measure_rss(url, proxy.pid, args))
            capture_bytes = sum(p.stat().st_size for p in rss_captures.rglob("*") if p.is_file())
        report(variants, samples, rtts, rss, capture_bytes, args)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except BenchError as e:
        print(f"proxy_bench: error: {e}", file=sys.stderr)
        return 1
    except (OSError, WebSocketException) as e:  # a connection refused or dropped mid-run
        print(f"proxy_bench: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
