"""The recording's hot path against its definition.

``SessionRecorder._text`` reads the usual messages (audio deltas and appends, small events)
without parsing them; ``SessionRecorder._parsed`` parses every message whole. Both must
give byte-identical records for any input: odd shapes, duplicate and escaped keys, escaped
strings, secrets inside, base64 that does not round-trip.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recorder.capture import RECEIVED, SENT, CaptureWriter, read_capture
from recorder.session import SessionRecorder, _decode_exact
from tests.conftest import ListSink

SECRET = "sk-proj-Fast0Path1Secret2Value3"
APPEND = "input_audio_buffer.append"
DELTA = "response.output_audio.delta"


class Parsing(SessionRecorder):
    """A recorder that parses every text message: the definition the hot path must match."""

    def _text(self, direction: int, data: bytes) -> tuple[bytes, list[list[Any]] | None, int]:
        return self._parsed(direction, data)


class Counting(SessionRecorder):
    """A recorder that counts the messages its hot path handed to the parser."""

    parsed = 0

    def _parsed(self, direction: int, data: bytes) -> tuple[bytes, list[list[Any]] | None, int]:
        self.parsed += 1
        return super()._parsed(direction, data)


def recorder(cls: type[SessionRecorder], sink: Any, audio: bool = True) -> SessionRecorder:
    made = cls(
        sink,
        session_id="20260101T000000000000Z-aaaaaaaa",
        url="wss://api.example.com/v1/realtime?model=m",
        request_headers=[("Authorization", f"Bearer {SECRET}")],
        recorder="shim",
        audio=audio,
    )
    made.start(0, wall=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    return made


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# -- generated messages ---------------------------------------------------------------------

SECRET_FORMS = [SECRET, b64(SECRET.encode()), b64(b"Bearer " + SECRET.encode()), SECRET.replace("-", "%2D")]

texts = st.one_of(
    st.text(max_size=12),
    st.sampled_from(['say "hi"', "back\\slash", "tab\there", "é", "\x01", "\u2028", "delta", "type", *SECRET_FORMS]),
    st.tuples(st.text(max_size=4), st.sampled_from(SECRET_FORMS), st.text(max_size=4)).map("".join),
)


@st.composite
def json_strings(draw: Any, text: Any = texts) -> str:
    """A JSON string literal for ``text``, written as a server or a client might."""
    value = draw(text)
    style = draw(st.sampled_from(["ascii", "utf8", "escaped", "raw"]))
    if style == "ascii":
        return json.dumps(value)
    if style == "utf8":
        return json.dumps(value, ensure_ascii=False)
    if style == "escaped":  # every character as \uXXXX, which parses to the same string
        return '"' + "".join(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else c for c in value) + '"'
    return '"' + value + '"'  # as it stands: may be invalid JSON


base64_values = st.one_of(
    st.binary(max_size=48).map(b64),
    st.binary(min_size=1, max_size=48).map(b64).map(lambda s: s[:-1] + ("B" if s.endswith("=") else s[-1])),
    st.binary(min_size=1, max_size=48).map(b64).map(lambda s: s.rstrip("=")),
    st.text(alphabet='ABCDQRSTwxyz0189+/=-_ \\"', max_size=16),
    st.builds(lambda s: b64(s.encode()), st.sampled_from(SECRET_FORMS)),
    st.just(""),
)

whitespace = st.sampled_from(["", "", " ", "\n", "\t", "\r\n ", "\x0b", "\x0c"])
keys = st.sampled_from(["type", "delta", "audio", "event_id", "item", "tools", "response_id", "x", "dé"])
escaped_keys = st.sampled_from(["\\u0074ype", "\\u0064elta", "\\u0061udio", "\\u0069tem", "\\u0074ools", "t\\u0079pe"])
numbers = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["0", "-0", "1e5", "1E+2", "01", "1.", "-", "NaN", "Infinity", "9" * 5000]),
)
literals = st.sampled_from(["true", "false", "null", "True", "nul"])


@st.composite
def values(draw: Any, depth: int = 0) -> str:
    kinds = ["string", "number", "literal", "base64"] + (["object", "array", "item"] if depth < 2 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "string":
        return draw(json_strings())
    if kind == "number":
        return draw(numbers)
    if kind == "literal":
        return draw(literals)
    if kind == "base64":
        return '"' + draw(base64_values) + '"'
    if kind == "item":  # audio inside a conversation item
        return '{"type":"message","content":[{"type":"input_audio","audio":"' + draw(base64_values) + '"}]}'
    members = draw(st.lists(st.tuples(keys, values(depth + 1)), max_size=3))
    if kind == "array":
        return "[" + ",".join(v for _, v in members) + "]"
    return "{" + ",".join(f'"{k}":{v}' for k, v in members) + "}"


KINDS = [APPEND, DELTA, "response.audio.delta", "response.output_audio_transcript.delta", "session.update", "x"]
kinds = st.sampled_from(KINDS)
SESSION = '{"input_audio_format":"g711_ulaw","output_audio_format":"g711_alaw"}'


@st.composite
def traps(draw: Any, kind: str, audio_value: str) -> tuple[str, str]:
    """A member that makes the message mean something else than a quick look suggests."""
    trap = draw(st.sampled_from(["type", "audio", "escaped", "item", "tools", "same", "number", "odd string"]))
    if trap == "type":  # a second type: the parser keeps the last
        return "type", json.dumps(draw(kinds))
    if trap == "audio":  # a second audio key: the parser keeps the last
        return draw(st.sampled_from(["audio", "delta"])), '"' + draw(base64_values) + '"'
    if trap == "escaped":
        return draw(escaped_keys), draw(st.one_of(kinds.map(json.dumps), base64_values.map(lambda v: f'"{v}"')))
    if trap == "item":
        return "item", '{"type":"message","content":[{"type":"input_audio","audio":"' + draw(base64_values) + '"}]}'
    if trap == "tools":
        return "tools", '[{"type":"function","name":"f","headers":{"x-key":"' + draw(texts) + '"}}]'
    if trap == "same":  # the audio's string standing earlier in another member
        return "x", '"' + audio_value + '"'
    if trap == "number":
        return "n", draw(numbers)
    return "s", draw(json_strings())


@st.composite
def messages(draw: Any) -> bytes:
    """A text message, mostly shaped like a realtime event, with odd turns on the way."""
    shape = draw(st.sampled_from(["audio", "audio", "small", "session", "any"]))
    if shape == "any":
        members = [(draw(st.one_of(keys, escaped_keys)), draw(values())) for _ in range(draw(st.integers(0, 4)))]
        if draw(st.booleans()):
            members.insert(0, ("type", json.dumps(draw(kinds))))
    else:
        kind = {
            "audio": draw(st.sampled_from([APPEND, DELTA, "response.audio.delta"])),
            "small": draw(st.sampled_from(["response.output_audio_transcript.delta", "x"])),
            "session": "session.update",
        }[shape]
        audio_value = draw(base64_values)
        members = [("type", json.dumps(kind)), ("event_id", '"event_' + draw(st.text("abcXYZ019_", max_size=8)) + '"')]
        if shape == "audio":
            members += [("response_id", '"resp_1"'), ("output_index", "0"), ("content_index", draw(numbers))]
            members.append(("audio" if kind == APPEND else "delta", '"' + audio_value + '"'))
        elif shape == "small":
            members.append(("delta", draw(json_strings())))
        else:
            members.append(("session", SESSION))
        for _ in range(draw(st.integers(0, 2))):
            members.insert(draw(st.integers(1, len(members))), draw(traps(kind, audio_value)))
        if draw(st.integers(0, 9)) == 0:
            draw(st.randoms()).shuffle(members)
    ws = draw(whitespace)
    sep = draw(st.sampled_from([",", ",", ", ", ",\n"]))
    colon = draw(st.sampled_from([":", ":", ": ", " : "]))
    tail = draw(st.sampled_from(["", "", "", " ", "x", "]"]))
    text = "{" + ws + sep.join(f'"{k}"{colon}{v}' for k, v in members) + ws + "}" + tail
    return text.encode("utf-8", "surrogatepass")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(messages(), st.sampled_from([SENT, RECEIVED])), min_size=1, max_size=5), st.booleans())
def test_hot_path_records_what_parsing_records(batch: list[tuple[bytes, int]], audio: bool) -> None:
    fast, slow = ListSink(), ListSink()
    fast_recorder, slow_recorder = recorder(SessionRecorder, fast, audio), recorder(Parsing, slow, audio)
    for t_ns, (data, direction) in enumerate(batch):
        fast_recorder.message(direction, data, t_ns, text=True)
        slow_recorder.message(direction, data, t_ns, text=True)
    assert fast.records == slow.records


SESSION_UPDATE = b'{"type":"session.update","session":' + SESSION.encode() + b"}"
TRICKY = [
    b'{\x0b"type":"response.audio.delta","delta":"QUJDRA=="}',  # not JSON's whitespace
    b'{"type":"response.audio.delta" ,\x0c"delta":"QUJDRA=="}',
    b'{"type":"x","type":"input_audio_buffer.append","audio":"QUJDRA=="}',  # a second type
    b'{"type":"x","\\u0074ype":"input_audio_buffer.append","audio":"QUJDRA=="}',  # an escaped one
    b'{"type":"response.audio.delta","delta":"QUJDRA==","type":"x"}',
    b'{"type":"x","item":{"content":[{"audio":"QUJDRA=="}]}}',  # audio in an item
    b'{"type":"x","\\u0069tem":{"content":[{"audio":"QUJDRA=="}]}}',
    b'{"type":"response.audio.delta","delta":"QUJDRA==","delta":"QUJD"}',  # a second audio key
    b'{"type":"response.audio.delta","delta":"QUJDRA==","\\u0064elta":"QUJD"}',
    b'{"type":"input_audio_buffer.append","delta":"QUJDRA==","audio":"QUJD"}',
    b'{"type":"response.audio.delta","x":"QUJDRA==","delta":"QUJDRA=="}',  # the string earlier
    b'{"type":"response.audio.delta","n":' + b"9" * 5000 + b',"delta":"QUJDRA=="}',  # json refuses it
    b'{"type":"response.audio.delta","n":1.5e-7,"m":-0,"t":true,"delta":"QUJDRA==","z":null}',
    b'{"type":"response.audio.delta","s":"a\x01b","delta":"QUJDRA=="}',  # a control character
    b'{"type":"response.audio.delta","s":"a\\"b","delta":"QUJDRA=="}',
    b'{"type":"response.audio.delta","s":"\xc3\xa9","delta":"QUJDRA=="}',
    b'{"type":"response.audio.delta","s":"\xff","delta":"QUJDRA=="}',  # not UTF-8
    b'{"type":"response.audio.delta","delta":"QR=="}',  # spare bits set
    b'{"type":"response.audio.delta","delta":"QUJDRA"}',
    b'{"type":"response.audio.delta","delta":""}',
    b'{"type":"response.audio.delta","delta":"QUJDRA=="}x',
    b'{"type":"response.audio.delta","delta":"QUJDRA=="} \r\n',
    b'{"type":"response.audio.delta","tools":[{"headers":{"a":"bcdefghijk"}}],"delta":"QUJDRA=="}',
    b'{"type":"response.audio.delta","event_id":"' + SECRET.encode() + b'","delta":"QUJDRA=="}',
    b'{"type":"response.audio.delta","delta":"' + base64.b64encode(SECRET.encode()) + b'"}',
    b'{"type":"x","s":"' + base64.b64encode(b"Bearer " + SECRET.encode()) + b'"}',
    SESSION_UPDATE,  # the session's formats change what --no-audio stores
    b'{"type":"x","type":"session.update","session":' + SESSION.encode() + b"}",
]


def test_tricky_messages_record_what_parsing_records() -> None:
    for audio in (True, False):
        for data in TRICKY:
            for before in ([], [SESSION_UPDATE], [TRICKY[-1]]):
                fast, slow = ListSink(), ListSink()
                fast_recorder, slow_recorder = recorder(SessionRecorder, fast, audio), recorder(Parsing, slow, audio)
                batch = [*before, data, b'{"type":"input_audio_buffer.append","audio":"QUJDRA=="}']
                for t_ns, message in enumerate(batch):
                    fast_recorder.message(SENT, message, t_ns, text=True)
                    slow_recorder.message(SENT, message, t_ns, text=True)
                assert fast.records == slow.records, (audio, data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40), st.integers(0, 3))
def test_exact_base64_is_what_encoding_again_gives(raw: bytes, damage: int) -> None:
    text = base64.b64encode(raw)
    if damage == 1 and text.endswith(b"="):  # spare bits set before the padding
        at = len(text.rstrip(b"=")) - 1
        text = text[:at] + b"B/"[text[at] % 2 : text[at] % 2 + 1] + text[at + 1 :]
    elif damage == 2:
        text = text.rstrip(b"=")
    elif damage == 3:
        text = text[: len(text) // 2] + b"=" + text[len(text) // 2 :]
    try:
        decoded = base64.b64decode(text, validate=True)
        expected = decoded if base64.b64encode(decoded) == text else None
    except (binascii.Error, ValueError):
        expected = None
    assert _decode_exact(text) == expected


def test_usual_audio_and_small_events_are_not_parsed(tmp_path: Path) -> None:
    audio = base64.b64encode(bytes(range(256)) * 19)
    usual = [
        (
            RECEIVED,
            b'{"type":"response.output_audio.delta","event_id":"event_1","response_id":"resp_1",'
            b'"item_id":"item_1","output_index":0,"content_index":0,"delta":"' + audio + b'"}',
        ),
        (SENT, b'{"type": "input_audio_buffer.append", "audio": "' + audio + b'"}'),
        (RECEIVED, b'{"type":"response.audio.delta","delta":"' + audio + b'","event_id":"e"}'),
        (RECEIVED, b'{"type":"response.output_audio_transcript.delta","event_id":"e","delta":"the \\"weather\\" "}'),
        (RECEIVED, b'{"type":"response.output_text.delta","delta":"caf\\u00e9 ' + SECRET.encode() + b'"}'),
    ]
    counting = recorder(Counting, CaptureWriter(tmp_path / "fast.msgpack"))
    parsing = recorder(Parsing, CaptureWriter(tmp_path / "slow.msgpack"))
    for t_ns, (direction, data) in enumerate(usual):
        counting.message(direction, data, t_ns, text=True)
        parsing.message(direction, data, t_ns, text=True)
    counting.end(len(usual), closed_by="client")
    parsing.end(len(usual), closed_by="client")
    assert isinstance(counting, Counting) and counting.parsed == 0
    assert (tmp_path / "fast.msgpack").read_bytes() == (tmp_path / "slow.msgpack").read_bytes()
    capture = read_capture(tmp_path / "fast.msgpack")
    rebuilt = [(m.data(), m.redacted, bool(m.splices)) for m in capture.messages]
    assert [r[0] for r in rebuilt[:4]] == [data for _, data in usual[:4]]
    assert [r[2] for r in rebuilt] == [True, True, True, False, False]
    assert rebuilt[4][1] and SECRET.encode() not in rebuilt[4][0]


def test_capture_writer_writes_what_a_list_sink_takes(tmp_path: Path) -> None:
    audio = base64.b64encode(bytes(range(200)))
    batch = [
        b'{"type":"response.output_audio.delta","delta":"' + audio + b'"}',
        b'{"type":"input_audio_buffer.append","audio":"' + audio + b'=="}',
        b"not json " + SECRET.encode(),
    ]
    listed = ListSink()
    on_file = recorder(SessionRecorder, CaptureWriter(tmp_path / "c.msgpack"))
    in_list = recorder(SessionRecorder, listed)
    for t_ns, data in enumerate(batch):
        on_file.message(RECEIVED, data, t_ns, text=True)
        in_list.message(RECEIVED, data, t_ns, text=True)
    on_file.message(SENT, bytes(300), 9)
    in_list.message(SENT, bytes(300), 9)
    on_file.end(10, closed_by="server", code=1000)
    in_list.end(10, closed_by="server", code=1000)
    assert (tmp_path / "c.msgpack").read_bytes() == b"".join(listed.records)
