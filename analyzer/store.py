"""Object stores: shipping closed captures from a local capture root to an fsspec URL.

``DEST`` is any URL fsspec opens (``s3://bucket/prefix``, ``gs://``, ``az://``,
``file://``); the captures land there as they are laid out locally,
``DEST/YYYY-MM-DD/<session id>.msgpack``. Credentials and endpoints come from the store's
own environment and configuration (``AWS_*`` and ``~/.aws`` for S3, fsspec's
``FSSPEC_<PROTOCOL>_<OPTION>`` variables), never from rtcap's options. Each store's
library is an optional extra, imported only here and only when a URL needs it.

Shipping is idempotent and resumable without a ledger: a capture whose copy in the store
has its size and checksum is not copied again, and anything else there (a copy cut short,
another file) is replaced, then checked the same way. An open capture (its writer holds
its lock) is never shipped, and ``delete_after`` removes a local capture only once its copy
has been verified and only if it has not changed since it was read.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from recorder.capture import CaptureError, is_locked, open_capture

from .locate import capture_files

EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure", "abfss": "azure"}
"""The optional extra that installs each URL scheme's fsspec library."""

_CHUNK = 1 << 20


class StoreError(Exception):
    """A store that cannot be opened or written: its library missing, a bad URL, a refusal."""


def is_url(text: str | os.PathLike[str]) -> bool:
    """Whether a ``--captures`` or ``DEST`` value is a URL rather than a local path."""
    return "://" in str(text)


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower()


def _missing(url: str) -> str:
    scheme = _scheme(url)
    extra = EXTRAS.get(scheme)
    if extra is None:
        return f"{scheme}:// URLs need fsspec: pip install fsspec (any of rtcap's extras s3, gcs, azure has it)"
    return f"{scheme}:// URLs need the {extra} extra: pip install 'rtcap[{extra}]'"


def open_store(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path of its root on it (no trailing
    slash). Raises :class:`StoreError` when the scheme is unknown or its library is
    missing (naming the extra that installs it)."""
    scheme = _scheme(url)
    if scheme not in EXTRAS and scheme != "file":
        raise StoreError(f"{url}: not a store rtcap knows (s3://, gs://, az://, file://)")
    try:
        import fsspec.core
    except ImportError:
        raise StoreError(_missing(url)) from None
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except ImportError:
        raise StoreError(_missing(url)) from None
    except ValueError as e:
        raise StoreError(f"{url}: {e}") from None
    root = root.rstrip("/")
    if not root:
        raise StoreError(f"{url}: names no bucket or directory")
    return fs, root


def is_local(fs: Any) -> bool:
    """Whether an fsspec filesystem is the local one (``file://``)."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


@dataclasses.dataclass
class ShipReport:
    """What one pass of :func:`ship` did, by capture file (relative to the root)."""

    copied: list[str] = dataclasses.field(default_factory=list)
    present: list[str] = dataclasses.field(default_factory=list)  # already in the store, verified
    open: list[str] = dataclasses.field(default_factory=list)  # still being written: not shipped
    deleted: list[str] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)
    bytes: int = 0  # copied


def _md5(stream: IO[bytes]) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    while chunk := stream.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _reported_md5(info: dict[str, Any]) -> str | None:
    """The MD5 the store reports for an object, where it keeps one: S3's ETag of a
    single-part upload, GCS's md5Hash, Azure's content_md5."""
    etag = info.get("ETag") or info.get("etag")
    if isinstance(etag, str):
        etag = etag.strip('"').lower()
        if len(etag) == 32 and all(c in "0123456789abcdef" for c in etag):
            return etag
    md5 = info.get("md5Hash")
    if isinstance(md5, str):
        return base64.b64decode(md5).hex()
    settings = info.get("content_settings")
    md5 = settings.get("content_md5") if isinstance(settings, dict) else None
    if isinstance(md5, bytes | bytearray) and len(md5) == 16:
        return bytes(md5).hex()
    return None


def _holds(fs: Any, target: str, size: int, md5: str) -> bool:
    """Whether the store holds exactly these bytes at ``target``: its size, then the MD5
    it reports, else the MD5 of the object read back (a store's checksum can be other
    than the content's MD5, with some server-side encryption, so a mismatch is read back)."""
    fs.invalidate_cache(target)
    try:
        info = fs.info(target)
    except FileNotFoundError:
        return False
    if info.get("type") != "file" or info.get("size") != size:
        return False
    if _reported_md5(info) == md5:
        return True
    with fs.open(target, "rb") as stored:
        return bool(_md5(stored) == md5)


def _ship_one(fs: Any, path: Path, target: str, delete_after: bool, report: ShipReport, rel: str) -> None:
    with open_capture(path) as local:
        if is_locked(local.fileno()):
            report.open.append(rel)
            return
        before = os.fstat(local.fileno())
        md5 = _md5(local)
    size = before.st_size
    if _holds(fs, target, size, md5):
        report.present.append(rel)
    else:
        if is_local(fs):
            fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(path), target)
        if is_local(fs):
            os.chmod(target, 0o600)
        if not _holds(fs, target, size, md5):
            raise StoreError(f"{rel}: the copy in the store does not match (size or checksum); it will be redone")
        report.copied.append(rel)
        report.bytes += size
    if delete_after:
        after = os.lstat(path)
        same = (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
        if same and stat.S_ISREG(after.st_mode):
            os.unlink(path)
            report.deleted.append(rel)


def ship(
    root: Path,
    dest: str,
    *,
    delete_after: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ShipReport:
    """Copy the closed captures under ``root`` to the store at ``dest`` (one pass).

    A capture already there (same size and checksum) is not copied again; one missing or
    different is copied and then verified. A capture that cannot be read or copied is
    listed in ``errors`` and the others go on. Raises :class:`StoreError` when the store
    cannot be opened."""
    fs, droot = open_store(dest)
    if not is_local(fs):
        bucket = droot.split("/", 1)[0]
        try:
            reachable = fs.exists(bucket)
        except OSError as e:
            raise StoreError(f"{dest}: {e.strerror or e}") from None
        if not reachable:  # else every capture would fail alike
            raise StoreError(f"{dest}: no bucket {bucket}, or no access to it")
    report = ShipReport()
    files = capture_files(root)
    for done, path in enumerate(files, 1):
        rel = path.relative_to(root).as_posix()
        try:
            _ship_one(fs, path, f"{droot}/{rel}", delete_after, report, rel)
        except (CaptureError, StoreError) as e:
            report.errors.append(str(e))
        except OSError as e:  # what the store libraries raise for refusals, missing buckets, timeouts
            report.errors.append(f"{rel}: {e.strerror or e}")
        if progress is not None:
            progress(done, len(files))
    return report


def watch(
    root: Path,
    dest: str,
    *,
    delete_after: bool = False,
    interval: float = 5.0,
    on_pass: Callable[[ShipReport], None],
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Ship again every ``interval`` seconds, as sessions close, until interrupted;
    ``on_pass`` hears what each pass did. A pass the store refused (unreachable for a
    while, say) is reported in its ``errors`` and the next one tries again."""
    while True:
        try:
            report = ship(root, dest, delete_after=delete_after, progress=progress)
        except StoreError as e:
            report = ShipReport(errors=[str(e)])
        on_pass(report)
        time.sleep(interval)
