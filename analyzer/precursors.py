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
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np

from recorder import events as protocol

from .stats import Strata, busiest_second, cut_points, fisher_greater, holm, number
from .views import Captures

__all__ = ["analyse", "fisher_greater", "holm"]

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


def turns(captures: Captures, failure: str, first_failures_only: bool = False) -> list[Window]:
    """Every turn with a failure of kind ``failure`` or a completed response, in order."""
    responses = captures.sql(
        "SELECT session_id, response_id, created_seq, created_t_s, done_seq, done_t_s, status, input_tokens "
        "FROM responses WHERE created_seq IS NOT NULL ORDER BY session_id, created_seq"
    ).to_pylist()
    failed: set[tuple[str, str]] = set()
    loose: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in captures.sql(
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


def _windows_sql(found: list[Window]) -> tuple[str, list[Any]]:
    """The windows as a table for DuckDB: parallel lists, unnested together."""
    sql = """
        SELECT unnest(?::BIGINT[]) AS id, unnest(?::VARCHAR[]) AS session_id, unnest(?::BIGINT[]) AS start_seq,
               unnest(?::BIGINT[]) AS end_seq, unnest(?::DOUBLE[]) AS end_t
    """
    columns = [
        [w.id for w in found],
        [w.session_id for w in found],
        [w.start_seq for w in found],
        [w.end_seq for w in found],
        [w.end_t for w in found],
    ]
    return sql, columns


def describe(captures: Captures, found: list[Window], seconds: float, events: int) -> None:
    """Give each window its features and measures."""
    if not found:
        return
    table, params = _windows_sql(found)
    rows = captures.sql(
        f"""
        WITH w AS ({table})
        SELECT w.id, e.t_s, e.type, e.direction, e.audio_ms,
               CASE WHEN e.direction = ? THEN e.payload::VARCHAR END AS payload
        FROM w JOIN events e
          ON e.session_id = w.session_id AND e.seq >= greatest(w.start_seq, w.end_seq - ?) AND e.seq < w.end_seq
         AND e.t_s >= w.end_t - ?
        ORDER BY w.id, e.seq
        """,
        [*params, protocol.SENT, events, seconds],
    ).to_pylist()
    context = captures.sql(
        f"""
        WITH w AS ({table}), items AS (
            -- the Nth item added is the conversation's Nth: the last one before a window counts them
            SELECT session_id, seq, row_number() OVER (PARTITION BY session_id ORDER BY seq) AS items
            FROM events WHERE list_contains(?::VARCHAR[], type)
        )
        SELECT w.id, coalesce(i.items, 0) AS items
        FROM w ASOF LEFT JOIN items i ON i.session_id = w.session_id AND w.end_seq > i.seq
        ORDER BY w.id
        """,
        [*params, list(protocol.ITEM_ADDED)],
    ).to_pylist()
    for window, row in zip(found, context, strict=True):
        measures = window.measures
        measures["turn_index"] = window.turn
        measures["session_age_s"] = window.end_t
        measures["conversation_items"] = row["items"]
        if window.previous_tokens is not None:
            measures["input_tokens"] = window.previous_tokens
        if window.previous_done_t is not None:  # a server message in the window overrides it below
            measures["gap_since_server_s"] = window.end_t - window.previous_done_t
        if window.previous == "failed":
            window.features.add(PREVIOUS_FAILED)
    _turn_context(captures, found)
    by_window: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_window[row["id"]].append(row)
    fields: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    for window in found:
        _window_features(window, by_window.get(window.id, []), fields)
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


def _turn_context(captures: Captures, found: list[Window]) -> None:
    """Measures and features from the ``turns`` view, for the windows that end at a
    response's ``response.created``: see the module's docstring."""
    by_created: dict[tuple[str, int], dict[str, Any]] = {}
    previous: dict[tuple[str, int], dict[str, Any]] = {}
    last: dict[str, dict[str, Any]] = {}
    for row in captures.sql(
        "SELECT session_id, response_created_seq AS created, commit_to_created_ms, created_to_first_audio_ms, "
        "barge_in, speech_started_seq IS NULL AND committed_seq IS NULL AS no_user "
        "FROM turns WHERE response_created_seq IS NOT NULL ORDER BY session_id, response_created_seq"
    ).to_pylist():
        key = (row["session_id"], row["created"])
        by_created[key] = row
        if row["session_id"] in last:
            previous[key] = last[row["session_id"]]
        last[row["session_id"]] = row
    for window in found:
        key = (window.session_id, window.end_seq)
        turn = by_created.get(key)
        if turn is None:
            continue  # a failure outside any response
        if turn["commit_to_created_ms"] is not None:
            window.measures["commit_to_created_ms"] = turn["commit_to_created_ms"]
        if turn["no_user"]:
            window.features.add(NO_USER_TURN)
        before = previous.get(key)
        if before is not None:
            if before["created_to_first_audio_ms"] is not None:
                window.measures["previous_first_audio_ms"] = before["created_to_first_audio_ms"]
            if before["barge_in"]:
                window.features.add(PREVIOUS_BARGE_IN)


def _window_features(window: Window, rows: list[dict[str, Any]], fields: dict[str, dict[str, set[int]]]) -> None:
    client_times: list[float] = []
    last_server_t: float | None = None
    largest_chunk: float | None = None
    kinds: list[tuple[int, str | None]] = []
    for row in rows:
        name = row["type"] or "(non-json)"
        window.features.add(name)
        kinds.append((len(kinds), name))
        if row["direction"] == protocol.SENT:
            client_times.append(row["t_s"])
            if row["audio_ms"] is not None:
                largest_chunk = max(largest_chunk or 0.0, row["audio_ms"])
            if row["payload"]:
                _fields(window.id, name, row["payload"], fields)
        else:
            last_server_t = row["t_s"]
    if last_server_t is not None:
        window.measures["gap_since_server_s"] = window.end_t - last_server_t
    names = [str(name) for _, name in protocol.collapse(kinds)]
    for first, second in zip(names, names[1:], strict=False):
        window.features.add(f"{first} -> {second}")
    if largest_chunk is not None:  # no audio in the window: the measure is missing, not zero
        window.measures["audio_chunk_ms"] = largest_chunk
    window.measures["events_per_second"] = busiest_second(client_times)


def _fields(window_id: int, kind: str, payload: str, fields: dict[str, dict[str, set[int]]]) -> None:
    """Record the scalar leaves of a client event's JSON (``type:path``) for this window."""
    event = protocol.parse(payload)
    if event is None:
        return
    for path, value in _leaves(event, ""):
        if path == "type":
            continue
        fields[f"{kind}:{path}"][value].add(window_id)


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
    captures: Captures,
    *,
    failure: str = protocol.DEFAULT_FAILURE,
    window_seconds: float = 10,
    window_events: int = 50,
    first_failures_only: bool = False,
) -> dict[str, Any]:
    """The precursor document SPEC describes (see ``rtcap precursors --help``)."""
    found = turns(captures, failure, first_failures_only)
    describe(captures, found, window_seconds, window_events)
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
        "include_replays": captures.include_replays,
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
