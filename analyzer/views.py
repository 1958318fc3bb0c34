"""SQL over every capture: the DuckDB views ``sessions``, ``events``, ``failures``,
``responses`` and ``turns`` on top of the index, and the Python API for them.

    from analyzer.views import open_captures
    table = open_captures("captures").sql("SELECT type, count(*) FROM events GROUP BY ALL")

Queries return ``pyarrow.Table``; only reading statements are accepted.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import duckdb
import pyarrow as pa

from recorder import events, telemetry, turns

from .db import connect, in_list, json_path, lock
from .index import Index, UpdateReport

P = ParamSpec("P")
R = TypeVar("R")

READING = {"SELECT", "EXPLAIN"}
REPLAY_RECORDERS = ("simulator", "serve", "replay")
"""Recorder kinds whose sessions rtcap made itself: left out of analysis unless asked."""


class QueryError(Exception):
    """A query DuckDB rejected, or one that tries to write; the message is one line."""


_EMPTY_EVENTS = """
    SELECT NULL::VARCHAR AS session_id, NULL::BIGINT AS seq, NULL::BIGINT AS t_ns,
           NULL::TIMESTAMPTZ AS ts, NULL::VARCHAR AS direction, NULL::VARCHAR AS type,
           NULL::VARCHAR AS event_id, NULL::VARCHAR AS response_id, NULL::VARCHAR AS item_id,
           NULL::BIGINT AS bytes, NULL::BIGINT AS audio_bytes, NULL::DOUBLE AS audio_ms,
           NULL::BOOLEAN AS redacted, NULL::VARCHAR AS payload, NULL::VARCHAR AS key
    WHERE false
"""


def _error(field: str, path: tuple[str, ...]) -> str:
    return json_path("e.payload::JSON", (*path, field))


def _usage(count: str) -> str:
    path = (*telemetry.USAGE_PATH, *telemetry.USAGE_FIELDS[count])
    return f"any_value(TRY_CAST({json_path('payload::JSON', path)} AS BIGINT))"


CONVERSATION_LABEL = "conversation"
"""A label the client sets to the same value on every connection of one conversation: the
sessions that carry it form one chain, whatever their timing."""
CHAIN_GAP_S = 5.0
"""Without a conversation label, a session continues the chain of the session of the same
app (labels, host, URL path, model) that started just before it when it starts at most
this many seconds after that one ended."""

_MARK_COLUMNS = ", ".join(f"t.{mark}_seq, t.{mark}_t_s" for mark in turns.MARKS)
_TURNS_SCHEMA = pa.schema(
    [("session_id", pa.string()), ("turn", pa.int64()), ("response_id", pa.string())]
    + [field for mark in turns.MARKS for field in ((f"{mark}_seq", pa.int64()), (f"{mark}_t_s", pa.float64()))]
    + [(name, pa.float64()) for name in turns.LATENCIES]
    + [("barge_in", pa.bool_())]
)
_TURN_EVENTS = f"""
    SELECT session_id, seq, t_ns, direction, type, response_id,
           CASE WHEN type = '{turns.ITEM_CREATE}' THEN {json_path("payload::JSON", turns.ITEM_ROLE_PATH)} END AS role
    FROM _events WHERE type IN {in_list(turns.TURN_EVENTS)}
    UNION ALL
    SELECT session_id, min(seq), arg_min(t_ns, seq), '{events.RECEIVED}', arg_min(type, seq), response_id, NULL
    FROM _events WHERE type IN {in_list(turns.FIRST_AUDIO)} AND response_id IS NOT NULL GROUP BY session_id, response_id
    UNION ALL
    SELECT session_id, min(seq), arg_min(t_ns, seq), '{events.RECEIVED}', arg_min(type, seq), response_id, NULL
    FROM _events WHERE type IN {in_list(turns.FIRST_TEXT)} AND response_id IS NOT NULL GROUP BY session_id, response_id
    ORDER BY session_id, seq
