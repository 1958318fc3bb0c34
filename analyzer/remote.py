"""Capture roots in an object store (``--captures s3://bucket/prefix``), and the index
published beside them as a dataset any engine reads.

Reading: the store's captures (``<url>/YYYY-MM-DD/<id>.msgpack``, as ``rtcap ship`` lays
them out) are mirrored into a local cache, each copied once and again only when its size or
tag (ETag, else modification time) changes, and dropped when it leaves the store. The
cache is then indexed and queried exactly as a local root is, so every command that reads
captures works on a URL.

Publishing: the views ``sessions``, ``events``, ``responses`` and ``failures`` are written
back to the store as Parquet tables with the views' columns, hive-partitioned by the
captures' day: ``<url>/.rtcap/dataset/<table>/day=YYYY-MM-DD/<generation>-<tag>.parquet``.
Publishing is incremental: a day is written again only when its captures changed. A
generation becomes visible only when its log entry, ``<url>/.rtcap/log/<generation>.json``
naming every current file, is created, with the store's conditional write (S3's
``If-None-Match``, a local exclusive create): a reader that follows the newest entry never
sees a half-written state, and of two indexers at once the second is refused and writes
nothing visible. Files that no entry of the last two generations names are then removed
(a reader still on the previous generation keeps its files). Stores without a
conditional write rtcap uses are refused for publishing with a clear error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recorder.capture import make_private_dirs

from .locate import capture_files
from .store import StoreError, is_local, open_store

TABLES = ("sessions", "events", "responses", "failures")
"""The views published to the store."""

_MIRRORS: dict[Path, str] = {}  # local mirror -> its URL, for the processes' open roots
_DAY_OF_FILE = "split_part(file, '/', 1)"
ROWS_PER_BATCH = 100_000
"""Rows read and written at once when publishing: what bounds its memory."""


def mirror_dir(url: str) -> Path:
    """Where the captures of ``url`` are mirrored: under ``$XDG_CACHE_HOME/rtcap/remote``."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "rtcap" / "remote" / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


def url_of(root: Path) -> str | None:
    """The store URL a local root mirrors, if it is a mirror made by this process."""
    return _MIRRORS.get(Path(root).absolute())


def _tag(info: dict[str, Any]) -> str:
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    if etag:
        return str(etag).strip('"')
    return str(info.get("mtime") or info.get("LastModified") or info.get("last_modified") or "")


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _listing(fs: Any, root: str) -> dict[str, dict[str, Any]]:
    """The store's captures by path relative to its root, as the store lists them now."""
    fs.invalidate_cache()  # fsspec keeps listings (of every directory) for the life of the process
    found = fs.glob(f"{root}/[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]/*.msgpack", detail=True)
    return {path[len(root) + 1 :]: info for path, info in found.items() if info.get("type") == "file"}


def mirror(url: str) -> Path:
    """Bring the local mirror of the captures at ``url`` up to date; returns its root.
    Raises :class:`~analyzer.store.StoreError`."""
    fs, root = open_store(url)
    home = mirror_dir(url)
    local = home / "captures"
    make_private_dirs(local)
    with _exclusive(home / "lock"):
        state_path = home / "mirror.json"
        try:
            state: dict[str, list[Any]] = json.loads(state_path.read_text())
        except (OSError, ValueError):
            state = {}
        try:
            remote = _listing(fs, root)
            for rel, info in remote.items():
                key = [info.get("size"), _tag(info)]
                target = local / rel
                if state.get(rel) == key and target.is_file() and target.stat().st_size == key[0]:
                    continue
                make_private_dirs(target.parent)
                partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
                fs.get_file(f"{root}/{rel}", str(partial))
                os.chmod(partial, 0o600)
                os.replace(partial, target)
                state[rel] = key
        except OSError as e:
            raise StoreError(f"cannot read {url}: {e.strerror or e}") from None
        for rel in [rel for rel in state if rel not in remote]:
            with contextlib.suppress(FileNotFoundError):
                (local / rel).unlink()
            del state[rel]
        partial = state_path.with_name("mirror.json.tmp")
        partial.write_text(json.dumps(state))
        os.replace(partial, state_path)
    _MIRRORS[local.absolute()] = url
    return local


@dataclasses.dataclass
class Publication:
    """A generation of the dataset being written: what :func:`commit` makes visible."""

    url: str
    generation: int
    entry: dict[str, Any]  # the log entry to create
    previous: dict[str, Any]  # the newest entry when this began ({} if none)

    @property
    def changed(self) -> bool:
        """Whether this generation differs from the one before."""
        return self.entry["days"] != self.previous.get("days", {})


def _can_publish(fs: Any, url: str) -> None:
    protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    if not {"s3", "s3a", "file", "local"} & set(protocols):
        raise StoreError(
            f"cannot publish the index to {url}: rtcap writes it only where it can create its log "
            "conditionally (s3://, file://); query a local copy, or mirror the store there"
        )


def latest(url: str) -> dict[str, Any]:
    """The newest log entry of the dataset at ``url`` ({} when none was published):
    ``{"generation": N, "days": {day: {"sources": {...}, "files": {table: path}}}}``."""
    fs, root = open_store(url)
    fs.invalidate_cache()
    try:
        names = [p.rsplit("/", 1)[1] for p in fs.ls(f"{root}/.rtcap/log", detail=False)]
    except FileNotFoundError:
        return {}
    generations = sorted(int(name[:-5]) for name in names if name.endswith(".json") and name[:-5].isdigit())
    if not generations:
        return {}
    entry: dict[str, Any] = json.loads(fs.cat_file(f"{root}/.rtcap/log/{generations[-1]:08d}.json"))
    return entry


