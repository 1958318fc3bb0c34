"""``rtcap precursors``: what comes before failures and not before healthy responses.

A failure's window ends just before its response's ``response.created`` (so it holds the
client messages that led to the response but nothing the failure itself caused), or at the
failure when it belongs to no response, and reaches back ``window_seconds`` and
``window_events``. Controls are the same windows before responses that completed. Each
window gets a set of features; a one-sided Fisher exact test per feature, Holm-adjusted
over all features tested, says which are more common before failures than chance allows.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np

from recorder import events as protocol

from .views import Captures

SIGNIFICANT = 0.001
NEAR_IDENTICAL = 0.05  # features whose windows differ in at most 5% of them are merged
THRESHOLDS = {
    "audio_chunk_ms": (200, 500, 1000),
    "events_per_second": (10, 20, 50),
    "session_age_s": (60, 300, 900, 1800),
    "gap_since_server_s": (1, 5, 10),
    "conversation_items": (10, 25, 50),
    "input_tokens": (2000, 8000, 14000),
}
KIND_ORDER = {"event": 0, "field": 1, "numeric": 2, "sequence": 3}
MAX_FIELD_VALUES = 12
IGNORED_KEYS = ("event_id", "item_id", "response_id", "call_id", "previous_item_id", "id", "audio", "delta")


@dataclasses.dataclass
class Window:
    """The messages before one response (a failure's or a control's)."""

    id: int
    session_id: str
    failed: bool
    features: set[str] = dataclasses.field(default_factory=set)


def windows(captures: Captures, failure: str, seconds: float, events: int) -> list[Window]:
    """Failure and control windows with their features."""
    chosen = [
        row
        for row in captures.sql(
            """
            SELECT f.session_id, f.seq AS fail_seq, f.t_s AS fail_t, f.class, f.error_type, f.code,
                   coalesce(r.created_seq, f.seq) AS end_seq, coalesce(r.created_t_s, f.t_s) AS end_t
            FROM failures f
            LEFT JOIN responses r ON r.session_id = f.session_id AND r.response_id = f.response_id
            """
        ).to_pylist()
        if protocol.matches(failure, row["class"], row["error_type"], row["code"])
    ]
    ends: dict[tuple[str, int], float] = {}
    for row in chosen:
        if row["end_seq"] is not None:
            ends.setdefault((row["session_id"], row["end_seq"]), row["end_t"])
    by_session: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in chosen:
        by_session[row["session_id"]].append(row)

    def holds_failure(session_id: str, end_seq: int, end_t: float) -> bool:
        """A control window that holds a failure (or is one) is no control."""
        return any(
            c["end_seq"] == end_seq
            or (
                c["fail_seq"] is not None
                and end_seq - events <= c["fail_seq"] < end_seq
                and c["fail_t"] >= end_t - seconds
            )
            for c in by_session.get(session_id, ())
        )

    controls = [
        (row["session_id"], row["created_seq"], row["created_t_s"])
        for row in captures.sql(
            """
            SELECT session_id, created_seq, created_t_s FROM responses
            WHERE status = 'completed' AND created_seq IS NOT NULL
            """
        ).to_pylist()
        if not holds_failure(row["session_id"], row["created_seq"], row["created_t_s"])
    ]
    found = sorted([(sid, seq, t, True) for (sid, seq), t in ends.items()] + [(*c, False) for c in controls])
    out = [Window(i, sid, failed) for i, (sid, _, _, failed) in enumerate(found)]
    if not out:
        return out
    # The windows go to DuckDB as parallel lists, unnested together into one table.
    windows_sql = """
        SELECT unnest(?::BIGINT[]) AS id, unnest(?::VARCHAR[]) AS session_id,
               unnest(?::BIGINT[]) AS end_seq, unnest(?::DOUBLE[]) AS end_t
    """
    window_params = [list(range(len(found))), [w[0] for w in found], [w[1] for w in found], [w[2] for w in found]]
    rows = [
        tuple(row.values())
        for row in captures.sql(
            f"""
            WITH w AS ({windows_sql})
            SELECT w.id, w.end_t, e.t_s, e.type, e.direction, e.audio_ms,
                   CASE WHEN e.direction = ? THEN e.payload::VARCHAR END AS payload
            FROM w JOIN events e
              ON e.session_id = w.session_id AND e.seq < w.end_seq AND e.seq >= w.end_seq - ? AND e.t_s >= w.end_t - ?
            ORDER BY w.id, e.seq
            """,
            [*window_params, protocol.SENT, events, seconds],
        ).to_pylist()
    ]
    context = captures.sql(
        f"""
        WITH w AS ({windows_sql}), items AS (
            SELECT session_id, seq,
                   count(*) FILTER (WHERE type IN (SELECT unnest(?::VARCHAR[])))
                       OVER (PARTITION BY session_id ORDER BY seq) AS items
            FROM events
        ), done AS (
            SELECT session_id, done_seq, input_tokens FROM responses WHERE status = 'completed' AND done_seq IS NOT NULL
        )
        SELECT w.id, w.end_t,
               (SELECT max(i.items) FROM items i WHERE i.session_id = w.session_id AND i.seq < w.end_seq) AS items,
               d.input_tokens
        FROM w ASOF LEFT JOIN done d ON d.session_id = w.session_id AND w.end_seq > d.done_seq
        ORDER BY w.id
        """,
        [*window_params, list(protocol.ITEM_ADDED)],
    ).to_pylist()
    for window, row in zip(out, context, strict=True):
        window.features |= _numeric("session_age_s", row["end_t"])
        window.features |= _numeric("conversation_items", row["items"] or 0)
        if row["input_tokens"] is not None:
            window.features |= _numeric("input_tokens", row["input_tokens"])
    by_window: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
    for row in rows:
        by_window[row[0]].append(row)
    fields: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    for window in out:
        _window_features(window, by_window.get(window.id, []), fields)
    for name, values in fields.items():
        if len(values) <= MAX_FIELD_VALUES:
            for value, ids in values.items():
                for window_id in ids:
                    out[window_id].features.add(f"{name}={value}")
    return out


def _numeric(name: str, value: float) -> set[str]:
    return {f"{name}>={limit}" for limit in THRESHOLDS[name] if value >= limit}


def _window_features(window: Window, rows: list[tuple[Any, ...]], fields: dict[str, dict[str, set[int]]]) -> None:
    client_times: list[float] = []
    last_server_t = None
    end_t = None
    largest_chunk = 0.0
    kinds: list[tuple[int, str]] = []
    for _, w_end_t, t_s, kind, direction, audio_ms, payload in rows:
        end_t = w_end_t
        name = kind or "(non-json)"
        window.features.add(name)
        kinds.append((len(kinds), name))
        if direction == protocol.SENT:
            client_times.append(t_s)
            if audio_ms:
                largest_chunk = max(largest_chunk, audio_ms)
            if payload:
                _fields(window.id, name, payload, fields)
        else:
            last_server_t = t_s
    names = [str(name) for _, name in protocol.collapse(kinds)]
    for first, second in zip(names, names[1:], strict=False):
        window.features.add(f"{first} -> {second}")
    window.features |= _numeric("audio_chunk_ms", largest_chunk)
    window.features |= _numeric("events_per_second", protocol.busiest_second(client_times))
    if end_t is not None:
        gap = end_t - last_server_t if last_server_t is not None else THRESHOLDS["gap_since_server_s"][-1]
        window.features |= _numeric("gap_since_server_s", gap)


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
    if ">=" in name and name.split(">=")[0] in THRESHOLDS:
        return "numeric"
    if ":" in name and "=" in name:
        return "field"
    return "event"


def fisher_greater(a: np.ndarray, failures: int, controls: int, with_feature: np.ndarray) -> np.ndarray:
    """One-sided Fisher exact p: the chance of at least ``a`` of the ``failures`` windows
    having a feature that ``with_feature`` windows of all have, if it were unrelated."""
    total = failures + controls
    lg = np.array([math.lgamma(i + 1) for i in range(total + 1)])

    def log_choose(n: np.ndarray, k: np.ndarray) -> np.ndarray:
        return lg[n] - lg[k] - lg[n - k]

    p = np.zeros(len(a))
    for i, (hits, k) in enumerate(zip(a, with_feature, strict=True)):
        top = min(k, failures)
        ks = np.arange(hits, top + 1)
        if ks.size == 0:
            p[i] = 0.0
            continue
        terms = (
            log_choose(np.full_like(ks, k), ks)
            + log_choose(np.full_like(ks, total - k), failures - ks)
            - log_choose(np.array(total), np.array(failures))
        )
        p[i] = min(1.0, float(np.exp(terms).sum()))
    return p


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the input's order."""
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def analyse(
    captures: Captures,
    *,
    failure: str = protocol.DEFAULT_FAILURE,
    window_seconds: float = 10,
    window_events: int = 50,
) -> dict[str, Any]:
    """The precursor document SPEC describes (see ``rtcap precursors --help``)."""
    found = windows(captures, failure, window_seconds, window_events)
    failed = [w for w in found if w.failed]
    controls = [w for w in found if not w.failed]
    n_fail, n_ctrl = len(failed), len(controls)
    members: dict[str, set[int]] = defaultdict(set)
    for window in found:
        for feature in window.features:
            members[feature].add(window.id)
    failed_ids = {w.id for w in failed}
    names = sorted(n for n, ids in members.items() if ids & failed_ids)
    a = np.array([len(members[n] & failed_ids) for n in names], dtype=int)
    k = np.array([len(members[n]) for n in names], dtype=int)
    c = k - a
    p_raw = fisher_greater(a, n_fail, n_ctrl, k) if names else np.zeros(0)
    p_adj = holm(p_raw) if names else np.zeros(0)
    session_of = {w.id: w.session_id for w in found}
    rows: list[dict[str, Any]] = []
    for i, name in enumerate(names):
        lift = (a[i] / n_fail) / ((c[i] + 0.5) / (n_ctrl + 0.5)) if n_fail else 0.0
        examples = sorted({session_of[w] for w in members[name] & failed_ids})[:3]
        rows.append(
            {
                "feature": name,
                "kind": _kind(name),
                "failures_with": int(a[i]),
                "controls_with": int(c[i]),
                "failure_rate": float(a[i] / k[i]) if k[i] else 0.0,
                "lift": float(lift),
                "p_value": float(p_adj[i]),
                "p_raw": float(p_raw[i]),
                "significant": bool(p_adj[i] < SIGNIFICANT),
                "merged": [],
                "examples": examples,
            }
        )
    rows = _merge(rows, members)
    rows.sort(key=lambda r: (r["p_value"], -r["lift"], KIND_ORDER[r["kind"]], len(r["feature"])))
    settings = {
        "seconds": window_seconds,
        "events": window_events,
        "failure": failure,
        "include_replays": captures.include_replays,
    }
    return {
        "failures": n_fail,
        "controls": n_ctrl,
        "window": settings,
        "summary": summary(failure, rows, n_fail, n_ctrl),
        "features": rows,
    }


