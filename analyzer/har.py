"""HAR in and out: WebSocket sessions as HAR entries holding ``_webSocketMessages``.

Chrome and Edge DevTools, Playwright's ``record_har`` and mitmproxy's savehar addon write
each WebSocket as one entry, its handshake, with the messages in ``_webSocketMessages``
(``type`` send or receive, ``time``, ``opcode`` 1 for text or 2 for binary, ``data``: the
text, or base64 for binary). :func:`import_har` turns each such entry into a capture
(recorder ``har``, redacted as rtcap redacts); :func:`har_document` does the reverse, with
what a HAR has no field for (close code and reason, rtcap's ids, exact times) in ``_rtcap``
extension fields, which other tools ignore and :func:`import_har` reads back.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from recorder import __version__, events, telemetry, turns
from recorder.capture import RECEIVED, SENT, Capture
from recorder.session import SessionRecorder, capture_path, open_sink

RECORDER = "har"
"""The recorder kind of an imported session."""

TEXT, BINARY = 1, 2
"""The opcodes a HAR message may have; others (close, ping, pong) are not messages."""
DIRECTIONS = {"send": SENT, "receive": RECEIVED}

_SESSION_ID = re.compile(r"^\d{8}T\d{12}Z-[a-z2-7]{8}$")
_B32 = "abcdefghijklmnopqrstuvwxyz234567"
# Playwright writes message times in epoch milliseconds, DevTools and mitmproxy in seconds:
# a time this large can only be milliseconds (it is the year 5138 in seconds).
_MILLISECONDS_FROM = 1e11


class HarError(Exception):
    """A file that is not a HAR, or an entry or message that cannot be read; the message
    is one line naming the file and the entry."""


@dataclasses.dataclass
class HarMessage:
    """One WebSocket message of a HAR entry."""

    direction: int
    t_ns: int
    """Wall-clock time, nanoseconds since the epoch."""
    data: str | bytes
    """The text of a text message, the bytes of a binary one."""


@dataclasses.dataclass
class HarSocket:
    """One WebSocket of a HAR file: its handshake entry and its messages."""

    file: Path
    entry: int
    """The entry's index in ``log.entries``."""
    session_id: str
    url: str
    request_headers: list[tuple[str, str]]
    response_headers: list[tuple[str, str]]
    status: int | None
    start_ns: int
    """Time zero: the end of the handshake, wall clock, nanoseconds since the epoch."""
    messages: list[HarMessage]
    extension: dict[str, Any]
    """The entry's ``_rtcap`` fields, when rtcap wrote it."""


@dataclasses.dataclass
class Imported:
    """What :func:`import_har` did with one WebSocket."""

    file: str
    entry: int
    session_id: str
    messages: int
    status: str
    """``imported``, or ``already imported`` when the session was there before."""


# -- reading ---------------------------------------------------------------------------


def read_har(path: Path) -> list[HarSocket]:
    """Every WebSocket of a HAR file, in entry order. Raises :class:`HarError` for a file
    that is not a HAR, a malformed WebSocket entry, or a HAR without a WebSocket."""
    try:
        document = json.loads(path.read_bytes())
    except OSError as e:
        raise HarError(f"cannot read {path}: {e.strerror or e}") from None
    except (ValueError, RecursionError) as e:
        raise HarError(f"{path} is not a HAR file: not JSON ({e})") from None
    entries = events.dig(document, ("log", "entries"))
    if not isinstance(entries, list):
        raise HarError(f"{path} is not a HAR file: no log.entries list")
    sockets = [
        _socket(path, n, entry)
        for n, entry in enumerate(entries)
        if isinstance(entry, dict) and "_webSocketMessages" in entry
    ]
    if not sockets:
        raise HarError(f"{path} holds no WebSocket: no entry has _webSocketMessages")
    return sockets