def dataset_files(url: str, entry: dict[str, Any] | None = None) -> dict[str, list[str]]:
    """The current Parquet files of each table at ``url`` (those of ``entry``, its newest
    log entry unless given), as full URLs, for any engine: read them with hive
    partitioning to get the ``day`` column."""
    scheme = url.split("://", 1)[0]
    entry = latest(url) if entry is None else entry
    return {
        table: [f"{scheme}://{day['files'][table]}" for _, day in sorted(entry.get("days", {}).items())]
        for table in TABLES
    }


def local_sources(root: Path) -> dict[str, list[Any]]:
    """The identity of each capture of a local root, as :func:`prepare` compares them."""
    found = {}
    for path in capture_files(root):
        with contextlib.suppress(FileNotFoundError):
            info = os.lstat(path)
            found[path.relative_to(root).as_posix()] = [info.st_size, str(info.st_mtime_ns)]
    return found


def prepare(
    url: str, root: Path, state: dict[str, list[Any]] | None = None, *, batch: int = ROWS_PER_BATCH
) -> Publication:
    """Write the tables of every day whose captures changed since the newest generation
    (new files, invisible until :func:`commit`). ``root`` is the local root indexed:
    the mirror of ``url``, whose identities (``state``) are the mirror's, or the root
    ``url`` names itself (``file://``), with :func:`local_sources`."""
    from .views import open_captures

    fs, droot = open_store(url)
    _can_publish(fs, url)
    previous = latest(url)
    generation = int(previous.get("generation", 0)) + 1
    if state is None:
        state = json.loads((mirror_dir(url) / "mirror.json").read_text())
    sources: dict[str, dict[str, Any]] = {}
    for rel, key in state.items():
        sources.setdefault(rel.split("/", 1)[0], {})[rel] = key
    days = {}
    captures = None
    tag = secrets.token_hex(4)  # two indexers of one generation never write the same file
    for day, wanted in sorted(sources.items()):
        old = previous.get("days", {}).get(day)
        if old is not None and old["sources"] == wanted:
            days[day] = old
            continue
        captures = captures or open_captures(root, include_replays=True)
        files = {}
        for table in TABLES:
            path = f"{droot}/.rtcap/dataset/{table}/day={day}/{generation:08d}-{tag}.parquet"
            _write_parquet(fs, captures, table, day, path, batch)
            files[table] = path
        days[day] = {"sources": wanted, "files": files}
    return Publication(url, generation, {"version": 1, "generation": generation, "days": days}, previous)


def _write_parquet(fs: Any, captures: Any, table: str, day: str, path: str, rows: int) -> None:
    """One day's rows of ``table`` as one Parquet file, streamed ``rows`` at a time (a row
    group each) in one pass over the index, so that memory holds a batch, never the day."""
    import pyarrow.parquet as pq

    if is_local(fs):
        make_private_dirs(Path(path).parent)
    query = f"SELECT * FROM {table} WHERE session_id IN (SELECT session_id FROM sessions WHERE {_DAY_OF_FILE} = ?)"
    with fs.open(path, "wb") as out:
        writer = None
        for batch in captures.stream(query, [day], rows):
            if writer is None:
                writer = pq.ParquetWriter(out, batch.schema)
            writer.write_batch(batch)
        if writer is None:  # no rows: the file still has the table's columns
            empty = captures.sql(f"{query} LIMIT 0", [day])
            writer = pq.ParquetWriter(out, empty.schema)
        writer.close()
    if is_local(fs):
        os.chmod(path, 0o600)


def commit(publication: Publication) -> None:
    """Make a prepared generation visible by creating its log entry, only if no other
    indexer created that generation first (else :class:`~analyzer.store.StoreError`, and
    nothing of this one is visible); then remove the files no recent entry names."""
    fs, droot = open_store(publication.url)
    log = f"{droot}/.rtcap/log"
    path = f"{log}/{publication.generation:08d}.json"
    body = json.dumps(publication.entry, sort_keys=True).encode()
    try:
        if not is_local(fs):
            fs.pipe_file(path, body, IfNoneMatch="*")
        else:
            make_private_dirs(Path(log))
            with open(path, "xb") as out:  # an exclusive create: the local conditional write
                os.chmod(path, 0o600)
                out.write(body)
    except FileExistsError:
        raise StoreError(
            f"another rtcap published the index of {publication.url} at the same time; run the command again"
        ) from None
    _sweep(fs, droot, publication)


def _sweep(fs: Any, droot: str, publication: Publication) -> None:
    """Remove data files of this generation or older that neither this entry nor the one
    before names (a later generation's files may be another indexer's, being written),
    and log entries older than the one before."""
    kept = {
        file
        for entry in (publication.entry, publication.previous)
        for day in entry.get("days", {}).values()
        for file in day["files"].values()
    }
    with contextlib.suppress(FileNotFoundError):
        for path in fs.find(f"{droot}/.rtcap/dataset"):
            generation = path.rsplit("/", 1)[1].split("-", 1)[0]
            if path not in kept and generation.isdigit() and int(generation) <= publication.generation:
                fs.rm_file(path)
    with contextlib.suppress(FileNotFoundError):
        for path in fs.ls(f"{droot}/.rtcap/log", detail=False):
            name = path.rsplit("/", 1)[1]
            if name[:-5].isdigit() and int(name[:-5]) < publication.generation - 1:
                fs.rm_file(path)


def publish(url: str, root: Path, state: dict[str, list[Any]] | None = None) -> int:
    """Publish the index of ``root`` to ``url`` if its captures changed (see
    :func:`prepare`); returns the generation now current (0 when nothing is published)."""
    publication = prepare(url, root, state)
    if publication.changed:
        commit(publication)
        return publication.generation
    return int(publication.previous.get("generation", 0))
