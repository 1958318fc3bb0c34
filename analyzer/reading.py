"""Reading captures for the index: what is new in each, a batch of messages at a time, in
worker processes when there are many.

Nothing here imports Arrow or DuckDB: :func:`read_job` runs in forked workers, and the
index (:mod:`analyzer.index`) turns the batches they send into Parquet. A batch is numpy
arrays (one per column, cheap to send) and the payloads' text; a worker holds one batch of
one capture at a time, whatever the capture's size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import gc
import os
import signal
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from recorder import events, records
from recorder.capture import CaptureError, Columns, open_capture, stream_columns


def mark(path: Path, stop: int) -> bytes:
    """The bytes just before ``stop``: if they change, the file was rewritten, not grown."""
    with open_capture(path) as f:
        f.seek(max(0, stop - 64))
        return f.read(min(stop, 64))


def started_at(header: dict[str, Any] | None) -> dt.datetime | None:
    """A header's start time (aware, UTC), if it has a valid one."""
    return records.started_at((header or {}).get("started_at"))


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclasses.dataclass
class Part:
    """A batch of one capture's new messages, column by column (picklable). ``header`` is
    the capture's header (``None`` when reading resumes mid-file); ``ts_us`` each message's
    time in microseconds since the epoch, ``audio_ms`` ``NaN`` where it carried none."""

    header: dict[str, Any] | None
    session_id: str
    seq: np.ndarray
    t_ns: np.ndarray
    ts_us: np.ndarray
    direction: np.ndarray
    text: np.ndarray
    wire_bytes: np.ndarray
    audio_bytes: np.ndarray
    audio_ms: np.ndarray
    redacted: np.ndarray
    payload: list[str | None]

    def __len__(self) -> int:
        return len(self.seq)


@dataclasses.dataclass
class Read:
    """What was read of one capture besides its messages (which came before it, as
    :class:`Part` batches), ready to fold into the index (picklable)."""

    header: dict[str, Any] | None
    end: dict[str, Any] | None
    problems: list[str]
    locked: bool
    version: int
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


def read_job(path: Path, start: int, base: dict[str, Any] | None) -> Iterator[Part | Read | CaptureError]:
    """Read a capture from ``start``: its messages as :class:`Part` batches, with each
    message's audio duration in the session's format as it was then, then a :class:`Read`.
    Pure Python and numpy (no Arrow, no DuckDB), because this runs in forked worker
    processes. Whatever goes wrong ends the batches with a :class:`CaptureError`: one
    capture never stops the others from being indexed."""
    try:
        yield from _read(path, start, base)
    except CaptureError as e:
        yield e
    except OSError as e:
        yield CaptureError(f"cannot read {path}: {e.strerror or e}")
    except Exception as e:  # a bug, but one capture's: the others still get indexed
        yield CaptureError(f"cannot index {path}: {type(e).__name__}: {e}")


def _read(path: Path, start: int, base: dict[str, Any] | None) -> Iterator[Part | Read]:
    stat = os.lstat(path)
    formats = events.AudioFormats() if base is None else events.AudioFormats(base["format_in"], base["format_out"])
    messages, last_t_ns, header_sent = 0, None, False
    cols: Columns | None = None
    for cols in stream_columns(path, start, version=None if base is None else base["format"]):
        if base is None:
            session_id = str((cols.header or {}).get("session_id") or path.stem)
            started = started_at(cols.header)
        else:
            session_id, started = base["session_id"], base["started_at"]
        if cols.seq:
            yield _part(None if header_sent or base is not None else cols.header, session_id, started, cols, formats)
            header_sent = True
            messages += len(cols.seq)
            last_t_ns = cols.t_ns[-1]
    assert cols is not None  # stream_columns always yields a last batch
    header = cols.header if base is None else None
    yield Read(
        header=header,
        end=cols.end,
        problems=cols.problems,
        locked=cols.locked,
        version=cols.version,
        session_id=session_id,
        started=started,
        messages=messages,
        last_t_ns=last_t_ns,
        formats=[formats.of(events.SENT), formats.of(events.RECEIVED)],
        size=stat.st_size,
        mtime_ns=stat.st_mtime_ns,
        ino=stat.st_ino,
        stop=cols.stop,
        mark=mark(path, cols.stop),
    )


