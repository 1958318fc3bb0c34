"""A rehearsal of the next format version, so that the day it comes, migration already works.

Version 2 exists only here: its message records are maps instead of arrays. Installing it
patches nothing but ``FORMAT_VERSION`` and the two version tables of ``recorder.capture``
(a migration from 1 and a decoder for 2); the readers and the index run unchanged. The
committed version-1 golden file must then read exactly as it does without the rehearsal,
through both readers and through ``rtcap query``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.export import export_rows
from analyzer.views import open_captures
from recorder import capture, records
from recorder.capture import CaptureError, parse, parse_columns, read_capture, read_columns

DATA = Path(__file__).parent / "data"
GOLDEN_PATH = DATA / "capture-v1.msgpack"
GOLDEN = GOLDEN_PATH.read_bytes()
STEM = "20261125T120000000000Z-goldenab"

V2_FIELDS = ("seq", "t", "dir", "op", "data", "audio", "flags")
"""A version-2 message record: ``{"k": 1, "seq": ..., "t": ..., ...}``."""


def v1_to_v2(record: Any) -> Any:
    """The migration: a version-1 message array becomes a map; anything else (headers, end
    records, records it does not recognise) passes through, as a migration must."""
    if type(record) is list and len(record) == 8 and record[0] == capture.MESSAGE:
        return {"k": capture.MESSAGE, **dict(zip(V2_FIELDS, record[1:], strict=True))}
    return record


def decode_v2(record: Any) -> Any:
    """Version 2's validation: only maps are messages, and they get the in-memory layout."""
    if type(record) is dict and record.get("k") == capture.MESSAGE:
        if record.keys() != {"k", *V2_FIELDS}:
            return None
        fields = [capture.MESSAGE, *(record[name] for name in V2_FIELDS)]
        return fields if records.valid_message(fields) else None
    if type(record) is dict and record.get("kind") in ("header", "end"):
        return record
    return None


