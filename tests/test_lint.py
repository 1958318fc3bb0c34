"""doctor's protocol linter (analyzer.lint): every check fires on its planted mistake and
stays quiet on the same session done right, and on clean seeded traffic."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from analyzer.doctor import diagnose
from analyzer.lint import CHECKS
from analyzer.sim.traffic import record_direct
from analyzer.views import open_captures
from recorder.session import RECEIVED, SENT, SessionRecorder

T0 = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
AZURE = "wss://res.openai.azure.com/openai/v1/realtime?model=gpt-realtime"


def write(root: Path, messages: list[tuple[float, int, Any]], *, url: str = AZURE, closed_by: str = "client") -> str:
    """A capture of ``messages`` after a ``session.created`` (no ``expires_at``)."""
    session = SessionRecorder.create(root, url=url, request_headers=[], recorder="proxy")
    session.start(0, wall=T0)
    created = {"type": "session.created", "session": {"id": "sess_1", "model": "gpt-realtime"}}
    last = 0.0
    for seconds, direction, event in [(0.0, RECEIVED, created), *messages]:
        session.message(direction, json.dumps(event), round(seconds * 1e9))
        last = seconds
    session.end(round(last * 1e9) + 1, closed_by=closed_by, code=1000)
    return session.session_id


def created(at: float, rid: str = "resp_1") -> tuple[float, int, Any]:
    return (at, RECEIVED, {"type": "response.created", "response": {"id": rid, "status": "in_progress"}})


def done(at: float, rid: str = "resp_1", status: str = "completed", output: list[Any] | None = None) -> Any:
    return (at, RECEIVED, {"type": "response.done", "response": {"id": rid, "status": status, "output": output or []}})


def create(at: float, **response: Any) -> tuple[float, int, Any]:
    return (at, SENT, {"type": "response.create", **({"response": response} if response else {})})


CALL = [{"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"}]
OUTPUT = {"type": "function_call_output", "call_id": "call_1", "output": "{}"}
ITEM = (0.1, RECEIVED, {"type": "conversation.item.added", "item": {"id": "item_1", "type": "message"}})
APPEND = (0.1, SENT, {"type": "input_audio_buffer.append", "audio": "AAAA"})
PCMU = {
    "type": "session.update",
    "session": {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu"}}}},
}

# check -> (the session with the mistake, the session without it)
SCENARIOS: dict[str, tuple[list[Any], list[Any]]] = {
    "overlapping response": (
        [create(1), created(1.1), create(1.5), done(2)],
        [create(1), created(1.1), done(2), create(2.5), created(2.6, "resp_2"), done(3, "resp_2")],
    ),
    "cancel without response": (
        [create(1), created(1.1), done(2), (2.5, SENT, {"type": "response.cancel"})],
        [create(1), created(1.1), (1.5, SENT, {"type": "response.cancel"}), done(2, status="cancelled")],
    ),
    "unknown ids": (
        [
            ITEM,
            (0.5, RECEIVED, {"type": "conversation.item.deleted", "item_id": "item_1"}),
            (
                1,
                SENT,
                {"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0, "audio_end_ms": 5},
            ),
        ],
        [
            ITEM,
            (
                1,
                SENT,
                {"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0, "audio_end_ms": 5},
            ),
        ],
    ),
    "stuck response": (
        [create(1), created(1.1), (20, SENT, {"type": "input_audio_buffer.append", "audio": "AAAA"}), done(45)],
        [create(1), created(1.1), (20, SENT, {"type": "response.cancel"}), done(45, status="cancelled")],
    ),
    "tool outputs": (
        [create(1), created(1.1), done(2, output=CALL), (3, SENT, {"type": "input_audio_buffer.commit"})],
        [
            create(1),
            created(1.1),
            done(2, output=CALL),
            (3, SENT, {"type": "conversation.item.create", "item": OUTPUT}),
        ],
    ),
    "format change": (
        [APPEND, (0.5, SENT, PCMU)],
        [(0.05, SENT, PCMU), APPEND],
    ),
    "max age": (
        [create(1700), created(1700.1), done(1701)],
        [create(1500), created(1500.1), done(1501)],
    ),
}


def test_every_check_has_a_scenario() -> None:
    assert set(SCENARIOS) == set(CHECKS)


@pytest.mark.parametrize("check", list(SCENARIOS))
def test_check_fires_on_its_mistake_only(tmp_path: Path, check: str) -> None:
    wrong, right = SCENARIOS[check]
    root = tmp_path / "captures"
    bad, good = write(root, wrong), write(root, right)
    rows = diagnose(open_captures(root)).to_pylist()
    linted = {(r["session_id"], r["check"]): r for r in rows if r["check"] in CHECKS}
    assert linted[(bad, check)]["status"] in ("warn", "fail")
    assert "seq" in linted[(bad, check)]["evidence"] and linted[(bad, check)]["advice"]
    assert {r["check"]: r["status"] for (sid, _), r in linted.items() if sid == good} == dict.fromkeys(CHECKS, "pass")
    assert [c for (sid, c), r in linted.items() if sid == bad and r["status"] != "pass"] == [check]


def test_evidence_names_the_seqs(tmp_path: Path) -> None:
    root = tmp_path / "captures"
    sid = write(root, SCENARIOS["overlapping response"][0])
    [row] = [r for r in diagnose(open_captures(root), sid).to_pylist() if r["check"] == "overlapping response"]
    assert row == {
        "session_id": sid,
        "check": "overlapping response",
        "status": "fail",
        "evidence": "response.create at seq 3 while response created at seq 2 was active",
        "advice": row["advice"],
    }


def test_a_client_that_gave_up_on_a_stuck_response_did_something(tmp_path: Path) -> None:
    root = tmp_path / "captures"
    sid = write(root, [create(1), created(1.1), (40, SENT, {"type": "input_audio_buffer.append", "audio": "AA=="})])
    [row] = [r for r in diagnose(open_captures(root), sid).to_pylist() if r["check"] == "stuck response"]
    assert row["status"] == "pass"
    sid = write(
        root,
        [create(1), created(1.1), (40, SENT, {"type": "input_audio_buffer.append", "audio": "AA=="})],
        closed_by="server",
    )
    [row] = [r for r in diagnose(open_captures(root), sid).to_pylist() if r["check"] == "stuck response"]
    assert row["status"] == "warn" and "never ended" in row["evidence"]


def test_quiet_on_clean_traffic_and_a_stall_is_stuck(tmp_path: Path) -> None:
    clean, stalled = tmp_path / "clean", tmp_path / "stalled"
    record_direct(clean, [], sessions=12, seed=5)
    record_direct(stalled, ["stall seconds=40 nth=2"], sessions=2, seed=5)
    rows = diagnose(open_captures(clean)).to_pylist()
    assert {r["status"] for r in rows if r["check"] in CHECKS} == {"pass"}
    assert len([r for r in rows if r["check"] in CHECKS]) == 12 * len(CHECKS)
    stuck = [r for r in diagnose(open_captures(stalled)).to_pylist() if r["check"] == "stuck response"]
    assert [r["status"] for r in stuck] == ["warn", "warn"]
