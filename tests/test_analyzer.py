"""The analyzer: index, views and the exploring commands, on captures recorded through the
proxy from the simulator, with answers known from what the simulator logged."""

from __future__ import annotations

import base64
import json
import shutil
import wave
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from analyzer.cli import cli
from analyzer.index import Index
from analyzer.locate import capture_files
from analyzer.views import QueryError, open_captures
from recorder.capture import CaptureWriter, read_capture
from recorder.proxy import RecordingProxy
from recorder.session import RECEIVED, SENT, SessionRecorder, capture_path
from tests.conftest import REALTIME, ProxyThread

GOLDEN = Path(__file__).parent / "data" / "capture-v1.msgpack"
PCMU = {"type": "realtime", "audio": {"output": {"format": {"type": "audio/pcmu"}}}}


def loud(ms: int) -> str:
    return base64.b64encode(b"\x00\x40" * 24 * ms).decode()


def until_done(ws) -> None:
    while json.loads(ws.recv())["type"] != "response.done":
        pass


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Five sessions through the proxy: completed, failed, errored, dropped, G.711.
    Returns (capture root, the simulator's logs in session order)."""
    from analyzer.sim.simulator import RunningSimulator, Simulator

    root = tmp_path_factory.mktemp("corpus") / "captures"
    rules = [
        "fail nth=2 sent=input_audio_buffer.clear",
        "error sent=conversation.item.delete",
        "drop sent=output_audio_buffer.clear",
    ]
    simulator = RunningSimulator(Simulator(rules, speed=1000, keep_log=True, seed=5)).start()
    try:
        with ProxyThread(RecordingProxy(simulator.url, root, labels={"team": "voice"})) as proxy:
            url = proxy.url + REALTIME
            with connect(url) as ws:  # 1: two completed responses, audio in
                ws.recv()
                ws.send(
                    json.dumps(
                        {
                            "type": "session.update",
                            "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
                        }
                    )
                )
                ws.recv()
                ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": loud(300)}))
                ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
                for _ in range(2):
                    ws.send(json.dumps({"type": "response.create"}))
                    until_done(ws)
            with connect(url) as ws:  # 2: completed, then failed (server_error), plus a client error
                ws.recv()
                ws.send(json.dumps({"type": "response.create"}))
                until_done(ws)
                ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
                ws.send(json.dumps({"type": "response.create"}))
                until_done(ws)
                ws.send(json.dumps({"type": "no.such.event"}))
                ws.recv()
            for trigger in ("conversation.item.delete", "output_audio_buffer.clear"):  # 3: error+close, 4: drop
                with connect(url) as ws:
                    ws.recv()
                    ws.send(json.dumps({"type": trigger, "item_id": "item_nope"}))
                    ws.recv()
                    ws.send(json.dumps({"type": "response.create"}))
                    with pytest.raises(ConnectionClosed):
                        until_done(ws)
            with connect(
                url + "&codec=pcmu", additional_headers={"OpenAI-Beta": "realtime=v1"}
            ) as ws:  # 5: beta, G.711 out
                ws.recv()
                ws.recv()  # conversation.created
                ws.send(json.dumps({"type": "session.update", "session": {"output_audio_format": "g711_ulaw"}}))
                ws.recv()
                ws.send(json.dumps({"type": "response.create"}))
                until_done(ws)
        for log in simulator.sessions:
            assert log.done.wait(10)
        logs = list(simulator.sessions)
    finally:
        simulator.stop()
    return root, logs


def sql(root: Path, query: str) -> list[dict]:
    captures = open_captures(root)
    try:
        return captures.sql(query).to_pylist()
    finally:
        captures.close()


def test_event_counts_match_what_crossed_the_wire(corpus) -> None:
    root, logs = corpus
    expected = Counter()
    for log in logs:
        for text in log.received:
            expected[(json.loads(text)["type"], "sent")] += 1
        for text in log.sent:
            expected[(json.loads(text)["type"], "received")] += 1
    got = {
        (r["type"], r["direction"]): r["n"]
        for r in sql(root, "SELECT type, direction, count(*) AS n FROM events GROUP BY ALL")
    }
    assert got == dict(expected)
    wire = sum(len(t.encode()) for log in logs for t in log.received + log.sent)
    assert sql(root, "SELECT sum(bytes)::BIGINT AS b FROM events")[0]["b"] == wire


def test_sessions_view(corpus) -> None:
    root, logs = corpus
    rows = sql(root, "SELECT * FROM sessions ORDER BY started_at")
    assert len(rows) == 5
    server_ids = [json.loads(log.sent[0])["session"]["id"] for log in logs]
    assert [r["server_session_id"] for r in rows] == server_ids
    assert [r["dialect"] for r in rows] == ["ga", "ga", "ga", "ga", "beta"]
    assert [r["failures"] for r in rows] == [0, 1, 1, 1, 0]  # client-class errors do not count
    assert [r["failed"] for r in rows] == [False, True, True, True, False]
    assert [r["close_code"] for r in rows] == [1000, 1000, 1000, 1006, 1000]
    assert [r["close_by"] for r in rows] == ["client", "client", "server", "server", "client"]
    assert {r["state"] for r in rows} == {"closed"} and not any(r["damaged"] for r in rows)
    assert all(dict(r["labels"]) == {"team": "voice"} for r in rows)
    assert all(r["host"] == "127.0.0.1" and r["model"] == "gpt-realtime" and r["recorder"] == "proxy" for r in rows)
    assert [r["messages"] for r in rows] == [len(log.received) + len(log.sent) for log in logs]
    assert [r["sent"] for r in rows] == [len(log.received) for log in logs]
    assert all(r["expires_at"] is not None and r["ended_at"] >= r["started_at"] for r in rows)


def test_failures_of_every_source_and_class(corpus) -> None:
    root, _ = corpus
    rows = sql(
        root, "SELECT s.started_at, f.* FROM failures f JOIN sessions s USING (session_id) ORDER BY s.started_at, f.t_s"
    )
    got = [(r["source"], r["class"], r["error_type"], r["code"]) for r in rows]
    assert got == [
        ("response.done", "server", "server_error", None),
        ("error", "client", "invalid_request_error", "invalid_value"),
        ("error", "client", "invalid_request_error", "item_not_found"),
        ("error", "server", "server_error", None),
        ("close", "connection", "connection_closed", "1006"),
    ]
    # An error during a response names it; a close row has no seq.
    assert rows[3]["response_id"] is not None and rows[4]["seq"] is None and rows[4]["response_id"] is not None


def test_responses_statuses_tokens_and_audio_in_both_formats(corpus) -> None:
    root, logs = corpus
    rows = sql(
        root, "SELECT r.* FROM responses r JOIN sessions s USING (session_id) ORDER BY s.started_at, r.created_seq"
    )
    assert [r["status"] for r in rows] == [
        "completed",
        "completed",
        "completed",
        "failed",
        "dropped",
        "dropped",
        "completed",
    ]
    done = [json.loads(t)["response"] for log in logs for t in log.sent if json.loads(t)["type"] == "response.done"]
    completed = [r for r in rows if r["status"] in ("completed", "failed")]
    assert [r["input_tokens"] for r in completed] == [d["usage"]["input_tokens"] for d in done]
    assert [r["output_tokens"] for r in completed] == [d["usage"]["output_tokens"] for d in done]
    assert rows[3]["error_type"] == "server_error"
    # Audio: 70 ms per transcript character, whether PCM16 (48 bytes/ms) or G.711 (8 bytes/ms).
    transcripts = [d["output"][0]["content"][0]["transcript"] for d in done if d["status"] == "completed"]
    assert [r["audio_out_ms"] for r in rows if r["status"] == "completed"] == [len(t) * 70 for t in transcripts]
    appended = sql(root, "SELECT audio_ms FROM events WHERE type = 'input_audio_buffer.append'")
    assert appended == [{"audio_ms": 300.0}]


def test_incremental_updates(tmp_path: Path, make_capture) -> None:
    root = tmp_path / "captures"
    day = root / "2026-11-25"
    day.mkdir(parents=True)
    shutil.copy(GOLDEN, day / "20261125T120000000000Z-goldenab.msgpack")
    # An open capture: its writer is still going.
    recorder = make_capture.open(root=root, url="ws://h/v1/realtime?model=m", recorder="shim")
    session_id = recorder.session_id
    path = capture_path(root, session_id)
    recorder.message(RECEIVED, json.dumps({"type": "session.created", "session": {"id": "sess_open"}}), 10)
    index = Index(root)
    first = index.update()
    assert sorted(first.new) == sorted(str(p.relative_to(root)) for p in capture_files(root))
    assert sql(root, "SELECT state, messages FROM sessions ORDER BY session_id") == [
        {"state": "closed", "messages": 8},
        {"state": "open", "messages": 1},
    ]
    # Nothing changed: nothing read (the open one is looked at, and has not grown).
    again = index.update()
    assert again.read == [] and len(again.unchanged) == 2
    # Grown, then closed: read from where it was left.
    recorder.message(SENT, json.dumps({"type": "response.create"}), 20)
    grown = index.update()
    assert grown.grown == [str(path.relative_to(root))] and grown.new == grown.changed == []
    recorder.end(30, closed_by="client", code=1000)
    index.update()
    assert sql(root, f"SELECT state, messages, close_code FROM sessions WHERE session_id = '{session_id}'") == [
        {"state": "closed", "messages": 2, "close_code": 1000}
    ]
    assert sql(root, f"SELECT seq, type FROM events WHERE session_id = '{session_id}' ORDER BY seq") == [
        {"seq": 0, "type": "session.created"},
        {"seq": 1, "type": "response.create"},
    ]
    # Changed: the file is rewritten with other content.
    path.unlink()
    # (the same session id again, so not through make_capture, which makes new ones)
    rewritten = SessionRecorder(
        CaptureWriter(path), session_id=session_id, url="ws://h/x", request_headers=[], recorder="shim"
    )
    rewritten.start(0)
    for n in range(3):
        rewritten.message(SENT, "not json", n)
    rewritten.end(5, closed_by="client", code=1000)
    changed = index.update()
    assert changed.changed == [str(path.relative_to(root))]
    assert sql(root, "SELECT count(*) AS n, count(type) AS typed FROM events") == [
        {"n": 11, "typed": 6}
    ]  # the golden has a binary and a non-JSON message
    # Deleted: dropped from every view.
    path.unlink()
    deleted = index.update()
    assert deleted.deleted == [str(path.relative_to(root))]
    assert sql(root, "SELECT count(*) AS n FROM events") == [{"n": 8}]
    assert sql(root, "SELECT count(*) AS n FROM sessions") == [{"n": 1}]


def test_a_damaged_capture_is_flagged_and_its_intact_records_kept(tmp_path: Path) -> None:
    day = tmp_path / "captures" / "2026-11-25"
    day.mkdir(parents=True)
    data = bytearray(GOLDEN.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one corrupt record in the middle
    (day / "20261125T120000000000Z-goldenab.msgpack").write_bytes(bytes(data))
    [row] = sql(tmp_path / "captures", "SELECT state, damaged, messages FROM sessions")
    assert row == {"state": "damaged", "damaged": True, "messages": 7}


def test_queries_that_write_are_refused(corpus, tmp_path: Path) -> None:
    root, _ = corpus
    captures = open_captures(root)
    before = sorted((p, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file())
    for statement in (
        f"COPY (SELECT * FROM events) TO '{tmp_path}/out.csv'",
        "CREATE TABLE t AS SELECT 1",
        "DELETE FROM events",
        "INSERT INTO events VALUES (1)",
        "ATTACH 'x.db'",
        "SELECT 1; DROP VIEW events",
    ):
        with pytest.raises(QueryError):
            captures.sql(statement)
    assert captures.sql("SELECT count(*) AS n FROM events").to_pylist()[0]["n"] > 0
    assert not (tmp_path / "out.csv").exists()
    assert sorted((p, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()) == before


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_query_command_formats_and_outputs(corpus, tmp_path: Path) -> None:
    root, _ = corpus
    q = "SELECT direction, count(*) AS n FROM events WHERE type = 'response.done' GROUP BY ALL"
    result = run("query", q, "--captures", str(root), "--format", "csv")
    assert result.exit_code == 0 and result.stdout == "direction,n\nreceived,5\n"
    result = run("query", q, "--captures", str(root), "--format", "json")
    assert json.loads(result.stdout) == [{"direction": "received", "n": 5}]
    result = run(
        "query", "SELECT labels, started_at FROM sessions LIMIT 1", "--captures", str(root), "--format", "jsonl"
    )
    row = json.loads(result.stdout)
    assert row["labels"] == {"team": "voice"} and row["started_at"].endswith("Z")
    for name in ("out.parquet", "out.csv", "out.json", "out.jsonl"):
        result = run("query", q, "--captures", str(root), "--output", str(tmp_path / name))
        assert result.exit_code == 0 and result.stderr == f"wrote 1 row to {tmp_path / name}\n"
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
    assert json.loads((tmp_path / "out.json").read_text()) == [{"direction": "received", "n": 5}]
    assert run("query", q, "--captures", str(root), "--output", str(tmp_path / "out.txt")).exit_code == 2
    assert (
        run("query", q, "--captures", str(root), "--output", str(tmp_path / "x.csv"), "--format", "json").exit_code == 2
    )
    bad = run("query", "SELEC nonsense", "--captures", str(root))
    assert bad.exit_code == 1 and bad.stderr.startswith("rtcap: error: Parser Error") and bad.stderr.count("\n") == 1
    refused = run("query", "DELETE FROM events", "--captures", str(root))
    assert refused.exit_code == 1 and "only reading queries" in refused.stderr


def test_sessions_command_filters(corpus) -> None:
    root, _ = corpus
    listed = run("sessions", "--captures", str(root), "--format", "json")
    assert len(json.loads(listed.stdout)) == 5
    failed = json.loads(run("sessions", "--failed", "--captures", str(root), "--format", "json").stdout)
    assert [r["failures"] for r in failed] == [1, 1, 1]  # newest first
    newest = json.loads(
        run("sessions", "--label", "team=voice", "--limit", "2", "--captures", str(root), "--format", "json").stdout
    )
    assert [r["dialect"] for r in newest] == ["beta", "ga"] and newest[1]["session_id"] == failed[0]["session_id"]
    assert (
        json.loads(run("sessions", "--label", "team=other", "--captures", str(root), "--format", "json").stdout) == []
    )
    assert json.loads(run("sessions", "--since", "2000-01-01", "--captures", str(root), "--format", "json").stdout)
    assert (
        json.loads(run("sessions", "--since", "2100-01-01", "--captures", str(root), "--format", "json").stdout) == []
    )
    assert run("sessions", "--since", "yesterday-ish", "--captures", str(root)).exit_code == 2


def test_show_collapses_deltas_and_marks_failures(corpus) -> None:
    root, _ = corpus
    [failed] = sql(root, "SELECT session_id, seq FROM failures WHERE source = 'response.done'")
    result = run("show", failed["session_id"][:24], "--captures", str(root))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any("output_audio.delta x" in line and "ms of audio" in line for line in lines)
    marked = [line.split()[:5] for line in lines if "FAILED" in line]
    assert marked[0][0] == str(failed["seq"]) and marked[0][4] == "response.done"
    assert [m[4] for m in marked] == ["response.done", "error"]  # the client error is marked too
    around = run(
        "show", failed["session_id"], "--around", str(failed["seq"]), "--context", "1", "--captures", str(root)
    )
    assert [line.split()[0] for line in around.stdout.splitlines()[1:]] == [str(failed["seq"] + d) for d in (-1, 0, 1)]


def test_export_audio_writes_wavs(corpus, tmp_path: Path) -> None:
    root, _ = corpus
    first = capture_files(root)[0]
    result = run("export", str(first), "--audio", str(tmp_path / "wav"), "--output", str(tmp_path / "x.jsonl"))
    assert result.exit_code == 0, result.output
    with wave.open(str(tmp_path / "wav" / "input.wav")) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnframes()) == (24_000, 2, 24 * 300)
    spoken = read_capture(first)
    out_bytes = sum(len(a) for m in spoken.messages if m.direction == "received" for a in m.audio())
    with wave.open(str(tmp_path / "wav" / "output.wav")) as w:
        assert w.getnframes() == out_bytes // 2


def test_stray_index_parts_are_swept(tmp_path: Path) -> None:
    day = tmp_path / "captures" / "2026-11-25"
    day.mkdir(parents=True)
    shutil.copy(GOLDEN, day / "20261125T120000000000Z-goldenab.msgpack")
    index = Index(tmp_path / "captures")
    index.update()
    stray = index.events_dir / "left-over.00000.parquet"
    shutil.copy(index.part_files()[0], stray)
    index.update()
    assert not stray.exists()
    assert sql(tmp_path / "captures", "SELECT count(*) AS n FROM events") == [{"n": 8}]


def test_several_processes_may_index_at_once(tmp_path: Path) -> None:
    import subprocess
    import sys

    day = tmp_path / "captures" / "2026-11-25"
    day.mkdir(parents=True)
    for n in range(20):
        shutil.copy(GOLDEN, day / f"20261125T1200{n:02d}000000Z-goldenab.msgpack")
    rtcap = str(Path(sys.executable).parent / "rtcap")
    command = [
        rtcap,
        "query",
        "SELECT count(*) AS n FROM events",
        "--captures",
        str(tmp_path / "captures"),
        "--format",
        "csv",
    ]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [run.communicate(timeout=60) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], outputs
    assert [out for out, _ in outputs] == ["n\n160\n"] * 3


def test_small_updates_leave_few_files(tmp_path: Path) -> None:
    from analyzer.index import SMALL_SEGMENTS

    day = tmp_path / "captures" / "2026-11-25"
    day.mkdir(parents=True)
    index = Index(tmp_path / "captures")
    for n in range(SMALL_SEGMENTS + 4):  # one capture per update: one small segment each
        shutil.copy(GOLDEN, day / f"20261125T1200{n:02d}000000Z-goldenab.msgpack")
        index.update()
        assert len(index.part_files()) <= SMALL_SEGMENTS
        assert sorted(p.name for p in index.events_dir.iterdir() if p.suffix == ".parquet") == [
            p.name for p in index.part_files()
        ]
    assert sql(tmp_path / "captures", "SELECT count(*) AS n, count(DISTINCT seq) AS seqs FROM events") == [
        {"n": 8 * (SMALL_SEGMENTS + 4), "seqs": 8}
    ]


def test_g711_audio_exports_at_8_khz(corpus, tmp_path: Path) -> None:
    from analyzer.g711 import ALAW, ULAW

    assert (ULAW[0xFF], ULAW[0x7F], ALAW[0xD5], ALAW[0x55]) == (0, 0, 8, -8)  # silence codes
    root, _ = corpus
    last = capture_files(root)[-1]  # the beta session with G.711 output
    assert run("export", str(last), "--audio", str(tmp_path), "--output", str(tmp_path / "x.jsonl")).exit_code == 0
    out_bytes = sum(len(a) for m in read_capture(last).messages if m.direction == "received" for a in m.audio())
    with wave.open(str(tmp_path / "output.wav")) as w:
        assert (w.getframerate(), w.getnframes()) == (8_000, out_bytes)


def test_the_failures_view_and_recorder_events_agree(corpus) -> None:
    """One meaning: the SQL view and the Python definition find the same failures."""
    from recorder import events

    root, _ = corpus
    for path in capture_files(root):
        capture = read_capture(path)
        server = [(m.seq, events.parse(m.data())) for m in capture.messages if m.direction == events.RECEIVED]
        expected = sorted(
            (f.seq if f.seq is not None else -1, f.source, f.error_type, f.code, f.failure_class, f.response_id)
            for f in events.failures(server, capture.end, capture.header.get("response_status", 101))
        )
        rows = sql(
            root,
            "SELECT coalesce(seq, -1) AS seq, source, error_type, code, class, response_id FROM failures "
            f"WHERE session_id = '{capture.session_id}'",
        )
        assert sorted(tuple(r.values()) for r in rows) == expected, capture.session_id
    kinds = {r["source"] for r in sql(root, "SELECT DISTINCT source FROM failures")}
    assert kinds == {"error", "response.done", "close"}  # the corpus exercises every source


def test_a_rejected_or_unreachable_upstream_is_a_failure(start_simulator, start_proxy, captures, tmp_path) -> None:
    from websockets.exceptions import InvalidStatus

    from recorder import events

    simulator = start_simulator(api_key="sk-the-right-key-0000")
    for upstream in (simulator.url, "ws://127.0.0.1:9/v1"):  # a 401, then nothing listening: a 502
        proxy = start_proxy(upstream)
        with pytest.raises(InvalidStatus):
            connect(f"{proxy.url}{REALTIME}", additional_headers={"Authorization": "Bearer reject-me-please"})
    rows = sql(
        captures,
        "SELECT f.source, f.class, f.error_type, f.code, f.seq, s.failures, s.failed, s.end_error, s.close_reason "
        "FROM failures f JOIN sessions s USING (session_id) ORDER BY f.code NULLS LAST",
    )
    assert [(r["source"], r["class"], r["error_type"], r["code"], r["seq"]) for r in rows] == [
        ("handshake", "client", "handshake_rejected", "401", None),
        ("handshake", "server", "upstream_unreachable", None, None),
    ]
    assert [(r["failures"], r["failed"]) for r in rows] == [(0, False), (1, True)]  # 4xx: the client's own
    assert "HTTP 401" in rows[0]["end_error"] and "upstream unreachable" in rows[1]["end_error"]
    assert "reject-me-please" not in json.dumps(rows)
    # The Python definition agrees, from the header and the end record.
    for path in capture_files(captures):
        capture = read_capture(path)
        [failure] = events.failures([], capture.end, capture.header["response_status"])
        assert failure.source == "handshake"
    failed = run("sessions", "--failed", "--captures", str(captures), "--format", "json")
    assert [s["close_code"] for s in json.loads(failed.stdout)] == [None]
    [unreachable] = json.loads(failed.stdout)
    bundle = tmp_path / "bundle.zip"
    made = run("report", unreachable["session_id"], "--captures", str(captures), "--output", str(bundle))
    assert made.exit_code == 0, made.output
    import zipfile

    story = zipfile.ZipFile(bundle).read("README.txt").decode()
    assert "upstream_unreachable" in story and "handshake" in story and "No failure" not in story
    shown = run("show", unreachable["session_id"], "--captures", str(captures)).stdout.splitlines()
    assert shown[-1].split()[:5] == ["end", "0.000", "+0.000", "(handshake)", "FAILED"]
