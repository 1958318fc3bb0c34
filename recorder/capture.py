"""The capture file format: the one module that reads and writes msgpack.

A capture file is a sequence of frames. Each frame is::

    SYNC (4 bytes) | length of body (uint32 LE) | CRC-32 of body (uint32 LE) | body

and each body is one msgpack record. The first record is the header (a map with
``kind: "header"``), then one record per message (an array, the hot path), then an
end record (a map with ``kind: "end"``). A reader that meets a frame whose length or
checksum does not hold skips forward to the next ``SYNC`` and resumes there, so a
torn or corrupted file still yields every intact record.

A message record is ``[1, seq, t_ns, direction, opcode, payload, splices, flags]``:

- ``direction``: 0 sent (client to server), 1 received (server to client);
- ``opcode``: 1 text, 2 binary;
- ``payload``: the message's bytes, with each base64 audio string cut out;
- ``splices``: ``None`` or a list of ``[offset, audio]`` where ``audio`` is the
  decoded bytes, or ``[byte_count, fill_byte]`` when audio was not stored;
- ``flags``: ``REDACTED`` and ``AUDIO_DROPPED`` bits.

Rebuilding a message puts the base64 of each audio back at its offset, which gives
the original bytes exactly (audio is only cut out when its base64 round-trips).
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import functools
import mmap
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack

try:
    from pybase64 import b64encode
except ImportError:  # the shim can land in an interpreter without it
    from base64 import b64encode

FORMAT_VERSION = 1
"""The version written into every header. Bump it, add a migration and a golden file."""

SYNC = b"\xc1RTC"
"""Frame marker. 0xc1 is a byte msgpack never emits, which makes false syncs rare."""

_FRAME = struct.Struct("<4sII")
FRAME_OVERHEAD = _FRAME.size

MESSAGE = 1
SENT, RECEIVED = 0, 1
TEXT, BINARY = 1, 2
REDACTED = 1
AUDIO_DROPPED = 2

DIRECTIONS = ("sent", "received")
OPCODES = {TEXT: "text", BINARY: "binary"}

MAX_RECORD = 1 << 31
"""Largest body a frame may announce; anything larger is treated as corruption."""


class CaptureError(Exception):
    """The only exception the reader raises: the file cannot be read as a capture."""


# ---------------------------------------------------------------------------
# Writing


def frame(body: bytes) -> bytes:
    """Wrap one msgpack body in its frame."""
    return _FRAME.pack(SYNC, len(body), zlib.crc32(body)) + body


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

    def write(self, data: bytes) -> None:
        """Append one framed record; raises ``OSError`` if it was not written whole."""
        if self._fd is None:
            raise OSError(errno.EBADF, "capture file is closed")
        written = os.write(self._fd, data)
        if written != len(data):
            raise OSError(errno.ENOSPC, f"short write to {self.path} ({written} of {len(data)} bytes)")

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
# Reading


@dataclasses.dataclass(slots=True)
class Message:
    """One recorded WebSocket message."""

    seq: int
    t_ns: int
    direction: str
    opcode: str
    payload: bytes
    splices: list[list[Any]] | None
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
        for offset, audio in self.splices:
            parts.append(self.payload[start:offset])
            parts.append(b64encode(audio))
            start = offset
        parts.append(self.payload[start:])
        return b"".join(parts)

    def audio(self) -> list[bytes]:
        """The decoded audio chunks this message carried, in order."""
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


def _valid_message(record: Any) -> bool:
    """Whether an unpacked record is a well-formed message record (a CRC does not prove it:
    bytes can frame correctly and still not be one of ours)."""
    if not (type(record) is list and len(record) == 8 and record[0] == MESSAGE):
        return False
    _, seq, t_ns, direction, opcode, payload, splices, flags = record
    return (
        type(seq) is int
        and type(t_ns) is int
        and direction in (SENT, RECEIVED)
        and opcode in OPCODES
        and type(payload) is bytes
        and type(flags) is int
        and (splices is None or _valid_splices(splices, flags, len(payload)))
    )


def _message(record: list[Any]) -> Message | None:
    if not _valid_message(record):
        return None
    _, seq, t_ns, direction, opcode, payload, splices, flags = record
    if splices is not None and flags & AUDIO_DROPPED:
        splices = [[off, bytes([fill]) * count] for off, count, fill in splices]
    return Message(seq, t_ns, DIRECTIONS[direction], OPCODES[opcode], payload, splices, flags)


def _is_dropped_splice(splice: Any, size: int) -> bool:
    return (
        isinstance(splice, list)
        and len(splice) == 3
        and all(type(v) is int for v in splice)
        and 0 <= splice[0] <= size
        and 0 <= splice[1] < MAX_RECORD
        and 0 <= splice[2] <= 255
    )


def iter_frames(data: bytes | mmap.mmap) -> Iterator[tuple[int, bytes | None, int]]:
    """Yield ``(offset, body, skipped)`` for each intact frame, and ``(offset, None, n)``
    for each run of ``n`` bytes that had to be skipped (including a torn tail)."""
    size = len(data)
    pos = 0
    while pos < size:
        if size - pos >= FRAME_OVERHEAD and data[pos : pos + 4] == SYNC:
            _, length, crc = _FRAME.unpack_from(data, pos)
            end = pos + FRAME_OVERHEAD + length
            if length < MAX_RECORD and end <= size:
                body = bytes(data[pos + FRAME_OVERHEAD : end])
                if zlib.crc32(body) == crc:
                    yield pos, body, 0
                    pos = end
                    continue
        nxt = data.find(SYNC, pos + 1)
        nxt = size if nxt < 0 else nxt
        yield pos, None, nxt - pos
        pos = nxt


def _unpack(body: bytes) -> Any:
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception:
        # msgpack raises many kinds of error for bytes that frame correctly but are not
        # one valid record; all of them mean the same thing here: a corrupt record.
        return None


_MIGRATIONS: dict[int, Callable[[dict[str, Any], list[Any]], tuple[dict[str, Any], list[Any]]]] = {}
"""Version N -> N+1 record migrations, applied in turn when reading an older file."""


def parse(
    data: bytes | mmap.mmap, path: Path = Path("-"), *, locked: bool = False, max_messages: int | None = None
) -> Capture:
    """Parse a capture held in memory. Never raises anything but :class:`CaptureError`.
    With ``max_messages``, stop after that many messages (the end record is then unknown)."""
    header: dict[str, Any] | None = None
    end: dict[str, Any] | None = None
    messages: list[Message] = []
    problems: list[str] = []
    records = 0
    stopped_early = False
    for offset, body, skipped in iter_frames(data):
        if body is None:
            # A torn tail of a file still being written is a record in progress.
            if not (locked and offset + skipped == len(data)):
                problems.append(f"skipped {skipped} unreadable bytes at offset {offset}")
            continue
        record = _unpack(body)
        if isinstance(record, list) and record and record[0] == MESSAGE:
            message = _message(record)
            if message is not None:
                messages.append(message)
                records += 1
                if max_messages is not None and len(messages) >= max_messages:
                    stopped_early = True
                    break
                continue
        elif isinstance(record, dict) and record.get("kind") == "header" and header is None and records == 0:
            header = record
            records += 1
            continue
        elif isinstance(record, dict) and record.get("kind") == "end" and end is None:
            end = record
            records += 1
            continue
        problems.append(f"skipped a malformed record at offset {offset}")
    if header is None:
        problems.append("no header record")
        header = {}
    else:
        version = header.get("format")
        if type(version) is not int or version < 1:
            problems.append(f"header has no valid format version ({version!r})")
        elif version > FORMAT_VERSION:
            raise CaptureError(
                f"{path}: capture format version {version} is newer than this rtcap reads "
                f"(version {FORMAT_VERSION}); upgrade rtcap"
            )
        else:
            for step in range(version, FORMAT_VERSION):
                header, messages = _MIGRATIONS[step](header, messages)
    if end is None and not locked and not stopped_early:
        problems.append("no end record: the recording process stopped before the session ended")
    if locked:
        state = "open"
    elif problems:
        state = "damaged"
    else:
        state = "closed"
    return Capture(path, header, messages, end, state, problems)


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


def read_capture(path: str | os.PathLike[str], max_messages: int | None = None) -> Capture:
    """Read a capture file. Raises only :class:`CaptureError`, for a file that cannot be
    opened or whose format is newer than this reader; damage is reported, not raised.
    ``max_messages`` reads only the first messages (their state is then not judged)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            locked = is_locked(f.fileno())
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return parse(b"", path, locked=locked)
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return parse(data, path, locked=locked, max_messages=max_messages)
    except OSError as e:
        raise CaptureError(f"cannot read {path}: {e.strerror or e}") from None


