"""The capture index: Parquet files under ``<captures>/.rtcap/`` that DuckDB queries.

``manifest.parquet`` has one row per capture file (its identity on disk, how far it was
read, its header and end record, and the segments holding its messages); the segments,
``events/seg-*.parquet``, one row per message, many captures to a file. Updating is
incremental: a new capture is read, a grown one from where it was left, a changed one
again, an unchanged one not at all, a deleted one dropped (its rows cut out of its
segments). Several processes may update at once: an exclusive lock on ``.rtcap/lock``
serialises them, and every file is replaced atomically, so a reader sees the old index or
the new one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from recorder import events
from recorder.capture import CaptureError, Columns, make_private_dirs, read_columns

from .locate import capture_files

INDEX_VERSION = 5
PART_ROWS = 200_000  # messages per Parquet segment written at once: bounds memory
SMALL_SEGMENTS = 8  # more segments than this under PART_ROWS / 4 rows are merged into one

MANIFEST_SCHEMA = pa.schema(
    [
        ("file", pa.string()),
        ("session_id", pa.string()),
        ("key", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("ino", pa.int64()),
        ("stop", pa.int64()),
        ("mark", pa.binary()),
        ("segments", pa.list_(pa.string())),
        ("messages", pa.int64()),
        ("state", pa.string()),
        ("problems", pa.string()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("url", pa.string()),
        ("dialect", pa.string()),
        ("recorder", pa.string()),
        ("labels", pa.map_(pa.string(), pa.string())),
        ("replay_of", pa.string()),
        ("end_t_ns", pa.int64()),
        ("last_t_ns", pa.int64()),
        ("close_code", pa.int32()),
        ("close_by", pa.string()),
        ("close_reason", pa.string()),
        ("handshake_status", pa.int32()),
        ("end_error", pa.string()),
        ("format_in", pa.string()),
        ("format_out", pa.string()),
        ("format", pa.int64()),
    ]
)


@dataclasses.dataclass
class UpdateReport:
    """What an index update did, file by file."""

    new: list[str] = dataclasses.field(default_factory=list)
    grown: list[str] = dataclasses.field(default_factory=list)
    changed: list[str] = dataclasses.field(default_factory=list)
    unchanged: list[str] = dataclasses.field(default_factory=list)
    deleted: list[str] = dataclasses.field(default_factory=list)
    damaged: list[str] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)

    @property
    def read(self) -> list[str]:
        """The capture files that were read (fully or from where they were left)."""
        return self.new + self.grown + self.changed


def index_dir(root: Path) -> Path:
    """``<root>/.rtcap``, or a cache directory when the root cannot be written."""
    local = root / ".rtcap"
    if local.is_dir() and os.access(local, os.W_OK):
        return local
    if not local.exists() and os.access(root, os.W_OK):
        return local
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "rtcap" / hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _locked(directory: Path, exclusive: bool) -> Iterator[None]:
    make_private_dirs(directory)
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def _mark(path: Path, stop: int) -> bytes:
    """The bytes just before ``stop``: if they change, the file was rewritten, not grown."""
    with open(path, "rb") as f:
        f.seek(max(0, stop - 64))
        return f.read(min(stop, 64))


def _dialect(header: dict[str, Any]) -> str:
    headers = header.get("request_headers")
    subprotocols = header.get("subprotocols")
    url = header.get("url")
    return events.dialect(
        url if isinstance(url, str) else None,
        headers if isinstance(headers, list) else (),
        subprotocols if isinstance(subprotocols, list) else (),
    )


def _started_at(header: dict[str, Any] | None) -> dt.datetime | None:
    started = (header or {}).get("started_at")
    try:
        return dt.datetime.fromisoformat(started) if isinstance(started, str) else None
    except ValueError:
        return None


@dataclasses.dataclass
class _Read:
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


def _read_job(path: Path, start: int, base: dict[str, Any] | None) -> _Read | CaptureError:
    """Read a capture from ``start``: its columns, and each message's audio duration in
    the session's format as it was then. Pure Python (no Arrow, no DuckDB), because this
    runs in forked worker processes."""
    try:
        stat = path.stat()
        cols = read_columns(path, start, version=None if base is None else base["format"])
    except (CaptureError, OSError) as e:
        return e if isinstance(e, CaptureError) else CaptureError(f"cannot read {path}: {e}")
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
    return _Read(
        header=header,
        end=cols.end,
        problems=cols.problems,
        locked=cols.locked,
        columns=cols,
        audio_ms=audio_ms,
        session_id=str((header or {}).get("session_id") or path.stem) if base is None else base["session_id"],
        started=_started_at(header) if base is None else base["started_at"],
        messages=len(cols.seq),
        last_t_ns=cols.t_ns[-1] if cols.t_ns else None,
        formats=[formats.of(events.SENT), formats.of(events.RECEIVED)],
        size=stat.st_size,
        mtime_ns=stat.st_mtime_ns,
        ino=stat.st_ino,
        stop=cols.stop,
        mark=_mark(path, cols.stop),
    )


def _tables(read: _Read) -> list[pa.Table]:
    """A capture's new messages as Arrow tables of at most ``PART_ROWS`` rows."""
    import pyarrow.compute as pc  # only when there is something to read: it is slow to import

    cols = read.columns
    base_us = int(read.started.timestamp() * 1_000_000) if read.started is not None else 0
    tables = []
    for lo in range(0, len(cols.seq), PART_ROWS):
        hi = lo + PART_ROWS
        t_ns = pa.array(cols.t_ns[lo:hi], pa.int64())
        tables.append(
            pa.table(
                {
                    "session_id": pa.array([read.session_id] * len(t_ns), pa.string()).dictionary_encode(),
                    "seq": pa.array(cols.seq[lo:hi], pa.int64()),
                    "t_ns": t_ns,
                    "ts": pc.add(pc.divide(t_ns, 1000), base_us).cast(pa.timestamp("us", tz="UTC")),
                    "direction": pa.array(
                        [events.SENT if d == 0 else events.RECEIVED for d in cols.direction[lo:hi]]
                    ).dictionary_encode(),
                    "is_text": pa.array(cols.text[lo:hi], pa.bool_()),
                    "bytes": pa.array(cols.wire_bytes[lo:hi], pa.int64()),
                    "audio_bytes": pa.array(cols.audio_bytes[lo:hi], pa.int64()),
                    "audio_ms": pa.array(read.audio_ms[lo:hi], pa.float64()),
                    "redacted": pa.array(cols.redacted[lo:hi], pa.bool_()),
                    "payload": pa.array(cols.payload[lo:hi], pa.string()),
                }
            )
        )
    return tables


