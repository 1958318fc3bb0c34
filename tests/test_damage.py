"""One bad capture never breaks a root: wrong types, crafted lengths and claimed silence
are damage shown on that capture, read in time and memory linear in its size, while every
other capture answers normally (issue 12, items 4 to 7)."""

from __future__ import annotations

import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyzer.views import open_captures
from recorder import capture, crc, records
from recorder.capture import CaptureError, parse, parse_columns, read_capture
from recorder.session import RECEIVED, SENT

DAY = "2026-11-25"
HEADER = {
    "kind": "header",
    "format": 1,
    "session_id": "20261125T120000000000Z-abcdefgh",
    "started_at": "2026-11-25T12:00:00.000000+00:00",
    "started_ns": 1_795_608_000_000_000_000,
    "url": "wss://api.openai.com/v1/realtime?model=gpt-realtime",
    "request_headers": [["User-Agent", "test"]],
    "response_status": 101,
    "response_headers": [],
    "subprotocols": [],
    "subprotocol": None,
    "recorder": "proxy",
    "rtcap_version": "0.1",
    "labels": {"team": "voice"},
    "replay_of": None,
    "audio": True,
}
END = {"kind": "end", "t_ns": 100, "closed_by": "client", "code": 1000, "reason": "bye", "error": None, "messages": 1}
MESSAGE = [1, 0, 5, 0, 1, b'{"type":"response.create"}', None, 0]


def frame(record: Any) -> bytes:
    return capture.frame(msgpack.packb(record))


def build(header: Any = HEADER, messages: list[Any] | None = None, end: Any = END) -> bytes:
    body = [MESSAGE] if messages is None else messages
    return frame(header) + b"".join(frame(m) for m in body) + (frame(end) if end is not None else b"")


def message(**fields: Any) -> list[Any]:
    names = ["kind", "seq", "t_ns", "direction", "opcode", "payload", "splices", "flags"]
    record = list(MESSAGE)
    for name, value in fields.items():
        record[names.index(name)] = value
    return record


DEEP = b'{"type":"session.update","session":' + b'{"a":' * 200_000 + b"1" + b"}" * 200_000 + b"}"

WRONG_HEADERS = [
    ("url", 5),
    ("url", b"wss://bytes"),
    ("request_headers", {"Authorization": "x"}),
    ("request_headers", [[1, 2, 3], 5]),
    ("request_headers", [["only-a-name"]]),
    ("response_headers", [["a", 5]]),
    ("response_status", "101"),
    ("response_status", 1 << 40),
    ("response_status", True),
    ("subprotocols", "openai-beta.realtime-v1"),
    ("subprotocols", [1, None]),
    ("subprotocol", 5),
    ("recorder", 3),
    ("rtcap_version", 1.5),
    ("labels", [1, 2]),
    ("labels", {"team": 5}),
    ("labels", {"team": {"nested": "map"}}),
    ("replay_of", [1]),
    ("audio", "yes"),
    ("session_id", 12),
    ("session_id", b"\xff"),
    ("started_at", 5),
    ("started_at", "yesterday"),
    ("started_at", "9999-12-31T23:59:59+00:00"),  # plus any t_ns, not a time anything can show
    ("started_at", "0001-01-01T00:00:00"),
    ("started_ns", "1"),
    ("started_ns", (1 << 64) - 1),
]
WRONG_ENDS = [
    ("t_ns", "5"),
    ("t_ns", 1 << 63),
    ("t_ns", 1.5),
    ("closed_by", 5),
    ("closed_by", "nobody"),
    ("code", "1000"),
    ("code", 1 << 40),
    ("code", -1),
    ("reason", b"\xff"),
    ("reason", 5),
    ("error", {"a": 1}),
    ("incomplete", 5),
    ("messages", -1),
]
WRONG_MESSAGES = [
    message(seq=1 << 63),
    message(seq=-1),
    message(seq="0"),
    message(seq=0.0),
    message(t_ns=(1 << 64) - 1),
    message(t_ns="5"),
    message(direction=0.0),
    message(direction=2),
    message(direction=True),
    message(opcode=3),
    message(opcode=1.0),
    message(payload="a str, not bytes"),
    message(payload=None),
    message(splices="x"),
    message(splices=[[0]]),
    message(splices=[[5, b"a"], [1, b"b"]]),  # offsets must rise
    message(splices=[[1000, b"a"]]),  # past the payload
    message(flags=-1),
    message(flags=(1 << 64) - 1),
    message(flags=2, splices=[[0, (1 << 31) - 1, 0]]),  # 2 GiB of silence claimed
    message(flags=2, splices=[[0, records.MAX_DROPPED_AUDIO, 0], [1, 1, 0]]),  # over the bound together
    message(flags=2, splices=[[0, 1, 256]]),
]


