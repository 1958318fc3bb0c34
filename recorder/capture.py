"""The capture file format: the one module that reads and writes msgpack.

A capture file is a sequence of frames. Each frame is::

    SYNC (4 bytes) | length of body (uint32 LE) | CRC-32 of body (uint32 LE) | body

and each body is one msgpack record. The first record is the header (a map with
``kind: "header"`` and the ``format`` version), then one record per message (an array,
the hot path), then an end record (a map with ``kind: "end"``). A reader that meets a
frame whose length or checksum does not hold skips forward to the next ``SYNC`` and
resumes there, so a torn or corrupted file still yields every intact record.

A message record is ``[1, seq, t_ns, direction, opcode, payload, splices, flags]``:

- ``direction``: 0 sent (client to server), 1 received (server to client);
- ``opcode``: 1 text, 2 binary;
- ``payload``: the message's bytes, with each base64 audio string cut out;
- ``splices``: ``None`` or a list of ``[offset, audio]`` where ``audio`` is the
  decoded bytes, or ``[offset, byte_count, fill_byte]`` when audio was not stored (at
  most :data:`~recorder.records.MAX_DROPPED_AUDIO` bytes a message);
- ``flags``: ``REDACTED`` and ``AUDIO_DROPPED`` bits.

Rebuilding a message puts the base64 of each audio back at its offset, which gives
the original bytes exactly (audio is only cut out when its base64 round-trips).

Both readers, :func:`read_capture` (objects) and :func:`read_columns` (columns, for the
index), take one path: frames, raw records, migration of each raw record from the
header's version to :data:`FORMAT_VERSION` (:data:`MIGRATIONS`), validation
(:data:`DECODERS`, then :mod:`recorder.records` for the fields of header and end records),
then objects or columns. Only the header's place and its ``format`` field are fixed across
versions: everything else may change, with a migration.

Readers open only regular files, never through a symbolic link, and their time and memory
stay linear in the file's size whatever it holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import functools
import mmap
import os
import stat
import struct
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import IO, Any

import msgpack

from . import records
from .crc import SliceCRC, crc32
from .records import AUDIO_DROPPED, BINARY, MESSAGE, REDACTED, TEXT
from .records import RECEIVED as RECEIVED
from .records import SENT as SENT

try:
    from pybase64 import b64encode
except ImportError:  # the shim can land in an interpreter without it
    from base64 import b64encode  # type: ignore[assignment]

try:
    import msgspec
except ImportError:  # likewise: the shim only writes, and reading falls back on msgpack alone
    msgspec = None  # type: ignore[assignment]

FORMAT_VERSION = 1
"""The version written into every header. Bump it, add a migration and a golden file."""

SYNC = b"\xc1RTC"
"""Frame marker. 0xc1 is a byte msgpack never emits, which makes false syncs rare."""

_FRAME = struct.Struct("<4sII")
FRAME_OVERHEAD = _FRAME.size

DIRECTIONS = ("sent", "received")
OPCODES = {TEXT: "text", BINARY: "binary"}

MAX_RECORD = 1 << 31
"""Largest body a frame may announce; anything larger is treated as corruption."""

WASTE_ALLOWANCE = 1 << 20
"""How many bytes of failed checksums (beyond the file's own size) a reader computes the
plain way before it switches to :class:`~recorder.crc.SliceCRC`, which checks a frame in
time logarithmic in its length: damage as it happens never gets there, a crafted file does."""


class CaptureError(Exception):
    """The only exception the reader raises: the file cannot be read as a capture."""


# ---------------------------------------------------------------------------
# Writing


def frame(body: bytes) -> bytes:
    """Wrap one msgpack body in its frame."""
    return _FRAME.pack(SYNC, len(body), crc32(body)) + body


def header_record(fields: dict[str, Any]) -> bytes:
    """Frame a header record; ``kind`` and ``format`` are filled in."""
    return frame(msgpack.packb({"kind": "header", "format": FORMAT_VERSION, **fields}))


def end_record(fields: dict[str, Any]) -> bytes:
    """Frame an end record (who closed, close code and reason, or the error)."""
    return frame(msgpack.packb({"kind": "end", **fields}))


def message_record(
    seq: int,
    t_ns: int,
    direction: int,
    opcode: int,
    payload: bytes,
    splices: list[list[Any]] | None,
    flags: int,
) -> bytes:
    """Frame one message record."""
    return frame(msgpack.packb([MESSAGE, seq, t_ns, direction, opcode, payload, splices, flags]))


class CaptureWriter:
    """Appends framed records to a new capture file, one ``write`` call per record.

    The file is created 0600 (its directories 0700) and locked for as long as the
    writer is open, which is how readers tell an ``open`` capture from a torn one.
    Nothing is buffered in user space: once :meth:`write` returns, a crash of this
    process cannot lose the record.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        make_private_dirs(path.parent)
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # One packer for the file's message records: its scratch buffer is emptied after
        # every record (nothing is held across messages), and not made afresh for each.
        self._packer = msgpack.Packer(autoreset=False)

    def write(self, data: bytes) -> None:
        """Append one framed record; raises ``OSError`` if it was not written whole."""
        if self._fd is None:
            raise OSError(errno.EBADF, "capture file is closed")
        written = os.write(self._fd, data)
        if written != len(data):
            raise OSError(errno.ENOSPC, f"short write to {self.path} ({written} of {len(data)} bytes)")

    def write_message(
        self,
        seq: int,
        t_ns: int,
        direction: int,
        opcode: int,
        payload: bytes,
        splices: list[list[Any]] | None,
        flags: int,
    ) -> None:
        """Append one message record: the bytes ``write(message_record(...))`` writes, in
        one ``write`` call (``writev`` of header and body measured slower than joining them)."""
        packer = self._packer
        try:
            packer.pack([MESSAGE, seq, t_ns, direction, opcode, payload, splices, flags])
            with packer.getbuffer() as body:
                record = _FRAME.pack(SYNC, len(body), crc32(body)) + body
        finally:
            packer.reset()
        self.write(record)

    def close(self) -> None:
        """Close the file, which releases its lock."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def make_private_dirs(path: Path) -> None:
    """Create ``path`` and missing parents with mode 0700 (existing ones are left alone)."""
    missing = []
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(directory, 0o700)


# ---------------------------------------------------------------------------
# Reading: one path for both readers.
#
#   frames -> raw records (unpacked msgpack) -> migration to FORMAT_VERSION -> validation
#
# ``_records`` walks that path; ``parse`` turns the messages it yields into ``Message``
# objects, ``parse_columns`` into ``Columns`` for the index.


@dataclasses.dataclass(slots=True)
class Message:
    """One recorded WebSocket message."""

    seq: int
    t_ns: int
    direction: str
    opcode: str
    payload: bytes
    splices: list[list[Any]] | None
    """``[offset, audio]`` each, or ``[offset, byte_count, fill_byte]`` if audio was dropped."""
    flags: int

    @property
    def redacted(self) -> bool:
        """A secret was cut out of this message, so it is no longer byte-exact."""
        return bool(self.flags & REDACTED)

    @property
    def audio_dropped(self) -> bool:
        """Its audio was not stored (``--no-audio``); :meth:`data` rebuilds silence."""
        return bool(self.flags & AUDIO_DROPPED)

    def data(self) -> bytes:
        """The message as it crossed the wire (bar redaction and dropped audio)."""
        if not self.splices:
            return self.payload
        parts = []
        start = 0
        for (offset, *_), audio in zip(self.splices, self.audio(), strict=True):
            parts.append(self.payload[start:offset])
            parts.append(b64encode(audio))
            start = offset
        parts.append(self.payload[start:])
        return b"".join(parts)

    def audio(self) -> list[bytes]:
        """The decoded audio chunks this message carried, in order (silence where its
        audio was dropped: rebuilt here, on demand, so that reading stays small)."""
        if self.audio_dropped:
            return [bytes([fill]) * count for _, count, fill in self.splices or ()]
        return [audio for _, audio in self.splices or ()]


@dataclasses.dataclass(slots=True)
class Capture:
    """A capture file as read: header, messages, end record and its state."""

    path: Path
    header: dict[str, Any]
    messages: list[Message]
    end: dict[str, Any] | None
    state: str
    problems: list[str]

    @property
    def session_id(self) -> str:
        """The rtcap session id from the header, else the file name."""
        return str(self.header.get("session_id") or self.path.stem)


def iter_frames(data: bytes | mmap.mmap, start: int = 0) -> Iterator[tuple[int, bytes | None, int]]:
    """Yield ``(offset, body, 0)`` for each intact frame from byte ``start`` on, and
    ``(offset, None, n)`` for each run of ``n`` bytes that had to be skipped (a torn tail
    included). Offsets count from the beginning of ``data``. Time is linear in the size
    of ``data`` (see :data:`WASTE_ALLOWANCE`)."""
    for offset, body_start, end in _frames(data, start):
        yield (offset, None, end) if body_start < 0 else (offset, bytes(data[body_start:end]), 0)


def _frames(data: bytes | mmap.mmap, start: int) -> Iterator[tuple[int, int, int]]:
    """The framing of :func:`iter_frames` as offsets, without copying a body: ``(offset,
    body_start, body_end)`` for an intact frame, ``(offset, -1, skipped)`` for a run of
    bytes skipped."""
    size = len(data)
    pos = start
    unpack_from = _FRAME.unpack_from
    # A frame that fails its checksum may still hide intact ones inside it, so the search
    # resumes just past its start: checking overlapping frames one by one could cost the
    # square of the file's size, hence the switch to SliceCRC once that shows.
    wasted, allowance = 0, size - start + WASTE_ALLOWANCE
    sliced: SliceCRC | None = None
    with memoryview(data) as view:  # slices of a view are not copies
        while pos < size:
            if size - pos >= FRAME_OVERHEAD:
                sync, length, crc = unpack_from(data, pos)
                end = pos + FRAME_OVERHEAD + length
                if sync == SYNC and length < MAX_RECORD and end <= size:  # else it cannot be intact
                    if sliced is None:
                        with view[pos + FRAME_OVERHEAD : end] as body:
                            intact = crc32(body) == crc
                        if not intact:
                            wasted += length
                            if wasted > allowance:
                                sliced = SliceCRC(data, pos)
                    else:
                        intact = sliced.crc(pos + FRAME_OVERHEAD, end) == crc
                    if intact:
                        yield pos, pos + FRAME_OVERHEAD, end
                        pos = end
                        continue
            nxt = data.find(SYNC, pos + 1)
            nxt = size if nxt < 0 else nxt
            yield pos, -1, nxt - pos
            pos = nxt


def _decode_v1(record: Any) -> Any:
    # Version 1 writes messages in the in-memory layout: a valid one is returned as it is,
    # which keeps the index's hot loop free of any object msgpack did not make.
    if type(record) is list:
        return record if records.valid_message(record) else None
    if type(record) is dict and record.get("kind") in ("header", "end"):
        return record
    return None


RawRecord = Any
"""A record as msgpack unpacked it, before validation: any msgpack value."""

MIGRATIONS: dict[int, Callable[[RawRecord], RawRecord]] = {}
"""``MIGRATIONS[n]`` turns a raw record of format version ``n`` (header, message or end)
into the same record in version ``n + 1``. Migrations run before validation, so they must
pass through anything they do not recognise; one that raises marks the record malformed."""

DECODERS: dict[int, Callable[[RawRecord], RawRecord]] = {1: _decode_v1}
"""``DECODERS[n]`` validates a raw record of format version ``n``. It returns a message as
the list ``[MESSAGE, seq, t_ns, direction, opcode, payload, splices, flags]`` (the layout
the module docstring describes), a header or end record as its map, and ``None`` for
anything malformed. Only ``DECODERS[FORMAT_VERSION]`` is used: older records are migrated
to the current version first."""


def _message_decoder() -> Callable[[Any], tuple[Any, ...]] | None:
    """The hot path's shortcut through unpacking and :data:`DECODERS` for a message of the
    current version: msgspec unpacks and checks its types at once, in C, into a tuple of
    the same layout. It accepts only what ``DECODERS[FORMAT_VERSION]`` accepts (the splices'
    order and sizes are still checked by the rule :func:`recorder.records.valid_message` uses); whatever
    it refuses takes the plain way, so every verdict stays that of the plain way."""
    if msgspec is None:
        return None
    from typing import Annotated, Literal

    count = Annotated[int, msgspec.Meta(ge=0, le=records.INT64_MAX)]
    time = Annotated[int, msgspec.Meta(ge=records.INT64_MIN, le=records.INT64_MAX)]
    layout = tuple[Literal[1], count, time, Literal[0, 1], Literal[1, 2], bytes, list[list[int | bytes]] | None, count]
    assert (MESSAGE, SENT, RECEIVED, TEXT, BINARY) == (1, 0, 1, 1, 2)  # the literals above
    return msgspec.msgpack.Decoder(layout).decode


_DECODE_MESSAGE = _message_decoder()
_NOT_A_MESSAGE = () if msgspec is None else (msgspec.MsgspecError,)


def _check_version(version: Any, path: Path) -> str | None:
    """The one version check: a newer version is an error, a missing or invalid one a
    problem (returned), a known one ``None``."""
    if type(version) is not int or version < 1:
        return f"header has no valid format version ({version!r})"
    if version > FORMAT_VERSION:
        raise CaptureError(
            f"{path}: capture format version {version} is newer than this rtcap reads "
            f"(version {FORMAT_VERSION}); upgrade rtcap"
        )
    return None


def _migration(version: int) -> Callable[[RawRecord], RawRecord] | None:
    """The migrations from ``version`` to the current one, composed; ``None`` when there
    are none, so that reading a current file costs no call per record."""
    steps = [MIGRATIONS[n] for n in range(version, FORMAT_VERSION)]
    if not steps:
        return None

    def migrate(record: RawRecord) -> RawRecord:
        for step in steps:
            record = step(record)
        return record

    return migrate


@dataclasses.dataclass(slots=True)
class _Scan:
    """What reading found besides the messages, filled in as :func:`_records` goes."""

    version: int
    stop: int
    header: dict[str, Any] | None = None
    end: dict[str, Any] | None = None
    problems: list[str] = dataclasses.field(default_factory=list)


RECORD_BATCH = 1024
"""Message records the reading path hands on at a time: few enough that a batch of audio
messages stays small, enough that the cost of a hand-over disappears."""


def _records(
    data: bytes | mmap.mmap, start: int, locked: bool, scan: _Scan, path: Path, rows: int = RECORD_BATCH
) -> Generator[list[list[Any]], None, None]:
    """The one reading path: yields the valid messages from byte ``start`` on, in batches
    of ``rows`` (the last one smaller), each in the layout :data:`DECODERS` return. Header,
    end, problems, the version read and the offset to resume from land in ``scan`` (as of
    the batch just yielded). Raises only :class:`CaptureError`."""
    problem = _check_version(scan.version, path)
    if problem is not None:
        scan.problems.append(problem)
        scan.version = FORMAT_VERSION
    migrate = _migration(scan.version)
    decode = DECODERS[FORMAT_VERSION]
    unpackb, problems, size = msgpack.unpackb, scan.problems, len(data)
    want_header = start == 0  # until a record is accepted: the header must come first
    # The splices' rule, from where valid_message keeps it (one rule, one place).
    fast = _DECODE_MESSAGE if decode is _decode_v1 else None  # it checks version 1's layout
    valid_splices = records.valid_splices
    batch: list[Any] = []
    stop = start
    with memoryview(data) as view:
        for offset, body_start, end in _frames(data, start):
            if body_start < 0:
                if locked and offset + end == size:
                    break  # a record still being written: not damage, and the next read resumes here
                problems.append(f"skipped {end} unreadable bytes at offset {offset}")
                stop = offset + end
                continue
            stop = end
            with view[body_start:end] as body:
                if fast is not None and migrate is None and not want_header:
                    try:
                        message = fast(body)
                    except _NOT_A_MESSAGE:
                        pass  # not a well-typed message: the plain way decides what it is
                    else:
                        _, _, _, _, _, payload, splices, flags = message
                        if splices is None or valid_splices(splices, flags, len(payload)):
                            batch.append(message)
                            if len(batch) >= rows:
                                scan.stop = stop
                                yield batch
                                batch = []
                        else:
                            problems.append(f"skipped a malformed record at offset {offset}")
                        continue
                try:
                    record = unpackb(body, raw=False)
                except Exception:
                    # msgpack raises many kinds of error for bytes that frame correctly but
                    # are not one valid record; all of them mean the same thing here: a
                    # corrupt record.
                    record = None
            if type(record) is list and migrate is None and not want_header:
                # The hot path: a message of the current version, as the writer makes them.
                record = decode(record)
                if record is not None:
                    batch.append(record)
                    if len(batch) >= rows:
                        scan.stop = stop
                        yield batch
                        batch = []
                    continue
                problems.append(f"skipped a malformed record at offset {offset}")
                continue
            is_header = want_header and type(record) is dict and record.get("kind") == "header"
            if is_header:
                # The header names the version of every record after it, itself included.
                problem = _check_version(record.get("format"), path)
                if problem is None:
                    scan.version = record["format"]
                    migrate = _migration(scan.version)
                else:
                    problems.append(problem)
            if migrate is not None:
                try:
                    record = migrate(record)
                except Exception:
                    record = None  # migrations see unvalidated records: one they choke on is corrupt
            record = decode(record)
            if record is None:
                problems.append(f"skipped a malformed record at offset {offset}")
                continue
            if want_header:
                want_header = False
                if is_header:
                    problems.extend(records.check_fields(record, records.HEADER_FIELDS, "header"))
                    scan.header = record
                    continue
                problems.append("no header record")
            if type(record) is list:
                batch.append(record)
                if len(batch) >= rows:
                    scan.stop = stop
                    yield batch
                    batch = []
            elif record.get("kind") == "end" and scan.end is None:
                problems.extend(records.check_fields(record, records.END_FIELDS, "end"))
                scan.end = record
            else:
                problems.append(f"skipped a malformed record at offset {offset}")
    scan.stop = stop
    if want_header and not locked:  # an open file may not have written its header yet
        problems.append("no header record")
    if batch:
        yield batch


def _message(record: list[Any]) -> Message:
    _, seq, t_ns, direction, opcode, payload, splices, flags = record
    return Message(seq, t_ns, DIRECTIONS[direction], OPCODES[opcode], payload, splices, flags)


def parse(
    data: bytes | mmap.mmap, path: Path = Path("-"), *, locked: bool = False, max_messages: int | None = None
) -> Capture:
    """Parse a capture held in memory. Never raises anything but :class:`CaptureError`.
    With ``max_messages``, stop after that many messages (the end record is then unknown)."""
    scan = _Scan(FORMAT_VERSION, 0)
    messages: list[Message] = []
    stopped_early = False
    rows = RECORD_BATCH if max_messages is None else max(1, max_messages)
    with contextlib.closing(_records(data, 0, locked, scan, path, rows)) as batches:
        for batch in batches:
            messages.extend(map(_message, batch))
            if max_messages is not None and len(messages) >= max_messages:
                stopped_early = True
                break
    problems = scan.problems
    if scan.end is None and not locked and not stopped_early:
        problems.append("no end record: the recording process stopped before the session ended")
    if locked:
        state = "open"
    elif problems:
        state = "damaged"
    else:
        state = "closed"
    return Capture(path, scan.header or {}, messages, scan.end, state, problems)


def is_locked(fd: int) -> bool:
    """Whether a writer holds the capture open (its lock is taken)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def open_capture(path: str | os.PathLike[str]) -> IO[bytes]:
    """Open a capture file for reading: a regular file only, never through a symbolic
    link, and never waiting (a FIFO named like a capture would block an ordinary open, a
    device could do anything). Raises :class:`CaptureError` for anything else, or
    ``OSError`` when the file cannot be opened."""
    before = os.lstat(path)
    if not stat.S_ISREG(before.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(before.st_mode) else "not a regular file"
        raise CaptureError(f"cannot read {path}: {kind}")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (before.st_dev, before.st_ino) or not stat.S_ISREG(opened.st_mode):
            raise CaptureError(f"cannot read {path}: replaced while being opened")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_capture(path: str | os.PathLike[str], max_messages: int | None = None) -> Capture:
    """Read a capture file. Raises only :class:`CaptureError`, for a file that cannot be
    opened (or is not a regular file: see :func:`open_capture`) or whose format is newer
    than this reader; damage is reported, not raised. ``max_messages`` reads only the
    first messages (their state is then not judged)."""
    path = Path(path)
    try:
        with open_capture(path) as f:
            locked = is_locked(f.fileno())
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return parse(b"", path, locked=locked)
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return parse(data, path, locked=locked, max_messages=max_messages)
    except OSError as e:
        raise CaptureError(f"cannot read {path}: {e.strerror or e}") from None


# ---------------------------------------------------------------------------
# Columnar reading, for the index: no object per message, one list per column, a batch
# of messages at a time.


@dataclasses.dataclass
class Columns:
    """A capture's records from ``start`` on (or a batch of them), column by column.

    ``payload`` is each message's text with every audio string replaced by a short
    placeholder (``None`` for binary messages); ``wire_bytes`` is the message's size as it
    crossed the wire; ``audio_bytes`` the size of the audio it carried.
    """

    header: dict[str, Any] | None
    end: dict[str, Any] | None
    seq: list[int]
    t_ns: list[int]
    direction: list[int]
    text: list[bool]
    payload: list[str | None]
    wire_bytes: list[int]
    audio_bytes: list[int]
    redacted: list[bool]
    problems: list[str]
    stop: int
    """Offset just past the last intact record read: where an update resumes."""
    locked: bool
    version: int
    """The format version the records were read as: the header's, else the one passed in,
    else the current one. An update resuming at ``stop`` passes it back as ``version``."""


COLUMN_ROWS = 65_536
"""Messages per batch of :func:`stream_columns` (its default)."""
COLUMN_BYTES = 32 << 20
"""Text per batch of :func:`stream_columns`: a batch ends once its payloads reach this."""
RELEASE_BYTES = 64 << 20
"""How much of a mapped file is read before its pages are handed back, so that the memory
of reading a capture does not grow with its size."""


@functools.lru_cache(maxsize=4096)
def _placeholder(size: int) -> bytes:
    return f"<audio {size} bytes>".encode()


def read_columns(path: str | os.PathLike[str], start: int = 0, *, version: int | None = None) -> Columns:
    """Read a capture's records from byte ``start`` on, as columns. Raises only
    :class:`CaptureError`; damage is listed in ``problems``.

    Resuming mid-file (``start > 0``) skips the header, so pass the ``version`` an earlier
    read reported in :attr:`Columns.version`; the default is the current version. The whole
    capture is held in memory: the index reads with :func:`stream_columns` instead."""
    return _joined(stream_columns(path, start, version=version))


def stream_columns(
    path: str | os.PathLike[str], start: int = 0, *, version: int | None = None, rows: int | None = None
) -> Iterator[Columns]:
    """:func:`read_columns` in batches of about ``rows`` messages (:data:`COLUMN_ROWS` by
    default; fewer when their text reaches :data:`COLUMN_BYTES`), so that memory holds one
    batch whatever the capture's size. Every batch carries what is known when it is made; the last one (yielded even
    when it holds no message) has the end record, every problem and where to resume.
    Raises only :class:`CaptureError`."""
    path, rows = Path(path), rows or COLUMN_ROWS
    try:
        with open_capture(path) as f:
            locked = is_locked(f.fileno())
            size = os.fstat(f.fileno()).st_size
            if size <= start:  # nothing new, and an empty file cannot be mapped
                yield from _column_batches(b"", start, path, locked, version, rows)
                return
            with (
                mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data,
                contextlib.closing(_column_batches(data, start, path, locked, version, rows)) as batches,
            ):
                yield from batches
    except OSError as e:
        raise CaptureError(f"cannot read {path}: {e.strerror or e}") from None


def parse_columns(
    data: bytes | mmap.mmap,
    start: int = 0,
    path: Path = Path("-"),
    *,
    locked: bool = False,
    version: int | None = None,
) -> Columns:
    """Parse a capture held in memory from byte ``start`` on, as columns (see
    :func:`read_columns`). Never raises anything but :class:`CaptureError`."""
    return _joined(_column_batches(data, start, path, locked, version, COLUMN_ROWS))


def _joined(batches: Iterator[Columns]) -> Columns:
    whole: Columns | None = None
    for cols in batches:
        if whole is None:
            whole = cols
            continue
        for name in ("seq", "t_ns", "direction", "text", "payload", "wire_bytes", "audio_bytes", "redacted"):
            getattr(whole, name).extend(getattr(cols, name))
        whole.header, whole.end, whole.problems = cols.header, cols.end, cols.problems
        whole.stop, whole.version = cols.stop, cols.version
    assert whole is not None  # _column_batches always yields a last batch
    return whole


def _column_batches(
    data: bytes | mmap.mmap, start: int, path: Path, locked: bool, version: int | None, rows: int
) -> Generator[Columns, None, None]:
    scan = _Scan(FORMAT_VERSION if version is None else version, start)

    def batch() -> Columns:
        return Columns(scan.header, None, [], [], [], [], [], [], [], [], scan.problems, start, locked, scan.version)

    cols = batch()
    text_bytes = 0
    released = 0
    page = mmap.PAGESIZE
    # The index reads every message of every capture: this loop makes no object per
    # message beyond what msgpack returns and what the columns hold.
    with contextlib.closing(_records(data, start, locked, scan, path, min(rows, RECORD_BATCH))) as records_:
        for records_batch in records_:
            seqs, times, directions, texts = cols.seq, cols.t_ns, cols.direction, cols.text
            payloads, wires, audios, redactions = cols.payload, cols.wire_bytes, cols.audio_bytes, cols.redacted
            for _, seq, t_ns, direction, opcode, payload, splices, flags in records_batch:
                seqs.append(seq)
                times.append(t_ns)
                directions.append(direction)
                audio = 0
                wire = len(payload)
                if splices:
                    parts, position = [], 0
                    for splice in splices:
                        # Stored audio is [offset, bytes]; dropped audio [offset, count, fill].
                        n = len(splice[1]) if type(splice[1]) is bytes else splice[1]
                        parts.append(payload[position : splice[0]])
                        parts.append(_placeholder(n))
                        position = splice[0]
                        audio += n
                        wire += 4 * ((n + 2) // 3)
                    parts.append(payload[position:])
                    payload = b"".join(parts)
                if opcode == TEXT:
                    texts.append(True)
                    payloads.append(payload.decode("utf-8", errors="replace"))
                    text_bytes += len(payload)
                else:
                    texts.append(False)
                    payloads.append(None)
                wires.append(wire)
                audios.append(audio)
                redactions.append(bool(flags & REDACTED))
            if len(seqs) >= rows or text_bytes >= COLUMN_BYTES:
                cols.header, cols.stop, cols.version = scan.header, scan.stop, scan.version
                yield cols
                cols, text_bytes = batch(), 0
            if type(data) is mmap.mmap and scan.stop - released >= RELEASE_BYTES:
                # Read pages go back to the page cache, out of this process's memory.
                upto = scan.stop // page * page
                data.madvise(mmap.MADV_DONTNEED, released, upto - released)
                released = upto
    cols.header, cols.end, cols.stop, cols.version = scan.header, scan.end, scan.stop, scan.version
    yield cols
