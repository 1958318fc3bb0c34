"""Validation of capture records: the step of :mod:`recorder.capture`'s reading path that
comes after migration, so it knows the current format version only.

A message record is checked whole: one that is not well formed is skipped as malformed. A
header or end record is checked field by field, because one bad field should not cost the
others: a field of the wrong type (or out of range) is dropped, so that it reads as missing,
and named in a problem, so that the capture reads as damaged. Whatever a reader hands on
therefore has the types this module lists, and no consumer needs to check them again.

This module never raises on any value msgpack can produce, and never recurses into one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

MESSAGE = 1
SENT, RECEIVED = 0, 1
TEXT, BINARY = 1, 2
REDACTED = 1
AUDIO_DROPPED = 2

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

MAX_DROPPED_AUDIO = 64 << 20
"""The most audio one message may record as dropped (``--no-audio``), in bytes.

A dropped splice ``[offset, count, fill]`` takes a few bytes of file for ``count`` bytes of
silence rebuilt on reading, so its count must be bounded for memory to stay bounded by file
size. The realtime APIs take at most 15 MiB of base64 per message, which decodes to at most
11.25 MiB of audio: 64 MiB per message is over five times that, room for an API with larger
messages, while a message whose silence is rebuilt stays under 90 MiB of text."""

FIRST_YEAR, LAST_YEAR = 1000, 9000
"""The years a ``started_at`` may fall in: a message's time is ``started_at`` plus an int64
of nanoseconds (up to 292 years either way), which must stay a time that Python, Arrow and
DuckDB can all represent."""


def valid_message(record: Any) -> bool:
    """Whether a record is a well-formed message in the in-memory layout
    ``[MESSAGE, seq, t_ns, direction, opcode, payload, splices, flags]`` (a CRC does not
    prove it: bytes can frame correctly and still not be one of ours)."""
    if not (type(record) is list and len(record) == 8 and record[0] == MESSAGE):
        return False
    _, seq, t_ns, direction, opcode, payload, splices, flags = record
    return (
        type(seq) is int
        and 0 <= seq <= INT64_MAX
        and type(t_ns) is int
        and INT64_MIN <= t_ns <= INT64_MAX
        and type(direction) is int
        and (direction == SENT or direction == RECEIVED)
        and type(opcode) is int
        and (opcode == TEXT or opcode == BINARY)
        and type(payload) is bytes
        and type(flags) is int
        and 0 <= flags <= INT64_MAX
        and (splices is None or valid_splices(splices, flags, len(payload)))
    )


def valid_splices(splices: Any, flags: int, size: int) -> bool:
    """Whether a message record's ``splices`` fit its ``flags`` and a payload of ``size``
    bytes (the splice part of :func:`valid_message`, for readers that check the rest
    themselves)."""
    # Offsets must rise: a message is rebuilt by cutting its payload at them in order.
    if type(splices) is not list:
        return False
    position = 0
    if flags & AUDIO_DROPPED:
        total = 0
        for splice in splices:
            if not (type(splice) is list and len(splice) == 3 and all(type(v) is int for v in splice)):
                return False
            offset, count, fill = splice
            total += count
            if not (position <= offset <= size and 0 <= count and 0 <= fill <= 255 and total <= MAX_DROPPED_AUDIO):
                return False
            position = offset
        return True
    for splice in splices:  # the common case, checked without a call per splice
        if not (type(splice) is list and len(splice) == 2 and type(splice[0]) is int):
            return False
        if not (position <= splice[0] <= size and type(splice[1]) is bytes):
            return False
        position = splice[0]
    return True


# -- header and end records -----------------------------------------------------------


def _string(value: Any) -> bool:
    return type(value) is str


def _int64(value: Any) -> bool:
    return type(value) is int and INT64_MIN <= value <= INT64_MAX


def _count(value: Any) -> bool:
    return type(value) is int and 0 <= value <= INT64_MAX


def _http_status(value: Any) -> bool:
    return type(value) is int and 0 <= value <= 999


def _close_code(value: Any) -> bool:
    return type(value) is int and 0 <= value <= 0xFFFF  # two bytes on the wire


def _closer(value: Any) -> bool:
    return type(value) is str and value in ("client", "server", "rtcap")


def _strings(value: Any) -> bool:
    return type(value) is list and all(type(v) is str for v in value)


def _pairs(value: Any) -> bool:
    return type(value) is list and all(
        type(pair) is list and len(pair) == 2 and type(pair[0]) is str and type(pair[1]) is str for pair in value
    )


def _labels(value: Any) -> bool:
    return type(value) is dict and all(type(k) is str and type(v) is str for k, v in value.items())


def _boolean(value: Any) -> bool:
    return type(value) is bool


def started_at(value: Any) -> dt.datetime | None:
    """A header's ``started_at`` as an aware UTC time (a time without an offset is taken
    as UTC), or ``None`` if it is not an ISO-8601 time of :data:`FIRST_YEAR` to
    :data:`LAST_YEAR`."""
    if type(value) is not str or len(value) > 64:
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    try:
        when = when.astimezone(dt.UTC)
    except (OverflowError, ValueError):
        return None
    return when if FIRST_YEAR <= when.year <= LAST_YEAR else None


def _time(value: Any) -> bool:
    return started_at(value) is not None


Check = tuple[Callable[[Any], bool], str]

HEADER_FIELDS: dict[str, Check] = {
    "session_id": (_string, "a string"),
    "started_at": (_time, f"an ISO-8601 time of the years {FIRST_YEAR} to {LAST_YEAR}"),
    "started_ns": (_int64, "a 64-bit integer"),
    "url": (_string, "a string"),
    "request_headers": (_pairs, "a list of [name, value] strings"),
    "response_status": (_http_status, "an HTTP status"),
    "response_headers": (_pairs, "a list of [name, value] strings"),
    "subprotocols": (_strings, "a list of strings"),
    "subprotocol": (_string, "a string"),
    "recorder": (_string, "a string"),
    "rtcap_version": (_string, "a string"),
    "labels": (_labels, "a map of strings"),
    "replay_of": (_string, "a string"),
    "audio": (_boolean, "a boolean"),
}
"""The header's fields and what each must be (``kind`` and ``format`` are checked by the
reader itself). ``None`` is a missing field, and a field not listed passes as it is."""

END_FIELDS: dict[str, Check] = {
    "t_ns": (_int64, "a 64-bit integer"),
    "closed_by": (_closer, "client, server or rtcap"),
    "code": (_close_code, "a close code"),
    "reason": (_string, "a string"),
    "error": (_string, "a string"),
    "incomplete": (_string, "a string"),
    "messages": (_count, "a count"),
}
"""The end record's fields, as :data:`HEADER_FIELDS`."""

REQUIRED = {"end": ("t_ns",)}
"""Fields a record is damaged without: an end record says when the session ended."""


def check_fields(record: dict[Any, Any], fields: dict[str, Check], what: str) -> list[str]:
    """Drop each field of ``record`` that is not what ``fields`` says it must be; returns
    a problem for each one dropped, and for each required field missing."""
    problems = []
    for name, (valid, expected) in fields.items():
        value = record.get(name)
        if value is not None and not valid(value):
            del record[name]
            problems.append(f"{what} field {name!r} is not {expected} ({type(value).__name__}): read as missing")
        elif value is None and name in REQUIRED.get(what, ()):
            problems.append(f"{what} field {name!r} is missing")
    return problems
