"""The turns view and rtcap latency: latencies equal the simulator's own timing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from analyzer.cli import cli
from analyzer.latency import latency
from analyzer.sim.traffic import Connection, record_direct
from analyzer.views import open_captures
from recorder import events, turns

NS = 1e-6
"""The recording's clock resolution, in ms (t_ns)."""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Connection]]:
    root = tmp_path_factory.mktemp("turns") / "captures"
    log: list[Connection] = []
    record_direct(root, ["fail p=0.15", "drop p=0.05"], sessions=12, seed=17, think=3.0, reconnect=0.5, log=log)
    return root, log


def simulator_timing(connection: Connection) -> dict[str, dict[str, float]]:
    """Per response id, from the simulator's own account of what it sent when: the
    commit since the previous response ended, response.created, first audio, first text."""
    timing: dict[str, dict[str, float]] = {}
    commit = None
    for now, event in connection.connection.timeline:
        kind = events.event_type(event)
        if kind == turns.COMMITTED:
            commit = now
        elif kind == events.RESPONSE_STARTED:
            timing[event["response"]["id"]] = {"created": now, **({"commit": commit} if commit is not None else {})}
            commit = None
        elif kind in turns.FIRST_AUDIO + turns.FIRST_TEXT:
            name = "audio" if kind in turns.FIRST_AUDIO else "text"
            timing[event["response_id"]].setdefault(name, now)
    return timing


def test_latencies_equal_the_simulators_timing(corpus: tuple[Path, list[Connection]]) -> None:
    root, log = corpus
    rows = open_captures(root).sql("SELECT * FROM turns WHERE response_id IS NOT NULL").to_pylist()
    by_response = {(r["session_id"], r["response_id"]): r for r in rows}
    checked = 0
    for connection in log:
        for response_id, at in simulator_timing(connection).items():
            row = by_response.pop((connection.session_id, response_id))
            assert row["response_created_t_s"] == pytest.approx(at["created"], abs=1e-9)
            if "commit" in at:
                assert row["commit_to_created_ms"] == pytest.approx((at["created"] - at["commit"]) * 1e3, abs=2 * NS)
                checked += 1
            else:
                assert row["commit_to_created_ms"] is None and row["committed_seq"] is None
            if "audio" in at:
                want = (at["audio"] - at["created"]) * 1e3
                assert row["created_to_first_audio_ms"] == pytest.approx(want, abs=2 * NS)
            else:
                assert row["created_to_first_audio_ms"] is None
            if "text" in at:
                assert row["first_text_t_s"] == pytest.approx(at["text"], abs=1e-9)
    assert by_response == {}  # every response the view has, the simulator made
    assert checked >= 20


def test_push_to_talk_turns(corpus: tuple[Path, list[Connection]]) -> None:
    root, _ = corpus
    captures = open_captures(root)
    rows = captures.sql(
        "SELECT count(*) AS n, count(committed_seq) AS committed, count(speech_started_seq) AS speech, "
        "count(*) FILTER (WHERE speech_end_to_first_audio_ms = commit_to_created_ms + created_to_first_audio_ms) "
        "AS summed, count(*) FILTER (WHERE first_audio_seq IS NOT NULL) AS audio FROM turns"
    ).to_pylist()[0]
    # no server VAD here: the end of speech is the commit, and the latencies add up
    assert rows["speech"] == 0 and rows["committed"] > 0
    assert rows["summed"] == len(
        captures.sql("SELECT * FROM turns WHERE committed_seq IS NOT NULL AND first_audio_seq IS NOT NULL")
    )
    statuses = {r["status"] for r in captures.sql("SELECT DISTINCT status FROM turns").to_pylist()}
    assert {"completed", "failed"} <= statuses


def test_turns_columns(corpus: tuple[Path, list[Connection]]) -> None:
    root, _ = corpus
    names = open_captures(root).sql("SELECT * FROM turns LIMIT 0").schema.names
    marks = [f"{m}_{x}" for m in turns.MARKS for x in ("seq", "t_s")]
    assert names == [
        "session_id", "turn", "response_id", *marks,
        "speech_end_to_first_audio_ms", "commit_to_created_ms", "created_to_first_audio_ms",
        "status", "input_tokens", "output_tokens", "audio_out_ms", "barge_in",
    ]  # fmt: skip


def test_latency_percentiles(corpus: tuple[Path, list[Connection]]) -> None:
    root, _ = corpus
    captures = open_captures(root)
    table = latency(captures).to_pylist()
    assert [(r["kind"], r["group"]) for r in table if r["group"] == "all"] == [(k, "all") for k in turns.LATENCIES]
    measured = captures.sql("SELECT * FROM turns").to_pylist()
    for row in table:
        kind = row["kind"]
        values = sorted(r[kind] for r in measured if r[kind] is not None)
        if row["group"] == "all":
            assert row["turns"] == len(values)
            assert row["p50_ms"] == pytest.approx(_quantile(values, 0.5))
            assert row["p99_ms"] == pytest.approx(_quantile(values, 0.99))
    groups = {r["group"] for r in table}
    assert "corpus=precursors" in groups and "conversation=17/0" in groups


