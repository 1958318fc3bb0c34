"""HAR in and out: fixtures written by headless Chromium (Playwright) and by mitmproxy
11.0.2's savehar from one conversation with the simulator (tests/data/make_har_fixtures.py),
checked against what the simulator logged; exported HARs read back exactly."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from analyzer.cli import cli
from analyzer.har import HarError, import_har, read_har
from analyzer.views import open_captures
from recorder.capture import RECEIVED, SENT, read_capture

DATA = Path(__file__).parent / "data"
FIXTURES = ("har-chromium.har", "har-mitmproxy.har")
SECRET = "sk-fixture-secret-1234"


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def simulator_log() -> list[tuple[str, str, str]]:
    rows = [json.loads(line) for line in (DATA / "har-simulator.jsonl").read_text().splitlines()]
    return [(row["direction"], row["opcode"], row["data"]) for row in rows]


def messages(path: Path) -> list[tuple[str, str, str]]:
    capture = read_capture(path)
    return [(m.direction, m.opcode, m.data().decode()) for m in capture.messages]


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("har") / "captures"
    result = run("import", *(str(DATA / name) for name in FIXTURES), "--captures", str(root), "--format", "jsonl")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [(row["entry"], row["messages"], row["status"]) for row in rows] == [(0, 129, "imported")] * 2
    return root


def test_real_tool_hars_hold_what_the_simulator_logged(imported: Path) -> None:
    # Each side's messages, in order, byte for byte; how the two directions interleave
    # depends on where they were seen (the page, the proxy, the server).
    log = simulator_log()
    files = sorted(imported.glob("*/*.msgpack"))
    assert len(files) == 2
    for path in files:
        for direction in ("sent", "received"):
            assert [m for m in messages(path) if m[0] == direction] == [m for m in log if m[0] == direction]
        raw = path.read_bytes()
        assert SECRET.encode() not in raw  # the key-bearing subprotocol, redacted
        header = read_capture(path).header
        assert header["recorder"] == "har"
        assert header["url"].startswith("ws://127.0.0.1:") and header["url"].endswith("/v1/realtime?model=gpt-realtime")
        assert header["response_status"] == 101 and header["subprotocol"] == "realtime"
        protocols = [v for k, v in header["request_headers"] if k.lower() == "sec-websocket-protocol"]
        assert protocols == ["realtime, openai-insecure-api-key.[REDACTED]"]


def test_imported_sessions_analyse(imported: Path) -> None:
    views = open_captures(imported, include_replays=True)
    sessions = views.sql(
        "SELECT recorder, state, close_code, close_by, close_reason, messages, failures, model, is_replay FROM sessions"
    ).to_pylist()
    assert (
        sessions
        == [
            {
                "recorder": "har",
                "state": "closed",
                "close_code": None,  # a HAR has no close code: NULL, not invented
                "close_by": None,
                "close_reason": None,
                "messages": 129,
                "failures": 1,
                "model": "gpt-realtime",
                "is_replay": False,
            }
        ]
        * 2
    )
    responses = views.sql(
        "SELECT session_id, status, error_type, input_tokens FROM responses ORDER BY session_id, created_seq"
    )
    by_session: dict[str, list[tuple[Any, ...]]] = {}
    for row in responses.to_pylist():
        by_session.setdefault(row.pop("session_id"), []).append(tuple(row.values()))
    assert (
        list(by_session.values())
        == [[("completed", None, 73), ("failed", "server_error", 90), ("completed", None, 157)]] * 2
    )
    first = views.sql("SELECT session_id FROM sessions ORDER BY session_id LIMIT 1").to_pylist()[0]["session_id"]
    for command in (["show", first], ["doctor", first]):
        result = run(*command, "--captures", str(imported), "--format", "csv")
        assert result.exit_code == 0, (command, result.output)


def test_times_count_from_the_handshake(imported: Path) -> None:
    chromium, mitmproxy = (read_har(DATA / name)[0] for name in FIXTURES)
    # mitmproxy's entry time is the handshake's; Playwright's spans the whole connection,
    # so the first message bounds the handshake's end.
    assert mitmproxy.start_ns < mitmproxy.messages[0].t_ns
    assert chromium.start_ns == chromium.messages[0].t_ns
    for socket in (chromium, mitmproxy):
        capture = read_capture(next(imported.glob(f"*/{socket.session_id}.msgpack")))
        assert [m.t_ns for m in capture.messages] == [m.t_ns - socket.start_ns for m in socket.messages]
        assert capture.end is not None and capture.end["t_ns"] == capture.messages[-1].t_ns


def test_importing_again_creates_nothing(imported: Path) -> None:
    before = sorted(p.name for p in imported.glob("*/*.msgpack"))
    result = run("import", str(DATA / FIXTURES[0]), "--captures", str(imported), "--format", "csv")
    assert result.exit_code == 0
    assert result.output.splitlines()[1].endswith(",0,already imported")
    assert sorted(p.name for p in imported.glob("*/*.msgpack")) == before


def test_export_then_import_gives_the_same_session(tmp_path: Path, make_capture: Any) -> None:
    audio = base64.b64encode(b"\x01\x02" * 480).decode()
    made = make_capture(
        [
            (0.0, RECEIVED, {"type": "session.created", "session": {"id": "sess_roundtrip"}}),
            (0.0123456789, SENT, {"type": "input_audio_buffer.append", "audio": audio}),
            (0.02, SENT, b"\x00\xffbinary"),
            (0.03, RECEIVED, "not json, \u00e9"),
        ],
        end_code=4001,
        closed_by="server",
        headers=[("Authorization", "Bearer sk-abc"), ("OpenAI-Beta", "realtime=v1")],
        labels={"app": "kiosk"},
    )
    other = make_capture([(0.5, RECEIVED, {"type": "session.created", "session": {"id": "sess_two"}})])
    har = tmp_path / "out.har"
    result = run("export", str(made), str(other), "--har", str(har), "--captures", str(made.parents[1]))
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"wrote 2 sessions (5 messages) to {har}"
    assert har.stat().st_mode & 0o777 == 0o600
    entries = json.loads(har.read_text())["log"]["entries"]
    assert [e["_rtcap"]["server_session_id"] for e in entries] == ["sess_roundtrip", "sess_two"]
    assert entries[0]["_rtcap"]["close_code"] == 4001
    assert [m["opcode"] for m in entries[0]["_webSocketMessages"]] == [1, 1, 2, 1]

    again = tmp_path / "again"
    assert [d.status for d in import_har([har], again)] == ["imported", "imported"]
    for path in (made, other):
        original, back = read_capture(path), read_capture(next(again.glob(f"*/{path.name}")))
        assert [(m.seq, m.t_ns, m.direction, m.opcode, m.data()) for m in back.messages] == [
            (m.seq, m.t_ns, m.direction, m.opcode, m.data()) for m in original.messages
        ]
        for key in ("url", "request_headers", "labels", "started_ns"):
            assert back.header[key] == original.header[key]
        assert {k: back.end[k] for k in ("t_ns", "code", "closed_by")} == {  # type: ignore[index]
            k: original.end[k]
            for k in ("t_ns", "code", "closed_by")  # type: ignore[index]
        }
    assert read_capture(made).header["request_headers"][0] == ["Authorization", "[REDACTED]"]


def test_export_can_replace_audio_by_its_length(tmp_path: Path, make_capture: Any) -> None:
    audio = base64.b64encode(b"\x01\x02" * 480).decode()
    made = make_capture([(0.0, SENT, {"type": "input_audio_buffer.append", "audio": audio})])
    har = tmp_path / "out.har"
    result = run("export", str(made), "--har", str(har), "--har-audio", "length", "--captures", str(tmp_path))
    assert result.exit_code == 0, result.output
    [message] = json.loads(har.read_text())["log"]["entries"][0]["_webSocketMessages"]
    assert json.loads(message["data"]) == {"type": "input_audio_buffer.append", "audio": "<audio 960 bytes>"}


def test_export_usage_errors(tmp_path: Path, make_capture: Any) -> None:
    made = make_capture([(0.0, SENT, {"type": "response.create"})])
    result = run("export", str(made), str(made), "--captures", str(tmp_path))
    assert result.exit_code == 2 and "with --har FILE" in result.output
    result = run("export", str(made), "--har", str(tmp_path / "x.har"), "--output", "x", "--captures", str(tmp_path))
    assert result.exit_code == 2


def _har(entries: list[Any]) -> str:
    return json.dumps({"log": {"version": "1.2", "entries": entries}})


GOOD_ENTRY = {
    "startedDateTime": "2026-01-02T03:04:05.000Z",
    "time": 10,
    "request": {"url": "wss://example.test/v1/realtime?model=m&api-key=k123", "headers": []},
    "response": {"status": 101, "headers": []},
    "_webSocketMessages": [{"type": "receive", "time": 1767323045.5, "opcode": 1, "data": "{}"}],
}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("not json", "is not a HAR file: not JSON"),
        (json.dumps({"log": {}}), "is not a HAR file: no log.entries list"),
        (_har([{"request": {"url": "https://example.test/"}, "response": {"status": 200}}]), "holds no WebSocket"),
        (_har([GOOD_ENTRY, {**GOOD_ENTRY, "_webSocketMessages": {}}]), "entry 1: _webSocketMessages is not a list"),
        (
            _har([{**GOOD_ENTRY, "_webSocketMessages": [{"type": "up", "time": 1, "data": ""}]}]),
            "entry 0: message 0: type is 'up', not send or receive",
        ),
        (
            _har([{**GOOD_ENTRY, "_webSocketMessages": [{"type": "send", "time": 1, "opcode": 2, "data": "!!"}]}]),
            "entry 0: message 0: binary data is not base64",
        ),
        (_har([{**GOOD_ENTRY, "startedDateTime": "yesterday"}]), "entry 0: startedDateTime 'yesterday' is not"),
    ],
)
def test_malformed_hars_are_one_line_errors(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "in.har"
    path.write_text(text)
    result = run("import", str(path), "--captures", str(tmp_path / "captures"))
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and result.output.startswith(f"rtcap: error: {path}")
    assert error in result.output
    assert not list((tmp_path / "captures").glob("*/*.msgpack"))  # a bad file imports nothing


def test_a_har_with_secrets_and_seconds(tmp_path: Path) -> None:
    path = tmp_path / "in.har"
    path.write_text(_har([GOOD_ENTRY]))
    [done] = import_har([path], tmp_path)
    capture = read_capture(next(tmp_path.glob(f"*/{done.session_id}.msgpack")))
    assert capture.header["url"] == "wss://example.test/v1/realtime?model=m&api-key=[REDACTED]"
    assert capture.header["started_at"].startswith("2026-01-02T03:04:05.010")  # the handshake's end
    assert [m.t_ns for m in capture.messages] == [490_000_000]


def test_import_rejects_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(HarError):
        read_har(tmp_path / "none.har")
    result = run("import", str(tmp_path / "none.har"), "--captures", str(tmp_path))
    assert result.exit_code == 2 and "no file" in result.output
