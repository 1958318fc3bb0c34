"""Concurrency and interruption: `rtcap` killed, interrupted, queried from several processes
at once while captures arrive, or cut off by `| head` (issue 12, items 8 to 11). Every test
runs the real command in subprocesses and waits by polling, never by sleeping."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from recorder import capture

RTCAP = str(Path(sys.executable).parent / "rtcap")
DAY = "2026-11-25"
CAPTURES, MESSAGES = 32, 5000  # enough for worker processes (16 captures or more), and a second of work


def write_corpus(root: Path, count: int = CAPTURES, messages: int = MESSAGES) -> None:
    header = {"session_id": "x", "started_at": "2026-11-25T12:00:00+00:00", "url": "wss://h/v1", "recorder": "proxy"}
    payload = b'{"type":"response.output_text.delta","response_id":"resp_1","delta":"' + b"word " * 10 + b'"}'
    records = [capture.header_record(header)]
    records += [capture.message_record(seq, seq * 1000, seq % 2, 1, payload, None, 0) for seq in range(messages)]
    records.append(capture.end_record({"t_ns": messages * 1000, "closed_by": "client", "code": 1000}))
    data = b"".join(records)
    (root / DAY).mkdir(parents=True, exist_ok=True)
    for n in range(count):
        (root / DAY / f"20261125T12{n // 60:02d}{n % 60:02d}000000Z-abcdefgh.msgpack").write_bytes(data)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("template") / "captures"
    write_corpus(root)
    return root


@pytest.fixture
def root(template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the corpus, never indexed."""
    return Path(shutil.copytree(template, tmp_path / "captures", ignore=shutil.ignore_patterns(".rtcap")))


def start(*args: str, **options: Any) -> subprocess.Popen[str]:
    """`rtcap ARGS` in a session of its own, as a shell runs a job: its own process group."""
    options.setdefault("stdout", subprocess.PIPE)
    return subprocess.Popen(
        [RTCAP, *args], stderr=subprocess.PIPE, text=True, start_new_session=True, env=environ(), **options
    )


def environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RTCAP_")}


def count_query(root: Path) -> list[str]:
    return ["query", "SELECT count(*) AS n, count(DISTINCT session_id) AS s FROM events", "--captures", str(root)]


FULL = f"n,s\n{CAPTURES * MESSAGES},1\n"  # every capture's header names the same session


def poll(condition: Callable[[], Any], timeout: float = 20.0) -> Any:
    """``condition()`` once it is true, else its last value after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.002)  # a polling interval, not a wait for something


def processes() -> dict[int, tuple[str, int, int]]:
    """Every process: pid -> (state, parent pid, session id), from /proc."""
    found = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
            except OSError:
                continue  # it ended meanwhile
            found[int(entry.name)] = (fields[0], int(fields[1]), int(fields[3]))
    return found


def children(pid: int) -> list[int]:
    return [p for p, (state, parent, _) in processes().items() if parent == pid and state != "Z"]


def holds(pid: int, name: str) -> bool:
    """Whether a process has a file of this name open."""
    try:
        return any(os.readlink(entry.path).endswith(name) for entry in os.scandir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def alive_in_session(session: int) -> list[int]:
    """The processes still running in a session (a zombie has ended; only its entry is left)."""
    return [p for p, (state, _, sid) in processes().items() if sid == session and state != "Z"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.timeout(90)
def test_kill_9_during_indexing_leaves_no_worker_holding_the_lock(root: Path) -> None:
    first = start(*count_query(root))
    workers = poll(lambda: children(first.pid))
    assert workers, "the first query never started worker processes"
    first.kill()
    first.communicate()
    assert poll(lambda: not alive_in_session(first.pid), 10) == True, alive_in_session(first.pid)  # noqa: E712
    second = start(*count_query(root))
    out, err = second.communicate(timeout=30)  # it hung for ever in half the trials
    assert (second.returncode, out, err) == (0, FULL, "")


def interrupted(root: Path, moment: Callable[[subprocess.Popen[str]], Any]) -> bool:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) once ``moment``
    holds; returns whether it came before the query had finished."""
    job = start(*count_query(root))
    seen = poll(lambda: moment(job) or job.poll() is not None)
    if job.poll() is not None or not seen:
        out, err = job.communicate()
        assert (job.returncode, out, err) == (0, FULL, "")
        return False
    os.killpg(job.pid, signal.SIGINT)
    out, err = job.communicate(timeout=30)  # it hung for ten minutes, with tracebacks
    if (job.returncode, out, err) == (0, FULL, ""):
        return False  # it finished before the signal arrived
    assert (job.returncode, out, err) == (130, "", "rtcap: error: interrupted\n")
    assert poll(lambda: not alive_in_session(job.pid), 10) == True, alive_in_session(job.pid)  # noqa: E712
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.timeout(120)
def test_ctrl_c_at_any_moment_exits_130_and_leaves_a_usable_index(root: Path) -> None:
    # Each moment is seen in the process itself: an earlier interrupted run left files behind.
    workers: dict[int, list[int]] = {}

    def done_reading(job: subprocess.Popen[str]) -> bool:
        if not workers.get(job.pid):
            workers[job.pid] = children(job.pid)
        return bool(workers[job.pid]) and not children(job.pid)

    moments = {
        "as indexing starts": lambda job: holds(job.pid, "/.rtcap/lock"),
        "while workers read": lambda job: children(job.pid),
        "once they are done": done_reading,
    }
    hit = []
    for name, moment in moments.items():
        if interrupted(root, moment):
            hit.append(name)
        else:
            shutil.rmtree(root / ".rtcap", ignore_errors=True)  # too late: make the next one a first index again
    assert len(hit) >= 2, hit
    final = start(*count_query(root))
    assert final.communicate(timeout=30) == (FULL, "") and final.returncode == 0