def _quantile(values: list[float], p: float) -> float:
    position = (len(values) - 1) * p
    low = int(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


def test_latency_command(corpus: tuple[Path, list[Connection]]) -> None:
    root, _ = corpus
    runner = CliRunner()
    result = runner.invoke(
        cli, ["latency", "--captures", str(root), "--format", "json", "--label", "conversation=17/1"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {r["group"] for r in rows} == {"all", "conversation=17/1", "corpus=precursors"}
    assert list(rows[0]) == ["kind", "group", "turns", "p50_ms", "p90_ms", "p99_ms"]
    csv = runner.invoke(cli, ["latency", "--captures", str(root), "--format", "csv", "--since", "2000-01-01"])
    assert csv.output.splitlines()[0] == "kind,group,turns,p50_ms,p90_ms,p99_ms"
    bad = runner.invoke(cli, ["latency", "--captures", str(root), "--label", "nolabel"])
    assert bad.exit_code == 2 and bad.output.startswith("rtcap: error:")


def test_precursors_find_a_barge_in_on_the_previous_turn(make_capture) -> None:
    """A server that fails the response after one the user barged in on: the barge-in is in
    no window (it came before the previous response ended), only in the turn's context."""
    from analyzer.precursors import analyse
    from recorder.session import RECEIVED

    for n in range(60):
        barged = n % 2 == 0
        messages = []
        for i in range(6):
            t0, rid = i * 10.0, f"resp_{i}"
            fails = barged and i == 3
            done = {"id": rid, "status": "failed" if fails else "completed"}
            if fails:
                done["status_details"] = {"type": "failed", "error": {"type": "server_error", "message": "boom"}}
            messages += [
                (t0, RECEIVED, {"type": "input_audio_buffer.committed", "item_id": f"item_{i}"}),
                (t0 + 0.05, RECEIVED, {"type": "response.created", "response": {"id": rid}}),
                (t0 + 0.3, RECEIVED, {"type": "response.output_audio.delta", "response_id": rid, "delta": "AAAA"}),
            ]
            if barged and i == 2:
                messages.append((t0 + 0.5, RECEIVED, {"type": "input_audio_buffer.speech_started"}))
            messages.append((t0 + 1, RECEIVED, {"type": "response.done", "response": done}))
        make_capture(messages)
    document = analyse(open_captures(make_capture.root))
    assert document["failures"] == 30
    top = document["features"][0]
    assert (top["feature"], top["failures_with"], top["controls_with"]) == ("previous_turn:barge_in=true", 30, 0)
    assert top["significant"]
    assert "barge_in" in document["summary"]


def test_server_vad_turns_equal_the_simulators_timing(tmp_path: Path) -> None:
    root = tmp_path / "captures"
    log: list[Connection] = []
    record_direct(root, [], sessions=4, seed=8, vad=True, log=log)
    rows = open_captures(root).sql("SELECT * FROM turns ORDER BY session_id, turn").to_pylist()
    expected = []
    for connection in sorted(log, key=lambda c: c.session_id):
        speech: dict[str, float] = {}
        for now, event in connection.connection.timeline:
            kind = events.event_type(event)
            if kind in (turns.SPEECH_STARTED, turns.SPEECH_STOPPED, turns.COMMITTED):
                speech[kind] = now
            elif kind == events.RESPONSE_STARTED:
                expected.append((connection.session_id, event["response"]["id"], speech, now))
                speech = {}
    assert len(rows) == len(expected)
    assert sum(1 for _, _, speech, _ in expected if speech) >= 8  # voice turns, and the tools' follow-ups
    for row, (session_id, response_id, speech, created) in zip(rows, expected, strict=True):
        assert (row["session_id"], row["response_id"]) == (session_id, response_id)
        assert row["response_created_t_s"] == pytest.approx(created, abs=1e-9)
        for kind, column in (
            (turns.SPEECH_STARTED, "speech_started_t_s"),
            (turns.SPEECH_STOPPED, "speech_stopped_t_s"),
            (turns.COMMITTED, "committed_t_s"),
        ):
            assert row[column] == (pytest.approx(speech[kind], abs=1e-9) if kind in speech else None)
        if turns.COMMITTED in speech:
            want = (created - speech[turns.COMMITTED]) * 1e3
            assert row["commit_to_created_ms"] == pytest.approx(want, abs=2 * NS)
            assert row["response_create_seq"] is None  # the server answered the turn by itself


def test_a_batch_answers_as_single_statements_do(corpus: tuple[Path, list[Connection]], tmp_path: Path) -> None:
    """Statements in one batch share a connection; they must see what lone statements
    see: the turns when a later statement first names them, and a grown index."""
    root, _ = corpus
    copy = tmp_path / "captures"
    [first, *rest] = sorted(root.rglob("*.msgpack"))
    (copy / first.parent.name).mkdir(parents=True)
    (copy / first.parent.name / first.name).write_bytes(first.read_bytes())
    captures = open_captures(copy)
    questions = ["SELECT count(*) AS n FROM sessions", "SELECT count(*) AS n FROM turns"]
    alone = [captures.sql(q).to_pylist() for q in questions]
    with captures.batch():
        assert [captures.sql(q).to_pylist() for q in questions] == alone
        assert alone[1][0]["n"] > 0
        added = rest[0]
        (copy / added.parent.name).mkdir(exist_ok=True)
        (copy / added.parent.name / added.name).write_bytes(added.read_bytes())
        captures.index.update()
        grown = [captures.sql(q).to_pylist() for q in questions]
    assert grown == [captures.sql(q).to_pylist() for q in questions]
    assert grown[0] == [{"n": 2}] and grown[1][0]["n"] > alone[1][0]["n"]