"""


def _turns(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """The turns of every session (:class:`recorder.turns.TurnTracker`), one row each."""
    rows: list[dict[str, Any]] = []
    tracker: turns.TurnTracker | None = None
    current = None

    def flush() -> None:
        for turn in tracker.turns if tracker else []:
            row: dict[str, Any] = {"session_id": current, "turn": turn.index, "response_id": turn.response_id}
            for mark in turns.MARKS:
                seq, t_ns = turn.marks.get(mark, (None, None))
                row[f"{mark}_seq"], row[f"{mark}_t_s"] = seq, None if t_ns is None else t_ns / 1e9
            row.update(turn.latencies())
            row["barge_in"] = turn.barge_in
            rows.append(row)

    for session_id, seq, t_ns, direction, kind, response_id, role in con.execute(_TURN_EVENTS).fetchall():
        if session_id != current:
            flush()
            current, tracker = session_id, turns.TurnTracker()
        assert tracker is not None
        tracker.add(seq, t_ns, direction, kind, response_id, role)
    flush()
    return pa.Table.from_pylist(rows, schema=_TURNS_SCHEMA)


# Every protocol rule in these views comes from recorder.events: the event names, JSON
# paths and lists are generated from its constants, and classes and abnormal closes are
# its functions, registered as SQL functions by analyzer.db.
_VIEWS = f"""
CREATE TEMP VIEW events AS
SELECT session_id, seq, t_ns / 1e9 AS t_s, ts, direction, type, event_id, response_id, item_id,
       bytes, audio_ms, redacted, payload::JSON AS payload
FROM _events;

CREATE TEMP VIEW responses AS
WITH created AS (
    SELECT session_id, response_id, min(seq) AS created_seq, min(t_ns) / 1e9 AS created_t_s
    FROM _events WHERE type = '{events.RESPONSE_STARTED}' AND response_id IS NOT NULL GROUP BY ALL
), done AS (
    SELECT session_id, response_id, min(seq) AS done_seq, min(t_ns) / 1e9 AS done_t_s,
           any_value({json_path("payload::JSON", events.RESPONSE_STATUS_PATH)}) AS status,
           any_value({json_path("payload::JSON", (*events.RESPONSE_ERROR_PATH, "type"))}) AS error_type,
           {_usage("input_tokens")} AS input_tokens,
           {_usage("output_tokens")} AS output_tokens
    FROM _events WHERE type = '{events.RESPONSE_DONE}' AND response_id IS NOT NULL GROUP BY ALL
), audio AS (
    SELECT session_id, response_id, sum(audio_ms) AS audio_out_ms
    FROM _events WHERE direction = '{events.RECEIVED}' AND audio_ms IS NOT NULL AND response_id IS NOT NULL
    GROUP BY ALL
)
SELECT session_id, response_id, c.created_seq, d.done_seq, c.created_t_s, d.done_t_s,
       coalesce(d.status, CASE WHEN m.state = 'open' THEN 'in_progress' ELSE '{events.DROPPED}' END) AS status,
       d.error_type, d.input_tokens, d.output_tokens, coalesce(a.audio_out_ms, 0) AS audio_out_ms
FROM created c FULL JOIN done d USING (session_id, response_id)
LEFT JOIN audio a USING (session_id, response_id)
LEFT JOIN _manifest m USING (session_id);

