"""The capture index: Parquet files under ``<captures>/.rtcap/`` that DuckDB queries.

``manifest.parquet`` has one row per capture file (its identity on disk, how far it was
read, its header and end record); ``events/<session id>.<part>.parquet`` one row per
message. Updating is incremental: a new capture is read, a grown one from where it was
left, a changed one again, an unchanged one not at all, a deleted one dropped. Several
processes may update at once: an exclusive lock on ``.rtcap/lock`` serialises them, and
every file is replaced atomically, so a reader sees the old index or the new one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

from recorder.capture import CaptureError, Columns, make_private_dirs, read_columns

from .locate import capture_files

INDEX_VERSION = 2
BYTES_PER_MS = {"pcm16": 48, "audio/pcm": 48, "g711_ulaw": 8, "g711_alaw": 8, "audio/pcmu": 8, "audio/pcma": 8}
PART_ROWS = 200_000  # messages per Parquet part: bounds memory for very long captures

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
        ("parts", pa.int32()),
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
        ("end_error", pa.string()),
        ("format_in", pa.string()),
        ("format_out", pa.string()),
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
    headers = {str(k).lower(): str(v) for k, v in header.get("request_headers") or []}
    protocols = " ".join(header.get("subprotocols") or []) + headers.get("sec-websocket-protocol", "")
    path = urlsplit(header.get("url") or "").path.rstrip("/")
    if headers.get("openai-beta", "").lower() == "realtime=v1" or "openai-beta.realtime-v1" in protocols:
        return "beta"
    return "beta" if path.endswith("/openai/realtime") else "ga"


def follow_formats(payload: str, direction: int, current: list[str]) -> None:
    """Follow the session's audio formats through ``session.*`` events."""
    try:
        event = json.loads(payload)
    except ValueError:
        return
    session = event.get("session") if isinstance(event, dict) else None
    if not isinstance(session, dict):
        return
    audio = session.get("audio") if isinstance(session.get("audio"), dict) else {}
    for side, beta_key in ((0, "input_audio_format"), (1, "output_audio_format")):
        ga = (audio.get("input" if side == 0 else "output") or {}).get("format") if isinstance(audio, dict) else None
        fmt = session.get(beta_key) or (ga.get("type") if isinstance(ga, dict) else None)
        if isinstance(fmt, str) and fmt in BYTES_PER_MS:
            current[side] = fmt