def wrong_captures() -> dict[str, tuple[bytes, str]]:
    """Each capture with one thing wrong, and the problem it must show."""
    cases: dict[str, tuple[bytes, str]] = {}
    for field, value in WRONG_HEADERS:
        cases[f"header-{field}-{value!r}"] = (build({**HEADER, field: value}), f"header field {field!r} is not")
    for field, value in WRONG_ENDS:
        cases[f"end-{field}-{value!r}"] = (build(end={**END, field: value}), f"end field {field!r} is not")
    for record in WRONG_MESSAGES:
        cases[f"message-{record!r}"] = (build(messages=[record, message(seq=1)]), "skipped a malformed record")
    return cases


def write_root(root: Path, captures: dict[str, bytes]) -> dict[str, str]:
    """Each capture under its own session id; returns the ids by case name."""
    (root / DAY).mkdir(parents=True, exist_ok=True)
    ids = {}
    for n, (name, data) in enumerate(captures.items()):
        session_id = f"20261125T12{n // 60:02d}{n % 60:02d}000000Z-{'abcdefgh'}"
        (root / DAY / f"{session_id}.msgpack").write_bytes(data)
        ids[name] = session_id
    return ids


def test_wrong_types_are_damage_on_their_capture_and_every_other_answers(tmp_path: Path) -> None:
    cases = wrong_captures()
    good = build(
        {**HEADER, "session_id": "good"},
        messages=[message(payload=b'{"type":"session.created","session":{"id":"sess_good"}}', direction=RECEIVED)]
        + [message(seq=1, payload=DEEP, direction=SENT)],
    )
    root = tmp_path / "captures"
    ids = write_root(root, {name: data for name, (data, _) in cases.items()} | {"good": good})
    for name, (_, problem) in cases.items():
        got = read_capture(root / DAY / f"{ids[name]}.msgpack")
        assert got.state == "damaged", name
        assert any(p.startswith(problem) for p in got.problems), (name, got.problems)
        field = name.split("-")[1]
        if name.startswith("header"):
            assert field not in got.header, name  # read as missing
        elif name.startswith("end"):
            assert got.end is not None and field not in got.end, name
        else:
            assert [m.seq for m in got.messages] == [1], name
    captures = open_captures(root)
    assert captures.report.errors == []
    assert sorted(captures.report.damaged) == sorted(f"{DAY}/{ids[name]}.msgpack" for name in cases)
    rows = {r["file"]: r for r in captures.sql("SELECT * FROM sessions").to_pylist()}
    for name, (_, problem) in cases.items():
        row = rows[f"{DAY}/{ids[name]}.msgpack"]
        assert (row["state"], row["damaged"]) == ("damaged", True), name
        assert problem in row["problems"], (name, row["problems"])
    [row] = [r for r in rows.values() if r["session_id"] == "good"]
    assert (row["state"], row["problems"], row["messages"], row["server_session_id"]) == (
        "closed",
        None,
        2,
        "sess_good",
    )
    assert row["labels"] == [("team", "voice")] and row["close_code"] == 1000
    for view in ("events", "failures", "responses"):
        captures.sql(f"SELECT * FROM {view}")
    deep = captures.sql("SELECT type, bytes FROM events WHERE session_id = 'good' AND seq = 1").to_pylist()
    assert deep == [{"type": "session.update", "bytes": len(DEEP)}]


@pytest.mark.parametrize("path", ["/v1/realtime?model=gpt-realtime", "/openai/realtime?deployment=gpt-rt"])
def test_a_redacted_userinfo_url_indexes_and_queries_normally(make_capture, captures: Path, path: str) -> None:
    # Recorded from ws://user:KEY@host: the header holds ws://[REDACTED]@host/..., which
    # urlsplit refuses (it looks like a broken IPv6 host).
    make_capture(
        [(0.1, RECEIVED, {"type": "session.created", "session": {"id": "sess_1"}})],
        url=f"ws://user:sk-secret@example.com:8080{path}",
    )
    url = f"ws://[REDACTED]@example.com:8080{path}"
    make_capture([(0.1, RECEIVED, {"type": "session.created", "session": {"id": "sess_2"}})])
    rows = open_captures(captures).sql("SELECT * FROM sessions ORDER BY started_at").to_pylist()
    assert [(r["state"], r["problems"], r["server_session_id"]) for r in rows] == [
        ("closed", None, "sess_1"),
        ("closed", None, "sess_2"),
    ]
    assert (rows[0]["url"], rows[0]["host"]) == (url, "example.com")
    assert (rows[0]["model"], rows[0]["dialect"]) == (
        ("gpt-realtime", "ga") if "model=" in path else ("gpt-rt", "beta")
    )


