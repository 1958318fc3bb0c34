"""A soak run of ``rtcap proxy``: many voice-like sessions at once, for a minute.

``--sessions`` (200) WebSocket sessions each send an ``input_audio_buffer.append`` of
20 ms of PCM16 audio (24 kHz, 960 bytes) 50 times a second, and the source server
(bench/source_server.py) echoes each one back: audio both ways, 10,000 messages a
second each way in all. The same load runs twice, for ``--seconds`` each:

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
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy_bench import BenchError, load_average, start_bare, start_rtcap, start_source  # noqa: E402

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


async def session(url: str, start: float, end: float, samples: list[int], lost: list[int]) -> None:
    """One voice-like session from ``start`` to ``end`` (loop times): a message every
    1/RATE s, each round trip (ns) added to ``samples`` once past the warm-up."""
    events = appends(4)
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, start - loop.time()))
    sent: dict[int, int] = {}
    counted_from = start + WARM_UP
    async with connect(url, max_size=None, compression=None, open_timeout=60) as ws:

        async def receive() -> None:
            async for message in ws:
                assert isinstance(message, str)
                seq = int(message[len(HEAD) : len(HEAD) + 10])
                at = sent.pop(seq, None)
                if at is not None and at >= 0:
                    samples.append(time.perf_counter_ns() - at)

        receiver = asyncio.ensure_future(receive())
        seq = 0
        due = loop.time()
        while due < end:
            head, tail = events[seq % len(events)]
            sent[seq] = time.perf_counter_ns() if due >= counted_from else -1
            await ws.send(f"{head}{seq:010d}{tail}")
            seq += 1
            due += 1 / RATE
            await asyncio.sleep(max(0.0, due - loop.time()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                while any(at >= 0 for at in sent.values()):
                    await asyncio.sleep(0.05)
        receiver.cancel()
    lost.append(sum(1 for at in sent.values() if at >= 0))


async def worker(url: str, sessions: int, seconds: float) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    start = loop.time() + 1.0
    samples: list[int] = []
    lost: list[int] = []
    # Session starts spread over one message interval, so sends do not all line up.
    await asyncio.gather(
        *(session(url, start + n / sessions / RATE, start + seconds, samples, lost) for n in range(sessions))
    )
    return {"samples": samples, "lost": sum(lost)}


# ---------------------------------------------------------------------------
# The run


def percentile(samples: list[int], q: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


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
        source = start_source(stack)
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