@contextlib.contextmanager
def rehearsal(migration: Any = v1_to_v2) -> Iterator[None]:
    """Make version 2 the current format for the duration."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(capture, "FORMAT_VERSION", 2)
        mp.setitem(capture.MIGRATIONS, 1, migration)
        mp.setitem(capture.DECODERS, 2, decode_v2)
        yield


def messages(got: capture.Capture) -> list[tuple[Any, ...]]:
    return [(m.seq, m.t_ns, m.direction, m.opcode, m.data(), m.flags) for m in got.messages]


def v2_message(seq: int, t_ns: int, payload: bytes) -> bytes:
    fields = {"k": 1, "seq": seq, "t": t_ns, "dir": 0, "op": 1, "data": payload, "audio": None, "flags": 0}
    return capture.frame(capture.msgpack.packb(fields))


def test_the_golden_v1_file_reads_the_same_through_version_2() -> None:
    plain = read_capture(GOLDEN_PATH)
    with rehearsal():
        migrated = read_capture(GOLDEN_PATH)
    assert len(plain.messages) == 8
    assert messages(migrated) == messages(plain)
    assert (migrated.header, migrated.end) == (plain.header, plain.end)
    assert migrated.header["format"] == 1  # the file's own version, as written
    assert (migrated.state, migrated.problems) == ("closed", [])
    expected = [json.loads(line) for line in (DATA / "capture-v1.jsonl").read_text().splitlines()]
    assert list(export_rows(migrated)) == expected


def test_the_golden_v1_file_gives_the_same_columns_through_version_2() -> None:
    plain = read_columns(GOLDEN_PATH)
    with rehearsal():
        migrated = read_columns(GOLDEN_PATH)
    assert plain.version == migrated.version == 1
    assert dataclasses.asdict(migrated) == dataclasses.asdict(plain)
    assert len(migrated.seq) == 8 and migrated.problems == []


def test_migration_runs_on_raw_records_of_every_kind() -> None:
    seen: list[str] = []

    def spy(record: Any) -> Any:
        seen.append(record.get("kind", "?") if type(record) is dict else "message")
        return v1_to_v2(record)

    with rehearsal(spy):
        read_capture(GOLDEN_PATH)
    assert seen == ["header"] + ["message"] * 8 + ["end"]


def test_a_native_version_2_file_is_read_without_migration() -> None:
    v2 = capture.header_record({"format": 2, "session_id": "s"}) + v2_message(0, 5, b'{"a":1}')
    v2 += capture.message_record(1, 6, 0, 1, b"{}", None, 0)  # a version-1 array: not a v2 record
    v2 += v2_message(2, 7, b"[]") + capture.end_record({"t_ns": 9})
    with rehearsal():
        got = parse(v2)
        cols = parse_columns(v2)
    assert [(m.seq, m.data()) for m in got.messages] == [(0, b'{"a":1}'), (2, b"[]")]
    assert cols.seq == [0, 2] and cols.version == 2
    assert got.problems == cols.problems and len(got.problems) == 1
    assert got.problems[0].startswith("skipped a malformed record at offset ")
    with pytest.raises(CaptureError, match="capture format version 2 is newer than this rtcap reads"):
        parse(v2)


def test_an_update_resuming_mid_file_migrates_with_the_version_it_learned() -> None:
    # The index reads a capture, then resumes at ``stop`` once it has grown, without its
    # header: it passes back the version the first read reported.
    fifth = [offset for offset, body, _ in capture.iter_frames(GOLDEN) if body is not None][5]
    with rehearsal():
        first = parse_columns(GOLDEN[:fifth], locked=True)
        rest = parse_columns(GOLDEN, first.stop, version=first.version)
        whole = parse_columns(GOLDEN)
        guessed = parse_columns(GOLDEN, first.stop)
    assert first.version == 1 and first.stop == fifth
    assert first.seq + rest.seq == whole.seq == list(range(8))
    assert first.payload + rest.payload == whole.payload
    assert rest.problems == [] and rest.end == whole.end
    # Without the version it would take version-1 records for the current version's.
    assert guessed.seq == [] and len(guessed.problems) == 4


def rows(root: Path, sql: str) -> list[dict[str, Any]]:
    captures = open_captures(root)
    try:
        assert captures.report.errors == []
        return captures.sql(sql).to_pylist()
    finally:
        captures.close()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM events ORDER BY seq",
        "SELECT * FROM sessions",
        "SELECT * FROM failures ORDER BY seq",
    ],
)
def test_rtcap_query_gives_the_same_rows_through_version_2(tmp_path: Path, sql: str) -> None:
    plain_root = tmp_path / "plain"
    (plain_root / "2026-11-25").mkdir(parents=True)
    shutil.copy(GOLDEN_PATH, plain_root / "2026-11-25" / f"{STEM}.msgpack")
    shutil.copytree(plain_root, tmp_path / "migrated")
    plain = rows(plain_root, sql)
    with rehearsal():
        migrated = rows(tmp_path / "migrated", sql)
    assert plain and migrated == plain


@pytest.mark.parametrize("v2", [False, True], ids=["v1 reader", "v2 reader"])
def test_a_newer_version_is_an_error_to_both_readers_and_the_index(tmp_path: Path, v2: bool) -> None:
    newer = capture.header_record({"format": 3, "session_id": "s"})
    newer += capture.message_record(0, 5, 0, 1, b"{}", None, 0) + capture.end_record({"t_ns": 9})
    root = tmp_path / "captures"
    (root / "2026-11-25").mkdir(parents=True)
    path = root / "2026-11-25" / f"{STEM}.msgpack"
    path.write_bytes(newer)
    with rehearsal() if v2 else contextlib.nullcontext():
        current = capture.FORMAT_VERSION
        message = f"{path}: capture format version 3 is newer than this rtcap reads (version {current}); upgrade rtcap"
        with pytest.raises(CaptureError) as raised:
            read_capture(path)
        assert str(raised.value) == message
        with pytest.raises(CaptureError) as raised:
            read_columns(path)
        assert str(raised.value) == message
        captures = open_captures(root)
        try:
            assert captures.report.errors == [message]
            assert captures.sql("SELECT count(*) AS n FROM sessions").to_pylist() == [{"n": 0}]
        finally:
            captures.close()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, len(GOLDEN) - 1), st.integers(0, 255)), max_size=8),
    st.integers(0, len(GOLDEN)),
)
def test_damaged_v1_files_read_the_same_through_version_2(flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(GOLDEN)
    for offset, value in flips:
        data[offset] = value
    data = data[:cut]
    try:
        plain, plain_cols = parse(bytes(data)), parse_columns(bytes(data))
    except CaptureError:
        return
    if plain.header.get("format") != 1:
        return  # without a readable version the records are taken for the current version's
    with rehearsal():
        migrated, migrated_cols = parse(bytes(data)), parse_columns(bytes(data))
    assert messages(migrated) == messages(plain)
    assert (migrated.state, migrated.problems) == (plain.state, plain.problems)
    assert dataclasses.asdict(migrated_cols) == dataclasses.asdict(plain_cols)
