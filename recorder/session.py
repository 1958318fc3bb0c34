"""What happens on one recorded connection, as plain code.

:class:`SessionRecorder` numbers messages, times them, redacts them, cuts their audio
out and hands framed records to a sink. Every method takes the time as an argument, so
a test can drive a whole recording without a socket or a clock; the proxy, the shim,
replay and serve are thin loops that feed it.
"""

from __future__ import annotations

import binascii
import datetime as dt
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from . import __version__, events
from .capture import (
    AUDIO_DROPPED,
    BINARY,
    REDACTED,
    SENT,
    TEXT,
    CaptureWriter,
    end_record,
    header_record,
    message_record,
)
from .capture import (
    RECEIVED as RECEIVED,
)
from .redact import REDACTED as REDACTED_TEXT
from .redact import Redactor, Scrubber, may_hold_tools, redact_tools

try:
    from pybase64 import b64decode
except ImportError:  # the shim can land in an interpreter without it: slower, same result
    from base64 import b64decode  # type: ignore[assignment]

_B32 = "abcdefghijklmnopqrstuvwxyz234567"

# The recording's hot path reads the usual messages without parsing them, and gives exactly
# what parsing them gives (tests/test_session_fast.py holds the two paths to that):
#
# - The event type, when it is the first key (as servers and the SDK write it).
_WS = rb"[ \t\n\r]*+"  # JSON's whitespace, and only it
_HEAD_TYPE = re.compile(rb"\{" + _WS + rb'"type"' + _WS + rb":" + _WS + rb'"([A-Za-z0-9_.]{1,128})"')
# - A ``\uXXXX`` escape that could spell a letter of a key (``"\u0069tem"`` is ``"item"``).
_ESCAPED_LETTER = re.compile(rb"\\u00[4-7]")
# - An audio event as a flat object: after its type, members whose values are plain strings
#   (printable ASCII, no escapes), numbers or literals, then the audio's key and its string.
#   No key but the first is ``type``, and none but the last ``delta`` or ``audio``: the
#   parsed object has those values (json keeps a repeated key's last value).
_PLAIN_STRING = rb'"[\x20\x21\x23-\x5b\x5d-\x7e]*+"'
_MEMBER = (
    _WS
    + rb","
    + _WS
    + rb'"(?!(?:type|delta|audio)")[\x20\x21\x23-\x5b\x5d-\x7e]*+"'
    + _WS
    + rb":"
    + _WS
    + rb"(?:"
    + _PLAIN_STRING
    # json.loads refuses integers of more than 4,300 digits: far longer than kept here.
    + rb"|-?+(?:0|[1-9][0-9]{0,99}+)(?:\.[0-9]{1,100}+)?+(?:[eE][-+]?+[0-9]{1,100}+)?+|true|false|null)"
)
_AUDIO_MEMBERS = re.compile(
    rb"(?:" + _MEMBER + rb")*+" + _WS + rb"," + _WS + rb'"(delta|audio)"' + _WS + rb":" + _WS + rb'"'
)
_AUDIO_END = re.compile(rb'"(?:' + _MEMBER + rb")*+" + _WS + rb"\}" + _WS)


def new_session_id(now: dt.datetime | None = None) -> str:
    """A session id: sortable by start time, unique, safe as a file name."""
    now = now or dt.datetime.now(dt.UTC)
    suffix = "".join(_B32[b & 31] for b in secrets.token_bytes(8))
    return f"{now.astimezone(dt.UTC):%Y%m%dT%H%M%S%fZ}-{suffix}"


def capture_path(captures: Path, session_id: str) -> Path:
    """Where a session's capture file lives: ``<captures>/<YYYY-MM-DD>/<id>.msgpack``."""
    day = f"{session_id[0:4]}-{session_id[4:6]}-{session_id[6:8]}"
    return captures / day / f"{session_id}.msgpack"


def parse_labels(pairs: Iterable[str], env: str | None = None) -> dict[str, str]:
    """Labels from ``RTCAP_LABELS`` (``k=v,k2=v2``) overridden by ``--label K=V`` pairs.
    Raises ``ValueError`` naming the first malformed label."""
    labels: dict[str, str] = {}
    env = os.environ.get("RTCAP_LABELS", "") if env is None else env
    for source in ([p for p in env.split(",") if p.strip()], list(pairs)):
        for pair in source:
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"malformed label {pair!r}: expected KEY=VALUE")
            labels[key.strip()] = value.strip()
    return labels


