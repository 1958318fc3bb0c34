"""The capture index: Parquet files under ``<captures>/.rtcap/`` that DuckDB queries.

``manifest.parquet`` has one row per capture file (its identity on disk, how far it was
read, its header and end record, and the segments holding its messages); the segments,
``events/seg-*.parquet``, one row per message, many captures to a file. Updating is
incremental: a new capture is read, a grown one from where it was left, a changed one
again, an unchanged one not at all, a deleted one dropped (its rows cut out of its
segments). Several processes may update at once: an exclusive lock on ``.rtcap/lock``
serialises them, and every file is replaced atomically, so a reader sees the old index or
the new one. A reader holds the shared lock while it reads, so no segment it was told of
goes away under it: the manifest is written before the segments it no longer names are
removed, under the exclusive lock.

The index never follows a symbolic link: a ``.rtcap`` that is one is not used (the index
goes to the cache directory instead), captures and day directories that are links are not
read, and every file it writes is created where it is, never through a link. Only regular
files are read as captures; anything else named like one is listed as damaged, unread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recorder import events
from recorder.capture import CaptureError, make_private_dirs

from .locate import capture_files
from .reading import Job, Part, Read, mark, read_all, started_at

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
    """``<root>/.rtcap``, or a cache directory when the root cannot be written or its
    ``.rtcap`` is not a directory of its own (a symbolic link is never followed: the
    index would write, and delete, files wherever it points)."""
    local = root / ".rtcap"
    try:
        mode: int | None = os.lstat(local).st_mode
    except FileNotFoundError:
        mode = None
    except OSError:
        mode = 0
    if mode is None and os.access(root, os.W_OK):
        return local
    if mode is not None and stat.S_ISDIR(mode) and os.access(local, os.W_OK):
        return local
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "rtcap" / hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]


def _real_dir(path: Path) -> None:
    """Create ``path`` 0700 if missing, and make sure it is a directory, not a link to one."""
    make_private_dirs(path)
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        raise OSError(errno.ENOTDIR, f"{path} is not a directory of rtcap's index (a symbolic link?)")


@contextlib.contextmanager
def _locked(directory: Path, exclusive: bool) -> Iterator[int]:
    """Hold the index's lock; yields its descriptor (which worker processes must close)."""
    _real_dir(directory)
    try:
        fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise OSError(e.errno, f"{directory / 'lock'} is a symbolic link, not rtcap's lock: remove it") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield fd
    finally:
        os.close(fd)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _integer(value: Any, bits: int = 64) -> int | None:
    """``value`` if it is an integer Arrow can hold in ``bits`` signed bits, else ``None``."""
    limit = 1 << (bits - 1)
    return value if type(value) is int and -limit <= value < limit else None


def _dialect(header: dict[str, Any]) -> str:
    headers = header.get("request_headers")
    subprotocols = header.get("subprotocols")
    url = header.get("url")
    return events.dialect(
        url if isinstance(url, str) else None,
        headers if isinstance(headers, list) else (),
        subprotocols if isinstance(subprotocols, list) else (),
    )


def _array(values: np.ndarray, kind: pa.DataType, valid: np.ndarray | None = None) -> pa.Array:
    """A numpy array as an Arrow array of ``kind``, sharing its memory: built from buffers,
    because ``pa.array`` imports pandas (when installed) on its first call, which costs
    more than reading a small capture."""
    if kind == pa.bool_():
        buffer, length = pa.py_buffer(np.packbits(values, bitorder="little")), len(values)
    else:
        buffer, length = pa.py_buffer(np.ascontiguousarray(values)), len(values)
    mask = None if valid is None else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(kind, length, [mask, buffer])


def _strings(values: list[str | None]) -> pa.Array:
    """Text (``None`` for none) as an Arrow string array, without ``pa.array`` (see
    :func:`_array`)."""
    encoded = [b"" if v is None else v.encode() for v in values]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    valid = pa.py_buffer(np.packbits([v is not None for v in values], bitorder="little"))
    buffers = [valid, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]
    return pa.Array.from_buffers(pa.large_string(), len(values), buffers).cast(pa.string())


