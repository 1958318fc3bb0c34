"""Files rtcap writes are its user's alone (0600, directories 0700), never written through a
symlink; and the small promises of the exploring commands' output."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from analyzer.cli import cli
from recorder.session import RECEIVED, SENT

FAILED_DONE = {
    "type": "response.done",
    "response": {
        "id": "resp_1",
        "status": "failed",
        "status_details": {"type": "failed", "error": {"type": "server_error", "message": "boom"}},
    },
}


@pytest.fixture
def session(make_capture) -> Path:
    audio = {"type": "input_audio_buffer.append", "audio": "AAAAAAAA"}
    return make_capture(
        [
            (0, RECEIVED, {"type": "session.created", "session": {"id": "sess_files"}}),
            (0.1, SENT, audio),
            (0.2, SENT, {"type": "response.create"}),
            (0.3, RECEIVED, {"type": "response.created", "response": {"id": "resp_1"}}),
            (0.4, RECEIVED, FAILED_DONE),
        ]
    )


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_every_file_rtcap_writes_is_0600(session: Path, captures: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.csv").write_text("left by someone\n")
    (out / "old.csv").chmod(0o644)
    commands = [
        ["export", session.stem, "--output", str(out / "export.jsonl")],
        ["export", session.stem, "--audio", str(out / "wav")],
        ["report", session.stem, "--output", str(out / "bundle.zip")],
        ["query", "SELECT * FROM events", "--output", str(out / "old.csv")],
        ["query", "SELECT * FROM events", "--output", str(out / "events.parquet")],
        ["sessions", "--output", str(out / "sessions.json")],
        ["precursors", "--format", "json", "--output", str(out / "precursors.json")],
        ["doctor", session.stem, "--output", str(out / "doctor.jsonl")],
    ]
    for command in commands:
        result = run(*command, "--captures", str(captures))
        assert result.exit_code == 0, (command, result.output)
    written = sorted(p for p in out.rglob("*") if p.is_file())
    assert sorted(p.name for p in written) == [
        "bundle.zip",
        "doctor.jsonl",
        "events.parquet",
        "export.jsonl",
        "input.wav",
        "old.csv",
        "output.wav",
        "precursors.json",
        "sessions.json",
    ]
    assert {p.name: mode(p) for p in written} == {p.name: 0o600 for p in written}
    assert mode(out / "wav") == 0o700
    assert "left by someone" not in (out / "old.csv").read_text()
    assert zipfile.ZipFile(out / "bundle.zip").namelist()


def test_no_file_is_written_through_a_symlink(session: Path, captures: Path, tmp_path: Path) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    link = tmp_path / "out.csv"
    link.symlink_to(target)
    for command in (
        ["query", "SELECT 1 AS x", "--output", str(link)],
        ["export", session.stem, "--output", str(link)],
        ["report", session.stem, "--output", str(tmp_path / "bundle.zip")],
    ):
        if command[0] == "report":
            (tmp_path / "bundle.zip").symlink_to(target)
        result = run(*command, "--captures", str(captures))
        assert result.exit_code == 1, (command, result.output)
        assert result.stderr.startswith("rtcap: error: cannot write") and "Traceback" not in result.output
    assert target.read_text() == "keep me\n"


def test_export_with_audio_alone_writes_only_the_wavs(session: Path, captures: Path, tmp_path: Path) -> None:
    result = run("export", session.stem, "--audio", str(tmp_path / "wav"), "--captures", str(captures))
    assert result.exit_code == 0 and result.stdout == ""
    assert "input.wav" in result.stderr and "output.wav" in result.stderr


def test_one_message_is_one_message(make_capture, captures: Path, tmp_path: Path) -> None:
    one = make_capture([(0, RECEIVED, {"type": "session.created", "session": {"id": "sess_one"}})])
    result = run("export", one.stem, "--output", str(tmp_path / "one.jsonl"), "--captures", str(captures))
    assert result.stderr == f"wrote 1 message to {tmp_path / 'one.jsonl'}\n"
    result = run("sessions", "--output", str(tmp_path / "one.csv"), "--captures", str(captures))
    assert result.stderr == f"wrote 1 row to {tmp_path / 'one.csv'}\n"


def test_a_missing_directory_and_a_missing_session_are_both_bad_usage(session: Path, captures: Path) -> None:
    missing_dir = run("sessions", "--captures", str(captures / "nope"))
    missing_session = run("show", "20991231", "--captures", str(captures))
    assert (missing_dir.exit_code, missing_session.exit_code) == (2, 2)
    assert missing_dir.stderr.startswith("rtcap: error: no capture directory")
    assert missing_session.stderr.startswith("rtcap: error: no session")


def test_findings_reach_stderr_when_stdout_is_piped(session: Path, captures: Path) -> None:
    result = run("precursors", "--captures", str(captures), "--format", "csv", "--failure", "any")
    assert result.exit_code == 0
    assert result.stdout.startswith("feature,")
    [summary] = result.stderr.splitlines()
    assert "failure" in summary
    as_json = run("precursors", "--captures", str(captures), "--format", "json", "--failure", "any")
    assert json.loads(as_json.stdout)["summary"] == summary


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_sessions_on_an_80_column_terminal_never_wrap_an_id(make_capture, captures: Path, monkeypatch) -> None:
    from analyzer.explore import list_sessions
    from analyzer.render import write
    from analyzer.views import open_captures

    ids = [
        make_capture([(0, RECEIVED, {"type": "session.created", "session": {"id": f"sess_{n}"}})]).stem
        for n in range(3)
    ]
    monkeypatch.setenv("COLUMNS", "80")
    out = Terminal()
    write(list_sessions(open_captures(captures), labels={}), "table", out)
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())  # a terminal gets bold headers
    assert max(len(line) for line in text.splitlines()) <= 80
    for session_id in ids:
        assert session_id in text  # whole, on one line


def test_the_demo_suggests_commands_that_run(tmp_path: Path, monkeypatch) -> None:
    from analyzer.demo import program

    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    script = venv_bin / "rtcap"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # not activated: rtcap is not on PATH
    assert program(str(script)) == ".venv/bin/rtcap"
    monkeypatch.setenv("PATH", f"{venv_bin}:/usr/bin:/bin")  # activated
    assert program(str(script)) == "rtcap"
    assert program("/usr/lib/python3/pytest") == "rtcap"


def test_replay_of_a_failure_the_recording_lacks_says_so(session: Path, captures: Path) -> None:
    result = run(
        "replay", session.stem, "--failure", "no_such_error", "--to", "ws://127.0.0.1:9", "--captures", str(captures)
    )
    assert result.exit_code == 1
    assert (
        result.stderr
        == "rtcap: error: the recording has no failure matching --failure no_such_error (try --failure any)\n"
    )
    assert not list(captures.rglob("*.msgpack"))[1:]  # nothing was replayed, so nothing recorded


def test_a_bad_memory_limit_is_one_usage_error(session: Path, captures: Path, monkeypatch) -> None:
    monkeypatch.setenv("RTCAP_MEMORY_LIMIT", "abc")
    result = run("sessions", "--captures", str(captures))
    assert result.exit_code == 2
    assert result.stderr == "rtcap: error: bad RTCAP_MEMORY_LIMIT 'abc': use a size such as 512MB or 2GB\n"