def _merge(rows: list[dict[str, Any]], members: dict[str, set[int]]) -> list[dict[str, Any]]:
    """Fold features that hold in (nearly) the same windows into the simplest of them."""
    simplest_first = sorted(rows, key=lambda r: (KIND_ORDER[r["kind"]], len(r["feature"]), r["feature"]))
    kept: list[dict[str, Any]] = []
    for row in simplest_first:
        ids = members[row["feature"]]
        for rep in kept:
            other = members[rep["feature"]]
            union = len(ids | other)
            if union and len(ids ^ other) <= NEAR_IDENTICAL * union:
                rep["merged"].append(row["feature"])
                break
        else:
            kept.append(row)
    return kept


def _p(p: float) -> str:
    return "p < 1e-9" if p < 1e-9 else f"p = {p:.1g}"


def summary(failure: str, rows: list[dict[str, Any]], failures: int, controls: int) -> str:
    """One plain-English sentence from the numbers."""
    label = {"any": "a failure", "server": "a server-class failure"}.get(failure, failure)
    if failures == 0:
        return f"No {label} in these captures ({controls} healthy responses)."
    top = rows[0] if rows else None
    if top is None or not top["significant"]:
        return (
            f"Nothing stands out: no feature is significantly more common before the {failures} "
            f"failures ({label}) than before the {controls} healthy responses."
        )
    healthy = top["controls_with"] / controls if controls else 0.0
    return (
        f"{label} followed {top['feature']} in {top['failures_with']} of {failures} failures, "
        f"against {healthy:.0%} of healthy responses; {_p(top['p_value'])}."
    )
