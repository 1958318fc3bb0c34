"""``rtcap show``: a session as a readable timeline, deltas collapsed, failures marked."""

from __future__ import annotations

import dataclasses
from typing import Any

import pyarrow as pa

from recorder import events, telemetry


@dataclasses.dataclass
class Line:
    """One line of the timeline: a message, or a run of deltas of one type."""

    seq: int | None
    """``None`` for the line that tells how the session ended."""
    last_seq: int | None
    t_s: float
    gap_s: float
    direction: str | None
    type: str
    count: int
    bytes: int
    audio_ms: float
    summary: str
    failure: bool
    kinds: dict[str, int] = dataclasses.field(default_factory=dict)


def _summary(event: dict[str, Any] | None, kind: str) -> tuple[str, bool]:
    """A short description of an event, and whether it is a failure."""
    if event is None:
        return "", False
    failure = events.failure_fields(event)
    if kind == events.RESPONSE_DONE:
        usage = telemetry.usage(event)
        text = f"{events.response_status(event)} in={usage.get('input_tokens')} out={usage.get('output_tokens')}"
        if failure is not None:
            _, error_type, _, message = failure
            text += f" {error_type}: {message or ''}".rstrip()
        return text, failure is not None
    if failure is not None:
        _, error_type, code, message = failure
        return f"{error_type}: {code or ''} {message or ''}".strip(), True
    if kind in ("session.created", "session.updated"):
        session = event.get("session") or {}
        return f"{session.get('id') or ''} {session.get('model') or ''}".strip(), False
    for key in ("delta", "transcript", "text", "arguments"):
        if isinstance(event.get(key), str):
            return event[key], False
    for key in ("item_id", "response_id"):
        if event.get(key):
            return f"{key}={event[key]}", False
    return "", False


def timeline(rows: pa.Table, previous_t: float = 0.0) -> list[Line]:
    """Lines for a session's events (one session, ``seq`` order); ``previous_t`` is when the
    message before the first row was (the first gap is measured from it)."""
    lines: list[Line] = []
    for row in rows.to_pylist():
        kind = row["type"] or ("(binary)" if row["payload"] is None else "(text)")
        event = events.parse(row["payload"])
        summary, failure = _summary(event, kind)
        last = lines[-1] if lines else None
        audio_ms = row["audio_ms"] or 0.0
        # A run of deltas (audio and transcript interleave) becomes one line.
        if last is not None and events.is_delta(kind) and last.kinds and last.direction == row["direction"]:
            last.last_seq, last.count = row["seq"], last.count + 1
            last.kinds[kind] = last.kinds.get(kind, 0) + 1
            last.bytes += row["bytes"]
            last.audio_ms += audio_ms
            last.summary += "" if audio_ms else summary
            previous_t = row["t_s"]
            continue
        gap = row["t_s"] - previous_t
        line = Line(
            row["seq"], row["seq"], row["t_s"], gap, row["direction"], kind, 1, row["bytes"], audio_ms, summary, failure
        )
        if events.is_delta(kind):
            line.kinds = {kind: 1}
            line.summary = "" if audio_ms else summary
        lines.append(line)
        previous_t = row["t_s"]
    for line in lines:
        if line.count > 1:
            line.type = ", ".join(f"{k.removeprefix('response.')} x{n}" for k, n in line.kinds.items())
        if line.audio_ms:
            said = f": {line.summary}" if line.summary else ""
            line.summary = f"{line.audio_ms:.0f} ms of audio{said}"
    return lines


def ending(session: dict[str, Any], failures: list[dict[str, Any]]) -> Line:
    """The line that tells how a session ended (or that it has not), from its ``sessions``
    row and its failures that belong to no message (a drop, a failed handshake)."""
    t_s = session.get("duration_s") or 0.0
    if session.get("state") == "open":
        return Line(None, None, t_s, 0.0, None, "(open)", 0, 0, 0.0, "still being recorded", False)
    failure = failures[0] if failures else None
    if failure is not None and failure["source"] == events.HANDSHAKE:
        kind, text = "(handshake)", f"{failure['error_type']}: {failure['message'] or ''}".strip()
    elif failure is not None:
        code = session.get("close_code")
        kind = "(dropped)" if code in (None, 1006) else "(closed)"
        during = f" during {failure['response_id']}" if failure.get("response_id") else ""
        text = f"connection {failure['error_type']} ({code}){during}: {failure['message'] or ''}".strip()
    else:
        code, reason = session.get("close_code"), session.get("close_reason")
        kind = "(closed)" if session.get("close_by") else "(ended)"
        text = f"by {session.get('close_by') or 'nobody known'}, code {code}" + (f": {reason}" if reason else "")
        if session.get("end_error"):
            text += f"; {session['end_error']}"
    return Line(None, None, t_s, 0.0, None, kind, 0, 0, 0.0, text, failure is not None)
