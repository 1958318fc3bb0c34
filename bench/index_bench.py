"""The analyzer's index against what a user might do instead, on a generated corpus.

The corpus: ``--sessions`` sessions of ``--messages`` messages each (1,000 x 1,000 by
default), written as real capture files, and the same messages as JSON lines. Each session
is a run of voice turns: 100 ms audio appends, response.create, then responses of 100 ms
audio deltas interleaved with transcript deltas, as a realtime server streams them.

Measured, each in a process of its own (time and peak RSS), side by side over
``--rounds`` alternating rounds (5 by default), each round's ratios taken against its own
baseline and the medians reported:

- baseline: DuckDB over the JSON lines,
  ``SELECT type, direction, count(*), sum(length(data)) FROM read_json(...) GROUP BY ALL``;
- first build: ``rtcap query`` of the same question on ``events`` with no index yet (the
  index is removed before each round's build);
- re-query: the same command again, nothing changed;

then once: the update (one more session added, then the same command), the re-query in
one process (the Python API against ``duckdb.sql``), and the peak RSS of indexing one capture
of ``--big`` messages (5,000,000 by default, written straight with the capture format's
writer: short text messages, so that the file stays near 1 GB while the row count is what
memory would grow with).

Targets: first build no slower than the baseline; re-query at least 10x faster than it;
the update under one second; peak memory within ``RTCAP_MEMORY_LIMIT``, the big capture's
included. Run: ``make bench`` (or ``.venv/bin/python bench/index_bench.py``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from recorder import capture  # noqa: E402
from recorder.capture import CaptureWriter  # noqa: E402
from recorder.session import RECEIVED, SENT, SessionRecorder, capture_path, new_session_id  # noqa: E402

QUESTION = "SELECT type, direction, count(*), sum({size}) FROM {source} GROUP BY ALL"
MEMORY_LIMIT = "2GB"


def _templates(rng: random.Random) -> dict[str, list[str]]:
    audio = [base64.b64encode(rng.randbytes(4800)).decode() for _ in range(4)]
    ids = (
        '"response_id":"resp_CAbVxZ2wQ3kLm9NpRt7Yu","item_id":"item_CAbVxa8HsJ4dKf1GhP0Qe",'
        '"output_index":0,"content_index":0'
    )
    words = ["Sure ", "the ", "weather ", "in ", "Lisbon ", "is ", "sunny ", "today. "]
    return {
        "append": [json.dumps({"type": "input_audio_buffer.append", "audio": a}) for a in audio],
        "delta": [
            '{"type":"response.output_audio.delta","event_id":"event_%d",' + ids + ',"delta":"' + a + '"}'
            for a in audio
        ],
        "word": [
            '{"type":"response.output_audio_transcript.delta","event_id":"event_%d",'
            + ids
            + ',"delta":'
            + json.dumps(w)
            + "}"
            for w in words
        ],
        "created": [
            '{"type":"response.created","event_id":"event_%d","response":{"id":"resp_CAbVxZ2wQ3kLm9NpRt7Yu","status":"in_progress"}}'
        ],
        "done": [
            '{"type":"response.done","event_id":"event_%d","response":{"id":"resp_CAbVxZ2wQ3kLm9NpRt7Yu","status":"completed","usage":{"input_tokens":812,"output_tokens":230}}}'
        ],
    }


RESPONSE_ID = "resp_CAbVxZ2wQ3kLm9NpRt7Yu"
FAILED = (
    '{"type":"response.done","event_id":"event_%d","response":{"id":"resp_CAbVxZ2wQ3kLm9NpRt7Yu","status":"failed",'
    '"status_details":{"type":"failed",'
    '"error":{"type":"server_error","code":null,"message":"The server had an error."}}}}'
)


def session_messages(
    n: int, rng: random.Random, templates: dict[str, list[str]], fail: float = 0.0
) -> list[tuple[int, str]]:
    """``n`` messages of a voice session, as (direction, text). With ``fail``, that share of
    responses fails with a server_error, most of them after an input_audio_buffer.clear
    (which also precedes a few healthy responses): a cause for ``rtcap precursors`` to find."""
    out: list[tuple[int, str]] = [
        (
            RECEIVED,
            '{"type":"session.created","event_id":"event_0","session":{"id":"sess_bench","model":"gpt-realtime"}}',
        )
    ]
    event = 1
    while len(out) < n:
        for _ in range(rng.randint(5, 15)):
            out.append((SENT, rng.choice(templates["append"])))
        failing = rng.random() < fail
        if rng.random() < (0.8 if failing else 0.05):
            out.append((SENT, '{"type":"input_audio_buffer.clear"}'))
        out.append((SENT, '{"type":"response.create"}'))
        rid = f"resp_{rng.getrandbits(64):021d}"  # every response its own id
        out.append((RECEIVED, (templates["created"][0] % event).replace(RESPONSE_ID, rid)))
        for k in range(rng.randint(20, 60)):
            out.append((RECEIVED, (rng.choice(templates["delta"]) % (event + k)).replace(RESPONSE_ID, rid)))
            if k % 3 == 0:
                out.append((RECEIVED, (rng.choice(templates["word"]) % (event + k)).replace(RESPONSE_ID, rid)))
        out.append((RECEIVED, ((FAILED if failing else templates["done"][0]) % event).replace(RESPONSE_ID, rid)))
        event += 100
    return out[:n]


def write_session(root: Path, messages: list[tuple[int, str]], jsonl, rng: random.Random) -> None:
    session_id = new_session_id()
    recorder = SessionRecorder(
        CaptureWriter(capture_path(root, session_id)),
        session_id=session_id,
        url="wss://api.openai.com/v1/realtime?model=gpt-realtime",
        request_headers=[],
        recorder="proxy",
    )
    recorder.start(0)
    t = 0
    for direction, text in messages:
        t += rng.randint(1_000_000, 30_000_000)
        seq = recorder.message(direction, text, t)
        if jsonl is not None:
            kind = text[9 : text.index('"', 9)] if text.startswith('{"type":"') else json.loads(text)["type"]
            jsonl.write(
                json.dumps(
                    {
                        "session_id": session_id,
                        "seq": seq,
                        "direction": "sent" if direction == SENT else "received",
                        "type": kind,
                        "data": text,
                    }
                )
                + "\n"
            )
    recorder.end(t + 1000, closed_by="client", code=1000)


def write_big_capture(root: Path, messages: int, rng: random.Random, templates: dict[str, list[str]]) -> Path:
    """One capture of ``messages`` short text messages (transcript deltas and the like),
    framed by the capture format's own functions and written in large blocks: seconds
    for millions of messages, where a recorder would take minutes."""
    session_id = new_session_id()
    path = capture_path(root, session_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    texts = [t.encode() for t in templates["word"] + templates["created"] + templates["done"]]
    header = {"session_id": session_id, "url": "wss://api.openai.com/v1/realtime?model=gpt-realtime"}
    header |= {"started_at": "2026-11-25T12:00:00+00:00", "recorder": "proxy", "request_headers": []}
    with open(path, "wb") as f:
        f.write(capture.header_record(header))
        block: list[bytes] = []
        for seq in range(messages):
            text = texts[seq % len(texts)].replace(b"%d", str(seq).encode())
            block.append(capture.message_record(seq, seq * 20_000_000, seq & 1, 1, text, None, 0))
            if len(block) == 100_000:
                f.write(b"".join(block))
                block = []
        f.write(b"".join(block))
        f.write(capture.end_record({"t_ns": messages * 20_000_000, "closed_by": "client", "code": 1000}))
    return path


def measure(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str, float]:
    """Wall seconds, peak RSS (MB), stdout and CPU seconds (user and system, its worker
    processes included) of a command run in a process of its own. CPU time says where the
    time goes when the machine is shared and wall times are not the command's alone."""
    runner = (
        "import resource, subprocess, sys, time\n"
        "start = time.perf_counter()\n"
        "out = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "elapsed = time.perf_counter() - start\n"
        "if out.returncode: sys.exit(out.stderr)\n"
        "usage = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(elapsed, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime)\n"
        "print(out.stdout, end='')\n"
    )
    result = subprocess.run([sys.executable, "-c", runner, *command], capture_output=True, text=True, env=env)
    if result.returncode:
        raise SystemExit(f"benchmark step failed: {' '.join(command)}: {result.stderr.strip()}")
    first, _, rest = result.stdout.partition("\n")
    seconds, rss, cpu = first.split()
    return float(seconds), float(rss), rest, float(cpu)