def _socket(path: Path, n: int, entry: dict[str, Any]) -> HarSocket:
    where = f"{path}: entry {n}"
    request, response = entry.get("request"), entry.get("response")
    if not isinstance(request, dict) or not isinstance(request.get("url"), str):
        raise HarError(f"{where}: no request.url")
    response = response if isinstance(response, dict) else {}
    raw = entry["_webSocketMessages"]
    if not isinstance(raw, list):
        raise HarError(f"{where}: _webSocketMessages is not a list")
    own = entry.get("_rtcap")
    extension: dict[str, Any] = own if isinstance(own, dict) else {}
    read = [_message(f"{where}: message {m}", message) for m, message in enumerate(raw)]
    messages = [message for message in read if message is not None]
    exact = _exact_times(extension, raw)
    if exact is not None:
        start_ns = exact[0]
        for message, t_ns in zip(messages, exact[1], strict=True):
            message.t_ns = start_ns + t_ns
    else:
        start_ns = _handshake_end(where, entry, messages)
    status = response.get("status")
    socket = HarSocket(
        file=path,
        entry=n,
        session_id="",
        url=_websocket_url(request["url"]),
        request_headers=_headers(where, request.get("headers")),
        response_headers=_headers(where, response.get("headers")),
        status=status if isinstance(status, int) and status > 0 else None,
        start_ns=start_ns,
        messages=messages,
        extension=extension,
    )
    socket.session_id = _session_id(extension, start_ns, entry)
    return socket


def _message(where: str, message: Any) -> HarMessage | None:
    if not isinstance(message, dict):
        raise HarError(f"{where}: not an object")
    direction = DIRECTIONS.get(message.get("type"))  # type: ignore[arg-type]
    if direction is None:
        raise HarError(f"{where}: type is {message.get('type')!r}, not send or receive")
    opcode, data, when = message.get("opcode", TEXT), message.get("data"), message.get("time")
    if opcode not in (TEXT, BINARY):
        return None
    if not isinstance(data, str):
        raise HarError(f"{where}: data is not a string")
    if isinstance(when, bool) or not isinstance(when, int | float):
        raise HarError(f"{where}: time is not a number")
    seconds = when / 1000 if when >= _MILLISECONDS_FROM else when
    if opcode == BINARY:
        try:
            return HarMessage(direction, round(seconds * 1e9), base64.b64decode(data, validate=True))
        except (binascii.Error, ValueError):
            raise HarError(f"{where}: binary data is not base64") from None
    return HarMessage(direction, round(seconds * 1e9), data)


def _exact_times(extension: dict[str, Any], raw: list[Any]) -> tuple[int, list[int]] | None:
    """rtcap's own exact times (``_rtcap.started_ns`` and each message's ``_rtcap.t_ns``),
    when an rtcap export holds them all; a HAR's float seconds lose the nanoseconds."""
    start = extension.get("started_ns")
    times = [events.dig(m, ("_rtcap", "t_ns")) for m in raw if m.get("opcode", TEXT) in (TEXT, BINARY)]
    if not isinstance(start, int) or not all(isinstance(t, int) for t in times):
        return None
    return start, times


def _handshake_end(where: str, entry: dict[str, Any], messages: list[HarMessage]) -> int:
    """When the handshake ended: ``startedDateTime`` plus the entry's ``time``, unless that
    falls after the first message (Playwright's ``time`` spans the whole connection),
    when the first message's time (the nearest bound the HAR gives)."""
    started = entry.get("startedDateTime")
    try:
        start = dt.datetime.fromisoformat(str(started).replace("Z", "+00:00"))
    except ValueError:
        raise HarError(f"{where}: startedDateTime {started!r} is not an ISO time") from None
    if start.tzinfo is None:
        start = start.replace(tzinfo=dt.UTC)
    lasted = entry.get("time")
    lasted = lasted if isinstance(lasted, int | float) and not isinstance(lasted, bool) and lasted > 0 else 0
    end_ns = round(start.timestamp() * 1e9) + round(lasted * 1e6)
    return min([end_ns] + [message.t_ns for message in messages[:1]])


def _headers(where: str, headers: Any) -> list[tuple[str, str]]:
    if headers is None:
        return []
    if not isinstance(headers, list):
        raise HarError(f"{where}: headers are not a list")
    out = []
    for header in headers:
        if not isinstance(header, dict) or not isinstance(header.get("name"), str):
            raise HarError(f"{where}: a header has no name")
        out.append((header["name"], str(header.get("value", ""))))
    return out


