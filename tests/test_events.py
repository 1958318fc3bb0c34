"""recorder/events.py, the one definition of what realtime events mean: table-driven."""

from __future__ import annotations

import json

import pytest

from recorder import events, telemetry, turns


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ('{"type":"error"}', {"type": "error"}),
        (b'  {"type":"x","n":1}', {"type": "x", "n": 1}),
        ("[1, 2]", None),
        ("not json", None),
        (b"\x00\x01binary", None),
        ('{"type":', None),
        ("", None),
        (None, None),
        ("[" * 100_000 + "]" * 100_000, None),
        ('{"a":' * 100_000 + "1" + "}" * 100_000, None),  # too deep for json: not an event, no crash
    ],
)
def test_parse(data, expected) -> None:
    assert events.parse(data) == expected


@pytest.mark.parametrize(
    ("url", "headers", "subprotocols", "expected"),
    [
        ("wss://api.openai.com/v1/realtime?model=m", [], [], "ga"),
        ("wss://api.openai.com/v1/realtime?model=m", [("OpenAI-Beta", "realtime=v1")], [], "beta"),
        ("wss://api.openai.com/v1/realtime", [("openai-beta", " Realtime=V1 ")], [], "beta"),
        ("wss://x/v1/realtime", [], ["realtime", "openai-beta.realtime-v1"], "beta"),
        ("wss://x/v1/realtime", [("Sec-WebSocket-Protocol", "realtime, openai-beta.realtime-v1")], [], "beta"),
        ("wss://r.openai.azure.com/openai/realtime?api-version=v&deployment=d", [], [], "beta"),
        ("wss://r.openai.azure.com/openai/v1/realtime?model=d", [], [], "ga"),
        ("ws://[REDACTED]@host/openai/realtime/", [], [], "beta"),
        (None, [("bad",)], [], "ga"),
        ("http://[::1", [], [], "ga"),  # unparseable: the default, not a crash
    ],
)
def test_dialect(url, headers, subprotocols, expected) -> None:
    assert events.dialect(url, headers, subprotocols) == expected


