"""Precursors that a confound cannot fool (issue 19): each corpus plants one thing the old
precursors got wrong (a cause at a scale no constant cuts at, a cause late in sessions, a
server that keeps failing, failures late in sessions with a decoy habit)."""

from __future__ import annotations

from pathlib import Path

import pytest

from analyzer.precursors import analyse
from analyzer.sim.traffic import record_direct
from analyzer.views import open_captures

LONG = (6, 10)  # turns per session: long enough for position to matter
CONFOUNDED = {
    # A cause at a scale no fixed constant would cut at: the prompt past ~600 tokens (users
    # pause between turns, so a session's age is not its prompt size).
    "tokens": (["fail p=0.02", "fail tokens>600 p=0.9"], 0.0, 30.0),
    # A cause that only fires late in a session.
    "late": (["fail p=0.02", "fail sent=input_audio_buffer.clear turn>4 p=0.95"], 0.0, 0.0),
    # A server that keeps failing once it has failed; the first failures are random.
    "sticky": (["fail p=0.04", "fail failed>0 p=0.85"], 0.0, 0.0),
    # Failures late in sessions, and a client habit that grows with the session but causes nothing.
    "decoy": (["fail turn>5 p=0.35"], 0.12, 0.0),
}


@pytest.fixture(scope="module", params=list(CONFOUNDED))
def confounded(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"confound-{request.param}") / "captures"
    rules, late, think = CONFOUNDED[request.param]
    record_direct(root, rules, sessions=70, seed=5, turns=LONG, late=late, think=think)
    return request.param, analyse(open_captures(root))


def significant(document) -> list[str]:
    return [f["feature"] for f in document["features"] if f["significant"]]


def test_confounds_come_out_right(confounded) -> None:
    kind, document = confounded
    features, clusters, place = document["features"], document["clustering"], document["position"]
    top = features[0]
    names = [top["feature"], *top["merged"]]
    if kind == "tokens":
        # The cause first, named with a cut point from the data near the planted 600.
        assert top["significant"] and any(n.startswith("input_tokens>=") for n in names), features[:3]
        cut = float(next(n for n in names if n.startswith("input_tokens>=")).split(">=")[1])
        assert 300 <= cut <= 700, names
        assert document["summary"].startswith(f"server_error followed {top['feature']}")
    elif kind == "late":
        assert top["significant"] and "input_audio_buffer.clear" in names, features[:3]
        assert document["summary"].startswith("server_error followed")
    elif kind == "sticky":
        # Clustering is the finding, said as such; no feature of the turns is significant.
        assert clusters["significant"] and clusters["after_failure"] / clusters["of"] > 0.5
        assert clusters["sessions_kept_failing"] > 0
        assert significant(document) == [], significant(document)
        assert document["summary"].startswith("Failures cluster") and "whatever the client sends" in document["summary"]
    else:
        # Position is the finding; the decoy that grows with the session is not a cause.
        assert place is not None and place["significant"], place
        assert "output_audio_buffer.clear" not in significant(document), significant(document)
        assert not any(n.startswith("output_audio_buffer.clear") for n in significant(document))
        assert document["summary"].startswith("server_error comes late in sessions")
        assert "not something the client sent" in document["summary"]


def test_windows_hold_one_turn(confounded) -> None:
    kind, document = confounded
    # An earlier failure's events are never in a later turn's window: no feature carries a
    # response's own server events (a delta run, response.done) into the next turn.
    for feature in document["features"]:
        assert "response.done" not in feature["feature"].replace("previous_response", ""), feature["feature"]
        assert "delta" not in feature["feature"], feature["feature"]


def test_first_failures_only_keeps_one_failure_a_session(tmp_path: Path) -> None:
    root = tmp_path / "captures"
    record_direct(root, CONFOUNDED["sticky"][0], sessions=30, seed=5, turns=LONG)  # many failures a session
    captures = open_captures(root)
    every = analyse(captures)
    first = analyse(captures, first_failures_only=True)
    sessions_failing = captures.sql(
        "SELECT count(DISTINCT session_id) AS n FROM failures WHERE error_type = 'server_error'"
    ).to_pylist()[0]["n"]
    assert first["failures"] == sessions_failing < every["failures"]
    assert first["controls"] == every["controls"]
    assert first["window"]["first_failures_only"] is True