def _part(
    header: dict[str, Any] | None,
    session_id: str,
    started: dt.datetime | None,
    cols: Columns,
    formats: events.AudioFormats,
) -> Part:
    """A batch as arrays, with its audio durations (``formats`` follows the session's
    ``session.*`` events, which are few: only they are parsed)."""
    direction = np.array(cols.direction, np.int8)
    audio = np.array(cols.audio_bytes, np.int64)
    payloads = cols.payload
    # The formats in force from each row on: they change only at a session event.
    changes = [(0, formats.of(events.SENT), formats.of(events.RECEIVED))]
    for row in [i for i, p in enumerate(payloads) if p is not None and events.mentions_session(p)]:
        event = events.parse(payloads[row])
        if event is not None and formats.follow(event):
            changes.append((row, formats.of(events.SENT), formats.of(events.RECEIVED)))
    per_ms = np.empty(len(audio), np.float64)
    for (row, sent, received), (until, *_) in zip(changes, [*changes[1:], (len(audio), "", "")], strict=True):
        rates = np.array([events.BYTES_PER_MS[sent], events.BYTES_PER_MS[received]], np.float64)
        per_ms[row:until] = rates[direction[row:until]]
    audio_ms = np.where(audio != 0, audio / per_ms, np.nan)
    t_ns = np.array(cols.t_ns, np.int64)
    # Microseconds as Arrow divides (toward zero), from the session's start.
    ts_us = t_ns // 1000
    ts_us += (t_ns < 0) & (t_ns % 1000 != 0)
    if started is not None:
        ts_us += (started - _EPOCH) // dt.timedelta(microseconds=1)
    return Part(
        header=header,
        session_id=session_id,
        seq=np.array(cols.seq, np.int64),
        t_ns=t_ns,
        ts_us=ts_us,
        direction=direction,
        text=np.array(cols.text, np.bool_),
        wire_bytes=np.array(cols.wire_bytes, np.int64),
        audio_bytes=audio,
        audio_ms=audio_ms,
        redacted=np.array(cols.redacted, np.bool_),
        payload=payloads,
    )


Job = tuple[Path, str, int, dict[str, Any] | None]
"""What to read of a capture: its path, its name in the manifest, where to start, and the
manifest row it extends (``None`` when read from the start)."""


def read_all(jobs: list[Job], lock: int) -> Generator[Iterator[Part | Read | CaptureError], None, None]:
    """Read the captures of ``jobs``, yielding in their order, for each, what
    :func:`read_job` yields (its batches, then a :class:`Read` or a
    :class:`CaptureError`): in worker processes when there are many. Each job's items must
    be taken before the next job's. ``lock`` is the index lock's descriptor, which workers
    close.

    Each worker takes every n-th job and sends what it read through a pipe of its own, in
    order, so this process receives in job order and holds one batch at a time. The
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
    # plain script using the Python API does not expect. The workers run only Python and
    # numpy (see read_job), so the parent's DuckDB and Arrow threads do not matter to them.
    context = multiprocessing.get_context("fork")
    workers: list[tuple[Any, Connection]] = []
    for stream in (sys.stdout, sys.stderr):  # else what they hold would be written again by each worker
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        # Blocked until each worker has set Ctrl-C aside; one meanwhile waits for the unblock.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        # What the workers inherit is kept out of their garbage collections, which would
        # otherwise walk (and so copy) every object of this process again and again.
        gc.freeze()
        try:
            for n in range(count):
                receiver, sender = context.Pipe(duplex=False)
                process = context.Process(target=_work, args=(jobs[n::count], sender, lock, os.getpid()), daemon=True)
                workers.append((process, receiver))
                process.start()
                sender.close()  # so that a worker's death reads as the end of its pipe
        finally:
            gc.unfreeze()
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for n, (path, _, start, base) in enumerate(jobs):
            receiver = workers[n % count][1]
            if receiver.closed:  # its worker died: the rest of its share is read here
                yield read_job(path, start, base)
            else:
                yield _received(receiver, path)
    finally:
        for process, receiver in workers:
            if process.pid is not None and process.is_alive():
                process.kill()  # before closing its pipe, which would make it fail loudly
            if process.pid is not None:
                process.join()
            receiver.close()


def _received(receiver: Any, path: Path) -> Iterator[Part | Read | CaptureError]:
    """One job's items as a worker sends them, up to its :class:`Read` or error."""
    while True:
        try:
            item = receiver.recv()
        except (EOFError, OSError):  # killed, out of memory: this capture is tried again next time
            receiver.close()
            yield CaptureError(f"cannot read {path}: the process reading it died")
            return
        yield item
        if not isinstance(item, Part):
            return


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
        for item in read_job(path, start, base):
            sender.send(item)
    sender.close()