# ---------------------------------------------------------------------------
# Columnar reading, for the index: no object per message, one list per column.


@dataclasses.dataclass
class Columns:
    """A capture's records from ``start`` on, column by column.

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


@functools.lru_cache(maxsize=4096)
def _placeholder(size: int) -> bytes:
    return f"<audio {size} bytes>".encode()


def read_columns(path: str | os.PathLike[str], start: int = 0) -> Columns:
    """Read a capture's records from byte ``start`` on, as columns. Raises only
    :class:`CaptureError`; damage is listed in ``problems``."""
    path = Path(path)
    cols = Columns(None, None, [], [], [], [], [], [], [], [], [], start, False)
    try:
        with open(path, "rb") as f:
            cols.locked = is_locked(f.fileno())
            size = os.fstat(f.fileno()).st_size
            if size <= start:
                return cols
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                _read_columns(data, start, cols, path)
    except OSError as e:
        raise CaptureError(f"cannot read {path}: {e.strerror or e}") from None
    return cols


def _read_columns(data: mmap.mmap, start: int, cols: Columns, path: Path) -> None:
    # The index reads every message of every capture: this loop avoids any object per
    # message beyond what msgpack returns, and checks each record's shape as it goes.
    view = data[start:] if start else data
    size = len(view)
    unpack_from, crc32, unpackb = _FRAME.unpack_from, zlib.crc32, msgpack.unpackb
    seqs, times, directions, texts = cols.seq, cols.t_ns, cols.direction, cols.text
    payloads, wires, audios, redactions = cols.payload, cols.wire_bytes, cols.audio_bytes, cols.redacted
    pos = 0
    while pos < size:
        if size - pos >= FRAME_OVERHEAD and view[pos : pos + 4] == SYNC:
            _, length, crc = unpack_from(view, pos)
            end = pos + FRAME_OVERHEAD + length
            if end <= size:
                body = view[pos + FRAME_OVERHEAD : end]
                if crc32(body) == crc:
                    try:
                        record = unpackb(body, raw=False)
                    except Exception:
                        record = None
                    if type(record) is list and record and record[0] == MESSAGE:
                        if _valid_message(record):
                            _, seq, t_ns, direction, opcode, payload, splices, flags = record
                            seqs.append(seq)
                            times.append(t_ns)
                            directions.append(direction)
                            is_text = opcode == TEXT
                            texts.append(is_text)
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
                            payloads.append(payload.decode("utf-8", errors="replace") if is_text else None)
                            wires.append(wire)
                            audios.append(audio)
                            redactions.append(bool(flags & REDACTED))
                        else:
                            cols.problems.append(f"skipped a malformed record at offset {start + pos}")
                    elif type(record) is dict and record.get("kind") == "header" and cols.header is None and start == 0:
                        version = record.get("format")
                        if type(version) is int and version > FORMAT_VERSION:
                            raise CaptureError(
                                f"{path}: capture format version {version} is newer than this rtcap reads"
                            )
                        cols.header = record
                    elif type(record) is dict and record.get("kind") == "end" and cols.end is None:
                        cols.end = record
                    else:
                        cols.problems.append(f"skipped a malformed record at offset {start + pos}")
                    pos = end
                    cols.stop = start + pos
                    continue
        following = view.find(SYNC, pos + 1)
        following = size if following < 0 else following
        if cols.locked and following == size:
            break  # a record still being written: the next update reads it
        cols.problems.append(f"skipped {following - pos} unreadable bytes at offset {start + pos}")
        pos = following
        cols.stop = start + pos


def _valid_splices(splices: Any, flags: int, size: int) -> bool:
    if type(splices) is not list:
        return False
    if flags & AUDIO_DROPPED:
        return all(_is_dropped_splice(s, size) for s in splices)
    for splice in splices:  # the common case, checked without a call per splice
        if not (type(splice) is list and len(splice) == 2 and type(splice[0]) is int):
            return False
        if not (0 <= splice[0] <= size and type(splice[1]) is bytes):
            return False
    return True