class Sink(Protocol):
    """Where framed records go: a :class:`CaptureWriter`, or a list in tests."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class Warnings:
    """Prints each distinct warning once per process, to stderr."""

    def __init__(self, stream: Any = None) -> None:
        self._seen: set[str] = set()
        self._stream = stream

    def __call__(self, message: str) -> None:
        if message not in self._seen:
            self._seen.add(message)
            print(f"rtcap: warning: {message}", file=self._stream or sys.stderr, flush=True)


warn = Warnings()


def open_sink(captures: Path, session_id: str, on_error: Callable[[str], None] = warn) -> Sink | None:
    """Create the capture file for a session; on failure, warn once and return ``None``."""
    path = capture_path(captures, session_id)
    try:
        return CaptureWriter(path)
    except OSError as e:
        on_error(f"cannot write captures to {path.parent}: {e.strerror or e}; traffic is relayed but not recorded")
        return None


class SessionRecorder:
    """Turns one connection's handshake, messages and close into capture records.

    ``start`` writes the header (time zero is then), ``message`` one record per message
    and ``end`` the end record. If the sink fails, the session goes on unrecorded: one
    warning, and an attempt to mark the capture incomplete at the end.
    """

    def __init__(
        self,
        sink: Sink | None,
        *,
        session_id: str,
        url: str,
        request_headers: Iterable[tuple[str, str]],
        recorder: str,
        labels: Mapping[str, str] | None = None,
        audio: bool = True,
        redactor: Redactor | None = None,
        replay_of: str | None = None,
        on_error: Callable[[str], None] = warn,
    ) -> None:
        self.session_id = session_id
        self.sink = sink
        self.audio = audio
        self.labels = dict(labels or {})
        self.replay_of = replay_of
        self.recorder = recorder
        self.redactor = redactor or Redactor()
        self.url, url_secrets = self.redactor.redact_url(url)
        self.request_headers, header_secrets = self.redactor.redact_headers(request_headers)
        self.scrubber = Scrubber(url_secrets | header_secrets)
        self.on_error = on_error
        self.seq = 0
        self.t0_ns: int | None = None
        self.incomplete: str | None = None
        self.closed = False
        self._formats = events.AudioFormats()
        # A CaptureWriter packs message records itself (a list in tests takes their bytes).
        self._write_message: Callable[..., None] | None = getattr(sink, "write_message", None)

    @classmethod
    def create(cls, captures: Path, **fields: Any) -> SessionRecorder:
        """A recorder for a new session, its capture file created under ``captures``
        (when that fails the session goes unrecorded, with one warning)."""
        session_id = new_session_id()
        return cls(open_sink(captures, session_id, fields.get("on_error", warn)), session_id=session_id, **fields)

    # -- the three events of a connection -------------------------------------------

    def start(
        self,
        now_ns: int,
        *,
        wall: dt.datetime | None = None,
        status: int | None = 101,
        response_headers: Iterable[tuple[str, str]] = (),
        subprotocol: str | None = None,
        subprotocols: Iterable[str] = (),
    ) -> None:
        """The handshake finished (or failed with ``status``): write the header."""
        self.t0_ns = now_ns
        wall = wall or dt.datetime.now(dt.UTC)
        response, secrets = self.redactor.redact_headers(response_headers)
        self.scrubber.add(secrets)
        offered, secrets = self.redactor.redact_subprotocols(subprotocols)
        self.scrubber.add(secrets)
        if subprotocol is not None:
            [subprotocol], _ = self.redactor.redact_subprotocols([subprotocol])
        self._write(
            header_record(
                {
                    "session_id": self.session_id,
                    "started_at": wall.astimezone(dt.UTC).isoformat(timespec="microseconds"),
                    "started_ns": int(wall.timestamp() * 1e9),
                    "url": self.url,
                    "request_headers": self.request_headers,
                    "response_status": status,
                    "response_headers": response,
                    "subprotocols": offered,
                    "subprotocol": subprotocol,
                    "recorder": self.recorder,
                    "rtcap_version": __version__,
                    "labels": self.labels,
                    "replay_of": self.replay_of,
                    "audio": self.audio,
                }
            )
        )

    def message(self, direction: int, data: str | bytes, now_ns: int, *, text: bool | None = None) -> int:
        """Record one message (``SENT`` or ``RECEIVED``); returns its ``seq``. A ``str`` is
        a text message; ``bytes`` are a binary one unless ``text`` is true (the UTF-8 of a
        text message, as websockets' protocol layer holds it)."""
        seq = self.seq
        self.seq = seq + 1
        t_ns = now_ns - (self.t0_ns if self.t0_ns is not None else now_ns)
        if type(data) is bytes:
            raw, opcode = data, TEXT if text else BINARY
        elif isinstance(data, str):
            raw, opcode = data.encode("utf-8", "surrogatepass"), TEXT
        else:
            raw, opcode = bytes(data), TEXT if text else BINARY
        try:
            if opcode == TEXT:
                payload, splices, flags = self._text(direction, raw)
            else:
                payload, redacted = self.scrubber.scrub_bytes(raw)
                splices, flags = None, REDACTED if redacted else 0
        except Exception:  # noqa: BLE001
            # Analysis may give up on a message (an escape that cannot be encoded, say);
            # the relay never does. The message is kept as it came, less its secrets.
            payload, splices, flags = self._unparsed(raw)
        if self.sink is not None and not self.incomplete:
            try:
                if self._write_message is not None:
                    self._write_message(seq, t_ns, direction, opcode, payload, splices, flags)
                else:
                    self.sink.write(message_record(seq, t_ns, direction, opcode, payload, splices, flags))
            except OSError as e:
                self._failed(e)
        return seq

    def end(
        self,
        now_ns: int,
        *,
        closed_by: str | None,
        code: int | None = None,
        reason: str | None = None,
        error: str | None = None,
    ) -> None:
        """The connection ended: write the end record and close the sink."""
        if self.closed:
            return
        self.closed = True
        fields: dict[str, Any] = {
            "t_ns": now_ns - (self.t0_ns if self.t0_ns is not None else now_ns),
            "closed_by": closed_by,
            "code": code,
            "reason": self.scrubber.scrub_text(reason)[0] if reason else reason,
            "error": self.scrubber.scrub_text(error)[0] if error else error,
            "messages": self.seq,
        }
        if self.incomplete:
            fields["incomplete"] = self.incomplete
        if self.sink is not None:
            try:
                self.sink.write(end_record(fields))
            except OSError:
                pass  # already warned when the first write failed
            self.sink.close()

    # -- helpers --------------------------------------------------------------------

    def _write(self, record: bytes) -> None:
        if self.sink is None or self.incomplete:
            return
        try:
            self.sink.write(record)
        except OSError as e:
            self._failed(e)

    def _failed(self, error: OSError) -> None:
        self.incomplete = f"capture write failed: {error.strerror or error}"
        self.on_error(f"{self.incomplete}; session {self.session_id} goes on unrecorded")

    def _text(self, direction: int, data: bytes) -> tuple[bytes, list[list[Any]] | None, int]:
        """What :meth:`_parsed` makes of a text message, reading the usual ones without
        parsing them: an audio event as a flat object is cut where its audio string stands;
        any other event whose type comes first, and that holds no item, tools or second
        ``type``, has no audio to cut. Anything else is parsed."""
        head = _HEAD_TYPE.match(data)
        if head is None:
            return self._parsed(direction, data)
        kind = head.group(1).decode()
        key = events.audio_key(kind)
        if key is None:
            # (``find``, not ``in``: ``in`` first tries its operand as an integer, and
            # failing that costs an exception every time.)
            if (
                kind in events.SESSION_EVENTS  # the session's audio format: followed
                or _ESCAPED_LETTER.search(data) is not None
                or data.find(b'"type"', head.end()) >= 0
                or data.find(b'"item"') >= 0
                or data.find(b'"tools"') >= 0  # with no escaped letter, may_hold_tools
            ):
                return self._parsed(direction, data)
            return self._cut(direction, data, [], redacted=False)
        members = _AUDIO_MEMBERS.match(data, head.end())
        if members is None or members.group(1) != key.encode():
            return self._parsed(direction, data)
        start = members.end()
        end = data.find(b'"', start)
        if end <= start or _AUDIO_END.fullmatch(data, end) is None:
            return self._parsed(direction, data)
        value = data[start:end]
        raw = _decode_exact(value)
        # Parsing cuts the first place the string stands; the bytes before it are short.
        if raw is None or (end - start + 2 <= start and _find_string(data, value, 0) != start):
            return self._parsed(direction, data)
        before, redacted = self.scrubber.scrub_bytes(data[:start])
        after, found = self.scrubber.scrub_bytes(data[end:])
        flags = REDACTED if redacted or found else 0
        if self.audio:
            return before + after, [[len(before), raw]], flags
        return before + after, [[len(before), len(raw), self._silence(direction)]], flags | AUDIO_DROPPED

    def _parsed(self, direction: int, data: bytes) -> tuple[bytes, list[list[Any]] | None, int]:
        """A text message parsed whole: tool credentials redacted, the session's audio
        format followed, each audio string cut, known secrets scrubbed."""
        redacted = False
        if may_hold_tools(data):
            data, redacted = redact_tools(data, self.scrubber, self.redactor)
        obj = events.parse(data)
        if obj is None:
            return self._cut(direction, data, [], redacted=redacted)
        self._track_format(direction, obj)
        spans = []
        start = 0
        for value in events.audio_strings(obj):
            if not value.isascii():  # not base64, and maybe not even encodable
                continue
            offset = _find_string(data, value.encode(), start)
            if offset >= 0:
                start = offset + len(value)
                spans.append((offset, start))
        return self._cut(direction, data, spans, redacted=redacted)

    def _unparsed(self, data: bytes) -> tuple[bytes, None, int]:
        """A message recorded without parsing it: tool credentials and known secrets out,
        audio left in. Should even that fail, the message is recorded as ``[REDACTED]``:
        a secret must never reach a capture."""
        try:
            data, tools = redact_tools(data, self.scrubber, self.redactor)
            data, found = self.scrubber.scrub_bytes(data)
        except Exception:  # noqa: BLE001
            return REDACTED_TEXT.encode(), None, REDACTED
        return data, None, REDACTED if tools or found else 0

    def _cut(
        self, direction: int, data: bytes, spans: list[tuple[int, int]], *, redacted: bool
    ) -> tuple[bytes, list[list[Any]] | None, int]:
        """Cut each base64 audio string (``data[start:end]``) that round-trips out of the
        message, then hunt secrets in what is left, never in the audio."""
        if not spans:
            data, found = self.scrubber.scrub_bytes(data)
            return data, None, REDACTED if redacted or found else 0
        pieces: list[bytes] = []
        audio: list[bytes] = []
        position = 0
        for start, end in spans:
            raw = _decode_exact(data[start:end]) if end > start else None
            if raw is not None:
                pieces.append(data[position:start])
                audio.append(raw)
                position = end
        pieces.append(data[position:])
        splices: list[list[Any]] = []
        payload = bytearray()
        for n, piece in enumerate(pieces):
            piece, found = self.scrubber.scrub_bytes(piece)
            redacted |= found
            payload += piece
            if n < len(audio):
                if self.audio:
                    splices.append([len(payload), audio[n]])
                else:
                    splices.append([len(payload), len(audio[n]), self._silence(direction)])
        flags = (REDACTED if redacted else 0) | (AUDIO_DROPPED if splices and not self.audio else 0)
        return bytes(payload), splices or None, flags

    def _track_format(self, direction: int, obj: dict[str, Any]) -> None:
        """Follow the session's audio formats, to store the right silence for ``--no-audio``."""
        if not self.audio:
            self._formats.follow(obj)

    def _silence(self, direction: int) -> int:
        return self._formats.silence(events.SENT if direction == SENT else events.RECEIVED)


def who_closed(protocol: Any, *, peer: str, local: str) -> tuple[str, int, str]:
    """Who ended a connection, from its websockets protocol state: ``peer`` if the peer's
    close frame came first, ``local`` if ours did, else ``peer`` with 1006 (a drop)."""
    rcvd, sent = protocol.close_rcvd, protocol.close_sent
    if rcvd is not None and (sent is None or protocol.close_rcvd_then_sent):
        return peer, rcvd.code, rcvd.reason
    if sent is not None:
        return local, sent.code, sent.reason
    return peer, 1006, ""


def _find_string(data: bytes, value: bytes, start: int) -> int:
    """Where JSON string ``value`` stands unescaped in ``data`` (after its opening quote),
    or -1. Searching for a short head, then checking the rest, is much faster than
    searching for a needle kilobytes long."""
    head = b'"' + value[:32]
    offset = data.find(head, start)
    while offset >= 0:
        if data.startswith(value, offset + 1) and data.startswith(b'"', offset + 1 + len(value)):
            return offset + 1
        offset = data.find(head, offset + 1)
    return -1


_SPARE_BITS = {ord(c): i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _decode_exact(value: bytes) -> bytes | None:
    """The bytes behind a base64 string, if encoding them again gives the same string
    (which rules out quotes, escapes, stray characters and non-canonical padding)."""
    try:
        raw = b64decode(value, None, True)  # validate, passed by position: keywords cost more
    except (binascii.Error, ValueError):
        return None
    # Validated base64 is whole quartets of the alphabet, padded at its end only, so a new
    # encoding can differ from it only in the bits that the last character before the
    # padding holds beyond the data: four of them before "==", two before "=".
    if value.endswith(b"="):
        spare = 0x0F if value.endswith(b"==") else 0x03
        return raw if not _SPARE_BITS[value[-3 if spare == 0x0F else -2]] & spare else None
    return raw


def now_ns() -> int:
    """The recording clock: monotonic nanoseconds."""
    return time.monotonic_ns()


def default_captures() -> Path:
    """``$RTCAP_CAPTURES``, else ``./captures``, made absolute."""
    return Path(os.environ.get("RTCAP_CAPTURES") or "captures").absolute()