GA_PCMU = {"type": "session.updated", "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}}}}
BETA_ALAW = {"type": "session.update", "session": {"input_audio_format": "g711_alaw", "output_audio_format": "pcm16"}}


@pytest.mark.parametrize(
    ("event", "formats"),
    [
        (GA_PCMU, (("audio/pcmu", None))),
        (BETA_ALAW, ("g711_alaw", "pcm16")),
        (
            {"type": "session.created", "session": {"audio": {"output": {"format": {"type": "audio/pcma"}}}}},
            (None, "audio/pcma"),
        ),
        ({"type": "response.done", "session": {"input_audio_format": "g711_ulaw"}}, (None, None)),
        ({"type": "session.updated", "session": "nope"}, (None, None)),
        ({"type": "session.updated", "session": {"audio": {"input": {"format": "pcm16"}}}}, (None, None)),
    ],
)
def test_session_formats(event, formats) -> None:
    assert events.session_formats(event) == formats


def test_audio_formats_follow_the_session_in_both_directions() -> None:
    formats = events.AudioFormats()
    assert formats.ms(4800, events.SENT) == 100 and formats.silence(events.RECEIVED) == 0
    assert formats.follow(GA_PCMU)
    assert formats.of(events.SENT) == "audio/pcmu" and formats.of(events.RECEIVED) == "pcm16"
    assert formats.ms(800, events.SENT) == 100 and formats.silence(events.SENT) == 0xFF
    assert not formats.follow(GA_PCMU)  # no change
    formats.follow({"type": "session.update", "session": {"input_audio_format": "opus"}})  # unknown: ignored
    assert formats.of(events.SENT) == "audio/pcmu"
    formats.follow(BETA_ALAW)
    assert (formats.of(events.SENT), formats.of(events.RECEIVED)) == ("g711_alaw", "pcm16")
    assert formats.silence(events.SENT) == 0xD5


@pytest.mark.parametrize(
    ("event", "strings"),
    [
        ({"type": "input_audio_buffer.append", "audio": "AAAA"}, ["AAAA"]),
        ({"type": "response.output_audio.delta", "delta": "BBBB"}, ["BBBB"]),
        ({"type": "response.audio.delta", "delta": "CCCC"}, ["CCCC"]),
        ({"type": "response.output_audio_transcript.delta", "delta": "words"}, []),
        (
            {
                "type": "conversation.item.create",
                "item": {"content": [{"audio": "DDDD"}, {"text": "x"}, {"audio": ""}]},
            },
            ["DDDD"],
        ),
        ({"type": "input_audio_buffer.append", "audio": 5}, []),
    ],
)
def test_audio_strings(event, strings) -> None:
    assert events.audio_strings(event) == strings


AUDIO = "response.output_audio.delta"
TRANSCRIPT = "response.output_audio_transcript.delta"


@pytest.mark.parametrize(
    ("kinds", "collapsed"),
    [
        ([], []),
        (["a", "b"], ["a", "b"]),
        ([AUDIO, TRANSCRIPT, AUDIO, "response.done"], [f"{AUDIO}+{TRANSCRIPT}", "response.done"]),
        ([TRANSCRIPT, TRANSCRIPT], [TRANSCRIPT]),
        ([AUDIO, "x", AUDIO], [AUDIO, "x", AUDIO]),
        ([None, AUDIO, None], [None, AUDIO, None]),
    ],
)
def test_delta_runs_collapse_and_count_alike(kinds, collapsed) -> None:
    folded = events.collapse(list(enumerate(kinds)))
    assert [name for _, name in folded] == collapsed
    assert events.count_units(kinds) == len(collapsed)
    # Each collapsed step is keyed by the first event of its run.
    units = events.Units()
    starts = [i for i, kind in enumerate(kinds) if units.add(kind)]
    assert starts == [key for key, _ in folded]


@pytest.mark.parametrize(
    ("event", "assigned"),
    [
        ({"type": "response.created", "response": {"id": "resp_1"}}, [("response", "resp_1")]),
        ({"type": "response.created", "response": {}}, []),
        (
            {"type": "conversation.item.added", "item": {"id": "item_1", "call_id": "call_1"}},
            [("item", "item_1"), ("call", "call_1")],
        ),
        ({"type": "input_audio_buffer.committed", "item_id": "item_2"}, [("item", "item_2")]),
        ({"type": "response.output_audio.delta", "item_id": "item_3"}, []),
        ({"type": "conversation.item.created", "item": {"id": 7}}, []),
    ],
)
def test_server_ids(event, assigned) -> None:
    assert events.server_ids(event) == assigned


@pytest.mark.parametrize(
    ("event", "direction", "ids"),
    [
        ({"type": "response.output_audio.delta", "response_id": "r", "item_id": "i"}, "received", ("r", "i")),
        ({"type": "response.done", "response": {"id": "r"}}, "received", ("r", None)),
        ({"type": "conversation.item.added", "item": {"id": "i"}}, "received", (None, "i")),
        ({"type": "conversation.item.create", "previous_item_id": "p", "item": {}}, "sent", (None, "p")),
        ({"type": "conversation.item.added", "previous_item_id": "p", "item": {}}, "received", (None, None)),
        ({"type": "conversation.item.truncate", "item_id": "i", "previous_item_id": "p"}, "sent", (None, "i")),
    ],
)
def test_event_ids(event, direction, ids) -> None:
    assert events.event_ids(event, direction) == ids


def failed_done(response_id: str, error: dict | None) -> dict:
    details = {"type": "failed", "error": error} if error is not None else {"type": "failed"}
    return {"type": "response.done", "response": {"id": response_id, "status": "failed", "status_details": details}}


@pytest.mark.parametrize(
    ("event", "fields", "klass"),
    [
        (
            {"type": "error", "error": {"type": "server_error", "code": None, "message": "boom"}},
            ("error", "server_error", None, "boom"),
            "server",
        ),
        (
            {
                "type": "error",
                "error": {"type": "invalid_request_error", "code": "inference_service_unavailable_error"},
            },
            ("error", "invalid_request_error", "inference_service_unavailable_error", None),
            "server",
        ),
        (
            {"type": "error", "error": {"type": "invalid_request_error", "code": "session_expired"}},
            ("error", "invalid_request_error", "session_expired", None),
            "client",
        ),
        ({"type": "error"}, ("error", None, None, None), "client"),
        (
            failed_done("r", {"type": "server_error", "message": "m"}),
            ("response.done", "server_error", None, "m"),
            "server",
        ),
        (failed_done("r", None), ("response.done", "unknown", None, None), "client"),
        ({"type": "response.done", "response": {"status": "completed"}}, None, None),
        ({"type": "response.done", "response": {"status": "cancelled"}}, None, None),
        ({"type": "response.created", "response": {"status": "failed"}}, None, None),
    ],
)
def test_failure_fields_and_classes(event, fields, klass) -> None:
    assert events.failure_fields(event) == fields
    if fields is not None:
        assert events.failure_class(fields[0], fields[1], fields[2]) == klass


@pytest.mark.parametrize(
    ("code", "abnormal"), [(None, True), (1000, False), (1001, False), (1005, False), (1006, True), (1011, True)]
)
def test_abnormal_close(code, abnormal) -> None:
    assert events.abnormal_close(code) is abnormal


@pytest.mark.parametrize(
    ("kind", "klass", "error_type", "code", "expected"),
    [
        ("any", "client", "invalid_request_error", None, True),
        ("any", "connection", "connection_closed", "1006", True),
        ("server", "server", "server_error", None, True),
        ("server", "connection", "connection_closed", "1006", False),
        ("server_error", "server", "server_error", None, True),
        ("session_expired", "client", "invalid_request_error", "session_expired", True),
        ("connection_closed", "connection", "connection_closed", "1006", True),
        ("server_error", "server", "service_unavailable", None, False),
    ],
)
def test_failure_matching(kind, klass, error_type, code, expected) -> None:
    assert events.matches(kind, klass, error_type, code) is expected


def created(response_id: str) -> dict:
    return {"type": "response.created", "response": {"id": response_id, "status": "in_progress"}}


def done(response_id: str) -> dict:
    return {"type": "response.done", "response": {"id": response_id, "status": "completed"}}


SERVER_ERROR = {"type": "error", "error": {"type": "server_error", "message": "x"}}


@pytest.mark.parametrize(
    ("stream", "end", "expected"),
    [
        # A failed response, then a healthy one: the failure is response 0's.
        (
            [created("r0"), failed_done("r0", {"type": "server_error"}), created("r1"), done("r1")],
            {"code": 1000},
            [(1, "response.done", "server_error", "r0", 0, "server")],
        ),
        # An error during response 1 belongs to it; one after it belongs to no response.
        (
            [created("r0"), done("r0"), created("r1"), SERVER_ERROR, done("r1"), SERVER_ERROR],
            None,
            [(3, "error", "server_error", "r1", 1, "server"), (5, "error", "server_error", None, 1, "server")],
        ),
        # A drop during a response is a connection failure of that response.
        (
            [created("r0"), done("r0"), created("r1")],
            {"code": 1006, "error": None},
            [(None, "close", "connection_closed", "r1", 1, "connection")],
        ),
        # An end without a close code (an error ended it) during a response: abnormal.
        (
            [created("r0")],
            {"code": None, "error": "reset"},
            [(None, "close", "connection_closed", "r0", 0, "connection")],
        ),
        # A normal close during a response, or a drop between responses: no failure.
        ([created("r0")], {"code": 1000}, []),
        ([created("r0"), done("r0")], {"code": 1006}, []),
        # A session still open: its end is unknown.
        ([created("r0")], None, []),
    ],
)
def test_failures_of_a_session(stream, end, expected) -> None:
    found = events.failures(list(enumerate(stream)), end)
    assert [
        (f.seq, f.source, f.error_type, f.response_id, f.response_index, f.failure_class) for f in found
    ] == expected
    for failure in found:
        assert events.failure_matches(failure, "any")


def test_the_tables_hold_what_realtime_md_lists() -> None:
    # Names differ between dialects only where REALTIME.md says they do.
    assert events.BETA_NAMES["conversation.item.added"] == "conversation.item.created"
    assert set(events.ITEM_ADDED) == {"conversation.item.added", "conversation.item.created"}
    assert events.BYTES_PER_MS["pcm16"] == 48 and events.BYTES_PER_MS["audio/pcmu"] == 8
    assert json.loads(json.dumps(events.SERVER_ERROR_TYPES))[0] == "server_error"


# -- new input, and what a client picks afresh (doctor's retries, serve's comparison) ---------


@pytest.mark.parametrize(
    ("direction", "kind", "adds"),
    [
        ("sent", "conversation.item.create", True),
        ("received", "input_audio_buffer.committed", True),
        ("sent", "input_audio_buffer.commit", False),  # the server's committed says it took
        ("sent", "input_audio_buffer.append", False),
        ("sent", "response.create", False),
        ("received", "conversation.item.added", False),  # also the response's own items
        ("received", "conversation.item.create", False),
        ("sent", "input_audio_buffer.committed", False),
        ("sent", None, False),
    ],
)
def test_adds_input(direction, kind, adds) -> None:
    assert events.adds_input(direction, kind) is adds


@pytest.mark.parametrize(
    ("event", "kept"),
    [
        ({"type": "response.create", "event_id": "evt_1"}, {"type": "response.create"}),
        (
            {"type": "response.create", "response": {"metadata": {"client_event_id": "x", "topic": "t"}}},
            {"type": "response.create", "response": {"metadata": {"topic": "t"}}},
        ),
        ({"type": "response.create", "response": "odd"}, {"type": "response.create", "response": "odd"}),
        (
            {"type": "conversation.item.create", "item": {"id": "item_1", "event_id": "kept"}},
            {"type": "conversation.item.create", "item": {"id": "item_1", "event_id": "kept"}},
        ),
    ],
)
def test_without_client_chosen(event, kept) -> None:
    original = json.loads(json.dumps(event))
    assert events.without_client_chosen(event) == kept
    assert event == original


# -- turns, latencies and a client's mistakes (recorder.turns) -----------------------------

S, R = "sent", "received"
_CREATED = {"type": "response.created", "response": {"id": "resp_1"}}
_AUDIO = {"type": "response.output_audio.delta", "response_id": "resp_1", "delta": ""}
_TEXT = {"type": "response.output_audio_transcript.delta", "response_id": "resp_1", "delta": "hi"}
_DONE = {"type": "response.done", "response": {"id": "resp_1", "status": "completed"}}


def _t(kind: str, **fields: object) -> dict:
    return {"type": kind, **fields}


@pytest.mark.parametrize(
    ("stream", "rows"),
    [
        (  # server VAD, beta names: speech, commit, the server's own response
            [
                (R, _t("input_audio_buffer.speech_started")),
                (R, _t("input_audio_buffer.speech_stopped")),
                (R, _t("input_audio_buffer.committed", item_id="item_1")),
                (R, _CREATED),
                (R, {**_AUDIO, "type": "response.audio.delta"}),
                (R, {**_TEXT, "type": "response.audio_transcript.delta"}),
                (R, _DONE),
            ],
            [("user", "resp_1", [0, 1, 2, None, 3, 4, 5, 6], [300.0, 100.0, 100.0], False)],
        ),
        (  # push to talk: the client's commit and response.create come before the server's committed
            [
                (S, _t("input_audio_buffer.commit")),
                (S, _t("response.create")),
                (R, _t("input_audio_buffer.committed", item_id="item_1")),
                (R, _CREATED),
                (R, _TEXT),
                (R, _AUDIO),
                (R, _DONE),
            ],
            [("user", "resp_1", [None, None, 2, 1, 3, 5, 4, 6], [300.0, 100.0, 200.0], False)],
        ),
        (  # a typed user message, then a tool's follow-up with no user turn
            [
                (S, _t("conversation.item.create", item={"type": "message", "role": "user"})),
                (S, _t("response.create")),
                (R, _CREATED),
                (R, _DONE),
                (S, _t("conversation.item.create", item={"type": "function_call_output", "call_id": "call_1"})),
                (S, _t("response.create")),
                (R, {**_CREATED, "response": {"id": "resp_2"}}),
            ],
            [
                ("user", "resp_1", [None, None, 0, 1, 2, None, None, 3], [None, 200.0, None], False),
                ("none", "resp_2", [None, None, None, 5, 6, None, None, None], [None, None, None], False),
            ],
        ),
        (  # barge-in: speech starts while the response is active; the user's turn is its own row
            [
                (R, _t("input_audio_buffer.committed", item_id="item_1")),
                (R, _CREATED),
                (R, _AUDIO),
                (R, _t("input_audio_buffer.speech_started")),
                (R, _DONE),
            ],
            [
                ("user", "resp_1", [None, None, 0, None, 1, 2, None, 4], [200.0, 100.0, 100.0], True),
                ("user", None, [3, None, None, None, None, None, None, None], [None, None, None], False),
            ],
        ),
        (  # barge-in by the client, after the response ended: a truncate of its audio
            [
                (R, _t("input_audio_buffer.committed", item_id="item_1")),
                (R, _CREATED),
                (R, _DONE),
                (S, _t("conversation.item.truncate", item_id="item_2", content_index=0, audio_end_ms=100)),
            ],
            [("user", "resp_1", [None, None, 0, None, 1, None, None, 2], [None, 100.0, None], True)],
        ),
    ],
)
def test_turns(stream, rows) -> None:
    found = turns.turns((seq, seq * 100_000_000, d, e) for seq, (d, e) in enumerate(stream))
    got = [
        (
            "user" if t.user else "none",
            t.response_id,
            [t.marks.get(m, (None, 0))[0] for m in turns.MARKS],
            list(t.latencies().values()),
            t.barge_in,
        )
        for t in found
    ]
    assert got == rows


@pytest.mark.parametrize(
    ("stream", "mistakes"),
    [
        ([(S, _t("response.create")), (R, _CREATED), (S, _t("response.create"))], ["overlapping response"]),
        ([(S, _t("response.create")), (R, _CREATED), (R, _DONE), (S, _t("response.create"))], []),
        (  # out of band: may run beside the active response
            [(R, _CREATED), (S, _t("response.create", response={"conversation": "none"}))],
            [],
        ),
        ([(S, _t("response.cancel"))], ["cancel without response"]),
        ([(R, _CREATED), (S, _t("response.cancel"))], []),
        (
            [(R, _CREATED), (S, _t("response.cancel", response_id="resp_9"))],
            ["cancel without response", "unknown ids"],
        ),
        ([(S, _t("conversation.item.delete", item_id="item_9"))], ["unknown ids"]),
        (
            [
                (R, _t("conversation.item.added", item={"id": "item_1"})),
                (R, _t("conversation.item.deleted", item_id="item_1")),
                (S, _t("conversation.item.retrieve", item_id="item_1")),
            ],
            ["unknown ids"],
        ),
        (
            [
                (R, _t("conversation.item.added", item={"id": "item_1"})),
                (S, _t("conversation.item.create", previous_item_id="item_1", item={"id": "mine"})),
                (S, _t("conversation.item.create", previous_item_id="root", item={"id": "mine2"})),
            ],
            [],
        ),
        (
            [(S, _t("conversation.item.create", item={"type": "function_call_output", "call_id": "call_9"}))],
            ["unknown ids"],
        ),
        (
            [
                (S, _t("input_audio_buffer.append", audio="AAAA")),
                (S, _t("session.update", session={"input_audio_format": "g711_ulaw"})),
            ],
            ["format change"],
        ),
        (
            [
                (S, _t("session.update", session={"audio": {"input": {"format": {"type": "audio/pcmu"}}}})),
                (S, _t("input_audio_buffer.append", audio="AAAA")),
            ],
            [],
        ),
    ],
)
def test_client_state(stream, mistakes) -> None:
    state = turns.ClientState()
    found = [kind for seq, (d, e) in enumerate(stream) for kind, _ in state.add(seq, d, e)]
    assert found == mistakes


@pytest.mark.parametrize(
    ("host", "expires_in", "limit"),
    [
        ("api.openai.com", None, 3600.0),
        ("res.openai.azure.com", None, 1800.0),
        ("api.openai.com", 1200.0, 1200.0),
        (None, 0.0, 3600.0),
    ],
)
def test_max_session_s(host, expires_in, limit) -> None:
    assert turns.max_session_s(host, expires_in) == limit


def test_tool_calls() -> None:
    done = {
        "type": "response.done",
        "response": {"output": [{"type": "function_call", "call_id": "call_1"}, {"type": "message"}]},
    }
    assert turns.tool_calls(done) == ["call_1"]
    assert turns.tool_calls({"type": "response.done", "response": {"output": "odd"}}) == []


# ---------------------------------------------------------------------------
# Telemetry (recorder.telemetry): usage, rate limits, vendor


@pytest.mark.parametrize(
    ("event", "counts"),
    [
        (
            {
                "type": "response.done",
                "response": {
                    "usage": {
                        "input_tokens": 90,
                        "output_tokens": 12,
                        "input_token_details": {"audio_tokens": 40, "cached_tokens": 64},
                        "output_token_details": {"audio_tokens": 9},
                    }
                },
            },
            {
                "input_tokens": 90,
                "output_tokens": 12,
                "input_audio_tokens": 40,
                "output_audio_tokens": 9,
                "input_cached_tokens": 64,
            },
        ),
        (
            {"type": "response.done", "response": {"usage": {"input_tokens": 5, "output_tokens": None}}},
            {"input_tokens": 5},
        ),
        ({"type": "response.done", "response": {"usage": {"input_tokens": True}}}, {}),
        ({"type": "response.done", "response": {"status": "failed"}}, {}),
        ({"type": "response.created", "response": {"usage": {"input_tokens": 5}}}, {}),
    ],
)
def test_usage(event, counts) -> None:
    assert telemetry.usage(event) == counts


@pytest.mark.parametrize(
    ("event", "limits"),
    [
        (
            {
                "type": "rate_limits.updated",
                "rate_limits": [
                    {"name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 0.06},
                    {"name": "tokens", "limit": 50000, "remaining": None},
                    {"limit": 3},
                    "odd",
                ],
            },
            {"requests": {"limit": 1000, "remaining": 999, "reset_seconds": 0.06}, "tokens": {"limit": 50000}},
        ),
        ({"type": "rate_limits.updated", "rate_limits": None}, {}),
        ({"type": "error", "rate_limits": [{"name": "requests", "limit": 1}]}, {}),
    ],
)
def test_rate_limits(event, limits) -> None:
    assert telemetry.rate_limits(event) == limits


@pytest.mark.parametrize(
    ("url", "vendor"),
    [
        ("wss://api.openai.com/v1/realtime?model=gpt-realtime", "openai"),
        ("wss://res.openai.azure.com/openai/v1/realtime?model=d", "azure"),
        ("wss://[REDACTED]@res.openai.azure.com/openai/realtime", "azure"),
        ("ws://127.0.0.1:8766/v1/realtime", "openai"),
        ("wss://[::1/", "openai"),
        (None, "openai"),
    ],
)
def test_vendor(url, vendor) -> None:
    assert telemetry.vendor(url) == vendor
