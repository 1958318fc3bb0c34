"""Helpers for the exploring commands: time filters and the ``show`` timeline."""

from __future__ import annotations

import datetime as dt
import re
from typing import IO, Any

import pyarrow as pa

from recorder import events
from recorder.capture import Capture

from .timeline import ending, timeline
from .views import Captures, batched

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def since_time(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """``--since``: an ISO date or time (UTC unless it says otherwise), or an age like 2h."""
    now = now or dt.datetime.now(dt.UTC)
    relative = _RELATIVE.match(text.strip())
    if relative:
        return now - dt.timedelta(seconds=float(relative.group(1)) * _UNITS[relative.group(2)])
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"bad --since {text!r}: use an ISO date or time, or an age like 30m, 2h, 7d") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


SESSION_COLUMNS = (
    "session_id, started_at, duration_s, state, model, dialect, recorder, messages, failures, "
    "close_code, close_by, server_session_id, labels"
)


def list_sessions(
    captures: Captures,
    *,
    failed: bool = False,
    labels: dict[str, str] | None = None,
    since: dt.datetime | None = None,
    limit: int | None = None,
) -> pa.Table:
    """``rtcap sessions``: one row per session, newest first, filtered."""
    where, params = session_filter(failed=failed, labels=labels, since=since)
    query = (
        f"SELECT {SESSION_COLUMNS} FROM sessions"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY started_at DESC, session_id DESC"
        + (" LIMIT ?" if limit else "")
    )
    return captures.sql(query, params + ([limit] if limit else []))


TIMELINE_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("last_seq", pa.int64()),
        ("t_s", pa.float64()),
        ("gap_s", pa.float64()),
        ("direction", pa.string()),
        ("type", pa.string()),
        ("count", pa.int64()),
        ("bytes", pa.int64()),
        ("audio_ms", pa.float64()),
        ("summary", pa.string()),
        ("failure", pa.bool_()),
    ]
)


def session_filter(
    *, failed: bool = False, labels: dict[str, str] | None = None, since: dt.datetime | None = None
) -> tuple[list[str], list[Any]]:
    """The conditions (on ``sessions``' columns) and parameters of the filters every
    command that lists sessions takes: ``--failed``, ``--label K=V``, ``--since``."""
    where: list[str] = []
    params: list[Any] = []
    if failed:
        where.append("failed")
    for key, value in (labels or {}).items():
        where.append("labels[?] = ?")
        params += [key, value]
    if since is not None:
        where.append("started_at >= ?")
        params.append(since)
    return where, params


@batched
def session_timeline(captures: Captures, session_id: str, around: int | None = None, context: int = 20) -> pa.Table:
    """``rtcap show``: a session's timeline (runs of deltas collapsed, failures marked, and
    a last line for how it ended), or only the lines within ``context`` of seq ``around``.
    Raises ``ValueError`` for an ``around`` outside the session's seqs."""
    [session] = captures.sql("SELECT * FROM sessions WHERE session_id = ?", [session_id]).to_pylist() or [{}]
    last_seq = (session.get("messages") or 0) - 1
    where = ["session_id = ?"]
    params: list[Any] = [session_id]
    previous_t = 0.0
    if around is not None:
        if not 0 <= around <= last_seq:
            span = f"0-{last_seq}" if last_seq >= 0 else "none: it has no messages"
            raise ValueError(f"--around {around} is outside the session's seqs ({span})")
        where.append("seq BETWEEN ? AND ?")
        params += [around - context, around + context]
        [before] = captures.sql(
            "SELECT max(t_s) AS t FROM events WHERE session_id = ? AND seq < ?", [session_id, around - context]
        ).to_pylist()
        previous_t = before["t"] or 0.0
    rows = captures.sql(
        "SELECT seq, t_s, direction, type, bytes, audio_ms, payload::VARCHAR AS payload "
        "FROM events WHERE " + " AND ".join(where) + " ORDER BY seq",
        params,
    )
    lines = timeline(rows, previous_t)
    if around is None or around + context >= last_seq:
        failures = captures.sql(
            "SELECT * FROM failures WHERE session_id = ? AND seq IS NULL ORDER BY source = 'handshake' DESC",
            [session_id],
        ).to_pylist()
        end = ending(session, failures)
        end.gap_s = end.t_s - (lines[-1].t_s if lines else previous_t)
        lines.append(end)
    fields = [f.name for f in TIMELINE_SCHEMA]
    return pa.Table.from_pylist(
        [{name: getattr(line, name) for name in fields} for line in lines], schema=TIMELINE_SCHEMA
    )


