"""How slow the turns are: percentiles of each latency of the ``turns`` view.

    from analyzer.latency import latency
    table = latency(open_captures("captures"), labels={"app": "kiosk"})

Each latency kind of :data:`recorder.turns.LATENCIES` gets a row for all the chosen
sessions' turns together (``group`` is ``all``), then one per label value they carry
(``group`` is ``K=V``): how many turns measured it, and its p50, p90 and p99 in ms.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from recorder import turns

from .explore import session_filter
from .views import Captures

PERCENTILES = (0.5, 0.9, 0.99)
ALL = "all"
"""The ``group`` of the rows over every chosen session."""

SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("group", pa.string()),
        ("turns", pa.int64()),
        ("p50_ms", pa.float64()),
        ("p90_ms", pa.float64()),
        ("p99_ms", pa.float64()),
    ]
)


def latency(captures: Captures, *, labels: dict[str, str] | None = None, since: dt.datetime | None = None) -> pa.Table:
    """``rtcap latency``: p50, p90 and p99 of each latency kind, overall and per label
    value, over the turns of the sessions with ``labels`` started since ``since``."""
    where, params = session_filter(labels=labels, since=since)
    where = where or ["true"]
    unpivot = " UNION ALL ".join(
        f"SELECT t.session_id, '{kind}' AS kind, {n} AS k, t.{kind} AS ms FROM turns t WHERE t.{kind} IS NOT NULL"
        for n, kind in enumerate(turns.LATENCIES)
    )
    quantiles = ", ".join(f"quantile_cont(ms, {p}) AS p{round(p * 100)}_ms" for p in PERCENTILES)
    query = f"""
        WITH chosen AS (
            SELECT session_id, labels FROM sessions WHERE {" AND ".join(where)}
        ), measured AS (
            SELECT m.* FROM ({unpivot}) m JOIN chosen USING (session_id)
        ), grouped AS (
            SELECT kind, k, '{ALL}' AS "group", 0 AS g, ms FROM measured
            UNION ALL
            SELECT m.kind, m.k, l.key || '=' || l.value, 1, m.ms
            FROM measured m JOIN (SELECT session_id, unnest(map_entries(labels)) AS l FROM chosen) USING (session_id)
        )
        SELECT kind, "group", count(*) AS turns, {quantiles}
        FROM grouped GROUP BY kind, k, "group", g ORDER BY k, g, "group"
    """
    return captures.sql(query, params).cast(SCHEMA)