CREATE TEMP VIEW failures AS
WITH r_all AS MATERIALIZED (  -- computed once, not once for each use below
    SELECT * FROM responses
), errors AS (
    SELECT e.session_id, e.seq, e.t_ns / 1e9 AS t_s, '{events.ERROR}' AS source,
           {_error("type", events.ERROR_PATH)} AS error_type,
           {_error("code", events.ERROR_PATH)} AS code,
           {_error("message", events.ERROR_PATH)} AS message,
           -- the response in progress: the latest started and not yet done
           arg_max(r.response_id, r.created_seq) AS response_id
    FROM _events e
    LEFT JOIN r_all r ON r.session_id = e.session_id AND r.created_seq < e.seq
                         AND coalesce(r.done_seq, 9223372036854775807) > e.seq
    WHERE e.type = '{events.ERROR}'
    GROUP BY e.session_id, e.seq, e.t_ns, e.payload
), failed AS (
    SELECT r.session_id, r.done_seq AS seq, r.done_t_s AS t_s, '{events.RESPONSE_DONE}' AS source,
           coalesce({_error("type", events.RESPONSE_ERROR_PATH)}, '{events.UNKNOWN_ERROR}') AS error_type,
           {_error("code", events.RESPONSE_ERROR_PATH)} AS code,
           {_error("message", events.RESPONSE_ERROR_PATH)} AS message,
           r.response_id
    FROM r_all r JOIN _events e ON e.session_id = r.session_id AND e.seq = r.done_seq
    WHERE r.status = '{events.FAILED}' AND e.type = '{events.RESPONSE_DONE}'
), dropped AS (
    SELECT r.session_id, NULL::BIGINT AS seq, coalesce(m.end_t_ns, m.last_t_ns) / 1e9 AS t_s, 'close' AS source,
           '{events.CONNECTION_CLOSED}' AS error_type, CAST(m.close_code AS VARCHAR) AS code,
           coalesce(m.end_error, '{events.DROPPED_MESSAGE}') AS message, r.response_id
    FROM r_all r JOIN _manifest m USING (session_id)
    WHERE r.status = '{events.DROPPED}' AND m.end_t_ns IS NOT NULL AND rtcap_abnormal_close(m.close_code)
), handshake AS (
    SELECT session_id, NULL::BIGINT AS seq, 0.0 AS t_s, '{events.HANDSHAKE}' AS source,
           rtcap_handshake_error(handshake_status, end_error) AS error_type,
           CAST(handshake_status AS VARCHAR) AS code, end_error AS message, NULL::VARCHAR AS response_id
    FROM _manifest
    WHERE end_t_ns IS NOT NULL AND rtcap_handshake_error(handshake_status, end_error) IS NOT NULL
)
SELECT session_id, seq, t_s, rtcap_failure_class(source, error_type, code) AS class,
       source, error_type, code, message, response_id
FROM (
    SELECT * FROM handshake UNION ALL SELECT * FROM errors UNION ALL SELECT * FROM failed
    UNION ALL SELECT * FROM dropped
);

