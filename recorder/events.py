"""What realtime events mean: the one definition every part of rtcap uses.

The recorder, the index and SQL views, doctor, precursors, replay, serve and the timeline
all ask this module, and none of them restates a rule it owns:

- parsing an event, and its dialect (GA or beta) and the names that differ between them;
- the session's audio format as it changes, and what a byte of audio is worth in time;
- runs of deltas, which count as one step of a conversation;
- the ids a server assigns (responses, items, calls) and the ids an event refers to;
- what a failure is, its class, and what ``--failure KIND`` matches;
- what puts new input into the conversation, and the fields a client makes up afresh.

Standard library only: the recording path imports it, and must stay lean.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import SplitResult, urlsplit

T = TypeVar("T")

# ---------------------------------------------------------------------------
# Parsing and dialects


def parse(data: str | bytes | bytearray | memoryview | None) -> dict[str, Any] | None:
    """The JSON object a text message holds, or ``None`` (binary, not JSON, not an object)."""
    if data is None:
        return None
    if isinstance(data, memoryview):
        data = bytes(data)
    head = data.lstrip()[:1]
    if head not in ("{", b"{"):
        return None
    try:
        event = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return event if isinstance(event, dict) else None


def event_type(event: Mapping[str, Any] | None) -> str | None:
    """An event's ``type``, if it has a string one."""
    kind = event.get("type") if event is not None else None
    return kind if isinstance(kind, str) else None


BETA_NAMES = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "conversation.item.added": "conversation.item.created",
}
"""GA event names and their beta spellings (only the names that differ)."""

ITEM_ADDED = ("conversation.item.added", "conversation.item.created")
"""The server's word that an item joined the conversation (GA, beta)."""

BETA_SUBPROTOCOL = "openai-beta.realtime-v1"


def dialect(url: str | None, headers: Iterable[Sequence[Any]] = (), subprotocols: Iterable[str] = ()) -> str:
    """``beta`` when the client asked for it (``OpenAI-Beta: realtime=v1``, the beta
    subprotocol, or Azure's preview path ``/openai/realtime``), else ``ga``."""
    offered = [str(p) for p in subprotocols]
    for pair in headers:
        if len(pair) != 2:
            continue
        name, value = str(pair[0]).lower(), str(pair[1])
        if name == "openai-beta" and value.strip().lower() == "realtime=v1":
            return "beta"
        if name == "sec-websocket-protocol":
            offered += [p.strip() for p in value.split(",")]
    if BETA_SUBPROTOCOL in offered:
        return "beta"
    return "beta" if url_path(url).rstrip("/").endswith("/openai/realtime") else "ga"


def url_path(url: str | None) -> str:
    """A URL's path, also for a URL that no longer parses (a redacted ``[REDACTED]@``
    userinfo looks like a broken IPv6 host to ``urlsplit``)."""
    return split_url(url).path


def split_url(url: str | None) -> SplitResult:
    """``urlsplit``, for recorded URLs too: a userinfo that no longer parses (redacted to
    ``[REDACTED]@``) is left out rather than failing the whole URL."""
    try:
        return urlsplit(url or "")
    except ValueError:
        scheme, sep, rest = (url or "").partition("://")
        authority, slash, tail = rest.partition("/")
        try:
            return urlsplit(scheme + sep + authority.rpartition("@")[2] + slash + tail)
        except ValueError:
            return urlsplit("")


# ---------------------------------------------------------------------------
# Audio

BYTES_PER_MS = {"pcm16": 48, "audio/pcm": 48, "g711_ulaw": 8, "g711_alaw": 8, "audio/pcmu": 8, "audio/pcma": 8}
"""Bytes per millisecond of each realtime audio format (beta and GA spellings)."""

DEFAULT_FORMAT = "pcm16"

GA_FORMATS = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}
"""GA format types and the beta names for the same audio."""

SILENCE_BYTE = {"g711_ulaw": 0xFF, "audio/pcmu": 0xFF, "g711_alaw": 0xD5, "audio/pcma": 0xD5}
"""The byte that repeats as silence in each format (PCM16 silence is zeros)."""

AUDIO_APPEND = "input_audio_buffer.append"
SESSION_EVENTS = ("session.created", "session.updated", "session.update")
"""The events that declare or confirm a session's audio formats."""

SENT, RECEIVED = "sent", "received"


