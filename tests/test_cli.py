"""The CLI in-process: session arguments, error lines, help and README coverage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from analyzer.cli import cli

GOLDEN = Path(__file__).parent / "data" / "capture-v1.msgpack"
README = Path(__file__).parent.parent / "README.md"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    day = tmp_path / "captures" / "2026-11-25"
    day.mkdir(parents=True)
    shutil.copy(GOLDEN, day / "20261125T120000000000Z-goldenab.msgpack")
    shutil.copy(GOLDEN, day / "20261125T120500000000Z-othersaa.msgpack")
    (tmp_path / "captures" / "demo").mkdir()  # not part of the root's sessions
    shutil.copy(GOLDEN, tmp_path / "captures" / "demo" / "20261125T130000000000Z-demoaaaa.msgpack")
    return tmp_path / "captures"


def run(*args: str) -> object:
    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize("ref", ["20261125T120000000000Z-goldenab", "20261125T1200", "sess_golden"])
def test_export_finds_a_session_by_id_prefix_and_server_id(root: Path, ref: str) -> None:
    # Both copies carry the server id sess_golden: keep it unique to the first.
    (root / "2026-11-25" / "20261125T120500000000Z-othersaa.msgpack").unlink()
    result = run("export", ref, "--captures", str(root))
    assert result.exit_code == 0, result.output
    expected = (GOLDEN.parent / "capture-v1.jsonl").read_text()
    assert [json.loads(x) for x in result.stdout.splitlines()] == [json.loads(x) for x in expected.splitlines()]


def test_export_by_file_path_and_to_a_file(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    result = run("export", str(GOLDEN), "--output", str(out))
    assert result.exit_code == 0
    assert result.stderr == f"wrote 8 messages to {out}\n"
    assert out.read_text() == (GOLDEN.parent / "capture-v1.jsonl").read_text()


def test_an_ambiguous_prefix_exits_2_and_lists_the_candidates(root: Path) -> None:
    result = run("export", "20261125T12", "--captures", str(root))
    assert result.exit_code == 2
    assert result.stderr == (
        "rtcap: error: '20261125T12' matches 2 sessions: "
        "20261125T120000000000Z-goldenab, 20261125T120500000000Z-othersaa\n"
    )


def test_an_unknown_session_is_one_error_line(root: Path) -> None:
    result = run("export", "20261125T1300", "--captures", str(root))
    assert result.exit_code == 2
    assert result.stderr == f"rtcap: error: no session '20261125T1300' under {root}\n"


def test_a_damaged_capture_exports_what_is_intact_with_a_warning(tmp_path: Path) -> None:
    torn = tmp_path / "torn.msgpack"
    torn.write_bytes(GOLDEN.read_bytes()[:-40])
    result = run("export", str(torn))
    assert result.exit_code == 0
    assert len(result.stdout.splitlines()) == 8
    assert result.stderr.startswith(f"rtcap: warning: {torn} is damaged: ")


def test_bad_labels_and_listen_addresses_are_usage_errors() -> None:
    result = run("proxy", "--upstream", "ws://127.0.0.1:1", "--label", "novalue")
    assert (result.exit_code, result.stderr) == (2, "rtcap: error: malformed label 'novalue': expected KEY=VALUE\n")
    result = run("proxy", "--upstream", "ws://127.0.0.1:1", "--listen", "host:port")
    assert (result.exit_code, result.stderr) == (2, "rtcap: error: bad --listen 'host:port': expected HOST:PORT\n")
    result = run("proxy")
    assert result.exit_code == 2 and result.stderr.startswith("rtcap: error: Missing option '--upstream'")


def test_every_command_has_help_and_is_in_the_readme() -> None:
    readme = README.read_text()
    for name, command in cli.commands.items():
        result = run(name, "--help")
        assert result.exit_code == 0 and command.help, name
        assert f"rtcap {name}" in readme, name