def _read_all(jobs: list[tuple[Path, str, int, dict[str, Any] | None]]) -> Iterator[_Read | CaptureError]:
    """Read the captures of ``jobs`` in order: in worker processes when there are many."""
    workers = min(os.cpu_count() or 1, 8)
    if len(jobs) < 16 or workers < 2:
        for path, _, start, base in jobs:
            yield _read_job(path, start, base)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # fork, not spawn or forkserver: those run the caller's main module again, which a
    # plain script using the Python API does not expect. The workers run only pure Python
    # (see _read_job), so the parent's DuckDB and Arrow threads do not matter to them.
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        paths, starts, bases = zip(*[(path, start, base) for path, _, start, base in jobs], strict=True)
        yield from pool.map(_read_job, paths, starts, bases, chunksize=4)


class Index:
    """The index of one capture root."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        self.dir = index_dir(self.root)
        self.events_dir = self.dir / "events"
        self.manifest_path = self.dir / "manifest.parquet"
        self._db: Any = None  # a DuckDB connection for parsing payloads, opened when needed
        self._pending: list[tuple[dict[str, Any], pa.Table]] = []
        self._pending_rows = 0
        self._rows: list[dict[str, Any]] | None = None  # the manifest as the last update left it

    def manifest(self) -> dict[str, dict[str, Any]]:
        """The manifest's rows by file (relative to the root)."""
        if not self.manifest_path.exists():
            return {}
        table = pq.read_table(self.manifest_path)
        if table.schema.metadata is None or table.schema.metadata.get(b"rtcap_index") != str(INDEX_VERSION).encode():
            return {}
        return {row["file"]: row for row in table.to_pylist()}

    def update(self, progress: Callable[[int, int], None] | None = None) -> UpdateReport:
        """Bring the index up to date with the captures on disk."""
        report = UpdateReport()
        with _locked(self.dir, exclusive=True):
            make_private_dirs(self.events_dir)
            old = self.manifest()
            rows: dict[str, dict[str, Any]] = {}
            files = capture_files(self.root) if self.root.is_dir() else []
            jobs = []
            for path in files:
                rel = str(path.relative_to(self.root))
                job = self._plan(path, rel, old.get(rel), report)
                if job is None:
                    rows[rel] = old[rel]
                else:
                    jobs.append(job)
            done = len(rows)
            for job, result in zip(jobs, _read_all(jobs), strict=True):
                path, rel, start, base = job
                if isinstance(result, CaptureError):
                    report.errors.append(str(result))
                    if rel in old:
                        rows[rel] = old[rel]
                else:
                    rows[rel] = self._apply(path, rel, old.get(rel), base, result, report)
                done += 1
                if progress is not None:
                    progress(done, len(files))
            self._flush()
            for rel, row in old.items():
                if rel not in rows:
                    report.deleted.append(rel)
                    self._drop(row)
            self._compact(rows.values())
            if rows != old:
                self._write_manifest(list(rows.values()))
            self._sweep(rows.values())
            self._rows = list(rows.values())
        return report

    def _sweep(self, rows: Any) -> None:
        """Remove part files no manifest row owns (from an older index, or a crash)."""
        owned = {path.name for path in self._parts(rows)}
        for part in self.events_dir.glob("*.parquet"):
            if part.name not in owned:
                part.unlink(missing_ok=True)

    def _plan(self, path: Path, rel: str, old: dict[str, Any] | None, report: UpdateReport) -> Any:
        """What to read of a capture: ``None`` if nothing, else (path, rel, start, row to extend)."""
        stat = path.stat()
        identity = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
        if old is not None and (old["size"], old["mtime_ns"], old["ino"]) == identity and old["state"] != "open":
            report.unchanged.append(rel)
            return None
        if (
            old is not None
            and old["stop"] > 0  # a header still being written when last read: read it again whole
            and old["ino"] == stat.st_ino
            and stat.st_size >= old["stop"]
            and old["end_t_ns"] is None
            and _mark(path, old["stop"]) == old["mark"]
        ):
            return path, rel, old["stop"], dict(old)
        if old is not None:
            self._drop(old)
        return path, rel, 0, None

    def _apply(
        self,
        path: Path,
        rel: str,
        old: dict[str, Any] | None,
        row: dict[str, Any] | None,
        read: _Read,
        report: UpdateReport,
    ) -> dict[str, Any]:
        """Fold what was read of a capture into its manifest row, and queue its parts."""
        if row is None:
            row = self._new_row(rel, path, read.header)
            (report.new if old is None else report.changed).append(rel)
        elif old is not None and read.size == old["size"] and not read.messages and read.end is None:
            report.unchanged.append(rel)
        else:
            report.grown.append(rel)
        for table in _tables(read):
            self._write_part(row, table)
        if read.messages:
            row["messages"] += read.messages
            row["last_t_ns"] = read.last_t_ns
        row["format_in"], row["format_out"] = read.formats
        row["format"] = read.columns.version
        row.update(size=read.size, mtime_ns=read.mtime_ns, ino=read.ino, stop=read.stop, mark=read.mark)
        if read.end is not None:
            end = read.end
            row.update(
                end_t_ns=end.get("t_ns"),
                close_code=end.get("code"),
                close_by=end.get("closed_by"),
                close_reason=end.get("reason"),
            )
            row["end_error"] = end.get("error") or end.get("incomplete")
        problems = [p for p in (row["problems"] or "").split("\n") if p] + read.problems
        if not read.locked and row["end_t_ns"] is None:
            problems.append("no end record: the recording process stopped before the session ended")
        row["problems"] = "\n".join(dict.fromkeys(problems)) or None
        row["state"] = "open" if read.locked else ("damaged" if row["problems"] else "closed")
        if row["state"] == "damaged":
            report.damaged.append(rel)
        return row

    def _new_row(self, rel: str, path: Path, header: dict[str, Any] | None) -> dict[str, Any]:
        header = header or {}
        labels = header.get("labels") if isinstance(header.get("labels"), dict) else {}
        return {
            "file": rel,
            "session_id": str(header.get("session_id") or path.stem),
            "key": rel.removesuffix(".msgpack").replace("/", "_"),
            "segments": [],
            "messages": 0,
            "problems": None if header else "no header record",
            "started_at": _started_at(header),
            "url": header.get("url"),
            "dialect": _dialect(header),
            "recorder": header.get("recorder"),
            "labels": [(str(k), str(v)) for k, v in (labels or {}).items()],
            "replay_of": header.get("replay_of"),
            "end_t_ns": None,
            "last_t_ns": None,
            "close_code": None,
            "close_by": None,
            "close_reason": None,
            "handshake_status": header.get("response_status", 101) if header else None,
            "end_error": None,
            "format_in": "pcm16",
            "format_out": "pcm16",
            "format": None,
        }

    def _write_part(self, row: dict[str, Any], table: pa.Table) -> None:
        """Queue a capture's new messages; queued messages are parsed by DuckDB and written
        as one segment file at a time, so a thousand captures make a few files, not a
        thousand."""
        key = pa.array([row["key"]] * table.num_rows, pa.string()).dictionary_encode()
        self._pending.append((row, table.append_column("key", key)))
        self._pending_rows += table.num_rows
        if self._pending_rows >= PART_ROWS:
            self._flush()

    def _flush(self) -> None:
        """Parse the queued messages' payloads in one DuckDB query and write one segment."""
        if not self._pending:
            return
        from .db import extract_fields

        merged = extract_fields(pa.concat_tables([table for _, table in self._pending]), self._duckdb())
        name = f"seg-{time.time_ns():x}-{os.getpid()}.parquet"
        _atomic_parquet(merged, self.events_dir / name)
        for row, _ in self._pending:
            if name not in row["segments"]:
                row["segments"] = [*row["segments"], name]
        self._pending, self._pending_rows = [], 0

    def _duckdb(self) -> Any:
        if self._db is None:
            from .db import connect

            self._db = connect()
        return self._db

    def _drop(self, row: dict[str, Any]) -> None:
        """Remove a capture's messages from the segments that hold them."""
        import pyarrow.compute as pc

        for name in row["segments"]:
            path = self.events_dir / name
            if not path.exists():
                continue
            table = pq.read_table(path)
            kept = table.filter(pc.not_equal(table["key"], row["key"]))
            if kept.num_rows == 0:
                path.unlink()
            elif kept.num_rows < table.num_rows:
                _atomic_parquet(kept, path)
        row["segments"] = []

    def _compact(self, rows: Any) -> None:
        """Merge small segments (left by many small updates) into one."""
        rows = list(rows)
        names = sorted({name for row in rows for name in row["segments"]})
        small = [n for n in names if pq.ParquetFile(self.events_dir / n).metadata.num_rows < PART_ROWS // 4]
        if len(small) <= SMALL_SEGMENTS:
            return
        name = f"seg-{time.time_ns():x}-{os.getpid()}.parquet"
        # Fewer than SMALL_SEGMENTS * PART_ROWS / 4 rows at a time: memory stays bounded.
        merged_table = pa.concat_tables([pq.read_table(self.events_dir / n) for n in small], promote_options="default")
        _atomic_parquet(merged_table, self.events_dir / name)
        merged = set(small)
        for row in rows:
            if merged & set(row["segments"]):
                row["segments"] = [n for n in row["segments"] if n not in merged] + [name]
        for n in small:
            (self.events_dir / n).unlink(missing_ok=True)

    def _write_manifest(self, rows: list[dict[str, Any]]) -> None:
        table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
        table = table.replace_schema_metadata({"rtcap_index": str(INDEX_VERSION)})
        _atomic_parquet(table, self.manifest_path)

    def part_files(self, fresh: bool = False) -> list[Path]:
        """Every segment of the captures in the manifest, for DuckDB: as this process's
        last update left it, or (``fresh``) as the manifest on disk says now."""
        rows = self.manifest().values() if fresh or self._rows is None else self._rows
        return self._parts(rows)

    def _parts(self, rows: Any) -> list[Path]:
        return [self.events_dir / name for name in sorted({n for row in rows for n in row["segments"]})]

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Hold the index steady while a query reads it."""
        with _locked(self.dir, exclusive=False):
            yield


def _atomic_parquet(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