def test_claimed_silence_is_bounded_and_rebuilt_only_when_asked() -> None:
    # A dropped splice is [offset, count, fill]: a few bytes that stand for count bytes.
    claims = [message(seq=n, flags=2, splices=[[0, records.MAX_DROPPED_AUDIO, 0]]) for n in range(50)]
    data = build(messages=claims)
    tracemalloc.start()
    try:
        got = parse(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got.state == "closed" and len(got.messages) == 50
    assert peak < 20 * len(data) + (1 << 20)  # 50 x 64 MiB claimed, nothing of it allocated
    assert parse_columns(data).audio_bytes == [records.MAX_DROPPED_AUDIO] * 50
    small = parse(build(messages=[message(payload=b'{"audio":""}', flags=2, splices=[[10, 3, 0xFF]])]))
    [rebuilt] = small.messages
    assert rebuilt.audio() == [b"\xff\xff\xff"] and rebuilt.data() == b'{"audio":"////"}'


def crafted(size: int) -> bytes:
    """Frame headers every 16 bytes, each announcing a body that runs exactly to the end
    of the file, none with a valid checksum: checked one by one, the square of the size."""
    data = bytearray(size)
    for pos in range(0, size - capture.FRAME_OVERHEAD, 16):
        capture._FRAME.pack_into(data, pos, capture.SYNC, size - pos - capture.FRAME_OVERHEAD, 0)
    return bytes(data)


def crc_work(data: bytes, monkeypatch: pytest.MonkeyPatch) -> int:
    """How many bytes were checksummed to read ``data``."""
    work = [0]
    plain = crc.crc32

    def counting(buffer: Any, value: int = 0) -> int:
        work[0] += memoryview(buffer).nbytes
        return plain(buffer, value)

    with monkeypatch.context() as patch:
        # Every CRC-32 the reader computes: the capture module's and SliceCRC's (ISA-L's or zlib's).
        for module in (capture, crc, zlib):
            patch.setattr(module, "crc32", counting)
        frames = list(capture.iter_frames(data))
    assert all(body is None for _, body, _ in frames) and sum(n for _, _, n in frames) == len(data)
    assert work[0] > 0  # the count saw the reader's checksums
    return work[0]


def test_reading_is_linear_in_the_file_size(monkeypatch: pytest.MonkeyPatch) -> None:
    mib = 1 << 20
    small = crc_work(crafted(mib // 4), monkeypatch)
    large = crc_work(crafted(mib), monkeypatch)
    # It was about size**2 / 32 bytes: 2 GiB for a quarter of a MiB, 32 GiB for a MiB. Now
    # each frame costs a block or two (SliceCRC.BLOCK), after a pass or two over the file.
    assert small <= 16 * (mib // 4) + capture.WASTE_ALLOWANCE
    assert large <= 16 * mib + capture.WASTE_ALLOWANCE
    assert large <= 4 * small  # four times the size, at most four times the work
    got = parse(crafted(2 * mib))  # it took over a minute when the work was quadratic
    assert got.messages == [] and got.state == "damaged"


GOLDEN = (Path(__file__).parent / "data" / "capture-v1.msgpack").read_bytes()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, len(GOLDEN)), st.sampled_from(["flip", "sync", "long", "cut"])), max_size=6),
    st.integers(0, 255),
    st.booleans(),
)
def test_checking_frames_from_prefix_crcs_finds_the_same_frames(
    edits: list[tuple[int, str]], value: int, locked: bool
) -> None:
    # Forced to switch at the first failed checksum, the reader must find exactly what
    # checking every frame with zlib finds, torn tails of open files included.
    data = bytearray(GOLDEN)
    for offset, edit in edits:
        offset = min(offset, len(data))
        if edit == "flip" and offset < len(data):
            data[offset] ^= value or 1
        elif edit == "sync":  # a false frame whose body runs to the end
            data[offset:offset] = capture._FRAME.pack(capture.SYNC, len(data) - offset, value)
        elif edit == "long":
            data[offset:offset] = capture._FRAME.pack(capture.SYNC, value, 0)
        else:
            del data[offset:]
    blob = bytes(data)
    plain = list(capture.iter_frames(blob))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(capture, "WASTE_ALLOWANCE", -(1 << 40))
        assert list(capture.iter_frames(blob)) == plain
        try:
            sliced = parse_columns(blob, locked=locked)
        except CaptureError:
            return
    assert sliced == parse_columns(blob, locked=locked)


