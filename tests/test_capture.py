"""The capture format: records, lossless audio, damage, versions, golden files, fuzzing."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from analyzer.export import export_rows
from recorder import capture
from recorder.capture import (
    Capture,
    CaptureError,
    CaptureWriter,
    Columns,
    parse,
    parse_columns,
    read_capture,
    read_columns,
)
from recorder.session import RECEIVED, SENT, SessionRecorder, capture_path, new_session_id, parse_labels
from tests.conftest import ListSink

DATA = Path(__file__).parent / "data"


def record(messages: list[tuple[int, str | bytes]], **kwargs: object) -> tuple[ListSink, SessionRecorder]:
    sink = ListSink()
    rec = SessionRecorder(
        sink,
        session_id="20261125T120000000000Z-abcdefgh",
        url="wss://api.example.com/v1/realtime?model=m",
        request_headers=[("Authorization", "Bearer sk-test-secret-value")],
        recorder="proxy",
        **kwargs,  # type: ignore[arg-type]
    )
    rec.start(1_000, status=101)
    for n, (direction, data) in enumerate(messages):
        rec.message(direction, data, 1_000 + 10 * (n + 1))
    rec.end(5_000, closed_by="server", code=1000, reason="bye")
    return sink, rec


def pcm(ms: int, value: int = 7) -> str:
    return base64.b64encode(bytes([value, 0]) * 24 * ms).decode()


def test_a_whole_recording_without_a_socket() -> None:
    append = json.dumps({"type": "input_audio_buffer.append", "audio": pcm(20)})
    delta = '{"type":"response.output_audio.delta","delta":"' + pcm(100, 3) + '","item_id":"item_1"}'
    sink, rec = record([(SENT, append), (RECEIVED, delta), (RECEIVED, "not json"), (SENT, b"\x00\xffbinary")])
    assert sink.closed and len(sink.records) == 6
    got = parse(sink.bytes())
    assert got.state == "closed" and got.problems == []
    assert got.header["session_id"] == "20261125T120000000000Z-abcdefgh"
    assert got.header["request_headers"] == [["Authorization", "[REDACTED]"]]
    assert got.end == {
        "kind": "end",
        "t_ns": 4000,
        "closed_by": "server",
        "code": 1000,
        "reason": "bye",
        "error": None,
        "messages": 4,
    }
    assert [(m.seq, m.t_ns, m.direction, m.opcode) for m in got.messages] == [
        (0, 10, "sent", "text"),
        (1, 20, "received", "text"),
        (2, 30, "received", "text"),
        (3, 40, "sent", "binary"),
    ]
    assert [m.data() for m in got.messages] == [append.encode(), delta.encode(), b"not json", b"\x00\xffbinary"]
    # Audio is stored as raw bytes, cut out of the text.
    assert got.messages[0].audio() == [bytes([7, 0]) * 480]
    assert pcm(20).encode() not in got.messages[0].payload
    assert got.messages[1].audio() == [bytes([3, 0]) * 2400]


@pytest.mark.parametrize(
    "audio",
    [
        "AAE=",  # canonical
        "AAF=",  # non-canonical padding bits: does not round-trip
        "AAE",  # missing padding
        "AA\\/E",  # an escaped slash: the JSON value differs from the text
        "",
    ],
)
def test_audio_that_does_not_round_trip_is_kept_as_it_came(audio: str) -> None:
    text = '{"type": "input_audio_buffer.append",  "audio": "' + audio + '"}'
    sink, _ = record([(SENT, text)])
    [message] = parse(sink.bytes()).messages
    assert message.data() == text.encode()
    assert bool(message.splices) == (audio == "AAE=")


def test_audio_inside_conversation_items_is_stored_raw() -> None:
    event = {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_audio", "audio": pcm(30)}, {"type": "input_audio", "audio": pcm(10, 9)}],
        },
    }
    text = json.dumps(event)
    sink, _ = record([(SENT, text)])
    [message] = parse(sink.bytes()).messages
    assert message.data() == text.encode()
    assert [len(a) for a in message.audio()] == [48 * 30, 48 * 10]


def test_no_audio_keeps_lengths_and_rebuilds_silence() -> None:
    updated = json.dumps(
        {"type": "session.updated", "session": {"audio": {"output": {"format": {"type": "audio/pcmu"}}}}}
    )
    delta = json.dumps({"type": "response.output_audio.delta", "delta": base64.b64encode(b"\x12" * 800).decode()})
    append = json.dumps({"type": "input_audio_buffer.append", "audio": pcm(20)})
    sink, _ = record([(RECEIVED, updated), (RECEIVED, delta), (SENT, append)], audio=False)
    blob = sink.bytes()
    assert b"\x12" * 16 not in blob and b"\x07\x00" * 16 not in blob
    got = parse(blob)
    assert got.header["audio"] is False
    _, delta_msg, append_msg = got.messages
    assert delta_msg.audio_dropped and append_msg.audio_dropped
    assert delta_msg.audio() == [b"\xff" * 800]  # G.711 u-law silence
    assert append_msg.audio() == [b"\x00" * 960]
    assert len(delta_msg.data()) == len(delta)
    assert [row.get("audio_dropped") for row in export_rows(got)] == [None, True, True]


def test_secrets_from_the_handshake_are_scrubbed_from_messages() -> None:
    echo = '{"type":"error","error":{"message":"Incorrect API key provided: sk-test-secret-value"}}'
    sink, _ = record([(RECEIVED, echo), (RECEIVED, b"raw sk-test-secret-value")])
    blob = sink.bytes()
    assert b"sk-test-secret-value" not in blob
    first, second = parse(blob).messages
    assert first.redacted and second.redacted
    assert json.loads(first.data())["error"]["message"] == "Incorrect API key provided: [REDACTED]"


def test_file_writer_modes_and_lock(tmp_path: Path) -> None:
    session_id = new_session_id()
    path = capture_path(tmp_path / "captures", session_id)
    writer = CaptureWriter(path)
    writer.write(capture.header_record({"session_id": session_id}))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "captures").st_mode) == 0o700
    # Half a record on disk while the writer is still open: a record in progress.
    writer.write(capture.message_record(0, 5, 0, 1, b"{}", None, 0)[:7])
    assert read_capture(path).state == "open"
    assert read_capture(path).problems == []
    writer.close()
    torn = read_capture(path)
    assert torn.state == "damaged" and torn.header["session_id"] == session_id


def test_session_ids_sort_by_start_and_name_their_day() -> None:
    import datetime as dt

    early = new_session_id(dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC))
    late = new_session_id(dt.datetime(2026, 1, 2, 3, 4, 5, 7, tzinfo=dt.UTC))
    assert early.startswith("20260102T030405000006Z-") and len(early.split("-")[1]) == 8
    assert early < late
    assert capture_path(Path("/c"), early) == Path(f"/c/2026-01-02/{early}.msgpack")


def test_labels_from_env_and_flags() -> None:
    assert parse_labels(["a=flag", "c=3"], env="a=env, b=2") == {"a": "flag", "b": "2", "c": "3"}
    with pytest.raises(ValueError, match="malformed label 'oops'"):
        parse_labels(["oops"], env="")


def test_a_corrupt_record_is_skipped_and_the_rest_recovered() -> None:
    messages = [(SENT, json.dumps({"type": "x", "n": n})) for n in range(5)]
    sink, _ = record(messages)
    records = sink.records
    broken = bytearray(records[3])  # message seq 2
    broken[-3] ^= 0xFF
    got = parse(b"".join(records[:3]) + bytes(broken) + b"".join(records[4:]))
    assert got.state == "damaged"
    assert [m.seq for m in got.messages] == [0, 1, 3, 4]
    assert got.end is not None and "skipped" in got.problems[0]
    # Garbage between records and a torn tail are both survived.
    got = parse(records[0] + b"garbage" + records[1] + records[2][:-4])
    assert [m.seq for m in got.messages] == [0] and got.state == "damaged"


def test_a_newer_format_is_a_clear_error_to_both_readers(tmp_path: Path) -> None:
    newer = capture.header_record({"format": capture.FORMAT_VERSION + 1})
    newer += capture.message_record(0, 5, 0, 1, b"{}", None, 0)
    with pytest.raises(CaptureError, match="newer than this rtcap reads"):
        parse(newer)
    with pytest.raises(CaptureError, match="newer than this rtcap reads"):
        parse_columns(newer)
    (tmp_path / "newer.msgpack").write_bytes(newer)
    with pytest.raises(
        CaptureError, match=rf"newer\.msgpack: capture format version {capture.FORMAT_VERSION + 1} is newer"
    ):
        read_capture(tmp_path / "newer.msgpack")
    with pytest.raises(CaptureError, match="newer than this rtcap reads"):
        read_columns(tmp_path / "newer.msgpack")
    # Resuming mid-file with the version an earlier read found is checked the same way.
    with pytest.raises(CaptureError, match="newer than this rtcap reads"):
        read_columns(GOLDEN_PATH, 100, version=capture.FORMAT_VERSION + 1)


@pytest.mark.parametrize("version", [None, "1", 0, -3, 1.0])
def test_a_missing_or_invalid_version_is_damage(version: object) -> None:
    fields = {"kind": "header", "session_id": "s"} | ({} if version is None else {"format": version})
    header = capture.frame(capture.msgpack.packb(fields))
    data = header + capture.message_record(0, 5, 0, 1, b"{}", None, 0) + capture.end_record({"t_ns": 9})
    got, cols = read_both(data)
    assert got.state == "damaged"
    assert got.problems == [f"header has no valid format version ({version!r})"]
    assert [m.seq for m in got.messages] == cols.seq == [0]
    assert cols.version == capture.FORMAT_VERSION  # read as the current version, the best guess


def test_missing_file_is_a_capture_error(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="cannot read"):
        read_capture(tmp_path / "nope.msgpack")


@pytest.mark.parametrize("version", [1])
def test_golden_files_still_read_the_same(version: int) -> None:
    # Golden files are written once by tests/data/make_golden_v1.py and never regenerated.
    got = read_capture(DATA / f"capture-v{version}.msgpack")
    expected = [json.loads(line) for line in (DATA / f"capture-v{version}.jsonl").read_text().splitlines()]
    assert got.state == "closed"
    assert list(export_rows(got)) == expected
    assert got.header["format"] == version
    assert got.header["session_id"] == "20261125T120000000000Z-goldenab"
    assert got.end is not None and got.end["closed_by"] == "server"


def read_both(data: bytes, *, locked: bool = False) -> tuple[Capture, Columns]:
    """Both readers on the same bytes. They share one path, so they must agree on every
    message, on header and end, and on every problem (bar the end record, which only a
    whole-file reader can miss: the index judges that itself)."""
    try:
        got = parse(data, locked=locked)
    except CaptureError:
        with pytest.raises(CaptureError):
            parse_columns(data, locked=locked)
        raise
    cols = parse_columns(data, locked=locked)
    assert cols.seq == [m.seq for m in got.messages]
    assert cols.t_ns == [m.t_ns for m in got.messages]
    assert [capture.DIRECTIONS[d] for d in cols.direction] == [m.direction for m in got.messages]
    assert cols.text == [m.opcode == "text" for m in got.messages]
    assert cols.wire_bytes == [len(m.data()) for m in got.messages]
    assert cols.audio_bytes == [sum(map(len, m.audio())) for m in got.messages]
    assert cols.redacted == [m.redacted for m in got.messages]
    assert [p is None for p in cols.payload] == [m.opcode == "binary" for m in got.messages]
    assert (cols.header or {}) == got.header and cols.end == got.end
    assert cols.problems == [p for p in got.problems if not p.startswith("no end record")]
    assert cols.stop <= len(data) and cols.locked == locked
    return got, cols


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=2048), st.booleans())
def test_any_bytes_yield_records_or_a_capture_error(data: bytes, locked: bool) -> None:
    try:
        got, _ = read_both(data, locked=locked)
    except CaptureError:
        return
    assert got.state in (("open",) if locked else ("closed", "damaged"))


GOLDEN_PATH = DATA / "capture-v1.msgpack"
GOLDEN = GOLDEN_PATH.read_bytes()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, len(GOLDEN) - 1), st.integers(0, 255)), max_size=8),
    st.integers(0, len(GOLDEN)),
    st.booleans(),
)
def test_mutated_captures_yield_records_or_a_capture_error(
    flips: list[tuple[int, int]], cut: int, locked: bool
) -> None:
    data = bytearray(GOLDEN)
    for offset, value in flips:
        data[offset] = value
    try:
        _, cols = read_both(bytes(data[:cut]), locked=locked)
    except CaptureError:
        return
    assert len(cols.seq) <= 8


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(GOLDEN)))
def test_an_update_resumes_where_a_read_of_an_open_file_stopped(cut: int) -> None:
    # The index reads a capture while it is written, then again from ``stop`` once it has
    # grown: together the two reads must give exactly what one read of the whole does.
    first = parse_columns(GOLDEN[:cut], locked=True)
    rest = parse_columns(GOLDEN, first.stop, version=first.version)
    whole = parse_columns(GOLDEN)
    assert first.problems == rest.problems == whole.problems == []
    assert first.seq + rest.seq == whole.seq
    assert first.payload + rest.payload == whole.payload
    assert rest.stop == whole.stop == len(GOLDEN)
    assert (first.header or rest.header) == whole.header and (first.end or rest.end) == whole.end


@pytest.mark.parametrize(
    ("end", "problems"),
    [
        ({"t_ns": 9, "code": None, "reason": None, "closed_by": None}, []),  # None is a field left out
        ({"code": 1000}, ["end field 't_ns' is missing"]),  # when the session ended: the one it needs
        ({"t_ns": None}, ["end field 't_ns' is missing"]),
    ],
)
def test_an_end_record_needs_its_time_and_none_is_missing(end: dict[str, object], problems: list[str]) -> None:
    data = capture.header_record({"session_id": "s", "url": None, "labels": None}) + capture.end_record(end)
    got, cols = read_both(data)
    assert got.problems == cols.problems == problems
    assert got.state == ("damaged" if problems else "closed")


# -- the hot path's shortcut (msgspec) and the plain way (msgpack, DECODERS) agree ---------

splice_values = st.one_of(st.integers(-3, 40), st.binary(max_size=4), st.text(max_size=2))
field_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 63), (1 << 64) - 1),
    st.sampled_from([0, 1, 2, 3, 1.0, -1, (1 << 63) - 1, 1 << 63, -(1 << 63), (1 << 64) - 1]),
    st.binary(max_size=8),
    st.text(max_size=4),
    st.lists(st.lists(splice_values, max_size=4), max_size=3),
)


# Each field mostly of its own type and range (a message is often whole), else anything.
message_fields = st.tuples(
    st.sampled_from([1, 1, 1, 1.0, True, 2]),
    st.one_of(st.integers(0, 9), field_values),
    st.one_of(st.integers(-9, 9), field_values),
    st.one_of(st.sampled_from([0, 1]), field_values),
    st.one_of(st.sampled_from([1, 2]), field_values),
    st.one_of(st.binary(max_size=12), field_values),
    st.one_of(st.none(), st.lists(st.tuples(st.integers(0, 12), st.binary(max_size=3)).map(list), max_size=3)),
    st.one_of(st.sampled_from([0, 1, 2, 3]), field_values),
).map(list)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bodies=st.lists(st.one_of(message_fields, st.lists(field_values, min_size=7, max_size=9)), max_size=6),
    locked=st.booleans(),
)
@example(bodies=[[1, 0, 0, 0, 1, b"ab", [[1, b"x"], [2, b"y"]], 0]], locked=False)  # whole
@example(bodies=[[1, 0, 0, 0, 1, b"ab", [[9, b"x"]], 0]], locked=False)  # a splice past the payload
@example(bodies=[[1, 0, 0, 0, 1, b"ab", [[2, b"x"], [1, b"y"]], 0]], locked=False)  # falling offsets
@example(bodies=[[1, 0, 0, 0, 1, b"ab", [[1, 5, 0]], 2], [1, 1, 0, 0, 1, b"ab", [[1, b"x"]], 2]], locked=False)
@example(bodies=[[True, 0, 0, 0, 1, b"", None, 0], [1.0, 0, 0, 0, 1, b"", None, 0]], locked=True)
def test_the_message_shortcut_decides_as_the_plain_way(bodies: list[list[object]], locked: bool) -> None:
    import msgpack

    data = capture.header_record({"session_id": "s"}) + b"".join(capture.frame(msgpack.packb(b)) for b in bodies)
    assert capture._DECODE_MESSAGE is not None  # msgspec is installed: the shortcut is taken
    fast = parse(data, locked=locked), parse_columns(data, locked=locked)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(capture, "_DECODE_MESSAGE", None)
        plain = parse(data, locked=locked), parse_columns(data, locked=locked)
    assert fast == plain