@pytest.mark.timeout(120)
def test_queries_from_several_processes_while_captures_arrive(tmp_path: Path) -> None:
    # Each reader indexes what arrived (writing segments, compacting them) and queries, 20
    # times; a reader must never meet a segment another process has just replaced.
    root = tmp_path / "captures"
    write_corpus(root, count=1, messages=10)
    reader = """
import sys
from analyzer.views import open_captures
for n in range(20):
    captures = open_captures(sys.argv[1], update=n % 2 == int(sys.argv[2]) or n == 0)
    rows = captures.sql("SELECT count(*) AS n, count(DISTINCT file) AS files FROM events, sessions").to_pylist()
    assert rows[0]["n"] >= 10, rows
"""
    writer = f"""
import os, sys
from pathlib import Path
day = Path(sys.argv[1]) / "{DAY}"
data = next(day.iterdir()).read_bytes()
for n in range(40):
    temporary = day.parent / "incoming"
    temporary.write_bytes(data)
    os.replace(temporary, day / f"20261125T13{{n:02d}}00000000Z-abcdefgh.msgpack")
"""
    scripts = [(reader, "0"), (writer, ""), (reader, "1")]
    jobs = [
        subprocess.Popen([sys.executable, "-c", script, str(root), arg], stderr=subprocess.PIPE, text=True)
        for script, arg in scripts
    ]
    errors = [job.communicate(timeout=90)[-1] for job in jobs]
    assert [job.returncode for job in jobs] == [0] * len(jobs), errors


@pytest.mark.parametrize(
    "args",
    [["query", "SELECT * FROM range(100000)", "--format", "csv"], ["sessions", "--format", "csv"]],
    ids=["query", "sessions"],
)
def test_a_closed_stdout_pipe_exits_0_silently(tmp_path: Path, args: list[str]) -> None:
    # `rtcap ... | head -1`: the reader leaves after one line (300 kB of it, for the query).
    root = tmp_path / "captures"
    write_corpus(root, count=1, messages=10)
    job = start(*args, "--captures", str(root))
    assert job.stdout is not None and job.stdout.readline()
    job.stdout.close()
    assert job.wait(timeout=30) == 0
    assert job.stderr is not None and job.stderr.read() == ""
    command = shlex.join([RTCAP, *args, "--captures", str(root)])
    shell = f"{command} | head -1 >/dev/null; echo ${{PIPESTATUS[0]}}"
    assert subprocess.run(["bash", "-c", shell], capture_output=True, text=True, env=environ()).stdout == "0\n"


@pytest.mark.parametrize("server", ["proxy", "simulate", "serve"])
def test_ctrl_c_stops_a_server_command_with_130(tmp_path: Path, server: str) -> None:
    root = tmp_path / "captures"
    write_corpus(root, count=1, messages=10)
    [served] = root.rglob("*.msgpack")
    args = {
        "proxy": ["proxy", "--upstream", "ws://127.0.0.1:9/v1"],
        "simulate": ["simulate"],
        "serve": ["serve", str(served)],
    }[server]
    job = start(*args, "--listen", "127.0.0.1:0", "--captures", str(root))
    assert job.stdout is not None and "ws://127.0.0.1:" in job.stdout.readline()  # listening
    os.killpg(job.pid, signal.SIGINT)
    out, err = job.communicate(timeout=30)
    assert (job.returncode, err) == (130, "rtcap: error: interrupted\n"), (out, err)
    assert poll(lambda: not alive_in_session(job.pid), 10) == True, alive_in_session(job.pid)  # noqa: E712
    if server != "proxy":
        return  # the same stop for every server command (recorder.serving)
    # SIGTERM is an orderly stop.
    job = start(*args, "--listen", "127.0.0.1:0", "--captures", str(root))
    assert job.stdout is not None and "ws://127.0.0.1:" in job.stdout.readline()
    job.terminate()
    assert job.wait(timeout=30) == 0