def _table(part: Part) -> pa.Table:
    """A batch of a capture's new messages as an Arrow table (its arrays taken as they are)."""
    rows = len(part)
    no_audio = np.isnan(part.audio_ms)
    return pa.table(
        {
            "session_id": pa.DictionaryArray.from_arrays(
                _array(np.zeros(rows, np.int32), pa.int32()), _strings([part.session_id])
            ),
            "seq": _array(part.seq, pa.int64()),
            "t_ns": _array(part.t_ns, pa.int64()),
            "ts": _array(part.ts_us, pa.timestamp("us", tz="UTC")),
            "direction": pa.DictionaryArray.from_arrays(
                _array(part.direction.astype(np.int32), pa.int32()), _strings([events.SENT, events.RECEIVED])
            ),
            "is_text": _array(part.text, pa.bool_()),
            "bytes": _array(part.wire_bytes, pa.int64()),
            "audio_bytes": _array(part.audio_bytes, pa.int64()),
            "audio_ms": _array(np.where(no_audio, 0.0, part.audio_ms), pa.float64(), ~no_audio),
            "redacted": _array(part.redacted, pa.bool_()),
            "payload": _strings(part.payload),
        }
    )


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
        self._snapshot: tuple[tuple[int, int, int], pa.Table, list[str]] | None = None
        self._present: set[str] = set()  # the segments on disk when this update began

    def manifest(self) -> dict[str, dict[str, Any]]:
        """The manifest's rows by file (relative to the root); none if it is missing or
        unreadable (the index is then built again)."""
        return {row["file"]: row for row in self._manifest_table().to_pylist()}

    def _manifest_table(self) -> pa.Table:
        """The manifest as a table (empty if it is missing, unreadable or of another
        version), parsed again only when its file changed: a process that queries often
        (``rtcap ui``), or an update and the query after it, read it once."""
        try:
            info = os.stat(self.manifest_path)
        except OSError:
            return MANIFEST_SCHEMA.empty_table()
        key = (info.st_mtime_ns, info.st_size, info.st_ino)
        if self._snapshot is None or self._snapshot[0] != key:
            try:
                table = pq.ParquetFile(self.manifest_path).read()
            except (OSError, pa.ArrowException):
                table = MANIFEST_SCHEMA.empty_table()
            if not _current(table):
                table = MANIFEST_SCHEMA.empty_table()
            names = sorted({name for names in table.column("segments").to_pylist() for name in names or ()})
            self._snapshot = (key, table, names)
        return self._snapshot[1]

    def update(self, progress: Callable[[int, int], None] | None = None) -> UpdateReport:
        """Bring the index up to date with the captures on disk."""
        report = UpdateReport()
        with _locked(self.dir, exclusive=True) as lock:
            _real_dir(self.events_dir)
            with os.scandir(self.events_dir) as entries:  # a row whose segment is gone is read again
                self._present = {entry.name for entry in entries if entry.is_file(follow_symlinks=False)}
            files = capture_files(self.root) if self.root.is_dir() else []
            table = self._manifest_table()
            if self._unchanged(table, files, report):
                self._rows = None  # the manifest on disk is this update's
                self._sweep(set(self._snapshot[2] if self._snapshot is not None else ()))
                return report
            old = {row["file"]: row for row in table.to_pylist()}
            rows: dict[str, dict[str, Any]] = {}
            jobs = []
            for path in files:
                rel = str(path.relative_to(self.root))
                try:
                    found = os.lstat(path)
                except FileNotFoundError:
                    continue  # gone since it was listed: deleted
                if not stat.S_ISREG(found.st_mode):
                    rows[rel] = self._unread(path, rel, found, old.get(rel), report)
                    continue
                job = self._plan(path, rel, found, old.get(rel), report)
                if job is None:
                    rows[rel] = old[rel]
                else:
                    jobs.append(job)
            done = len(rows)
            # Closed explicitly, so that worker processes end here even when this fails.
            with contextlib.closing(read_all(jobs, lock)) as results:
                for job, items in zip(jobs, results, strict=True):
                    path, rel, start, base = job
                    row = self._fold(path, rel, old.get(rel), base, items, report)
                    if row is not None:
                        rows[rel] = row
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
            # Only now that the manifest names none of them may old segments go.
            self._sweep({name for row in rows.values() for name in row["segments"]})
            self._rows = list(rows.values())
        return report

    def _unchanged(self, manifest: pa.Table, files: list[Path], report: UpdateReport) -> bool:
        """Whether every capture is as the manifest has it (the same files, each of the same
        size, time and inode, none open, every segment there): then nothing is read or
        written, and the check costs one ``lstat`` a capture. Anything else takes the
        whole update, which also sweeps what an interrupted update left."""
        if manifest.num_rows != len(files):
            return False
        columns = [manifest.column(name).to_pylist() for name in ("size", "mtime_ns", "ino", "state", "segments")]
        known = dict(zip(manifest.column("file").to_pylist(), zip(*columns, strict=True), strict=True))
        present = self._present
        rels = []
        for path in files:
            rel = str(path.relative_to(self.root))
            row = known.get(rel)
            try:
                found = os.lstat(path)
            except OSError:
                return False
            if row is None or (found.st_size, found.st_mtime_ns, found.st_ino) != row[:3] or row[3] == "open":
                return False
            if not stat.S_ISREG(found.st_mode) or not all(name in present for name in row[4] or ()):
                return False
            rels.append(rel)
        report.unchanged = rels
        return True

    def _sweep(self, owned: set[str]) -> None:
        """Remove the files no manifest row owns (``owned`` are the segments it names):
        segments merged, emptied or left by an older index, and temporary files of an
        update that was interrupted (only the holder of the exclusive lock writes, so any
        found now is stale)."""
        for directory in (self.dir, self.events_dir):
            with os.scandir(directory) as entries:
                for entry in entries:
                    stale = entry.name.endswith(".tmp") or (
                        directory == self.events_dir and entry.name.endswith(".parquet") and entry.name not in owned
                    )
                    if stale and not entry.is_dir(follow_symlinks=False):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry.path)  # a link itself, never what it points to

    def _plan(
        self, path: Path, rel: str, found: os.stat_result, old: dict[str, Any] | None, report: UpdateReport
    ) -> Job | None:
        """What to read of a capture: ``None`` if nothing, else (path, rel, start, row to extend)."""
        identity = (found.st_size, found.st_mtime_ns, found.st_ino)
        intact = old is not None and all(name in self._present for name in old["segments"])
        if old is not None and (old["size"], old["mtime_ns"], old["ino"]) == identity and old["state"] != "open":
            if intact:
                report.unchanged.append(rel)
                return None
        elif (
            old is not None
            and intact
            and old["stop"] > 0  # a header still being written when last read: read it again whole
            and old["ino"] == found.st_ino
            and found.st_size >= old["stop"]
            and old["end_t_ns"] is None
            and mark(path, old["stop"]) == old["mark"]
        ):
            return path, rel, old["stop"], dict(old)
        if old is not None:
            self._drop(old)
        return path, rel, 0, None

    def _unread(
        self, path: Path, rel: str, found: os.stat_result, old: dict[str, Any] | None, report: UpdateReport
    ) -> dict[str, Any]:
        """The row of something named like a capture that is not a regular file (a link, a
        FIFO, a device): listed as damaged, never opened."""
        if old is not None and old["segments"]:
            self._drop(old)
        kind = "a symbolic link" if stat.S_ISLNK(found.st_mode) else "not a regular file"
        problems = f"{kind}: not read"
        identity = (found.st_size, found.st_mtime_ns, found.st_ino, problems)
        if old is not None and (old["size"], old["mtime_ns"], old["ino"], old["problems"]) == identity:
            report.unchanged.append(rel)
            return old
        row = self._new_row(rel, path, None)
        row.update(size=found.st_size, mtime_ns=found.st_mtime_ns, ino=found.st_ino, stop=0, mark=b"")
        row.update(state="damaged", problems=problems)
        (report.new if old is None else report.changed).append(rel)
        report.damaged.append(rel)
        return row

    def _fold(
        self,
        path: Path,
        rel: str,
        old: dict[str, Any] | None,
        base: dict[str, Any] | None,
        items: Any,
        report: UpdateReport,
    ) -> dict[str, Any] | None:
        """Fold what was read of a capture (its batches, then its :class:`Read`) into its
        manifest row, queueing its parts; ``None`` when nothing was read and the row stays
        as it was (or absent)."""
        row, messages, last_t_ns, failed = base, 0, None, []
        for item in items:
            if isinstance(item, Part):
                if row is None:
                    row = self._new_row(rel, path, item.header)
                try:
                    table = _table(item)
                except (pa.ArrowException, ValueError, TypeError, OverflowError) as e:
                    # The reader hands on valid types only; should a value still not convert,
                    # these messages are left out and the capture says why.
                    failed.append(f"{len(item)} messages not indexed: {type(e).__name__}: {e}")
                    continue
                self._write_part(row, table)
                messages += len(item)
                last_t_ns = int(item.t_ns[-1])
            elif isinstance(item, CaptureError):
                report.errors.append(str(item))
                if row is None or row is base and not messages:
                    return old  # nothing written: tried again next time
                # Some of its messages are in the index already: kept, with why the rest are
                # not, and read again whole next time (nothing says where reading stopped).
                row["messages"] += messages
                row.update(size=-1, stop=0, mark=b"", state="damaged")
                problems = [*(row["problems"] or "").split("\n"), *failed, str(item)]
                row["problems"] = "\n".join(p for p in dict.fromkeys(problems) if p)
                report.damaged.append(rel)
                return row
            else:
                return self._apply(path, rel, old, row, base is None, item, messages, last_t_ns, failed, report)
        raise AssertionError("a capture's items end with its Read or an error")

    def _apply(
        self,
        path: Path,
        rel: str,
        old: dict[str, Any] | None,
        row: dict[str, Any] | None,
        whole: bool,
        read: Read,
        messages: int,
        last_t_ns: int | None,
        failed: list[str],
        report: UpdateReport,
    ) -> dict[str, Any]:
        """Fold what was read of a capture besides its messages (``messages`` of them,
        already queued) into its manifest row."""
        if row is None:
            row = self._new_row(rel, path, read.header)
        if whole:
            (report.new if old is None else report.changed).append(rel)
        elif old is not None and read.size == old["size"] and not read.messages and read.end is None:
            report.unchanged.append(rel)
        else:
            report.grown.append(rel)
        problems = [p for p in (row["problems"] or "").split("\n") if p] + read.problems + failed
        if messages:
            row["messages"] += messages
            row["last_t_ns"] = _integer(last_t_ns)
        row["format_in"], row["format_out"] = read.formats
        row["format"] = read.version
        row.update(size=read.size, mtime_ns=read.mtime_ns, ino=read.ino, stop=read.stop, mark=read.mark)
        if read.end is not None:
            end = read.end
            row.update(
                end_t_ns=_integer(end.get("t_ns")),
                close_code=_integer(end.get("code"), 32),
                close_by=_text(end.get("closed_by")),
                close_reason=_text(end.get("reason")),
            )
            row["end_error"] = _text(end.get("error")) or _text(end.get("incomplete"))
        if not read.locked and row["end_t_ns"] is None:
            problems.append("no end record: the recording process stopped before the session ended")
        row["problems"] = "\n".join(dict.fromkeys(problems)) or None
        row["state"] = "open" if read.locked else ("damaged" if row["problems"] else "closed")
        if row["state"] == "damaged":
            report.damaged.append(rel)
        return row

    def _new_row(self, rel: str, path: Path, header: dict[str, Any] | None) -> dict[str, Any]:
        # Every value is checked for the type its column takes, although the reader already
        # did: a manifest Arrow cannot write would stop the whole root from answering.
        header = header or {}
        labels = header.get("labels")
        return {
            "file": rel,
            "session_id": _text(header.get("session_id")) or path.stem,
            "key": rel.removesuffix(".msgpack").replace("/", "_"),
            "segments": [],
            "messages": 0,
            "problems": None if header else "no header record",
            "started_at": started_at(header),
            "url": _text(header.get("url")),
            "dialect": _dialect(header),
            "recorder": _text(header.get("recorder")),
            "labels": [
                (k, v)
                for k, v in (labels.items() if isinstance(labels, dict) else ())
                if _text(k) and _text(v) is not None
            ],
            "replay_of": _text(header.get("replay_of")),
            "end_t_ns": None,
            "last_t_ns": None,
            "close_code": None,
            "close_by": None,
            "close_reason": None,
            "handshake_status": _integer(header.get("response_status", 101), 32) if header else None,
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
            if name not in self._present:
                continue
            table = pq.read_table(path)
            kept = table.filter(pc.not_equal(table["key"], row["key"]))
            if 0 < kept.num_rows < table.num_rows:
                _atomic_parquet(kept, path)
            # An emptied segment stays until the manifest no longer names it (_sweep).
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
        # The merged segments stay until the manifest no longer names them (_sweep).

    def _write_manifest(self, rows: list[dict[str, Any]]) -> None:
        table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
        table = table.replace_schema_metadata({"rtcap_index": str(INDEX_VERSION)})
        _atomic_parquet(table, self.manifest_path)
        info = os.stat(self.manifest_path)  # ours: the exclusive lock is held
        names = sorted({name for row in rows for name in row["segments"]})
        self._snapshot = ((info.st_mtime_ns, info.st_size, info.st_ino), table, names)

    def snapshot(self) -> tuple[pa.Table, list[Path]]:
        """The manifest as a table, and the segments it names that are there: what one
        query reads. The table is parsed again only when the manifest file changed, so a
        process that queries often (``rtcap ui``) does not pay for it on every statement."""
        table = self._manifest_table()
        names = self._snapshot[2] if self._snapshot is not None else []
        # Segments are removed only once no manifest names them; one removed by hand is skipped.
        return table, [self.events_dir / name for name in names if _is_file(self.events_dir / name)]

    def part_files(self, fresh: bool = False) -> list[Path]:
        """Every segment of the captures in the manifest, for DuckDB: as this process's
        last update left it, or (``fresh``) as the manifest on disk says now."""
        rows = self.manifest().values() if fresh or self._rows is None else self._rows
        return self._parts(rows)

    def _parts(self, rows: Any) -> list[Path]:
        # Only segments that are there, as regular files: a manifest that names anything
        # else (copied from elsewhere, or a segment removed by hand) must not fail a query.
        names = sorted({n for row in rows for n in row["segments"]})
        return [self.events_dir / name for name in names if _is_file(self.events_dir / name)]

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Hold the index steady while a query reads it."""
        with _locked(self.dir, exclusive=False):
            yield


def _current(manifest: pa.Table) -> bool:
    """Whether a manifest was written by this version of the index (else it is rebuilt)."""
    metadata = manifest.schema.metadata or {}
    return metadata.get(b"rtcap_index") == str(INDEX_VERSION).encode()


def _is_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _atomic_parquet(table: pa.Table, path: Path) -> None:
    """Write ``path`` (0600) as a whole or not at all. The temporary file is created new,
    never through a link, and renaming it replaces whatever had the name, links included."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        pq.write_table(table, f, compression="zstd")
    os.replace(tmp, path)