def _websocket_url(url: str) -> str:
    """mitmproxy names a WebSocket by its HTTP request (``http://``); rtcap by ``ws://``."""
    for http, ws in (("http://", "ws://"), ("https://", "wss://")):
        if url.startswith(http):
            return ws + url[len(http) :]
    return url


def _session_id(extension: dict[str, Any], start_ns: int, entry: dict[str, Any]) -> str:
    """rtcap's id of an entry rtcap exported; else one made from the handshake's time and
    a hash of the entry, so that importing the same entry again finds it already there."""
    own = extension.get("session_id")
    if isinstance(own, str) and _SESSION_ID.match(own):
        return own
    digest = hashlib.sha256(json.dumps(entry, sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    suffix = "".join(_B32[b & 31] for b in digest.digest()[:8])
    when = dt.datetime.fromtimestamp(start_ns // 1000 / 1e6, dt.UTC)
    return f"{when:%Y%m%dT%H%M%S%fZ}-{suffix}"


# -- importing -------------------------------------------------------------------------


def import_har(paths: Iterable[Path], captures: Path, labels: dict[str, str] | None = None) -> list[Imported]:
    """Write one capture per WebSocket of the HAR files into ``captures`` (recorder
    ``har``). Every file is read before anything is written, so a malformed one imports
    nothing. A session already in ``captures`` is left as it is."""
    sockets = [socket for path in paths for socket in read_har(path)]
    done: list[Imported] = []
    for socket in sockets:
        path = capture_path(captures, socket.session_id)
        if path.exists():
            done.append(Imported(str(socket.file), socket.entry, socket.session_id, 0, "already imported"))
            continue
        _write(socket, captures, labels or {})
        done.append(Imported(str(socket.file), socket.entry, socket.session_id, len(socket.messages), "imported"))
    return done


def _write(socket: HarSocket, captures: Path, labels: dict[str, str]) -> None:
    failed: list[str] = []
    sink = open_sink(captures, socket.session_id, failed.append)
    if sink is None:
        raise HarError(failed[0] if failed else f"cannot write {captures}")
    own_labels = socket.extension.get("labels")
    recorder = SessionRecorder(
        sink,
        session_id=socket.session_id,
        url=socket.url,
        request_headers=socket.request_headers,
        recorder=RECORDER,
        labels={**(own_labels if isinstance(own_labels, dict) else {}), **labels},
        on_error=failed.append,
    )
    offered = [value for name, value in socket.request_headers if name.lower() == "sec-websocket-protocol"]
    chosen = [value.strip() for name, value in socket.response_headers if name.lower() == "sec-websocket-protocol"]
    recorder.start(
        socket.start_ns,
        wall=dt.datetime.fromtimestamp(socket.start_ns / 1e9, dt.UTC),
        status=socket.status,
        response_headers=socket.response_headers,
        subprotocol=chosen[0] if chosen else None,
        subprotocols=[p.strip() for value in offered for p in value.split(",") if p.strip()],
    )
    last = socket.start_ns
    for message in socket.messages:
        recorder.message(message.direction, message.data, max(message.t_ns, socket.start_ns))
        last = max(last, message.t_ns)
    ext = socket.extension
    end_ns = socket.start_ns + ext["end_t_ns"] if isinstance(ext.get("end_t_ns"), int) else last
    recorder.end(
        end_ns,
        closed_by=_str(ext.get("close_by")),
        code=ext.get("close_code") if isinstance(ext.get("close_code"), int) else None,
        reason=_str(ext.get("close_reason")),
        error=_str(ext.get("end_error")),
    )
    if failed:
        raise HarError(failed[0])


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# -- exporting -------------------------------------------------------------------------

AUDIO_CHOICES = ("keep", "length")
"""``--har-audio``: base64 audio kept, or replaced by ``<audio N bytes>``."""


def har_document(captures: Iterable[Capture], audio: str = "keep") -> dict[str, Any]:
    """A HAR 1.2 document with one entry per capture: the handshake, holding the messages
    in ``_webSocketMessages`` (as DevTools writes them), and ``_rtcap`` extension fields."""
    return {
        "log": {
            "version": "1.2",
            "creator": {"name": "rtcap", "version": __version__},
            "pages": [],
            "entries": [har_entry(capture, audio) for capture in captures],
        }
    }


def har_entry(capture: Capture, audio: str = "keep") -> dict[str, Any]:
    """One capture as a HAR entry (see :func:`har_document`)."""
    header, end = capture.header, capture.end or {}
    started_ns = header["started_ns"] if isinstance(header.get("started_ns"), int) else 0
    started = dt.datetime.fromtimestamp(started_ns // 1000 / 1e6, dt.UTC)
    status = header.get("response_status")
    url = str(header.get("url") or "")
    return {
        "startedDateTime": started.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "time": 0,
        "request": {
            "method": "GET",
            "url": url,
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": _har_headers(header.get("request_headers")),
            "queryString": _query(url),
            "headersSize": -1,
            "bodySize": 0,
        },
        "response": {
            "status": status if isinstance(status, int) else 0,
            "statusText": "Switching Protocols" if status == 101 else "",
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": _har_headers(header.get("response_headers")),
            "content": {"size": 0, "mimeType": "x-unknown"},
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": 0,
        },
        "cache": {},
        "timings": {"blocked": -1, "dns": -1, "connect": -1, "ssl": -1, "send": 0, "wait": 0, "receive": 0},
        "_resourceType": "websocket",
        "_webSocketMessages": list(_har_messages(capture, started_ns, audio)),
        "_rtcap": {
            "session_id": capture.session_id,
            "server_session_id": _server_session_id(capture),
            "recorder": header.get("recorder"),
            "labels": header.get("labels") or {},
            "replay_of": header.get("replay_of"),
            "started_ns": started_ns,
            "end_t_ns": end.get("t_ns"),
            "close_by": end.get("closed_by"),
            "close_code": end.get("code"),
            "close_reason": end.get("reason"),
            "end_error": end.get("error"),
            "audio": audio,
        },
    }


def _har_messages(capture: Capture, started_ns: int, audio: str) -> Iterator[dict[str, Any]]:
    for message in capture.messages:
        raw = message.data()
        own: dict[str, Any] = {"seq": message.seq, "t_ns": message.t_ns}
        if message.redacted:
            own["redacted"] = True
        if message.opcode == "text":
            data = raw.decode("utf-8", errors="replace")
            if audio == "length" and message.splices:
                data = _without_audio(message.payload, message.splices)
                own["audio_replaced"] = True
        else:
            data = base64.b64encode(raw).decode()
        yield {
            "type": "send" if message.direction == "sent" else "receive",
            "time": (started_ns + message.t_ns) / 1e9,
            "opcode": TEXT if message.opcode == "text" else BINARY,
            "data": data,
            "_rtcap": own,
        }


def _without_audio(payload: bytes, splices: list[list[Any]]) -> str:
    """A message with each base64 audio string replaced by ``<audio N bytes>`` (the
    capture keeps the text around its audio apart from the audio: no parsing needed)."""
    parts, start = [], 0
    for offset, stored, *_ in splices:
        size = stored if isinstance(stored, int) else len(stored)
        parts += [payload[start:offset], f"<audio {size} bytes>".encode()]
        start = offset
    parts.append(payload[start:])
    return b"".join(parts).decode("utf-8", errors="replace")


def _har_headers(headers: Any) -> list[dict[str, str]]:
    return [{"name": str(pair[0]), "value": str(pair[1])} for pair in headers or () if len(pair) == 2]


def _query(url: str) -> list[dict[str, str]]:
    from urllib.parse import parse_qsl, urlsplit

    try:
        query = urlsplit(url).query
    except ValueError:
        query = url.partition("?")[2]
    return [{"name": name, "value": value} for name, value in parse_qsl(query, keep_blank_values=True)]


def _server_session_id(capture: Capture) -> str | None:
    for message in capture.messages[:8]:
        event = events.parse(message.payload) if message.direction == "received" else None
        if events.event_type(event) == turns.SESSION_CREATED:
            found = events.dig(event, telemetry.SESSION_ID_PATH)
            return found if isinstance(found, str) else None
    return None