def is_audio_delta(kind: str | None) -> bool:
    """Whether an event type streams output audio (``response.output_audio.delta`` and
    beta ``response.audio.delta``)."""
    return kind is not None and kind.endswith("audio.delta")


def audio_key(kind: str | None) -> str | None:
    """The field of an event of type ``kind`` that holds its own base64 audio: an append's
    ``audio``, an audio delta's ``delta``; None for other events."""
    return "audio" if kind == AUDIO_APPEND else "delta" if is_audio_delta(kind) else None


def audio_strings(event: Mapping[str, Any]) -> list[str]:
    """The base64 audio strings an event carries, in the order they appear in its text:
    its own (:func:`audio_key`), then audio content inside an item."""
    key = audio_key(event_type(event))
    value = event.get(key) if key else None
    found: list[str] = [value] if isinstance(value, str) and value else []
    item = event.get("item")
    if isinstance(item, dict) and isinstance(item.get("content"), list):
        for part in item["content"]:
            if isinstance(part, dict) and isinstance(part.get("audio"), str) and part["audio"]:
                found.append(part["audio"])
    return found


def session_formats(event: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The (input, output) audio formats a ``session.*`` event names, in either dialect."""
    if event_type(event) not in SESSION_EVENTS:
        return None, None
    session = event.get("session")
    if not isinstance(session, dict):
        return None, None
    audio = session.get("audio")
    found: list[str | None] = []
    for side, beta_key in (("input", "input_audio_format"), ("output", "output_audio_format")):
        fmt = session.get(beta_key)
        if not isinstance(fmt, str) and isinstance(audio, dict):
            ga = audio.get(side)
            ga = ga.get("format") if isinstance(ga, dict) else None
            fmt = ga.get("type") if isinstance(ga, dict) else None
        found.append(fmt if isinstance(fmt, str) else None)
    return found[0], found[1]


class AudioFormats:
    """A session's audio formats as they change: the client's (``sent``) and the
    server's (``received``). Both start as PCM16; a ``session.*`` event naming a format
    rtcap knows changes it from then on. Who sent the event does not matter: the client's
    ``session.update`` declares, the server's ``session.created``/``updated`` confirms."""

    def __init__(self, sent: str = DEFAULT_FORMAT, received: str = DEFAULT_FORMAT) -> None:
        self.formats = {SENT: sent, RECEIVED: received}

    def follow(self, event: Mapping[str, Any]) -> bool:
        """Take note of a ``session.*`` event; returns whether a format changed."""
        changed = False
        for side, fmt in zip((SENT, RECEIVED), session_formats(event), strict=True):
            if fmt in BYTES_PER_MS and fmt != self.formats[side]:
                self.formats[side] = fmt
                changed = True
        return changed

    def of(self, direction: str) -> str:
        """The format of audio going this way (``sent`` or ``received``)."""
        return self.formats[direction]

    def ms(self, audio_bytes: int, direction: str) -> float:
        """How long ``audio_bytes`` of audio going this way lasts, in milliseconds."""
        return audio_bytes / BYTES_PER_MS[self.formats[direction]]

    def silence(self, direction: str) -> int:
        """The byte that repeats as silence in this direction's format."""
        return SILENCE_BYTE.get(self.formats[direction], 0)


def mentions_session(payload: str | bytes) -> bool:
    """A cheap test, on a message's start, of whether it may be a ``session.*`` event
    (so only those are parsed to follow the audio format)."""
    head = payload[:64]
    return ('"session.' in head) if isinstance(head, str) else (b'"session.' in head)


# ---------------------------------------------------------------------------
# Delta runs


def is_delta(kind: str | None) -> bool:
    """Whether an event type is one of a stream of deltas (audio, transcript, text,
    arguments). A run of deltas, interleaved kinds included, is one step of the
    conversation: how many there are depends on what was said, not on what happened."""
    return kind is not None and kind.endswith(".delta")


def run_name(kinds: Iterable[str]) -> str:
    """The name of a run of deltas: its kinds, sorted, joined by ``+``."""
    return "+".join(sorted(set(kinds)))


def collapse(events: Iterable[tuple[T, str | None]]) -> list[tuple[T, str | None]]:
    """``(key, type)`` pairs with each run of deltas folded into one, named by
    :func:`run_name` and keyed by the run's first element."""
    out: list[tuple[T, str | None]] = []
    run: set[str] = set()
    for key, kind in events:
        if is_delta(kind):
            assert kind is not None
            if run:
                run.add(kind)
                out[-1] = (out[-1][0], run_name(run))
            else:
                run = {kind}
                out.append((key, kind))
            continue
        run = set()
        out.append((key, kind))
    return out


class Units:
    """Counts a stream of events as steps: each event is one, except that a delta that
    follows a delta belongs to the same step (the same rule as :func:`collapse`)."""

    def __init__(self) -> None:
        self.count = 0
        self._in_run = False

    def add(self, kind: str | None) -> bool:
        """Count one event; returns whether it began a new step."""
        delta = is_delta(kind)
        new = not (delta and self._in_run)
        self._in_run = delta
        if new:
            self.count += 1
        return new


def count_units(kinds: Iterable[str | None]) -> int:
    """How many steps a sequence of event types makes."""
    units = Units()
    for kind in kinds:
        units.add(kind)
    return units.count


# ---------------------------------------------------------------------------
# Ids

ID_KINDS = ("response", "item", "call")

RESPONSE_ID_PATHS = (("response_id",), ("response", "id"))
"""Where an event names its response: its own ``response_id``, else ``response.id``."""
ITEM_ID_PATHS = (("item_id",), ("item", "id"))
"""Where an event names its item: its own ``item_id``, else ``item.id``."""
CLIENT_ITEM_ID_PATHS = (("previous_item_id",),)
"""For a client event naming neither: the item it refers to."""


def dig(value: Any, path: Sequence[str]) -> Any:
    """``value[path[0]][path[1]]...``, or ``None`` where a step is missing."""
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _first_string(event: Mapping[str, Any], paths: Iterable[Sequence[str]]) -> str | None:
    for path in paths:
        value = dig(event, path)
        if value is not None:
            return value if isinstance(value, str) else json.dumps(value)
    return None


def event_ids(event: Mapping[str, Any], direction: str) -> tuple[str | None, str | None]:
    """The (response id, item id) an event belongs to or refers to."""
    item_paths = ITEM_ID_PATHS + (CLIENT_ITEM_ID_PATHS if direction == SENT else ())
    return _first_string(event, RESPONSE_ID_PATHS), _first_string(event, item_paths)


def server_ids(event: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The ids a server event assigns, in order, as ``(kind, id)``: the response of
    ``response.created``, an item's ``id`` and ``call_id``, the item of a commit."""
    found: list[tuple[str, str]] = []
    kind = event_type(event)
    if kind == "response.created":
        response_id = dig(event, ("response", "id"))
        if isinstance(response_id, str) and response_id:
            found.append(("response", response_id))
    item = event.get("item")
    if isinstance(item, dict):
        if isinstance(item.get("id"), str) and item["id"]:
            found.append(("item", item["id"]))
        if isinstance(item.get("call_id"), str) and item["call_id"]:
            found.append(("call", item["call_id"]))
    if kind == "input_audio_buffer.committed" and isinstance(event.get("item_id"), str) and event["item_id"]:
        found.append(("item", event["item_id"]))
    return found


def strings(value: Any) -> Iterator[str]:
    """Every string inside a JSON value (where a client event may refer to an id)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for child in value.values():
            yield from strings(child)
    elif isinstance(value, list):
        for child in value:
            yield from strings(child)


# ---------------------------------------------------------------------------
# Failures

SERVER_ERROR_TYPES = (
    "server_error",
    "service_unavailable",
    "service_unavailable_error",
    "inference_service_unavailable_error",
    "internal_error",
    "internal_server_error",
    "overloaded_error",
    "api_error",
)
"""Error types and codes of the ``server`` class of failures (other errors: ``client``)."""

NORMAL_CLOSE_CODES = (1000, 1001, 1005)
"""Close codes that end a connection normally; any other end (or none) is abnormal."""

RESPONSE_STARTED = "response.created"
RESPONSE_DONE = "response.done"
ERROR = "error"
FAILED = "failed"
CONNECTION_CLOSED = "connection_closed"
"""The error type of a connection that ended abnormally during a response."""
UNKNOWN_ERROR = "unknown"
"""The error type of a failed response that names none."""
DROPPED = "dropped"
"""The status of a response whose connection ended before its ``response.done``."""
DROPPED_MESSAGE = "connection ended during a response"

ERROR_PATH = ("error",)
"""Where an ``error`` event keeps its error object."""
RESPONSE_ERROR_PATH = ("response", "status_details", "error")
"""Where a failed ``response.done`` keeps its error object."""
RESPONSE_STATUS_PATH = ("response", "status")
HANDSHAKE = "handshake"
HANDSHAKE_REJECTED = "handshake_rejected"
"""The error type of a handshake the server answered with another status than 101."""
UPSTREAM_UNREACHABLE = "upstream_unreachable"
"""The error type of a handshake no server answered (the proxy's 502)."""
SOURCES = (ERROR, RESPONSE_DONE, "close", HANDSHAKE)
CLASSES = ("server", "client", "connection")
COUNTED_CLASSES = ("server", "connection")
"""The classes that make a session ``failed`` (a client's own mistake does not)."""
DEFAULT_FAILURE = "server_error"
"""What ``--failure`` means when not given."""
FAILURE_KINDS = ("any", "server")
"""The ``--failure`` words that are not an error type or code."""


def failure_class(source: str, error_type: str | None, code: str | None) -> str:
    """``connection`` for a connection that ended abnormally, ``server`` for the server's
    own errors (``server_error``, ``service_unavailable`` and the like, as type or code),
    ``client`` for the rest (``invalid_request_error`` and the like)."""
    if source == "close":
        return "connection"
    if source == HANDSHAKE:  # an HTTP status: 4xx is the client's, 5xx or none the server's
        return "client" if code is not None and code.startswith("4") else "server"
    if error_type in SERVER_ERROR_TYPES or code in SERVER_ERROR_TYPES:
        return "server"
    return "client"


def abnormal_close(code: int | None) -> bool:
    """Whether a connection's end is abnormal: no close code, or one not in
    :data:`NORMAL_CLOSE_CODES` (1006, a drop, included)."""
    return code is None or code not in NORMAL_CLOSE_CODES


def handshake_error(status: int | None, error: str | None) -> str | None:
    """The error type of a failed handshake, from the header's response status and the end
    record's error: a rejection (any status but 101), or an upstream nobody answered (no
    status, and an error); ``None`` for a handshake that succeeded."""
    if status == 101:
        return None
    if status is not None:
        return HANDSHAKE_REJECTED
    return UPSTREAM_UNREACHABLE if error else None


def response_status(event: Mapping[str, Any]) -> str | None:
    """The status a ``response.done`` reports (completed, cancelled, failed, incomplete)."""
    status = dig(event, RESPONSE_STATUS_PATH)
    return status if isinstance(status, str) else None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value)


def failure_fields(event: Mapping[str, Any]) -> tuple[str, str | None, str | None, str | None] | None:
    """``(source, error_type, code, message)`` when a server event is a failure: an
    ``error`` event, or a ``response.done`` whose status is ``failed``."""
    kind = event_type(event)
    if kind == ERROR:
        error = dig(event, ERROR_PATH)
        error = error if isinstance(error, dict) else {}
        return ERROR, _text(error.get("type")), _text(error.get("code")), _text(error.get("message"))
    if kind == RESPONSE_DONE and response_status(event) == FAILED:
        error = dig(event, RESPONSE_ERROR_PATH)
        error = error if isinstance(error, dict) else {}
        kind_of_error = _text(error.get("type")) or UNKNOWN_ERROR
        return RESPONSE_DONE, kind_of_error, _text(error.get("code")), _text(error.get("message"))
    return None


@dataclasses.dataclass
class Failure:
    """One failure in a session: an error, a failed response, or a connection that ended
    abnormally while a response was active."""

    seq: int | None
    source: str
    error_type: str | None
    code: str | None
    message: str | None
    response_id: str | None
    response_index: int
    """Which response of the session it belongs to, counted from 0 (the latest one
    started, for an error outside any response)."""

    @property
    def failure_class(self) -> str:
        return failure_class(self.source, self.error_type, self.code)


def matches(kind: str, failure_class_: str, error_type: str | None, code: str | None) -> bool:
    """Whether a failure is of ``--failure KIND``: ``any``; ``server`` (the class); or an
    error type or code."""
    if kind == "any":
        return True
    if kind == "server":
        return failure_class_ == "server"
    return kind in (error_type, code)


def failure_matches(failure: Failure, kind: str) -> bool:
    """:func:`matches` for a :class:`Failure`."""
    return matches(kind, failure.failure_class, failure.error_type, failure.code)


class FailureTracker:
    """Finds the failures of a session from its server events, fed in order, and its end.

    A response is active from ``response.created`` until its ``response.done``; an error
    belongs to the active response; a connection that ends abnormally while one is active
    fails it with a ``close`` failure."""

    def __init__(self) -> None:
        self.failures: list[Failure] = []
        self.responses = 0
        self.active: dict[str, int] = {}  # response id -> index, for responses not yet done
        self._latest: str | None = None

    def add(self, seq: int, event: Mapping[str, Any] | None) -> Failure | None:
        """Take note of one server event; returns the failure it is, if it is one."""
        if event is None:
            return None
        kind = event_type(event)
        response_id = _text(dig(event, ("response", "id")))
        if kind == RESPONSE_STARTED:
            self.active[response_id or f"#{self.responses}"] = self.responses
            self._latest = response_id or f"#{self.responses}"
            self.responses += 1
            return None
        fields = failure_fields(event)
        if kind == RESPONSE_DONE and response_id in self.active:
            index = self.active.pop(response_id)
        elif kind == RESPONSE_DONE:
            index = max(self.responses - 1, 0)
        else:
            current = self._current()
            response_id = current
            index = self.active[current] if current is not None else max(self.responses - 1, 0)
        if fields is None:
            return None
        failure = Failure(seq, *fields, response_id=response_id, response_index=index)
        self.failures.append(failure)
        return failure

    def _current(self) -> str | None:
        """The response in progress: the latest started that is not done."""
        if not self.active:
            return None
        return max(self.active, key=self.active.__getitem__)

    def end(self, code: int | None, error: str | None = None) -> Failure | None:
        """The connection ended (with a close code, or ``None``, or an error): a failure
        if it was abnormal while a response was active."""
        current = self._current()
        if current is None or not abnormal_close(code):
            return None
        failure = Failure(
            None,
            "close",
            CONNECTION_CLOSED,
            None if code is None else str(code),
            error or DROPPED_MESSAGE,
            None if current.startswith("#") else current,
            self.active[current],
        )
        self.failures.append(failure)
        return failure


def failures(
    server_events: Iterable[tuple[int, Mapping[str, Any] | None]],
    end: Mapping[str, Any] | None = None,
    handshake_status: int | None = 101,
) -> list[Failure]:
    """The failures in a session's ``(seq, server event)`` stream, and its end record
    (``code``, ``error``), if the session has ended; a failed handshake (the header's
    ``response_status``) comes first."""
    tracker = FailureTracker()
    error = _text((end or {}).get("error"))
    rejected = handshake_error(handshake_status, error) if end is not None else None
    if rejected is not None:
        code = None if handshake_status is None else str(handshake_status)
        tracker.failures.append(Failure(None, HANDSHAKE, rejected, code, error, None, 0))
    for seq, event in server_events:
        tracker.add(seq, event)
    if end is not None:
        code = end.get("code")
        tracker.end(code if isinstance(code, int) else None, _text(end.get("error") or end.get("incomplete")))
    return tracker.failures


# ---------------------------------------------------------------------------
# New input, and what a client makes up afresh

RESPONSE_CREATE = "response.create"
INPUT_ADDED = {SENT: ("conversation.item.create",), RECEIVED: ("input_audio_buffer.committed",)}
"""What puts new input into the conversation: an item the client adds, audio the server commits."""


def adds_input(direction: str, kind: str | None) -> bool:
    """Whether an event is in :data:`INPUT_ADDED`. A ``response.create`` with no new input
    since the previous response began asks for it again: after a failure, a retry."""
    return kind in INPUT_ADDED.get(direction, ())


CLIENT_CHOSEN_PATHS = (("event_id",), ("response", "metadata", "client_event_id"))
"""Fields a client makes up afresh for each event (LiveKit Agents the second): not what it says."""


def without_client_chosen(event: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a client event without the fields of :data:`CLIENT_CHOSEN_PATHS`."""
    copy = json.loads(json.dumps(event))
    for path in CLIENT_CHOSEN_PATHS:
        parent = dig(copy, path[:-1])
        if isinstance(parent, dict):
            parent.pop(path[-1], None)
    return copy
