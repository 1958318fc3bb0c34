"""The queries behind ``rtcap ui``'s lists: one page of sessions at a time (however many
there are, only that page leaves DuckDB), and where a precursor's examples failed."""

from __future__ import annotations

import datetime as dt
from typing import Any

from ..explore import SESSION_COLUMNS, session_filter
from ..render import rows as plain_rows
from ..views import Captures

PER_PAGE = 50
SORTS = ("started_at", "duration_s", "messages", "failures", "model", "state", "session_id")
"""The columns the sessions list sorts by (a fixed list: they are put into the SQL)."""


def sessions_page(
    captures: Captures,
    *,
    failed: bool = False,
    labels: dict[str, str] | None = None,
    since: dt.datetime | None = None,
    search: str = "",
    sort: str = "started_at",
    descending: bool = True,
    page: int = 1,
    per_page: int = PER_PAGE,
) -> tuple[list[dict[str, Any]], int]:
    """One page of ``sessions`` (the filters of ``rtcap sessions``, and ``search`` in the
    session id or the server's ``sess_`` id), and how many sessions match in all."""
    if sort not in SORTS:
        raise ValueError(f"cannot sort by {sort!r}")
    where, params = session_filter(failed=failed, labels=labels, since=since)
    if search:
        where.append("(contains(session_id, ?) OR contains(coalesce(server_session_id, ''), ?))")
        params += [search, search]
    condition = " WHERE " + " AND ".join(where) if where else ""
    order = "DESC" if descending else "ASC"
    rows = captures.sql(
        f"SELECT {SESSION_COLUMNS}, count(*) OVER () AS total FROM sessions{condition} "
        f"ORDER BY {sort} {order} NULLS LAST, session_id {order} LIMIT ? OFFSET ?",
        [*params, per_page, (page - 1) * per_page],
    )
    found = plain_rows(rows)
    if found:
        total = found[0].pop("total")
        for row in found[1:]:
            row.pop("total")
    else:  # past the last page: still say how many there are
        [count] = captures.sql(f"SELECT count(*) AS n FROM sessions{condition}", params).to_pylist()
        total = count["n"]
    return found, total


def example_seqs(captures: Captures, sessions: list[str], failure: str) -> dict[str, int]:
    """Where each session's first failure of kind ``failure`` has its window: the seq of
    its response's ``response.created`` (the window ends just before), else the failure's."""
    if not sessions:
        return {}
    marks = ", ".join("?" for _ in sessions)
    rows = captures.sql(
        "SELECT f.session_id, min(coalesce(r.created_seq, f.seq)) AS seq FROM failures f "
        "LEFT JOIN responses r ON r.session_id = f.session_id AND r.response_id = f.response_id "
        f"WHERE f.session_id IN ({marks}) AND rtcap_failure_matches(?, f.class, f.error_type, f.code) "
        "GROUP BY ALL",
        [*sessions, failure],
    ).to_pylist()
    return {row["session_id"]: row["seq"] for row in rows if row["seq"] is not None}
