"""DuckDB for rtcap: connections within the memory limit, the protocol's rules as SQL
functions, and the event fields the index parses out of each payload.

The rules themselves live in :mod:`recorder.events`; SQL reaches them through the
functions registered here (``rtcap_failure_class``, ``rtcap_abnormal_close``,
``rtcap_failure_matches``) and through expressions generated from its constants, so no
view restates them. The index and the views both build on this module; neither imports
the other.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import duckdb
import pyarrow as pa

from recorder import events

_MEMORY = re.compile(r"^\s*\d+(\.\d+)?\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)


class ConfigError(ValueError):
    """A setting from the environment that cannot be used (the message says which)."""


def memory_limit() -> str:
    """DuckDB's memory limit: ``$RTCAP_MEMORY_LIMIT`` (e.g. ``2GB``), else 1GB."""
    value = os.environ.get("RTCAP_MEMORY_LIMIT") or "1GB"
    if not _MEMORY.match(value):
        raise ConfigError(f"bad RTCAP_MEMORY_LIMIT {value!r}: use a size such as 512MB or 2GB")
    return value


def connect() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection within ``RTCAP_MEMORY_LIMIT``, with no progress bar
    (DuckDB would print it into the command's output) and rtcap's SQL functions."""
    con = duckdb.connect(config={"memory_limit": memory_limit()})
    con.execute("SET enable_progress_bar = false")
    register_functions(con)
    return con


SANDBOX = (
    "SET enable_external_access = false",
    "SET autoinstall_known_extensions = false",
    "SET autoload_known_extensions = false",
    "SET allow_community_extensions = false",
    "SET lock_configuration = true",
)
"""What a connection that runs user SQL is locked into, last: no file, network or
environment access, no extension installed or loaded, no setting changed."""


def lock(con: duckdb.DuckDBPyConnection) -> None:
    """Lock a connection into :data:`SANDBOX` (after everything it needs is set up)."""
    for statement in SANDBOX:
        con.execute(statement)


def register_functions(con: duckdb.DuckDBPyConnection) -> None:
    """The rules of :mod:`recorder.events` that SQL needs, as SQL functions."""
    _function(con, "rtcap_failure_class", events.failure_class, ["VARCHAR"] * 3, "VARCHAR")
    _function(con, "rtcap_abnormal_close", events.abnormal_close, ["BIGINT"], "BOOLEAN")
    _function(con, "rtcap_failure_matches", events.matches, ["VARCHAR"] * 4, "BOOLEAN")
    _function(con, "rtcap_handshake_error", events.handshake_error, ["BIGINT", "VARCHAR"], "VARCHAR")


def _function(con: duckdb.DuckDBPyConnection, name: str, function: Any, parameters: list[str], result: str) -> None:
    # NULLs reach the Python function (a missing code is an answer, not a NULL result).
    # The enum for "special" moved between DuckDB releases; its string works in all.
    con.create_function(name, function, parameters, result, null_handling="special")  # type: ignore[call-overload]


def json_path(column: str, path: Sequence[str], *, text: bool = True) -> str:
    """``column->'a'->>'b'``: a JSON path of :mod:`recorder.events` as a DuckDB expression."""
    *steps, last = path
    expression = column + "".join(f"->'{step}'" for step in steps)
    return expression + (f"->>'{last}'" if text else f"->'{last}'")


def first_of(column: str, paths: Sequence[Sequence[str]]) -> str:
    """The first of several JSON paths that is present, as a DuckDB expression."""
    return "coalesce(" + ", ".join(json_path(column, p) for p in paths) + ")"


def in_list(values: Sequence[str]) -> str:
    """A tuple of SQL string literals (for constants of :mod:`recorder.events`)."""
    return "(" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + ")"


_FIELDS = f"""
    WITH parsed AS (
        SELECT *, CASE WHEN is_text AND json_valid(payload) AND left(ltrim(payload), 1) = '{{'
                       THEN payload::JSON END AS j
        FROM raw
    )
    SELECT session_id, seq, t_ns, ts, direction,
           j->>'type' AS type,
           j->>'event_id' AS event_id,
           {first_of("j", events.RESPONSE_ID_PATHS)} AS response_id,
           coalesce({first_of("j", events.ITEM_ID_PATHS)},
                    CASE WHEN direction = '{events.SENT}' THEN {first_of("j", events.CLIENT_ITEM_ID_PATHS)} END)
               AS item_id,
           bytes, audio_bytes, audio_ms, redacted,
           CASE WHEN j IS NOT NULL THEN payload END AS payload, key
    FROM parsed
"""


def extract_fields(table: pa.Table, con: duckdb.DuckDBPyConnection | None = None) -> pa.Table:
    """Add the event columns parsed from each JSON payload (type and the ids of
    :func:`recorder.events.event_ids`), in DuckDB rather than per row in Python."""
    con = con or connect()
    raw = table  # noqa: F841 - found by DuckDB's replacement scan below
    return con.sql(_FIELDS).to_arrow_table()
