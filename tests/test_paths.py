"""The paths a user walks (issue 12): a SESSION given as a file, wherever it is; replays
left out of what a user counts unless asked for."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from analyzer.cli import cli
from analyzer.views import open_captures
from recorder.session import RECEIVED, SENT
from tests.test_files import FAILED_DONE

MESSAGES = [
    (0, RECEIVED, {"type": "session.created", "session": {"id": "sess_paths"}}),
    (0.2, SENT, {"type": "response.create"}),
    (0.3, RECEIVED, {"type": "response.created", "response": {"id": "resp_1"}}),
    (0.4, RECEIVED, FAILED_DONE),
]


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture
def original(make_capture) -> Path:
    return make_capture(MESSAGES)


def test_show_doctor_and_report_take_a_file_path(original: Path, captures: Path, tmp_path: Path) -> None:
    for command in (["show", str(original)], ["doctor", str(original), "--format", "json"]):
        result = run(*command, "--captures", str(captures))
        assert result.exit_code == 0, result.output
        assert original.stem in result.output or "server_error" in result.output
    bundle = tmp_path / "bundle.zip"
    assert run("report", str(original), "--output", str(bundle), "--captures", str(captures)).exit_code == 0
    # The capture inside a report bundle, unpacked anywhere, with no capture directory at all.
    elsewhere = tmp_path / "unpacked"
    zipfile.ZipFile(bundle).extractall(elsewhere)
    [inside] = (elsewhere / "capture").iterdir()
    nowhere = tmp_path / "no-such-root"
    show = run("show", str(inside), "--captures", str(nowhere))
    assert show.exit_code == 0, show.output
    assert "FAILED" in show.output and "server_error" in show.output
    doctor = run("doctor", str(inside), "--captures", str(nowhere), "--format", "json")
    assert doctor.exit_code == 0 and {row["session_id"] for row in json.loads(doctor.stdout)} == {original.stem}
    again = tmp_path / "again.zip"
    report = run("report", str(inside), "--output", str(again), "--captures", str(nowhere))
    assert report.exit_code == 0, report.output
    assert "server_error" in zipfile.ZipFile(again).read("README.txt").decode()
    assert not nowhere.exists()  # nothing was written where no root was


def test_a_renamed_copy_outside_the_root_is_shown_by_its_own_id(original: Path, captures: Path, tmp_path: Path) -> None:
    copy = tmp_path / "renamed.msgpack"
    shutil.copy(original, copy)
    result = run("show", str(copy), "--captures", str(captures))
    assert result.exit_code == 0 and "FAILED" in result.output


def test_replays_are_left_out_unless_asked_for(original: Path, make_capture, captures: Path) -> None:
    replay = make_capture(MESSAGES, recorder="replay")
    simulated = make_capture(MESSAGES, recorder="simulator")
    counted = "SELECT count(*) AS n FROM failures"
    assert json.loads(run("query", counted, "--captures", str(captures), "--format", "json").stdout) == [{"n": 1}]
    everything = run("query", counted, "--captures", str(captures), "--format", "json", "--include-replays")
    assert json.loads(everything.stdout) == [{"n": 3}]
    listed = json.loads(run("sessions", "--captures", str(captures), "--format", "json").stdout)
    assert [s["session_id"] for s in listed] == [original.stem]
    listed = run("sessions", "--captures", str(captures), "--format", "json", "--include-replays")
    assert sorted(s["session_id"] for s in json.loads(listed.stdout)) == sorted(
        [original.stem, replay.stem, simulated.stem]
    )
    flags = run("query", "SELECT is_replay FROM sessions", "--captures", str(captures), "--include-replays")
    assert sorted(flags.stdout.split()) == ["false", "is_replay", "true", "true"]
    # Precursors and doctor count the same way; a replay named on its own is shown all the same.
    precursors = run("precursors", "--captures", str(captures), "--format", "json", "--failure", "any")
    assert json.loads(precursors.stdout)["failures"] == 1
    doctor = run("doctor", "--captures", str(captures), "--format", "json")
    assert {row["session_id"] for row in json.loads(doctor.stdout)} == {original.stem}
    shown = run("show", replay.stem, "--captures", str(captures))
    assert shown.exit_code == 0 and "FAILED" in shown.output
    doctor = run("doctor", replay.stem, "--captures", str(captures), "--format", "json")
    assert {row["session_id"] for row in json.loads(doctor.stdout)} == {replay.stem}
    # The UI's change check, read off the manifest, counts as the sessions view does.
    for replays in (False, True):
        opened = open_captures(captures, include_replays=replays)
        [counted] = opened.sql("SELECT count(*) AS n, max(session_id) AS last FROM sessions").to_pylist()
        assert opened.version() == counted and counted["n"] == (3 if replays else 1)


def lines_of(result) -> list[list[str]]:
    return [line.split() for line in result.stdout.splitlines()[1:]]


def test_show_marks_how_a_session_ended(make_capture, captures: Path) -> None:
    closed = make_capture(MESSAGES[:2], end_code=1000)
    dropped = make_capture(MESSAGES[:3], end_code=1006, closed_by="server")
    for capture, kind, failed in ((closed, "(closed)", False), (dropped, "(dropped)", True)):
        result = run("show", capture.stem, "--captures", str(captures))
        assert result.exit_code == 0, result.output
        last = result.stdout.splitlines()[-1]
        assert last.split()[0] == "end" and kind in last and ("FAILED" in last) is failed, last
    assert "connection_closed (1006) during resp_1" in run("show", dropped.stem, "--captures", str(captures)).stdout


def test_show_around_measures_gaps_and_checks_its_range(make_capture, captures: Path) -> None:
    capture = make_capture([(n * 0.5, SENT, {"type": "response.cancel"}) for n in range(10)])
    around = run("show", capture.stem, "--around", "5", "--context", "1", "--captures", str(captures))
    assert [(row[0], row[2]) for row in lines_of(around)] == [("4", "+0.500"), ("5", "+0.500"), ("6", "+0.500")]
    tail = run("show", capture.stem, "--around", "9", "--context", "0", "--captures", str(captures))
    assert [row[0] for row in lines_of(tail)] == ["9", "end"]
    for bad in (
        ["--around", "10"],
        ["--around", "-1"],
        ["--context", "3"],
        ["--seq", "10"],
        ["--seq", "1", "--around", "1"],
    ):
        result = run("show", capture.stem, *bad, "--captures", str(captures))
        assert result.exit_code == 2, (bad, result.output)
        assert result.stderr.startswith("rtcap: error: ") and len(result.stderr.splitlines()) == 1
    assert (
        "outside the session's seqs (0-9)"
        in run("show", capture.stem, "--around", "10", "--captures", str(captures)).stderr
    )


def test_show_one_message_in_full_and_as_rows(original: Path, captures: Path, tmp_path: Path) -> None:
    one = run("show", original.stem, "--seq", "3", "--captures", str(captures))
    assert one.exit_code == 0 and json.loads(one.stdout) == FAILED_DONE
    rows = json.loads(run("show", original.stem, "--format", "json", "--captures", str(captures)).stdout)
    assert [(r["seq"], r["type"], r["failure"]) for r in rows] == [
        (0, "session.created", False),
        (1, "response.create", False),
        (2, "response.created", False),
        (3, "response.done", True),
        (None, "(closed)", False),
    ]
    result = run("show", original.stem, "--output", str(tmp_path / "t.csv"), "--captures", str(captures))
    assert result.exit_code == 0 and (tmp_path / "t.csv").read_text().startswith("seq,last_seq,t_s,gap_s")
