"""The index stays inside its root: it never follows a symbolic link, never opens anything
but a regular file as a capture, and keeps its files private (issue 12, item 3)."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from analyzer.cli import cli
from analyzer.index import Index
from analyzer.locate import capture_files
from analyzer.views import open_captures
from recorder.capture import CaptureError, read_capture, read_columns

GOLDEN = Path(__file__).parent / "data" / "capture-v1.msgpack"
DAY = "2026-11-25"


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A root holding one capture; the cache directory is the test's own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "captures"
    (root / DAY).mkdir(parents=True)
    shutil.copy(GOLDEN, root / DAY / "20261125T120000000000Z-goldenab.msgpack")
    return root


def victim(tmp_path: Path) -> Path:
    """A directory outside the root, laid out like an index, with files rtcap would sweep."""
    outside = tmp_path / "outside"
    (outside / "events").mkdir(parents=True)
    for name in ("events/seg-1.parquet", "events/.seg-2.parquet.1.2.tmp", "manifest.parquet", "lock"):
        (outside / name).write_text("not rtcap's")
    return outside


def untouched(outside: Path) -> bool:
    names = sorted(str(p.relative_to(outside)) for p in outside.rglob("*"))
    expected = ["events", "events/.seg-2.parquet.1.2.tmp", "events/seg-1.parquet", "lock", "manifest.parquet"]
    return names == expected and all((outside / n).read_text() == "not rtcap's" for n in expected if n != "events")


def count(root: Path) -> int:
    return open_captures(root).sql("SELECT count(*) AS n FROM events").to_pylist()[0]["n"]


def test_a_symlinked_index_directory_is_not_followed(root: Path, tmp_path: Path) -> None:
    outside = victim(tmp_path)
    (root / ".rtcap").symlink_to(outside)
    index = Index(root)
    assert index.dir.is_relative_to(tmp_path / "cache" / "rtcap")  # the cache, as for a read-only root
    assert count(root) == 8 and count(root) == 8
    assert untouched(outside)


@pytest.mark.parametrize(("name", "error"), [("events", "not a directory of rtcap's index"), ("lock", "symbolic link")])
def test_a_link_inside_the_index_is_refused(root: Path, tmp_path: Path, name: str, error: str) -> None:
    outside = victim(tmp_path)
    assert count(root) == 8
    target = root / ".rtcap" / name
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    target.symlink_to(outside / name)
    with pytest.raises(OSError, match=error):
        Index(root).update()
    assert untouched(outside)


def test_index_files_are_written_over_links_never_through_them(root: Path, tmp_path: Path) -> None:
    outside = victim(tmp_path)
    index = Index(root)
    index.update()
    (index.events_dir / "seg-stray.parquet").symlink_to(outside / "events" / "seg-1.parquet")
    index.manifest_path.unlink()  # written again, where a link now stands
    index.manifest_path.symlink_to(outside / "manifest.parquet")
    assert count(root) == 8
    assert untouched(outside)
    assert not index.manifest_path.is_symlink() and not (index.events_dir / "seg-stray.parquet").exists()


def test_index_files_are_private(root: Path) -> None:
    index = Index(root)
    index.update()
    entries = [index.dir, *index.dir.rglob("*")]
    assert len(entries) >= 4
    for path in entries:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), path


@pytest.mark.timeout(30)
def test_only_regular_files_are_read_as_captures(root: Path, tmp_path: Path) -> None:
    day = root / DAY
    os.mkfifo(day / "20261125T130000000000Z-fifofifo.msgpack")  # an ordinary open would wait for ever
    outside = tmp_path / "elsewhere.msgpack"
    shutil.copy(GOLDEN, outside)
    (day / "20261125T140000000000Z-outsidea.msgpack").symlink_to(outside)
    (day / "20261125T150000000000Z-insideab.msgpack").symlink_to(day / "20261125T120000000000Z-goldenab.msgpack")
    (day / "20261125T160000000000Z-danglina.msgpack").symlink_to(tmp_path / "nothing")
    (root / "2026-11-26").symlink_to(day)  # a day directory elsewhere: not entered
    assert len(capture_files(root)) == 5
    for path in capture_files(root)[1:]:
        with pytest.raises(CaptureError, match="not a regular file|a symbolic link"):
            read_capture(path)
        with pytest.raises(CaptureError, match="not a regular file|a symbolic link"):
            read_columns(path)
    captures = open_captures(root)
    assert captures.report.errors == []
    rows = captures.sql("SELECT session_id, state, messages, problems FROM sessions ORDER BY session_id").to_pylist()
    assert [(r["state"], r["messages"], r["problems"]) for r in rows] == [
        ("closed", 8, None),
        ("damaged", 0, "not a regular file: not read"),
        ("damaged", 0, "a symbolic link: not read"),
        ("damaged", 0, "a symbolic link: not read"),
        ("damaged", 0, "a symbolic link: not read"),
    ]
    assert sorted(captures.report.damaged) == sorted(str(p.relative_to(root)) for p in capture_files(root)[1:])
    again = open_captures(root).report
    assert again.read == [] and again.damaged == [] and len(again.unchanged) == 5
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, ["export", "20261125T13", "--captures", str(root)])
    assert result.exit_code == 1 and "not a regular file" in result.stderr


def test_stale_files_of_an_interrupted_update_are_swept_and_lost_segments_read_again(root: Path) -> None:
    index = Index(root)
    index.update()
    stale = [index.dir / ".manifest.parquet.1.2.tmp", index.events_dir / ".seg-x.parquet.1.2.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    for segment in index.part_files():
        segment.unlink()  # removed by hand: the capture is read again, not lost
    assert count(root) == 8
    assert not any(path.exists() for path in stale)