CREATE TEMP VIEW _sessions AS
WITH created AS (
    SELECT session_id,
           any_value({json_path("payload::JSON", telemetry.SESSION_ID_PATH)}) AS server_session_id,
           any_value({json_path("payload::JSON", telemetry.SESSION_MODEL_PATH)}) AS model,
           any_value(TRY_CAST({json_path("payload::JSON", telemetry.SESSION_EXPIRES_PATH)} AS BIGINT)) AS expires
    FROM _events WHERE type = '{turns.SESSION_CREATED}' GROUP BY ALL
), counts AS (
    SELECT session_id, count(*) AS messages, count(*) FILTER (WHERE direction = '{events.SENT}') AS sent,
           count(*) FILTER (WHERE direction = '{events.RECEIVED}') AS received, sum(bytes) AS bytes
    FROM _events GROUP BY ALL
), fails AS (
    SELECT session_id, count(*) FILTER (WHERE class IN {in_list(events.COUNTED_CLASSES)}) AS failures
    FROM failures GROUP BY ALL
)
SELECT m.session_id, c.server_session_id, m.file, m.state, m.started_at,
       m.started_at + to_microseconds(coalesce(m.end_t_ns, m.last_t_ns, 0) // 1000) AS ended_at,
       coalesce(m.end_t_ns, m.last_t_ns, 0) / 1e9 AS duration_s,
       m.url, nullif(regexp_extract(m.url, '^[a-z]+://(?:[^@/]*@)?(\\[[^\\]]*\\]|[^/:?]+)', 1), '') AS host,
       coalesce(c.model, nullif(regexp_extract(m.url, '[?&](?:model|deployment)=([^&]+)', 1), '')) AS model,
       m.dialect, m.recorder, m.labels,
       coalesce(k.messages, 0) AS messages, coalesce(k.sent, 0) AS sent, coalesce(k.received, 0) AS received,
       coalesce(k.bytes, 0)::BIGINT AS bytes, m.close_code, m.close_by,
       coalesce(f.failures, 0) AS failures, coalesce(f.failures, 0) > 0 AS failed, m.state = 'damaged' AS damaged,
       try(to_timestamp(c.expires)) AS expires_at, m.replay_of,
       m.end_error, m.close_reason, coalesce(m.recorder IN {in_list(REPLAY_RECORDERS)}, false) AS is_replay,
       m.problems
FROM _manifest m
LEFT JOIN created c USING (session_id)
LEFT JOIN counts k USING (session_id)
LEFT JOIN fails f USING (session_id);

CREATE TEMP VIEW sessions AS
WITH base AS MATERIALIZED (  -- computed once, for the chains and for the rows
    SELECT * FROM _sessions
), apps AS (
    SELECT session_id, started_at, ended_at,
           labels['{CONVERSATION_LABEL}'] AS conversation,
           -- the same app: labels, host, URL path, model (the query string aside)
           CASE WHEN labels['{CONVERSATION_LABEL}'] IS NULL THEN
               concat_ws(' ', CAST(map_entries(labels) AS VARCHAR), host,
                         regexp_extract(url, '^[a-z]+://[^/?#]*([^?#]*)', 1), model) END AS app
    FROM base
), ordered AS (
    SELECT *, lag(ended_at) OVER (PARTITION BY app ORDER BY started_at, session_id) AS previous_end FROM apps
), starts AS (
    SELECT *, CASE WHEN conversation IS NOT NULL THEN false
                   ELSE previous_end IS NOT NULL AND started_at >= previous_end
                        AND started_at - previous_end <= INTERVAL {int(CHAIN_GAP_S * 1e6)} MICROSECONDS END AS continues
    FROM ordered
), numbered AS (
    SELECT *, sum(CASE WHEN continues THEN 0 ELSE 1 END)
                  OVER (PARTITION BY app ORDER BY started_at, session_id) AS chain_no
    FROM starts
), chains AS (
    SELECT session_id,
           CASE WHEN conversation IS NOT NULL
                THEN first_value(session_id) OVER (PARTITION BY conversation ORDER BY started_at, session_id)
                ELSE first_value(session_id) OVER (PARTITION BY app, chain_no ORDER BY started_at, session_id)
           END AS chain_id
    FROM numbered
)
SELECT s.*, c.chain_id FROM base s LEFT JOIN chains c USING (session_id);

CREATE TEMP VIEW turns AS
SELECT t.session_id, t.turn, t.response_id,
       {_MARK_COLUMNS},
       {", ".join(turns.LATENCIES)},
       r.status, r.input_tokens, r.output_tokens, r.audio_out_ms, t.barge_in
FROM _turns t LEFT JOIN responses r USING (session_id, response_id);
"""


class Captures:
    """A capture root, indexed and ready for SQL.

    Every statement runs on a connection of its own, made for it and thrown away after
    it: the index's files reach DuckDB as Arrow datasets (read by pyarrow, never by
    DuckDB's file system), then the connection is locked (:data:`analyzer.db.SANDBOX`).
    A statement can therefore read the views and nothing else: no other file, no
    environment, no network; it cannot write, install or load anything, or change a
    setting; and whatever it changes on its connection (a view replaced, say) is gone
    before the next statement runs.

    rtcap's own analyses (doctor, the report, the page) run many statements of their own
    in a row; inside :meth:`batch` those share one connection while the index stays as it
    was, which saves setting the views up again for each.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        update: bool = True,
        progress: Callable[[int, int], None] | None = None,
        include_replays: bool = False,
    ) -> None:
        self.index = Index(Path(root))
        self.include_replays = include_replays
        """Whether the views hold the sessions rtcap made itself (replay, serve, simulator);
        without it they are left out of every view."""
        self.report = self.index.update(progress) if update else UpdateReport()
        self._batch = threading.local()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Run this thread's statements inside on one connection, made again only when the
        index changes (or a statement first needs the turns). For rtcap's own statements:
        a user's SQL runs outside a batch, on a connection of its own."""
        batch = self._batch
        if getattr(batch, "depth", 0):
            batch.depth += 1
            try:
                yield
            finally:
                batch.depth -= 1
            return
        batch.depth, batch.shared = 1, None
        try:
            yield
        finally:
            if batch.shared is not None:
                batch.shared[-1].close()
            batch.depth, batch.shared = 0, None

    @contextlib.contextmanager
    def _connection(self, query: str, own: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """The connection ``query`` runs on: its ``own``, or the batch's when there is one
        (call it with the index's read lock held, so the files it names stay until the
        query ends)."""
        manifest, segments = self.index.snapshot()
        turns_named = "turns" in query.lower()
        batch = self._batch
        if own or not getattr(batch, "depth", 0):
            con = self._connect(manifest, segments, turns_named)
            try:
                yield con
            finally:
                con.close()
            return
        shared = batch.shared
        if shared is None or shared[0] is not manifest or shared[1] != segments or (turns_named and not shared[2]):
            if shared is not None:
                batch.shared = None
                shared[-1].close()
            batch.shared = (manifest, segments, turns_named, self._connect(manifest, segments, turns_named))
        yield batch.shared[-1]

    def _connect(self, manifest: pa.Table, segments: list[Path], turns_named: bool) -> duckdb.DuckDBPyConnection:
        """A sandboxed connection with the views over the index's ``manifest`` and
        ``segments``. The turns are found only when ``turns_named`` (they take a pass over
        the index's turn events); otherwise the view is empty."""
        import pyarrow.dataset as ds

        con = connect()
        try:
            parts = [str(p) for p in segments]
            if parts:
                con.register("_all_events", ds.dataset(parts, format="parquet"))
            else:
                con.execute(f"CREATE TEMP VIEW _all_events AS {_EMPTY_EVENTS}")
            con.register("_manifest", self._kept(manifest))
            con.execute(
                "CREATE TEMP VIEW _events AS SELECT * FROM _all_events"
                + ("" if self.include_replays else " WHERE session_id IN (SELECT session_id FROM _manifest)")
            )
            con.register("_turns", _turns(con) if turns_named else _TURNS_SCHEMA.empty_table())
            con.execute(_VIEWS)
            lock(con)
        except BaseException:
            con.close()
            raise
        return con

    def _kept(self, manifest: pa.Table) -> pa.Table:
        """The rows of ``manifest`` the views hold: replays left out unless asked for."""
        if self.include_replays:
            return manifest
        import pyarrow.compute as pc

        replay = pc.is_in(manifest["recorder"], pa.array(REPLAY_RECORDERS))  # a missing recorder is no replay
        return manifest.filter(pc.invert(pc.fill_null(replay, False)))

    def version(self) -> dict[str, Any]:
        """``{"n": sessions, "last": the greatest session id}`` of the views, from the
        index's manifest alone (no statement): what changes when a session comes or goes,
        cheap enough to ask every second of a large root."""
        import pyarrow.compute as pc

        with self.index.reading():
            ids = self._kept(self.index.snapshot()[0])["session_id"]
        return {"n": len(ids), "last": pc.max(ids).as_py()}

    def sql(self, query: str, params: list[Any] | None = None) -> pa.Table:
        """Run one reading statement; returns its rows as an Arrow table."""
        with self.index.reading(), self._connection(query) as con:
            _reading(con, query)
            try:
                return con.sql(query, params=params).to_arrow_table()
            except duckdb.Error as e:
                raise QueryError(_one_line(e)) from None

    def stream(self, query: str, params: list[Any] | None = None, rows: int = 100_000) -> Iterator[pa.RecordBatch]:
        """Run one reading statement and yield its rows ``rows`` at a time, so that memory
        holds a batch, not the result (publishing the index to a store reads it so)."""
        # Its own connection even in a batch: the next statement would end the stream.
        with self.index.reading(), self._connection(query, own=True) as con:
            _reading(con, query)
            try:
                yield from con.sql(query, params=params).to_arrow_reader(rows)
            except duckdb.Error as e:
                raise QueryError(_one_line(e)) from None

    def close(self) -> None:
        """Nothing stays open between statements; kept for callers that close."""


def _reading(con: duckdb.DuckDBPyConnection, query: str) -> None:
    """Refuse anything but one reading statement: a clearer answer than the sandbox's,
    not a defence."""
    try:
        statements = con.extract_statements(query)
    except duckdb.Error as e:
        raise QueryError(_one_line(e)) from None
    if len(statements) != 1:
        raise QueryError(f"expected one SQL statement, got {len(statements)}")
    kind = statements[0].type.name
    if kind not in READING:
        raise QueryError(f"only reading queries are allowed here, not {kind}")


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def batched(function: Callable[Concatenate[Captures, P], R]) -> Callable[Concatenate[Captures, P], R]:
    """Run an analysis of rtcap's own (its first argument the captures) in one
    :meth:`Captures.batch`."""

    @functools.wraps(function)
    def run(captures: Captures, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with captures.batch():
            return function(captures, *args, **kwargs)

    return run


def open_captures(root: str | os.PathLike[str] = "captures", **options: Any) -> Captures:
    """Index ``root`` (incrementally) and open its views."""
    return Captures(root, **options)