def _in_process(root: Path, jsonl: Path, baseline_sql: str, env: dict[str, str]) -> tuple[float, float]:
    """Baseline query and rtcap re-query timed inside one process, imports done first:
    what a notebook or a script using the Python API sees."""
    code = (
        "import sys, time, duckdb\n"
        "from analyzer.views import open_captures\n"
        "start = time.perf_counter(); duckdb.sql(sys.argv[1]).fetchall(); baseline = time.perf_counter() - start\n"
        "start = time.perf_counter()\n"
        "open_captures(sys.argv[2]).sql(sys.argv[3])\n"
        "print(baseline, time.perf_counter() - start)\n"
    )
    question = QUESTION.format(size="bytes", source="events")
    result = subprocess.run(
        [sys.executable, "-c", code, baseline_sql, str(root), question], capture_output=True, text=True, env=env
    )
    if result.returncode:
        raise SystemExit(f"in-process measurement failed: {result.stderr.strip()}")
    baseline, requery = result.stdout.split()[-2:]
    return float(baseline), float(requery)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=1000, help="per session")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (medians are reported)")
    parser.add_argument("--big", type=int, default=5_000_000, help="messages of the one big capture (0: skip)")
    parser.add_argument("--keep", type=Path, help="build the corpus here and keep it")
    args = parser.parse_args()
    rng = random.Random(1)
    templates = _templates(rng)
    work = args.keep or Path(tempfile.mkdtemp(prefix="rtcap-index-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    root, jsonl_path, big_root = work / "captures", work / "messages.jsonl", work / "big"
    rtcap = str(Path(sys.executable).parent / "rtcap")
    env = {**os.environ, "RTCAP_MEMORY_LIMIT": MEMORY_LIMIT}
    rounds: list[dict[str, tuple[float, float, str, float]]] = []
    big: tuple[float, float, str, float] | None = None
    try:
        size = f"{args.sessions:,} sessions x {args.messages:,} messages"
        print(f"index benchmark: {size}, python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
        start = time.perf_counter()
        with open(jsonl_path, "w") as jsonl:
            for _ in range(args.sessions):
                write_session(root, session_messages(args.messages, rng, templates), jsonl, rng)
        captures_mb = sum(p.stat().st_size for p in root.rglob("*.msgpack")) / 1e6
        jsonl_mb = jsonl_path.stat().st_size / 1e6
        took = time.perf_counter() - start
        print(f"corpus written in {took:.0f} s: captures {captures_mb:,.0f} MB, JSON lines {jsonl_mb:,.0f} MB")

        baseline_sql = QUESTION.format(size="length(data)", source=f"read_json('{jsonl_path}')")
        baseline = [sys.executable, "-c", f"import duckdb; print(duckdb.sql({baseline_sql!r}).fetchall())"]
        query = [
            rtcap,
            "query",
            QUESTION.format(size="bytes", source="events"),
            "--captures",
            str(root),
            "--format",
            "csv",
        ]
        for n in range(args.rounds):
            shutil.rmtree(root / ".rtcap", ignore_errors=True)  # the first build starts from nothing
            step = {"baseline": measure(baseline), "first": measure(query, env)}
            step["again"] = measure(query, env)
            rounds.append(step)
            print(
                f"  round {n + 1}: baseline {step['baseline'][0]:.2f} s, first build {step['first'][0]:.2f} s, "
                f"re-query {step['again'][0]:.2f} s (CPU {step['baseline'][3]:.2f}, {step['first'][3]:.2f}, "
                f"{step['again'][3]:.2f} s)",
                flush=True,
            )
        write_session(root, session_messages(args.messages, rng, templates), None, rng)
        update = measure(query, env)
        in_process = _in_process(root, jsonl_path, baseline_sql, env)
        if args.big:
            start = time.perf_counter()
            path = write_big_capture(big_root, args.big, rng, templates)
            took = time.perf_counter() - start
            print(f"big capture written in {took:.0f} s: {args.big:,} messages, {path.stat().st_size / 1e6:,.0f} MB")
            big = measure([rtcap, "query", "SELECT count(*) FROM events", "--captures", str(big_root)], env)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    def median(step: str, field: int = 0) -> float:
        return statistics.median(float(r[step][field]) for r in rounds)

    def ratio(step: str) -> float:
        """The median over rounds of baseline time / this step's time, each round its own."""
        return statistics.median(r["baseline"][0] / r[step][0] for r in rounds)

    rows = sum(1 for line in rounds[0]["first"][2].splitlines()[1:] if line)
    print(f"\n  {'step (medians of ' + str(len(rounds)) + ' rounds)':<38} {'seconds':>8} {'peak RSS':>10} {'CPU s':>8}")
    for name, step in (
        ("baseline: DuckDB read_json", "baseline"),
        ("rtcap: first build + query", "first"),
        ("rtcap: re-query, nothing changed", "again"),
    ):
        print(f"  {name:<38} {median(step):>8.2f} {median(step, 1):>8.0f} MB {median(step, 3):>8.2f}")
    print(f"  {'rtcap: one session added + query':<38} {update[0]:>8.2f} {update[1]:>8.0f} MB {update[3]:>8.2f}")
    if big is not None:
        name = f"rtcap: index one {args.big:,}-message capture"
        print(f"  {name:<38} {big[0]:>8.2f} {big[1]:>8.0f} MB {big[3]:>8.2f}")
    limit_mb = float(MEMORY_LIMIT.removesuffix("GB")) * 1024
    peak = max([update[1], *(r[step][1] for r in rounds for step in ("first", "again")), big[1] if big else 0])
    checks = [
        ("first build no slower than baseline", ratio("first") >= 1, f"{ratio('first'):.2f}x the baseline's speed"),
        ("re-query >= 10x faster than baseline", ratio("again") >= 10, f"{ratio('again'):.1f}x"),
        (
            "  the same in-process (Python API vs duckdb)",
            in_process[0] / in_process[1] >= 10,
            f"{in_process[0]:.2f} s / {in_process[1]:.3f} s = {in_process[0] / in_process[1]:.1f}x",
        ),
        ("update after one new session < 1 s", update[0] < 1, f"{update[0]:.2f} s"),
        (f"peak RSS within RTCAP_MEMORY_LIMIT={MEMORY_LIMIT}", peak <= limit_mb, f"{peak:.0f} MB"),
    ]
    print(f"\n  answer rows: {rows}; ratios are medians of each round's own")
    for name, ok, figure in checks:
        print(f"  {name:<44} {figure:>28}  {'PASS' if ok else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
