"""Reading captures for the index: what is new in each, as plain Python values, in worker
processes when there are many.

Nothing here imports Arrow or DuckDB: :func:`read_job` runs in forked workers, and the
index (:mod:`analyzer.index`) turns what they read into Parquet.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import signal
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

from recorder import events, records
from recorder.capture import CaptureError, Columns, open_capture, read_columns


def mark(path: Path, stop: int) -> bytes:
    """The bytes just before ``stop``: if they change, the file was rewritten, not grown."""
    with open_capture(path) as f:
        f.seek(max(0, stop - 64))
        return f.read(min(stop, 64))


def started_at(header: dict[str, Any] | None) -> dt.datetime | None:
    """A header's start time (aware, UTC), if it has a valid one."""
    return records.started_at((header or {}).get("started_at"))


@dataclasses.dataclass
class Read:
    """What was read of one capture, ready to fold into the index (picklable)."""

    header: dict[str, Any] | None
    end: dict[str, Any] | None
    problems: list[str]
    locked: bool
    columns: Columns
    audio_ms: list[float | None]
    session_id: str
    started: dt.datetime | None
    messages: int
    last_t_ns: int | None
    formats: list[str]
    size: int
    mtime_ns: int
    ino: int
    stop: int
    mark: bytes


def read_job(path: Path, start: int, base: dict[str, Any] | None) -> Read | CaptureError:
    """Read a capture from ``start``: its columns, and each message's audio duration in
    the session's format as it was then. Pure Python (no Arrow, no DuckDB), because this
    runs in forked worker processes. Whatever goes wrong is returned as a
    :class:`CaptureError`: one capture never stops the others from being indexed."""
    try:
        return _read(path, start, base)
    except CaptureError as e:
        return e
    except OSError as e:
        return CaptureError(f"cannot read {path}: {e.strerror or e}")
    except Exception as e:  # a bug, but one capture's: the others still get indexed
        return CaptureError(f"cannot index {path}: {type(e).__name__}: {e}")


def _read(path: Path, start: int, base: dict[str, Any] | None) -> Read:
    stat = os.lstat(path)
    cols = read_columns(path, start, version=None if base is None else base["format"])
    header = cols.header if base is None else None
    formats = events.AudioFormats() if base is None else events.AudioFormats(base["format_in"], base["format_out"])
    audio_ms: list[float | None] = []
    sides = (events.SENT, events.RECEIVED)
    for payload, direction, audio in zip(cols.payload, cols.direction, cols.audio_bytes, strict=True):
        if payload is not None and events.mentions_session(payload):
            event = events.parse(payload)
            if event is not None:
                formats.follow(event)
        audio_ms.append(formats.ms(audio, sides[direction]) if audio else None)
    return Read(
        header=header,
        end=cols.end,
        problems=cols.problems,
        locked=cols.locked,
        columns=cols,
        audio_ms=audio_ms,
        session_id=str((header or {}).get("session_id") or path.stem) if base is None else base["session_id"],
        started=started_at(header) if base is None else base["started_at"],
        messages=len(cols.seq),
        last_t_ns=cols.t_ns[-1] if cols.t_ns else None,
        formats=[formats.of(events.SENT), formats.of(events.RECEIVED)],
        size=stat.st_size,
        mtime_ns=stat.st_mtime_ns,
        ino=stat.st_ino,
        stop=cols.stop,
        mark=mark(path, cols.stop),
    )


Job = tuple[Path, str, int, dict[str, Any] | None]
"""What to read of a capture: its path, its name in the manifest, where to start, and the
manifest row it extends (``None`` when read from the start)."""


def read_all(jobs: list[Job], lock: int) -> Generator[Read | CaptureError, None, None]:
    """Read the captures of ``jobs``, yielding in their order: in worker processes when
    there are many. ``lock`` is the index lock's descriptor, which workers close.

    Each worker takes every n-th job and sends what it read through a pipe of its own, in
    order, so this process receives in job order and holds few results at a time. The
    workers ignore Ctrl-C (this process gets it, and ends them), die with this process
    even when it is killed outright, and are killed when reading stops early: none is ever
    left behind holding the lock it inherited."""
    count = min(os.cpu_count() or 1, 8)
    if len(jobs) < 16 or count < 2:
        for path, _, start, base in jobs:
            yield read_job(path, start, base)
        return
    import multiprocessing
    from multiprocessing.connection import Connection

    # fork, not spawn or forkserver: those run the caller's main module again, which a
    # plain script using the Python API does not expect. The workers run only pure Python
    # (see read_job), so the parent's DuckDB and Arrow threads do not matter to them.
    context = multiprocessing.get_context("fork")
    workers: list[tuple[Any, Connection]] = []
    for stream in (sys.stdout, sys.stderr):  # else what they hold would be written again by each worker
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        # Blocked until each worker has set Ctrl-C aside; one meanwhile waits for the unblock.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            for n in range(count):
                receiver, sender = context.Pipe(duplex=False)
                process = context.Process(target=_work, args=(jobs[n::count], sender, lock, os.getpid()), daemon=True)
                workers.append((process, receiver))
                process.start()
                sender.close()  # so that a worker's death reads as the end of its pipe
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for n, (path, _, start, base) in enumerate(jobs):
            receiver = workers[n % count][1]
            if receiver.closed:  # its worker died: the rest of its share is read here
                yield read_job(path, start, base)
                continue
            try:
                result = receiver.recv()
            except (EOFError, OSError):  # killed, out of memory: this capture is tried again next time
                receiver.close()
                result = CaptureError(f"cannot read {path}: the process reading it died")
            yield result
    finally:
        for process, receiver in workers:
            if process.pid is not None and process.is_alive():
                process.kill()  # before closing its pipe, which would make it fail loudly
            if process.pid is not None:
                process.join()
            receiver.close()


def _work(jobs: list[Job], sender: Any, lock: int, parent: int) -> None:
    """A worker process of :func:`read_all`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    os.close(lock)  # else the lock outlives the parent as long as this process lives
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)
    for path, _, start, base in jobs:
        sender.send(read_job(path, start, base))
    sender.close()