@batched
def chain_timeline(captures: Captures, session_id: str) -> pa.Table:
    """``rtcap show --chain``: the timelines of every session of ``session_id``'s chain (the
    ``sessions`` view's ``chain_id``: one conversation across reconnects), in order, as one:
    a ``session_id`` column first, times from the first session's start, and each
    session's first gap from the last line of the one before."""
    chain = captures.sql(
        "SELECT session_id, started_at FROM sessions WHERE chain_id = "
        "(SELECT chain_id FROM sessions WHERE session_id = ?) ORDER BY started_at, session_id",
        [session_id],
    ).to_pylist()
    parts = []
    previous_t = 0.0
    for member in chain:
        offset = (member["started_at"] - chain[0]["started_at"]).total_seconds()
        lines = session_timeline(captures, member["session_id"]).to_pylist()
        for n, line in enumerate(lines):
            line["t_s"] += offset
            if n == 0:
                line["gap_s"] = line["t_s"] - previous_t
            previous_t = line["t_s"]
            parts.append({"session_id": member["session_id"], **line})
    schema = pa.schema([("session_id", pa.string()), *TIMELINE_SCHEMA])
    return pa.Table.from_pylist(parts, schema=schema)


def message_json(capture: Capture, seq: int) -> str:
    """One message of a capture in full (``rtcap show --seq``): its JSON, indented, or its
    text as it was, or base64 for a binary message. Raises ``ValueError`` for a seq the
    capture does not hold."""
    import base64
    import json

    for message in capture.messages:
        if message.seq == seq:
            data = message.data()
            if message.opcode != "text":
                return base64.b64encode(data).decode()
            event = events.parse(data)
            if event is None:
                return data.decode("utf-8", errors="replace")
            return json.dumps(event, indent=2, ensure_ascii=False)
    last = capture.messages[-1].seq if capture.messages else None
    span = f"0-{last}" if last is not None else "none: it has no messages"
    raise ValueError(f"--seq {seq} is not in the session (its seqs: {span})")


def render_timeline(lines: pa.Table, out: IO[str], *, color: bool) -> None:
    """Print a session's timeline (see :func:`session_timeline`) for a person."""
    from rich.console import Console, JustifyMethod
    from rich.table import Table

    view = Table(show_edge=False, header_style="bold", box=None)
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("seq", "right"),
        ("t", "right"),
        ("gap", "right"),
        ("dir", "left"),
        ("type", "left"),
        ("size", "right"),
        ("summary", "left"),
    )
    for name, justify in columns:
        view.add_column(
            name, justify=justify, no_wrap=name != "summary", overflow="ellipsis" if name != "summary" else "fold"
        )
    for line in lines.to_pylist():
        if line["seq"] is None:
            seq = "end"
        else:
            seq = f"{line['seq']}" if line["count"] == 1 else f"{line['seq']}-{line['last_seq']}"
        arrow = {"sent": "->", "received": "<-"}.get(line["direction"], "")
        summary = line["summary"] if len(line["summary"]) <= 100 else line["summary"][:99] + "…"
        style = "bold red" if line["failure"] else None
        marker = "FAILED " if line["failure"] else ""
        size = _size(line["bytes"]) if line["seq"] is not None else ""
        view.add_row(
            seq, f"{line['t_s']:.3f}", f"+{line['gap_s']:.3f}", arrow, line["type"], size, marker + summary, style=style
        )
    Console(file=out, no_color=not color, force_terminal=color, width=200 if not color else None).print(view)


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"
