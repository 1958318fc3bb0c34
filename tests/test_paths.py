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
from recorder.session import RECEIVED, SENT

FAILED_DONE = {
    "type": "response.done",
    "response": {
        "id": "resp_1",
        "status": "failed",
        "status_details": {"type": "failed", "error": {"type": "server_error", "message": "boom"}},
    },
}
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
