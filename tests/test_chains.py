"""Session chains: the sessions view's chain_id, rtcap show --chain, doctor's reconnects."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from analyzer.cli import cli
from analyzer.doctor import diagnose
from analyzer.sim.traffic import Connection, record_direct
from analyzer.views import CHAIN_GAP_S, open_captures
from recorder.session import RECEIVED, SessionRecorder

T0 = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)


def simulator_chains(log: list[Connection]) -> set[frozenset[str]]:
    """The simulator's own reconnect log, as sets of sessions: each connection joins the
    set of the one it followed."""
    chains: dict[str, set[str]] = {}
    for entry in log:
        chain = chains[entry.follows] if entry.follows else set()
        chain.add(entry.session_id)
        chains[entry.session_id] = chain
    return {frozenset(chain) for chain in chains.values()}


def view_chains(root: Path) -> set[frozenset[str]]:
    groups: dict[str, set[str]] = {}
    for row in open_captures(root).sql("SELECT session_id, chain_id FROM sessions").to_pylist():
        groups.setdefault(row["chain_id"], set()).add(row["session_id"])
    for chain_id, members in groups.items():
        assert chain_id in members
    return {frozenset(members) for members in groups.values()}


@pytest.mark.parametrize("conversation", [True, False])
def test_chains_match_the_simulators_reconnect_log(tmp_path: Path, conversation: bool) -> None:
    root = tmp_path / "captures"
    log: list[Connection] = []
    record_direct(root, ["drop p=0.25"], sessions=10, seed=4, reconnect=1.5, conversation=conversation, log=log)
    assert any(entry.follows for entry in log) and len({e.conversation for e in log}) == 10
    assert view_chains(root) == simulator_chains(log)


def session(root: Path, start: float, end: float, *, labels: dict[str, str] | None = None, model: str = "m1") -> str:
    url = f"wss://api.openai.com/v1/realtime?model={model}"
    recorder = SessionRecorder.create(root, url=url, request_headers=[], recorder="proxy", labels=labels)
    recorder.start(0, wall=T0 + dt.timedelta(seconds=start))
    recorder.message(RECEIVED, json.dumps({"type": "session.created", "session": {"model": model}}), 0)
    recorder.end(round((end - start) * 1e9), closed_by="server", code=1006)
    return recorder.session_id


def test_chaining_rules(tmp_path: Path) -> None:
    root = tmp_path / "captures"
    a = session(root, 0, 10, labels={"app": "x"})
    b = session(root, 10 + CHAIN_GAP_S - 0.5, 30, labels={"app": "x"})  # within the gap: continues a
    c = session(root, 30 + CHAIN_GAP_S + 1, 50, labels={"app": "x"})  # too late: a chain of its own
    d = session(root, 51, 60, labels={"app": "y"})  # other labels
    e = session(root, 50.5, 70, labels={"app": "x"}, model="m2")  # another model: another app
    f = session(root, 40, 80, labels={"app": "x"})  # began before c ended: not its continuation
    g = session(root, 100, 110, labels={"app": "x", "conversation": "c1"})
    h = session(root, 4000, 4010, labels={"app": "z", "conversation": "c1"})  # the label wins over the gap
    i = session(root, 110.5, 120, labels={"app": "x", "conversation": "c2"})
    chains = dict(
        (r["session_id"], r["chain_id"])
        for r in open_captures(root).sql("SELECT session_id, chain_id FROM sessions").to_pylist()
    )
    assert chains == {a: a, b: a, c: c, d: d, e: e, f: f, g: g, h: g, i: i}


def test_doctor_reconnects_follow_chains(tmp_path: Path) -> None:
    root = tmp_path / "captures"
    log: list[Connection] = []
    record_direct(root, ["drop p=0.25"], sessions=6, seed=4, reconnect=1.5, log=log)
    rows = {r["session_id"]: r for r in diagnose(open_captures(root)).to_pylist() if r["check"] == "reconnects"}
    for entry in log:
        row = rows[entry.session_id]
        if entry.follows:
            assert row["status"] == "warn"
            assert row["evidence"] == f"opened 1.5 s after {entry.follows}, of its chain, closed abnormally (1006)"
        else:
            assert row["status"] == "pass"


def test_show_chain(tmp_path: Path) -> None:
    root = tmp_path / "captures"
    log: list[Connection] = []
    record_direct(root, ["drop nth=2"], sessions=1, seed=2, reconnect=1.0, log=log)
    members = [e.session_id for e in log]
    assert len(members) == 4  # dropped at every second response: the client gives up after 3 reconnects
    runner = CliRunner()
    result = runner.invoke(cli, ["show", members[2][:26], "--chain", "--captures", str(root), "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert list(dict.fromkeys(r["session_id"] for r in rows)) == members
    times = [r["t_s"] for r in rows]
    assert times == sorted(times)
    firsts = [n for n in range(1, len(rows)) if rows[n]["session_id"] != rows[n - 1]["session_id"]]
    assert [rows[n]["gap_s"] for n in firsts] == pytest.approx([1.0] * 3)
    text = runner.invoke(cli, ["show", members[0], "--chain", "--captures", str(root)])
    assert text.exit_code == 0
    assert [line for line in text.output.splitlines() if line.startswith("session ")] == [
        f"session {sid} ({n} of 4 in its chain)" for n, sid in enumerate(members, 1)
    ]
    bad = runner.invoke(cli, ["show", members[0], "--chain", "--around", "3", "--captures", str(root)])
    assert bad.exit_code == 2