# -- structured records with values of any type, framed correctly ---------------------

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.binary(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def fields_of(template: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """The template's fields, each kept, dropped, or given any value; plus stray fields."""
    chosen = {
        name: st.one_of(st.just(value), msgpack_values) if name not in ("kind", "format") else st.just(value)
        for name, value in template.items()
    }
    return st.builds(
        lambda fixed, extra: {**extra, **fixed},
        st.fixed_dictionaries(chosen),
        st.dictionaries(st.text(max_size=6), msgpack_values, max_size=2),
    )


messages_of = st.lists(
    st.lists(msgpack_values, min_size=8, max_size=8).map(lambda r: [1, *r[1:]])
    | st.tuples(
        st.integers(0, 10),
        st.integers(-5, 10**12),
        st.sampled_from([0, 1]),
        st.sampled_from([1, 2]),
        st.binary(max_size=40),
        st.sampled_from([None, [[0, b"\x00\x01"]], [[0, 3, 0]]]),
        st.integers(0, 3),
    ).map(lambda t: [1, *t]),
    max_size=4,
)
captures_of = st.tuples(fields_of(HEADER), messages_of, st.one_of(st.none(), fields_of(END)))

TYPES = {
    "header": {"session_id": str, "started_at": str, "url": str, "recorder": str, "replay_of": str,
               "response_status": int, "labels": dict, "request_headers": list, "subprotocols": list},
    "end": {"t_ns": int, "code": int, "closed_by": str, "reason": str, "error": str, "messages": int},
}  # fmt: skip
"""Fields and their types, as a reader must hand them on (checked independently here)."""


def well_typed(record: dict[str, Any] | None, kind: str) -> bool:
    """What a reader hands on: each known field missing or of its type."""
    return (
        all(record.get(name) is None or type(record[name]) is t for name, t in TYPES[kind].items()) if record else True
    )


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(captures_of, st.booleans())
def test_structured_records_of_any_type_read_as_records_or_damage(parts: Any, locked: bool) -> None:
    header, messages, end = parts
    data = build(header, messages, end)
    got = parse(data, locked=locked)
    cols = parse_columns(data, locked=locked)
    assert cols.seq == [m.seq for m in got.messages] and cols.problems == [
        p for p in got.problems if not p.startswith("no end record")
    ]
    for m in got.messages:
        m.data()
    assert well_typed(got.header, "header") and well_typed(got.end, "end")
    if got.state == "closed":
        assert got.header and got.end is not None and not got.problems


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(st.lists(captures_of, min_size=1, max_size=5))
def test_the_index_answers_for_captures_of_any_type(tmp_path_factory: pytest.TempPathFactory, many: list[Any]) -> None:
    root = tmp_path_factory.mktemp("root") / "captures"
    built = {str(n): build(*parts) for n, parts in enumerate(many)}
    ids = write_root(root, built)
    expected = {}
    for name, data in built.items():
        try:
            expected[ids[name]] = parse(data).state
        except CaptureError:
            expected[ids[name]] = None  # a newer format: listed as an error, not a row
    captures = open_captures(root)
    rows = captures.sql("SELECT * FROM sessions").to_pylist()
    got = {Path(r["file"]).stem: r["state"] for r in rows}
    assert got == {k: v for k, v in expected.items() if v is not None}
    # Every column of every other view, in one statement.
    everything = "(FROM events SELECT list(events)), (FROM failures SELECT list(failures))"
    captures.sql(f"SELECT {everything}, (FROM responses SELECT list(responses))").to_pylist()


def test_an_expires_at_out_of_range_never_breaks_the_sessions_view(make_capture, captures: Path) -> None:
    created = {"type": "session.created", "session": {"id": "sess_1", "expires_at": 9 * 10**18}}
    make_capture([(0.1, RECEIVED, created)])
    make_capture([(0.1, RECEIVED, {"type": "session.created", "session": {"id": "sess_2"}})])
    rows = open_captures(captures).sql("SELECT server_session_id, expires_at FROM sessions").to_pylist()
    assert sorted(r["server_session_id"] for r in rows) == ["sess_1", "sess_2"]