class Index:
    """The index of one capture root."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        self.dir = index_dir(self.root)
        self.events_dir = self.dir / "events"
        self.manifest_path = self.dir / "manifest.parquet"

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
            for n, path in enumerate(files):
                rel = str(path.relative_to(self.root))
                try:
                    rows[rel] = self._update_file(path, rel, old.get(rel), report)
                except CaptureError as e:
                    report.errors.append(str(e))
                    if rel in old:
                        rows[rel] = old[rel]
                if progress is not None:
                    progress(n + 1, len(files))
            for rel, row in old.items():
                if rel not in rows:
                    report.deleted.append(rel)
                    self._drop_parts(row["key"])
            if rows != old:
                self._write_manifest(list(rows.values()))
            self._sweep(rows.values())
        return report

    def _sweep(self, rows: Any) -> None:
        """Remove part files no manifest row owns (from an older index, or a crash)."""
        owned = {path.name for path in self._parts(rows)}
        for part in self.events_dir.glob("*.parquet"):
            if part.name not in owned:
                part.unlink(missing_ok=True)

    def _update_file(self, path: Path, rel: str, old: dict[str, Any] | None, report: UpdateReport) -> dict[str, Any]:
        stat = path.stat()
        identity = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
        if old is not None and (old["size"], old["mtime_ns"], old["ino"]) == identity and old["state"] != "open":
            report.unchanged.append(rel)
            return old
        start, row = 0, None
        if (
            old is not None
            and old["ino"] == stat.st_ino
            and stat.st_size >= old["stop"]
            and old["end_t_ns"] is None
            and _mark(path, old["stop"]) == old["mark"]
        ):
            start, row = old["stop"], dict(old)
        if old is not None and row is None:
            self._drop_parts(old["key"])
        cols = read_columns(path, start)
        if row is None:
            row = self._new_row(rel, path, cols)
            (report.new if old is None else report.changed).append(rel)
        elif stat.st_size == old["size"] and not cols.seq and cols.end is None:
            report.unchanged.append(rel)
        else:
            report.grown.append(rel)
        self._append(row, cols)
        row.update(size=stat.st_size, mtime_ns=stat.st_mtime_ns, ino=stat.st_ino, stop=cols.stop)
        row["mark"] = _mark(path, cols.stop)
        if cols.end is not None:
            end = cols.end
            row.update(end_t_ns=end.get("t_ns"), close_code=end.get("code"), close_by=end.get("closed_by"))
            row["end_error"] = end.get("error") or end.get("incomplete")
        problems = [p for p in (row["problems"] or "").split("\n") if p] + cols.problems
        if not cols.locked and row["end_t_ns"] is None:
            problems.append("no end record: the recording process stopped before the session ended")
        row["problems"] = "\n".join(dict.fromkeys(problems)) or None
        row["state"] = "open" if cols.locked else ("damaged" if row["problems"] else "closed")
        if row["state"] == "damaged":
            report.damaged.append(rel)
        return row

    def _new_row(self, rel: str, path: Path, cols: Columns) -> dict[str, Any]:
        header = cols.header or {}
        started = header.get("started_at")
        try:
            started_at = dt.datetime.fromisoformat(started) if isinstance(started, str) else None
        except ValueError:
            started_at = None
        labels = header.get("labels") if isinstance(header.get("labels"), dict) else {}
        return {
            "file": rel,
            "session_id": str(header.get("session_id") or path.stem),
            "key": rel.removesuffix(".msgpack").replace("/", "_"),
            "parts": 0,
            "messages": 0,
            "problems": None if cols.header else "no header record",
            "started_at": started_at,
            "url": header.get("url"),
            "dialect": _dialect(header),
            "recorder": header.get("recorder"),
            "labels": [(str(k), str(v)) for k, v in labels.items()],
            "replay_of": header.get("replay_of"),
            "end_t_ns": None,
            "last_t_ns": None,
            "close_code": None,
            "close_by": None,
            "end_error": None,
            "format_in": "pcm16",
            "format_out": "pcm16",
        }

    def _append(self, row: dict[str, Any], cols: Columns) -> None:
        """Write the new messages of a capture as Parquet parts."""
        if not cols.seq:
            return
        formats = [row["format_in"], row["format_out"]]
        audio_ms: list[float | None] = []
        for payload, direction, audio in zip(cols.payload, cols.direction, cols.audio_bytes, strict=True):
            if payload is not None and '"session.' in payload[:64]:
                follow_formats(payload, direction, formats)
            audio_ms.append(audio / BYTES_PER_MS[formats[direction]] if audio else None)
        row["format_in"], row["format_out"] = formats
        started = row["started_at"]
        base_us = int(started.timestamp() * 1_000_000) if started is not None else 0
        for lo in range(0, len(cols.seq), PART_ROWS):
            hi = lo + PART_ROWS
            t_ns = cols.t_ns[lo:hi]
            table = pa.table(
                {
                    "session_id": pa.array([row["session_id"]] * len(t_ns), pa.string()).dictionary_encode(),
                    "seq": pa.array(cols.seq[lo:hi], pa.int64()),
                    "t_ns": pa.array(t_ns, pa.int64()),
                    "ts": pa.array([base_us + t // 1000 for t in t_ns], pa.timestamp("us", tz="UTC")),
                    "direction": pa.array(
                        ["sent" if d == 0 else "received" for d in cols.direction[lo:hi]]
                    ).dictionary_encode(),
                    "is_text": pa.array(cols.text[lo:hi], pa.bool_()),
                    "bytes": pa.array(cols.wire_bytes[lo:hi], pa.int64()),
                    "audio_bytes": pa.array(cols.audio_bytes[lo:hi], pa.int64()),
                    "audio_ms": pa.array(audio_ms[lo:hi], pa.float64()),
                    "redacted": pa.array(cols.redacted[lo:hi], pa.bool_()),
                    "payload": pa.array(cols.payload[lo:hi], pa.string()),
                }
            )
            self._write_part(row, table)
        row["messages"] += len(cols.seq)
        row["last_t_ns"] = cols.t_ns[-1]

    def _write_part(self, row: dict[str, Any], table: pa.Table) -> None:
        from .views import extract_fields

        path = self.events_dir / f"{row['key']}.{row['parts']:05d}.parquet"
        _atomic_parquet(extract_fields(table), path)
        row["parts"] += 1

    def _drop_parts(self, key: str) -> None:
        for part in self.events_dir.glob(f"{key}.*.parquet"):
            part.unlink(missing_ok=True)

    def _write_manifest(self, rows: list[dict[str, Any]]) -> None:
        table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
        table = table.replace_schema_metadata({"rtcap_index": str(INDEX_VERSION)})
        _atomic_parquet(table, self.manifest_path)

    def part_files(self) -> list[Path]:
        """Every events part of the captures in the manifest, for DuckDB."""
        return self._parts(self.manifest().values())

    def _parts(self, rows: Any) -> list[Path]:
        return [self.events_dir / f"{row['key']}.{n:05d}.parquet" for row in rows for n in range(row["parts"])]

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


def url_model(url: str | None) -> str | None:
    """The model or deployment named in a realtime URL's query."""
    if not url:
        return None
    query = parse_qs(urlsplit(url).query)
    for key in ("model", "deployment"):
        if query.get(key):
            return query[key][-1]
    return None


def progress_bar(enabled: bool) -> Any:
    """A rich progress bar on stderr for long index updates, or a no-op."""
    if not enabled or not sys.stderr.isatty():
        return contextlib.nullcontext(None)
    from rich.progress import Progress

    return Progress(transient=True, console=None)
