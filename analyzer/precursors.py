"""``rtcap precursors``: what comes before failures and not before healthy responses.

Every response is a *turn*, and each turn has a window: the events since the previous
response ended (or the session began) up to its ``response.created``, capped by
``window_seconds`` and ``window_events``. Nothing of another response's own events is in
it, so an earlier failure cannot pass for a precursor of the next one. A failure that
belongs to no response (an error between responses) gets the window that ends at it.
Failure windows are those of turns whose failure matches ``--failure``; controls are those
of turns whose response completed.

Each window gets features: the event types in it, ordered pairs of adjacent types (runs of
deltas collapsed), scalar fields of client events of bounded cardinality, and numeric
measures cut at thresholds taken from the data (``input_tokens>=431``). What came before
the window enters only as context: the turn's index, the session's age, the conversation's
items, the previous response's input tokens and whether it failed. From the ``turns`` view
come what is known when the response is created: the turn's commit-to-created latency,
whether it had no user turn (a tool's follow-up), and of the previous turn its latency to
first audio and whether the user barged in on it (a response's own first audio is after
the window, so it is never a feature of its own turn).

Each feature is tested one-sided and exactly, *within strata* of position (bands of the
turn index) and of whether the previous response failed, so that "a late turn" or "right
after a failure" cannot pass for a cause; Holm's correction runs over every feature and
threshold tested. Position (failures come late) and clustering (failures follow failures)
are reported as findings of their own.

The scan runs on an :class:`Engine`: DuckDB on a local index, or Spark over the published
dataset (:mod:`analyzer.spark`). Both run the same statements (DuckDB's dialect, written
to translate: no ASOF join, no list parameters) and the same functions of this module over
their rows (:func:`_describe_sessions`, on Spark's workers a session at a time); what comes
back is a row a window, and the thresholds and the statistics are computed here.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa

from recorder import events as protocol
from recorder import turns as dialogue

from .stats import Strata, busiest_second, cut_points, fisher_greater, holm, number

if TYPE_CHECKING:  # DuckDB is imported where it runs: Spark's workers import this module too
    from .views import Captures

__all__ = ["DuckDB", "Engine", "analyse", "fisher_greater", "holm"]

SIGNIFICANT = 0.001
NEAR_IDENTICAL = 0.05  # features whose windows differ in at most 5% of them are merged
MEASURES = (
    "turn_index",
    "session_age_s",
    "conversation_items",
    "input_tokens",
    "audio_chunk_ms",
    "events_per_second",
    "gap_since_server_s",
    "commit_to_created_ms",
    "previous_first_audio_ms",
)
"""Numeric measures of a window; ``input_tokens`` is the previous response's, and so is
``previous_first_audio_ms`` (its ``created_to_first_audio_ms``)."""
PREVIOUS_FAILED = "previous_response:status=failed"
PREVIOUS_BARGE_IN = "previous_turn:barge_in=true"
NO_USER_TURN = "turn:user=false"
"""A response started without a user turn (a tool's follow-up, an out-of-band response)."""
POSITION = "turn_index>="
KIND_ORDER = {"event": 0, "field": 1, "numeric": 2, "sequence": 3}
MAX_FIELD_VALUES = 12
IGNORED_KEYS = ("event_id", "item_id", "response_id", "call_id", "previous_item_id", "id", "audio", "delta")
BANDS = (0, 1, 2, 4, 8, 16)
"""Turn-index bands the test holds fixed: 0, 1, 2-3, 4-7, 8-15, 16 and later."""


@dataclasses.dataclass
class Window:
    """The events before one turn's response (or before a failure outside any response)."""

    id: int
    session_id: str
    failed: bool
    turn: int
    start_seq: int
    end_seq: int
    end_t: float
    previous: str | None
    """How the previous response ended: ``failed`` (a failure of the kind analysed),
    ``completed``, another status, or ``None`` for the session's first turn."""
    previous_tokens: int | None
    previous_done_t: float | None
    """When the previous response ended (the last server message before the window,
    unless the window holds one)."""
    features: set[str] = dataclasses.field(default_factory=set)
    measures: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def stratum(self) -> tuple[int, bool]:
        band = max(i for i, start in enumerate(BANDS) if self.turn >= start)
        return band, self.previous == "failed"


WINDOWS = pa.schema(
    [
        ("id", pa.int64()),
        ("session_id", pa.string()),
        ("start_seq", pa.int64()),
        ("end_seq", pa.int64()),
        ("end_t", pa.float64()),
    ]
)
"""The windows as a table: what an :class:`Engine` puts where ``{windows}`` stands in a statement."""


class Engine(Protocol):
    """Where the scan runs. Statements are in DuckDB's dialect over the views, written to
    translate to others (no ASOF join, no list parameters); ``{windows}`` in one stands
    for a ``SELECT`` of the table of :data:`WINDOWS` given with it. :class:`DuckDB` runs
    them on the local index; :class:`analyzer.spark.SparkEngine` on Spark over the
    published dataset."""

    include_replays: bool

    def sql(self, query: str, windows: pa.Table | None = None) -> pa.Table:
        """Run one reading statement; its rows as Arrow."""
        ...

    def apply(
        self,
        query: str,
        key: str,
        function: Callable[[pa.Table], pa.Table],
        schema: pa.Schema,
        windows: pa.Table | None = None,
    ) -> pa.Table:
        """``function`` over the rows of ``query``: each call is given whole groups of
        rows with the same ``key`` (one group, or all of them) and returns rows of
        ``schema``; the results concatenated."""
        ...


class DuckDB:
    """The :class:`Engine` of a local capture root: DuckDB on its index, the functions
    run here over the whole result at once."""

    _WINDOWS = (
        "SELECT unnest(?::BIGINT[]) AS id, unnest(?::VARCHAR[]) AS session_id, unnest(?::BIGINT[]) AS start_seq, "
        "unnest(?::BIGINT[]) AS end_seq, unnest(?::DOUBLE[]) AS end_t"
    )

    def __init__(self, captures: Captures) -> None:
        self.captures = captures
        self.include_replays = captures.include_replays

    def sql(self, query: str, windows: pa.Table | None = None) -> pa.Table:
        """Run one reading statement on the index (the windows passed as lists)."""
        if windows is None:
            return self.captures.sql(query)
        params = [windows.column(name).to_pylist() for name in WINDOWS.names]
        return self.captures.sql(query.replace("{windows}", self._WINDOWS), params)

    def apply(
        self,
        query: str,
        key: str,
        function: Callable[[pa.Table], pa.Table],
        schema: pa.Schema,
        windows: pa.Table | None = None,
    ) -> pa.Table:
        """``function`` over the whole result (``key`` is Spark's to split it by)."""
        return function(self.sql(query, windows))


def turns(engine: Engine, failure: str, first_failures_only: bool = False) -> list[Window]:
    """Every turn with a failure of kind ``failure`` or a completed response, in order."""
    responses = engine.sql(
        "SELECT session_id, response_id, created_seq, created_t_s, done_seq, done_t_s, status, input_tokens "
        "FROM responses WHERE created_seq IS NOT NULL"  # put in order below, not by the engine
    ).to_pylist()
    failed: set[tuple[str, str]] = set()
    loose: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in engine.sql(
        "SELECT session_id, seq, t_s, class, error_type, code, response_id FROM failures WHERE seq IS NOT NULL "
        "OR response_id IS NOT NULL"
    ).to_pylist():
        if not protocol.matches(failure, row["class"], row["error_type"], row["code"]):
            continue
        if row["response_id"] is not None:
            failed.add((row["session_id"], row["response_id"]))
        else:
            loose[row["session_id"]].append(row)
    by_session: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in responses:
        by_session[row["session_id"]].append(row)
    out: list[Window] = []
    for session_id in sorted(set(by_session) | set(loose)):
        # Responses and loose failures in the order their windows end.
        items = [(r["created_seq"], 0, r) for r in by_session[session_id]]
        items += [(f["seq"], 1, f) for f in loose[session_id]]
        dones: list[int] = []
        previous: str | None = None
        previous_tokens: int | None = None
        previous_done_t: float | None = None
        index = 0
        seen_failure = False
        for end_seq, is_loose, row in sorted(items, key=lambda item: (item[0], item[1])):
            start = max((d for d in dones if d < end_seq), default=-1) + 1
            if is_loose:
                outcome: bool | None = True
                end_t = row["t_s"]
            else:
                key = (session_id, row["response_id"])
                outcome = True if key in failed else False if row["status"] == "completed" else None
                end_t = row["created_t_s"]
            keep = outcome is not None and not (outcome and first_failures_only and seen_failure)
            if keep:
                out.append(
                    Window(
                        len(out),
                        session_id,
                        bool(outcome),
                        index,
                        start,
                        end_seq,
                        end_t,
                        previous,
                        previous_tokens,
                        previous_done_t,
                    )
                )
            seen_failure |= bool(outcome)
            if not is_loose:
                index += 1
                previous = "failed" if outcome else row["status"]
                previous_tokens = row["input_tokens"]
                if row["done_seq"] is not None:
                    dones.append(row["done_seq"])
                    previous_done_t = row["done_t_s"]
    return out


def _scan(seconds: float, events: int) -> str:
    """One pass over the events for :func:`_describe_sessions`: of each session, its
    windows, each window's events (the client's with their JSON), the conversation's
    items, and the events :class:`recorder.turns.TurnTracker` reads."""
    from .db import in_list

    return f"""
        WITH w AS ({{windows}}), spans AS (
            -- each window's seqs, so that its events join on equality rather than on a range
            SELECT session_id, id, end_t, unnest(range(greatest(start_seq, end_seq - {int(events)}), end_seq)) AS seq
            FROM w
        )
        SELECT s.session_id, '{_EVENT}' AS part, s.id, s.end_t, e.seq, e.t_s, e.direction, e.type, e.response_id,
               e.audio_ms, CASE WHEN e.direction = '{protocol.SENT}' THEN CAST(e.payload AS VARCHAR) END AS payload
        FROM spans s JOIN events e ON e.session_id = s.session_id AND e.seq = s.seq
        WHERE e.t_s >= s.end_t - CAST('{float(seconds)!r}' AS DOUBLE)
        UNION ALL
        SELECT session_id, '{_WINDOW}', id, end_t, end_seq, NULL, NULL, NULL, NULL, NULL, NULL FROM w
        UNION ALL
        SELECT session_id, '{_ITEM}', NULL, NULL, seq, NULL, NULL, NULL, NULL, NULL, NULL
        FROM events WHERE type IN {in_list(protocol.ITEM_ADDED)}
        UNION ALL
        SELECT session_id, '{_TURN}', NULL, NULL, seq, t_s, direction, type, response_id, NULL,
               CASE WHEN type = '{dialogue.ITEM_CREATE}' THEN CAST(payload AS VARCHAR) END
        FROM events WHERE type IN {in_list(dialogue.TURN_EVENTS)}
        UNION ALL
        -- of a response's deltas only the first of each type can mark its turn
        SELECT session_id, '{_TURN}', NULL, NULL, min(seq), arg_min(t_s, seq), direction, type, response_id, NULL, NULL
        FROM events WHERE type IN {in_list(dialogue.FIRST_AUDIO + dialogue.FIRST_TEXT)} AND response_id IS NOT NULL
        GROUP BY session_id, direction, type, response_id
    """


_EVENT, _WINDOW, _ITEM, _TURN = "event", "window", "item", "turn"
"""The parts of :func:`_scan`'s rows."""

_DESCRIBED = pa.schema(
    [
        ("id", pa.int64()),
        ("features", pa.list_(pa.string())),
        ("field_names", pa.list_(pa.string())),
        ("field_values", pa.list_(pa.string())),
        ("items", pa.int64()),
        ("gap_since_server_s", pa.float64()),
        ("audio_chunk_ms", pa.float64()),
        ("events_per_second", pa.float64()),
        ("commit_to_created_ms", pa.float64()),
        ("previous_first_audio_ms", pa.float64()),
        ("no_user", pa.bool_()),
        ("previous_barge_in", pa.bool_()),
    ]
)
"""A window as :func:`_describe_sessions` describes it."""


def describe(engine: Engine, found: list[Window], seconds: float, events: int) -> None:
    """Give each window its features and measures: the engine scans the events and runs
    :func:`_describe_sessions` over them (wherever it runs it), a row a window; the
    thresholds, and which fields have few enough values to be features, are chosen here,
    over all windows."""
    if not found:
        return
    windows = pa.Table.from_pylist(
        [
            {"id": w.id, "session_id": w.session_id, "start_seq": w.start_seq, "end_seq": w.end_seq, "end_t": w.end_t}
            for w in found
        ],
        schema=WINDOWS,
    )
    described = engine.apply(_scan(seconds, events), "session_id", _describe_sessions, _DESCRIBED, windows)
    rows = {row["id"]: row for row in described.to_pylist()}
    fields: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    for window in found:
        row = rows[window.id]
        measures = window.measures
        measures["turn_index"] = window.turn
        measures["session_age_s"] = window.end_t
        measures["conversation_items"] = row["items"]
        if window.previous_tokens is not None:
            measures["input_tokens"] = window.previous_tokens
        if window.previous_done_t is not None:  # a server message in the window overrides it below
            measures["gap_since_server_s"] = window.end_t - window.previous_done_t
        for measure in ("gap_since_server_s", "audio_chunk_ms", "events_per_second"):
            if row[measure] is not None:
                measures[measure] = row[measure]
        # From the turns: none of these for a failure outside any response.
        for measure in ("commit_to_created_ms", "previous_first_audio_ms"):
            if row[measure] is not None:
                measures[measure] = row[measure]
        for flag, feature in (("no_user", NO_USER_TURN), ("previous_barge_in", PREVIOUS_BARGE_IN)):
            if row[flag]:
                window.features.add(feature)
        if window.previous == "failed":
            window.features.add(PREVIOUS_FAILED)
        window.features.update(row["features"])
        for name, value in zip(row["field_names"], row["field_values"], strict=True):
            fields[name][value].add(window.id)
    for name, values in fields.items():
        if len(values) <= MAX_FIELD_VALUES:
            for value, ids in values.items():
                for window_id in ids:
                    found[window_id].features.add(f"{name}={value}")
    for measure in MEASURES:
        present = [w for w in found if measure in w.measures]
        for cut in cut_points([w.measures[measure] for w in present]):
            name = f"{measure}>={number(cut)}"
            for window in present:
                if window.measures[measure] >= cut:
                    window.features.add(name)


def _describe_sessions(rows: pa.Table) -> pa.Table:
    """The windows of the sessions whose rows of :func:`_scan` are given, a row each:
    what an engine runs, here or on Spark's workers (a session at a time)."""
    sessions: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows.to_pylist():
        sessions[row["session_id"]][row["part"]].append(row)
    out: list[dict[str, Any]] = []
    for _, parts in sorted(sessions.items()):
        events: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for event in parts[_EVENT]:
            events[event["id"]].append(event)
        items = sorted(item["seq"] for item in parts[_ITEM])
        context = _turn_context(sorted(parts[_TURN], key=_by_seq))
        for window in sorted(parts[_WINDOW], key=lambda w: w["id"]):
            row = _window_row(window["id"], sorted(events[window["id"]], key=_by_seq), window["end_t"])
            # The Nth item added is the conversation's Nth: those before the window count them.
            row["items"] = bisect.bisect_left(items, window["seq"])
            row.update(context.get(window["seq"], {}))
            out.append(row)
    return pa.Table.from_pylist(out, schema=_DESCRIBED)


def _by_seq(row: dict[str, Any]) -> int:
    return int(row["seq"])


def _window_row(window_id: int, rows: list[dict[str, Any]], end_t: float) -> dict[str, Any]:
    """One window's features from its events in order: event types, pairs of adjacent
    types (delta runs collapsed), the scalar fields of client events, and the measures
    of the window itself."""
    features: set[str] = set()
    fields: set[tuple[str, str]] = set()
    client_times: list[float] = []
    last_server_t: float | None = None
    largest_chunk: float | None = None
    kinds: list[tuple[int, str | None]] = []
    for row in rows:
        name = row["type"] or "(non-json)"
        features.add(name)
        kinds.append((len(kinds), name))
        if row["direction"] == protocol.SENT:
            client_times.append(row["t_s"])
            if row["audio_ms"] is not None:
                largest_chunk = max(largest_chunk or 0.0, row["audio_ms"])
            if row["payload"]:
                fields.update(_fields(name, row["payload"]))
        else:
            last_server_t = row["t_s"]
    names = [str(name) for _, name in protocol.collapse(kinds)]
    for first, second in zip(names, names[1:], strict=False):
        features.add(f"{first} -> {second}")
    ordered = sorted(fields)
    return {
        "id": window_id,
        "features": sorted(features),
        "field_names": [name for name, _ in ordered],
        "field_values": [value for _, value in ordered],
        "gap_since_server_s": None if last_server_t is None else end_t - last_server_t,
        "audio_chunk_ms": largest_chunk,  # no audio in the window: the measure is missing, not zero
        "events_per_second": float(busiest_second(client_times)),
    }


def _turn_context(events: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """What a session's turns tell of each response, by the ``seq`` of its
    ``response.created``: :class:`recorder.turns.TurnTracker` fed the session's turn
    events in order, as the ``turns`` view feeds it. The turn's commit-to-created latency
    and whether it had no user turn; the previous turn's latency to first audio and
    whether the user barged in on it."""
    tracker = dialogue.TurnTracker()
    for event in events:
        role = protocol.dig(protocol.parse(event["payload"]), dialogue.ITEM_ROLE_PATH) if event["payload"] else None
        # The index keeps t_ns; t_s = t_ns / 1e9 gives it back exactly for any session under days.
        t_ns = round(event["t_s"] * 1e9)
        tracker.add(event["seq"], t_ns, event["direction"], event["type"], event["response_id"], role)
    answered = sorted((t for t in tracker.turns if "response_created" in t.marks), key=_created_seq)
    context: dict[int, dict[str, Any]] = {}
    previous: dict[str, Any] = {}  # the latencies and barge-in of the turn answered before
    for turn in answered:
        latencies = turn.latencies()
        context[_created_seq(turn)] = {
            "commit_to_created_ms": latencies["commit_to_created_ms"],
            "no_user": "speech_started" not in turn.marks and "committed" not in turn.marks,
            "previous_first_audio_ms": previous.get("created_to_first_audio_ms"),
            "previous_barge_in": previous.get("barge_in"),
        }
        previous = {**latencies, "barge_in": turn.barge_in}
    return context


def _created_seq(turn: dialogue.Turn) -> int:
    return turn.marks["response_created"][0]


def _fields(kind: str, payload: str) -> Iterable[tuple[str, str]]:
    """The scalar leaves of a client event's JSON, as (``type:path``, value)."""
    event = protocol.parse(payload)
    if event is None:
        return
    for path, value in _leaves(event, ""):
        if path != "type":
            yield f"{kind}:{path}", value


def _leaves(value: Any, prefix: str) -> Iterable[tuple[str, str]]:
    if isinstance(value, dict):
        for key, child in value.items():
            if key in IGNORED_KEYS or key.endswith("_id"):
                continue
            yield from _leaves(child, f"{prefix}.{key}" if prefix else key)
    elif isinstance(value, list):
        return
    elif isinstance(value, bool):
        yield prefix, "true" if value else "false"
    elif isinstance(value, (int, float, str)) and value is not None:
        text = str(value)
        if len(text) <= 64:
            yield prefix, text


def _kind(name: str) -> str:
    if " -> " in name:
        return "sequence"
    if ">=" in name and name.split(">=")[0] in MEASURES:
        return "numeric"
    if ":" in name and "=" in name:
        return "field"
    return "event"


def clustering(found: list[Window]) -> dict[str, Any]:
    """Failures that follow failures: the failure rate of turns right after a failed
    response against right after a completed one, with a one-sided Fisher test; and how
    many sessions kept failing after their first failure."""
    judged = [w for w in found if w.previous in ("failed", "completed")]
    after_failure = [w.failed for w in judged if w.previous == "failed"]
    after_success = [w.failed for w in judged if w.previous == "completed"]
    k1, n1, k2, n2 = sum(after_failure), len(after_failure), sum(after_success), len(after_success)
    p = 1.0
    if n1 and k1:
        # Within bands of position: late turns both fail more and follow more failures.
        strata = Strata([w.stratum[0] for w in judged], [w.failed for w in judged])
        p = strata.greater(np.flatnonzero([w.previous == "failed" for w in judged]))
    sessions: dict[str, list[bool]] = defaultdict(list)
    for window in found:
        sessions[window.session_id].append(window.failed)
    kept = later = 0
    for outcomes in sessions.values():
        if True in outcomes[:-1]:
            rest = outcomes[outcomes.index(True) + 1 :]
            later += 1
            kept += all(rest)
    return {
        "after_failure": k1,
        "of": n1,
        "after_success": k2,
        "of2": n2,
        "p_value": p,
        "significant": p < SIGNIFICANT,
        "sessions_kept_failing": kept,
        "of_sessions": later,
    }


def position(found: list[Window], members: dict[str, set[int]]) -> dict[str, Any] | None:
    """Failures that come late in sessions: the turn-index threshold that separates
    failures from controls best, tested within the strata of whether the previous response
    failed (a server that keeps failing makes late turns fail, which is clustering, not
    position); Holm over the thresholds."""
    names = [n for n in members if n.startswith(POSITION)]
    if not names:
        return None
    failed_ids = {w.id for w in found if w.failed}
    n_fail, n_ctrl = len(failed_ids), len(found) - len(failed_ids)
    a = np.array([len(members[n] & failed_ids) for n in names])
    k = np.array([len(members[n]) for n in names])
    strata = Strata([w.stratum[1] for w in found], [w.failed for w in found])
    p = holm(np.array([strata.greater(np.fromiter(sorted(members[n]), dtype=np.int64)) for n in names]))
    best = int(np.lexsort((-a, p))[0])
    return {
        "feature": names[best],
        "failures_with": int(a[best]),
        "of": n_fail,
        "controls_with": int(k[best] - a[best]),
        "of2": n_ctrl,
        "p_value": float(p[best]),
        "significant": bool(p[best] < SIGNIFICANT),
    }


def analyse(
    captures: Captures | Engine,
    *,
    failure: str = protocol.DEFAULT_FAILURE,
    window_seconds: float = 10,
    window_events: int = 50,
    first_failures_only: bool = False,
) -> dict[str, Any]:
    """The precursor document SPEC describes (see ``rtcap precursors --help``), over a
    capture root's views (DuckDB) or another :class:`Engine`'s."""
    from .views import Captures

    engine = DuckDB(captures) if isinstance(captures, Captures) else captures
    # DuckDB's statements share one connection (Captures.batch); another engine has its own.
    with captures.batch() if isinstance(captures, Captures) else contextlib.nullcontext():
        found = turns(engine, failure, first_failures_only)
        describe(engine, found, window_seconds, window_events)
    n_fail = sum(w.failed for w in found)
    n_ctrl = len(found) - n_fail
    members: dict[str, set[int]] = defaultdict(set)
    for window in found:
        for feature in window.features:
            members[feature].add(window.id)
    failed_ids = {w.id for w in found if w.failed}
    names = sorted(n for n, ids in members.items() if ids & failed_ids)
    strata = Strata([_stratum_index(w) for w in found], [w.failed for w in found])
    index = {n: np.fromiter(sorted(members[n]), dtype=np.int64) for n in names}
    p_raw = np.array([strata.greater(index[n]) for n in names])
    p_adj = holm(p_raw) if names else np.zeros(0)
    session_of = {w.id: w.session_id for w in found}
    rows: list[dict[str, Any]] = []
    for i, name in enumerate(names):
        a = len(members[name] & failed_ids)
        c = len(members[name]) - a
        lift = (a / n_fail) / ((c + 0.5) / (n_ctrl + 0.5)) if n_fail else 0.0
        rows.append(
            {
                "feature": name,
                "kind": _kind(name),
                "failures_with": a,
                "controls_with": c,
                "failure_rate": a / (a + c),
                "lift": float(lift),
                "p_value": float(p_adj[i]),
                "p_raw": float(p_raw[i]),
                "significant": bool(p_adj[i] < SIGNIFICANT),
                "merged": [],
                "examples": sorted({session_of[w] for w in members[name] & failed_ids})[:3],
            }
        )
    rows = _merge(rows, members, failed_ids)
    rows.sort(key=lambda r: (r["p_value"], -r["lift"], KIND_ORDER[r["kind"]], len(r["feature"])))
    settings = {
        "seconds": window_seconds,
        "events": window_events,
        "failure": failure,
        "include_replays": engine.include_replays,
        "first_failures_only": first_failures_only,
    }
    clusters = clustering(found)
    place = position(found, members)
    return {
        "failures": n_fail,
        "controls": n_ctrl,
        "window": settings,
        "summary": summary(failure, rows, n_fail, n_ctrl, clusters, place),
        "clustering": clusters,
        "position": place,
        "features": rows,
    }


def _stratum_index(window: Window) -> int:
    band, after_failure = window.stratum
    return band * 2 + after_failure


def _merge(rows: list[dict[str, Any]], members: dict[str, set[int]], failed_ids: set[int]) -> list[dict[str, Any]]:
    """Fold features into the simplest feature that stands for them: one that holds in
    (nearly) the same windows; or, for a feature of a simpler kind that is significant,
    one that holds in the same failure windows and in a subset of its windows (a pair
    ``X -> Y`` that only adds where in the turn X came), unless the simpler one is far
    less specific (more than twice the controls). For one measure's thresholds, the
    strongest stands for the others."""
    # One line a measure: its strongest threshold stands for the others.
    strongest: dict[str, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: (r["p_value"], -r["lift"])):
        if row["kind"] != "numeric":
            continue
        measure = row["feature"].split(">=")[0]
        if measure in strongest:
            strongest[measure]["merged"].append(row["feature"])
        else:
            strongest[measure] = row
    rows = [r for r in rows if r["kind"] != "numeric" or strongest[r["feature"].split(">=")[0]] is r]
    simplest_first = sorted(rows, key=lambda r: (KIND_ORDER[r["kind"]], len(r["feature"])))
    kept: list[dict[str, Any]] = []
    for row in simplest_first:
        ids = members[row["feature"]]
        for rep in kept:
            other = members[rep["feature"]]
            union = len(ids | other)
            if union and len(ids ^ other) <= NEAR_IDENTICAL * union or _narrows(row, rep, ids, other, failed_ids):
                rep["merged"] += [row["feature"], *row["merged"]]
                break
        else:
            kept.append(row)
    return kept


def _narrows(row: dict[str, Any], rep: dict[str, Any], ids: set[int], other: set[int], failed_ids: set[int]) -> bool:
    if not (rep["significant"] and KIND_ORDER[rep["kind"]] < KIND_ORDER[row["kind"]]):
        return False
    failing, rep_failing = ids & failed_ids, other & failed_ids
    same_failures = len(failing ^ rep_failing) <= NEAR_IDENTICAL * len(failing | rep_failing)
    inside = len(ids - other) <= NEAR_IDENTICAL * len(ids)
    return same_failures and inside and rep["controls_with"] <= 2 * row["controls_with"] + 2


def _p(p: float) -> str:
    return "p < 1e-9" if p < 1e-9 else f"p = {p:.1g}"


def summary(
    failure: str,
    rows: list[dict[str, Any]],
    failures: int,
    controls: int,
    clusters: dict[str, Any] | None = None,
    place: dict[str, Any] | None = None,
) -> str:
    """Plain English from the numbers: the strongest finding first, whatever its kind
    (a feature of the turn, failures clustering, or failures coming late), and the other
    significant ones after it, each said for what it is."""
    label = {"any": "a failure", "server": "a server-class failure"}.get(failure, failure)
    if failures == 0:
        return f"No {label} in these captures ({controls} healthy responses)."
    findings: list[tuple[float, str]] = []
    # Position and clustering are said as such, below, not as features of the turn.
    top = next((r for r in rows if not r["feature"].startswith(POSITION) and r["feature"] != PREVIOUS_FAILED), None)
    feature = top is not None and top["significant"]
    if top is not None and feature:
        healthy = top["controls_with"] / controls if controls else 0.0
        findings.append(
            (
                top["p_value"],
                f"{label} followed {top['feature']} in {top['failures_with']} of {failures} failures, "
                f"against {healthy:.0%} of healthy responses; {_p(top['p_value'])}.",
            )
        )
    if clusters is not None and clusters["significant"]:
        kept = clusters["sessions_kept_failing"]
        findings.append(
            (
                clusters["p_value"],
                f"Failures cluster: right after {label} the next turn failed {clusters['after_failure']} of "
                f"{clusters['of']} times, against {clusters['after_success']} of {clusters['of2']} after a healthy "
                f"response ({_p(clusters['p_value'])}), and {kept} of {clusters['of_sessions']} sessions kept "
                "failing after their first failure: the server stays broken, whatever the client sends.",
            )
        )
    if place is not None and place["significant"]:
        findings.append(
            (
                place["p_value"],
                f"{label} comes late in sessions: {place['feature']} in {place['failures_with']} of "
                f"{place['of']} failures against {place['controls_with']} of {place['of2']} healthy responses "
                f"({_p(place['p_value'])}); that is position in the session, not something the client sent.",
            )
        )
    if not findings:
        return (
            f"Nothing stands out: no feature is significantly more common before the {failures} "
            f"failures ({label}) than before the {controls} healthy responses."
        )
    # A feature significant within the strata already holds position and clustering fixed:
    # it leads; else the stronger of clustering and position does.
    lead, *others = (
        [text for _, text in findings[:1] + sorted(findings[1:])] if feature else [text for _, text in sorted(findings)]
    )
    return " ".join([lead] + [f"Also: {text[0].lower()}{text[1:]}" for text in others])
