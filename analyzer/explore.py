"""Helpers for the exploring commands: time filters and the ``show`` timeline."""

from __future__ import annotations

import datetime as dt
import re
from typing import IO, Any

import pyarrow as pa

from .timeline import timeline
from .views import Captures

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
    query = (
        f"SELECT {SESSION_COLUMNS} FROM sessions"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY started_at DESC, session_id DESC"
        + (" LIMIT ?" if limit else "")
    )
    return captures.sql(query, params + ([limit] if limit else []))


def session_events(captures: Captures, session_id: str, around: int | None, context: int) -> pa.Table:
    """The events of one session, optionally only those around a seq."""
    where = ["session_id = ?"]
    params: list[Any] = [session_id]
    if around is not None:
        where.append("seq BETWEEN ? AND ?")
        params += [around - context, around + context]
    return captures.sql(
        "SELECT seq, t_s, direction, type, bytes, audio_ms, payload::VARCHAR AS payload "
        "FROM events WHERE " + " AND ".join(where) + " ORDER BY seq",
        params,
    )


def render_timeline(events: pa.Table, out: IO[str], *, color: bool) -> None:
    """Print the timeline of a session's events."""
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
    for line in timeline(events):
        seq = f"{line.seq}" if line.count == 1 else f"{line.seq}-{line.last_seq}"
        kind = line.type
        arrow = "->" if line.direction == "sent" else "<-"
        summary = line.summary if len(line.summary) <= 100 else line.summary[:99] + "…"
        style = "bold red" if line.failure else None
        marker = "FAILED " if line.failure else ""
        view.add_row(
            seq, f"{line.t_s:.3f}", f"+{line.gap_s:.3f}", arrow, kind, _size(line.bytes), marker + summary, style=style
        )
    Console(file=out, no_color=not color, force_terminal=color, width=200 if not color else None).print(view)


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"
