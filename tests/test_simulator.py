"""`rtcap simulate`: protocol against the openai SDK, fault rules, conversation state."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
from openai import AsyncOpenAI
from openai.types.beta.realtime import RealtimeServerEvent as BetaServerEvent
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from analyzer.sim.direct import DirectConnection, Ended
from analyzer.sim.faults import ClientEvent, Context, RuleError, parse_rule
from analyzer.sim.simsession import Send, SimSession, Stall, StartResponse
from analyzer.sim.simulator import running
from analyzer.sim.steps import ID_ALPHABET, Emitter
from analyzer.sim.traffic import record, record_direct
from analyzer.sim.voice import MS_PER_CHAR
from recorder.capture import read_capture

VALIDATORS = {"ga": TypeAdapter(RealtimeServerEvent), "beta": TypeAdapter(BetaServerEvent)}
TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]


def tone(ms: int, amplitude: float = 0.3) -> str:
    t = np.arange(24 * ms) / 24_000
    return base64.b64encode((amplitude * 32767 * np.sin(2 * np.pi * 220 * t)).astype("<i2").tobytes()).decode()


def assert_valid(log) -> None:
    """Every event the simulator sent parses as the SDK's server event type, strictly."""
    validator = VALIDATORS[log.dialect]
    for text in log.sent:
        validator.validate_python(json.loads(text))


async def voice_turn(url: str, dialect: str, vad: bool) -> list:
    """A voice turn with a tool call round trip, through the openai SDK's realtime client."""
    client = AsyncOpenAI(api_key="sk-test", websocket_base_url=f"{url}/v1")
    extra = {"extra_headers": {"OpenAI-Beta": "realtime=v1"}} if dialect == "beta" else {}
    events = []
    async with client.realtime.connect(model="gpt-realtime", **extra) as conn:
        if dialect == "beta":
            session = {"tools": TOOLS, "turn_detection": {"type": "server_vad"} if vad else None}
        else:
            detection = {"type": "server_vad"} if vad else None
            session = {"type": "realtime", "tools": TOOLS, "audio": {"input": {"turn_detection": detection}}}
        await conn.session.update(session=session)
        for _ in range(8):
            await conn.input_audio_buffer.append(audio=tone(100))
        if vad:
            for _ in range(6):
                await conn.input_audio_buffer.append(audio=tone(100, amplitude=0.0))
        else:
            await conn.input_audio_buffer.commit()
            await conn.response.create()
        done = 0
        async for event in conn:
            events.append(event)
            if event.type == "response.done":
                done += 1
                if done == 2:
                    break
                call = event.response.output[0]
                assert call.type == "function_call" and json.loads(call.arguments)["city"]
                await conn.conversation.item.create(
                    item={"type": "function_call_output", "call_id": call.call_id, "output": '{"celsius": 21}'}
                )
                await conn.response.create()
    return events


@pytest.mark.parametrize("dialect", ["ga", "beta"])
@pytest.mark.parametrize("vad", [True, False], ids=["server-vad", "manual-commit"])
def test_the_openai_sdk_drives_voice_turns(dialect: str, vad: bool) -> None:
    with running(speed=1000, seed=3) as sim:
        events = asyncio.run(voice_turn(sim.url, dialect, vad))
        [log] = sim.sessions
    assert log.dialect == dialect
    assert_valid(log)
    types = [e.type for e in events]
    prefix = "response.output_audio" if dialect == "ga" else "response.audio"
    if vad:
        assert types.index("input_audio_buffer.speech_started") < types.index("input_audio_buffer.speech_stopped")
        assert types.index("input_audio_buffer.speech_stopped") < types.index("input_audio_buffer.committed")
    else:
        assert "input_audio_buffer.speech_started" not in types
    assert "response.function_call_arguments.done" in types
    second = types[types.index("response.done") + 1 :]
    assert second.index("response.created") < second.index("rate_limits.updated") < second.index(f"{prefix}.delta")
    transcript = "".join(e.delta for e in events if e.type == f"{prefix}_transcript.delta")
    [done] = [e.transcript for e in events if e.type == f"{prefix}_transcript.done"]
    assert transcript == done
    audio = sum(len(base64.b64decode(e.delta)) for e in events if e.type == f"{prefix}.delta")
    assert audio == len(done) * MS_PER_CHAR * 48  # PCM16: 48 bytes per ms
    final = events[-1].response
    assert final.status == "completed" and final.usage.output_tokens > 0 and final.usage.input_tokens > 0


# -- fault rules --------------------------------------------------------------------


def context(window: list[ClientEvent] = (), nth: int = 1, age: float = 0, tokens: int = 0) -> Context:
    return Context(nth=nth, age=age, input_tokens=tokens, window=tuple(window))


def client(kind: str, t: float = 0, event: dict | None = None, audio_ms: float = 0) -> ClientEvent:
    return ClientEvent(t, kind, event or {"type": kind}, audio_ms)


@pytest.mark.parametrize(
    ("rule", "holds", "fails"),
    [
        ("fail nth=2", context(nth=2), context(nth=3)),
        (
            "fail sent=conversation.item.truncate",
            context([client("conversation.item.truncate")]),
            context([client("response.create")]),
        ),
        (
            "fail field=response.create:response.tool_choice.type=function",
            context([client("response.create", event={"response": {"tool_choice": {"type": "function"}}})]),
            context([client("response.create", event={"response": {"tool_choice": "auto"}})]),
        ),
        (
            "fail audio_ms>400",
            context([client("input_audio_buffer.append", audio_ms=401)]),
            context([client("input_audio_buffer.append", audio_ms=400)]),
        ),
        (
            "fail rate>3",
            context([client("x", t=0.1 * n) for n in range(4)]),
            context([client("x", t=0.4 * n) for n in range(4)]),
        ),
        ("fail age>60", context(age=60.5), context(age=59)),
        ("fail tokens>8000", context(tokens=8001), context(tokens=8000)),
        (
            "fail sent=response.cancel nth=1",
            context([client("response.cancel")]),
            context([client("response.cancel")], nth=2),
        ),
    ],
)
def test_each_condition_holds_exactly_when_it_should(rule: str, holds: Context, fails: Context) -> None:
    parsed = parse_rule(rule)
    assert parsed.holds(holds) and parsed.fires(holds, random.Random(0))
    assert not parsed.holds(fails) and not parsed.fires(fails, random.Random(0))


def test_probability_is_seeded_and_about_right() -> None:
    rule = parse_rule("fail p=0.3")
    draws = [rule.fires(context(), random.Random(f"7/{n}")) for n in range(2000)]
    assert draws == [rule.fires(context(), random.Random(f"7/{n}")) for n in range(2000)]
    assert 0.3 - 0.035 < sum(draws) / 2000 < 0.3 + 0.035  # 99% band for n=2000


def test_ids_are_what_choice_would_draw() -> None:
    # Seeded corpora stay as they were: an id is what 21 rng.choice calls draw, and the
    # generator is left where they leave it.
    for seed in range(50):
        fast, plain = random.Random(seed), random.Random(seed)
        emit = Emitter(fast)
        for prefix in ("event", "item", "resp"):
            assert emit.id(prefix) == f"{prefix}_" + "".join(plain.choice(ID_ALPHABET) for _ in range(21))
        assert fast.random() == plain.random()


@pytest.mark.parametrize(
    "bad", ["explode", "fail p=1.5", "fail nth=two", "fail bogus=1", "fail field=x", "close code=abc", "fail loud"]
)
def test_bad_rules_are_one_line_errors(bad: str) -> None:
    with pytest.raises(RuleError, match="fault rule"):
        parse_rule(bad)


def drive(session: SimSession, *messages: dict, now: float = 0) -> list[dict]:
    """Feed client events to a session, run every response to the end, return what it sent."""
    out: list[dict] = []
    for message in messages:
        for step in session.receive(json.dumps(message), now):
            if isinstance(step, StartResponse):
                out += [s.event if isinstance(s, Send) else s for s in session.stream(step.response)]
            else:
                out.append(step.event if isinstance(step, Send) else step)
    return out


def sim_session(*rules: str, dialect: str = "ga") -> SimSession:
    return SimSession(dialect=dialect, model="m", rng=random.Random(1), faults=[parse_rule(r) for r in rules], now=0)


def statuses(sent: list) -> list[str]:
    return [e["response"]["status"] for e in sent if isinstance(e, dict) and e.get("type") == "response.done"]


def test_a_planted_cause_fails_only_the_response_it_precedes() -> None:
    session = sim_session("fail sent=input_audio_buffer.clear")
    create = {"type": "response.create"}
    sent = drive(session, create, {"type": "input_audio_buffer.clear"}, create, create)
    assert statuses(sent) == ["completed", "failed", "completed"]
    [failed] = [
        e
        for e in sent
        if isinstance(e, dict) and e.get("type") == "response.done" and e["response"]["status"] == "failed"
    ]
    assert failed["response"]["status_details"]["error"]["type"] == "server_error"
    assert failed["response"]["usage"]["output_tokens"] == 0


def test_fail_without_message_or_code() -> None:
    sent = drive(sim_session("fail message=none code=none"), {"type": "response.create"})
    [done] = [e for e in sent if isinstance(e, dict) and e.get("type") == "response.done"]
    assert done["response"]["status_details"]["error"] == {"type": "server_error", "code": None}


def test_stall_pauses_the_response_once_then_it_completes() -> None:
    sent = drive(sim_session("stall seconds=7 nth=2"), {"type": "response.create"}, {"type": "response.create"})
    stalls = [e for e in sent if isinstance(e, Stall)]
    assert [s.seconds for s in stalls] == [7.0]
    assert statuses(sent) == ["completed", "completed"]
    assert (
        sent.index(stalls[0])
        > [i for i, e in enumerate(sent) if isinstance(e, dict) and e.get("type") == "response.created"][1]
    )


def test_ratelimit_exhausts_the_tokens_and_fails() -> None:
    sent = drive(sim_session("ratelimit nth=1"), {"type": "response.create"})
    limits = next(e for e in sent if e.get("type") == "rate_limits.updated")["rate_limits"]
    assert {r["name"]: r["remaining"] for r in limits}["tokens"] == 0
    assert statuses(sent) == ["failed"]
    assert sent[-1]["response"]["status_details"]["error"]["code"] == "inference_rate_limit_exceeded"


@pytest.mark.parametrize(
    ("rule", "ending"),
    [
        ("error nth=2", ("error", 1000)),
        ("drop nth=2", (None, 1006)),
        ("close code=1011 reason=internal_error nth=2", (None, 1011)),
    ],
)
def test_connection_faults_end_the_session_on_the_right_response(rule: str, ending: tuple) -> None:
    with running(rule, speed=1000) as sim:
        with connect(f"{sim.url}/v1/realtime?model=m") as ws:
            ws.recv()
            ws.send(json.dumps({"type": "response.create"}))
            while json.loads(ws.recv())["type"] != "response.done":
                pass
            ws.send(json.dumps({"type": "response.create"}))
            last = None
            with pytest.raises(ConnectionClosed):
                while True:
                    last = json.loads(ws.recv())
                    assert last["type"] != "response.done"
            kind, code = ending
            assert ws.close_code == code
            if kind == "error":
                assert last["type"] == "error" and last["error"]["type"] == "server_error"
            if code == 1011:
                assert ws.close_reason == "internal error"


# -- protocol details -------------------------------------------------------------------


def test_conversation_state_truncate_delete_and_retrieve() -> None:
    session = sim_session()
    sent = drive(session, {"type": "response.create"})
    [item_id] = {e["item"]["id"] for e in sent if e.get("type") == "response.output_item.added"}
    done = sent[-1]["response"]
    assert done["output"][0]["id"] == item_id
    audio_ms = len(done["output"][0]["content"][0]["transcript"]) * MS_PER_CHAR
    past_end = drive(
        session,
        {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": audio_ms + 1},
    )
    assert past_end[0]["error"]["code"] == "invalid_value"
    truncated = drive(
        session, {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 500}
    )
    assert truncated[0]["type"] == "conversation.item.truncated"
    again = drive(
        session, {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 600}
    )
    assert again[0]["error"]["code"] == "invalid_value"  # the audio is 500 ms long now
    user = drive(
        session,
        {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        },
    )
    user_id = user[0]["item"]["id"]
    assert user[0]["previous_item_id"] == item_id
    assert drive(session, {"type": "conversation.item.retrieve", "item_id": user_id})[0]["item"]["id"] == user_id
    [deleted] = drive(session, {"type": "conversation.item.delete", "item_id": user_id})
    assert (deleted["type"], deleted["item_id"]) == ("conversation.item.deleted", user_id)
    gone = drive(session, {"type": "conversation.item.retrieve", "item_id": user_id})
    assert gone[0]["error"]["code"] == "item_not_found"


def test_invalid_requests_get_error_events() -> None:
    session = sim_session()
    active = session.receive(json.dumps({"type": "response.create"}), 0)
    assert isinstance(active[0], StartResponse)
    [second] = session.receive(json.dumps({"type": "response.create", "event_id": "evt_client_1"}), 0)
    error = second.event["error"]
    assert error["code"] == "conversation_already_has_active_response" and error["event_id"] == "evt_client_1"
    drive(session, {"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\x00" * 48 * 50).decode()})
    [empty] = drive(session, {"type": "input_audio_buffer.commit"})
    assert empty["error"]["code"] == "input_audio_buffer_commit_empty"
    [odd] = drive(session, {"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\x00" * 3).decode()})
    assert odd["error"]["code"] == "invalid_value"
    [unknown] = drive(session, {"type": "no.such.event"})
    assert "no.such.event" in unknown["error"]["message"]
    [cancel] = drive(sim_session(), {"type": "response.cancel"})
    assert cancel["error"]["code"] == "response_cancel_not_active"


def test_cancel_ends_the_response_cancelled() -> None:
    session = sim_session()
    [start] = session.receive(json.dumps({"type": "response.create"}), 0)
    stream = session.stream(start.response)
    first = [next(stream) for _ in range(6)]
    assert session.receive(json.dumps({"type": "response.cancel"}), 0) == []
    rest = [s.event for s in stream]
    assert rest[-1]["response"]["status"] == "cancelled"
    assert rest[-1]["response"]["status_details"]["reason"] == "client_cancelled"
    assert len(first) + len(rest) < len(drive(sim_session(), {"type": "response.create"}))


def test_urls_auth_and_expiry() -> None:
    with running(speed=1000, api_key="sk-right-key-123", max_session_s=0.3) as sim:
        for path in (
            "/v1/realtime?model=m",
            "/openai/v1/realtime?model=d",
            "/openai/realtime?api-version=2025-04-01-preview&deployment=d",
        ):
            with connect(f"{sim.url}{path}", additional_headers={"api-key": "sk-right-key-123"}) as ws:
                created = json.loads(ws.recv())
                assert created["type"] == "session.created" and created["session"]["id"].startswith("sess_")
        assert [log.dialect for log in sim.sessions] == ["ga", "ga", "beta"]
        with pytest.raises(InvalidStatus) as wrong:
            connect(f"{sim.url}/v1/realtime?model=m", additional_headers={"Authorization": "Bearer sk-wrong-key-456"})
        assert wrong.value.response.status_code == 401
        assert json.loads(wrong.value.response.body)["error"]["code"] == "invalid_api_key"
        with pytest.raises(InvalidStatus) as missing:
            connect(f"{sim.url}/v2/elsewhere", additional_headers={"api-key": "sk-right-key-123"})
        assert missing.value.response.status_code == 404
        with connect(f"{sim.url}/v1/realtime?model=m", additional_headers={"api-key": "sk-right-key-123"}) as ws:
            ws.recv()
            expired = json.loads(ws.recv(timeout=5))
            assert expired["error"]["code"] == "session_expired"
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=5)


def test_speech_during_a_response_interrupts_it_and_transcription_follows_commits() -> None:
    session = sim_session()
    drive(
        session,
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"input": {"transcription": {"model": "whisper-1"}}}},
        },
    )
    [start] = session.receive(json.dumps({"type": "response.create"}), 0)
    stream = session.stream(start.response)
    [next(stream) for _ in range(8)]
    barge_in = drive(session, {"type": "input_audio_buffer.append", "audio": tone(200)})
    assert [e["type"] for e in barge_in] == ["input_audio_buffer.speech_started"]
    rest = [s.event for s in stream]
    assert rest[-1]["response"]["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    silence = drive(session, *[{"type": "input_audio_buffer.append", "audio": tone(100, amplitude=0.0)}] * 6)
    kinds = [e["type"] for e in silence]
    assert kinds.index("input_audio_buffer.speech_stopped") < kinds.index("input_audio_buffer.committed")
    assert "conversation.item.input_audio_transcription.completed" in kinds
    assert kinds[-1] == "response.done"  # the turn's automatic response
    for event in silence:
        VALIDATORS["ga"].validate_python(event)


def test_a_fault_strikes_even_when_the_response_is_short() -> None:
    session = sim_session("fail at=500")
    drive(session, {"type": "session.update", "session": {"type": "realtime", "tools": TOOLS}})
    sent = drive(session, {"type": "response.create"})
    assert any(e.get("type") == "response.function_call_arguments.delta" for e in sent)
    assert statuses(sent) == ["failed"]


# -- without sockets ----------------------------------------------------------------------


SESSION_ID = re.compile(rb'"sess_[A-Za-z0-9]+"')


def session_ids(root: Path) -> list[str]:
    """The server session ids of the captures under ``root``, in the order of their files."""
    return [
        SESSION_ID.findall(read_capture(path).messages[0].data())[0].decode().strip('"')
        for path in sorted(root.rglob("*.msgpack"))
    ]


def wire(root: Path) -> list[tuple]:
    """Each session's messages each way, and how it ended; not ``expires_at`` (wall time)
    or the ``sess_`` id (unique to a run). How the two directions interleave is left out:
    over sockets, that is up to timing."""

    def seeded(data: bytes) -> bytes:
        return SESSION_ID.sub(b'"sess_"', re.sub(rb'"expires_at":\d+', b"", data))

    sessions = []
    for path in sorted(root.rglob("*.msgpack")):
        capture = read_capture(path)
        ways = {way: [seeded(m.data()) for m in capture.messages if m.direction == way] for way in ("sent", "received")}
        sessions.append((ways, capture.end["closed_by"], capture.end["code"], capture.header["recorder"]))
    return sessions


def test_direct_sessions_record_what_the_proxy_records(tmp_path: Path) -> None:
    # One socket session at a time, so the simulator numbers (and seeds) them in order.
    faults = [
        "fail p=0.2",
        "error nth=4 p=0.3",
        "drop nth=3 p=0.3",
        "close code=1011 reason=internal_error nth=5 p=0.5",
        "fail sent=input_audio_buffer.clear p=0.9",
    ]
    record(tmp_path / "socket", faults, sessions=6, seed=2, parallel=1)
    record_direct(tmp_path / "direct", faults, sessions=6, seed=2)
    direct = wire(tmp_path / "direct")
    assert direct == wire(tmp_path / "socket")
    assert {(by, code) for _, by, code, _ in direct} == {
        ("client", 1000),
        ("server", 1000),
        ("server", 1006),
        ("server", 1011),
    }


def test_server_session_ids_differ_between_runs_with_the_same_seed_and_nothing_else_does(tmp_path: Path) -> None:
    faults = ["fail p=0.3", "drop nth=3 p=0.5"]
    record_direct(tmp_path / "one", faults, sessions=4, seed=5)
    record_direct(tmp_path / "two", faults, sessions=4, seed=5)
    ids = session_ids(tmp_path / "one") + session_ids(tmp_path / "two")
    assert len(set(ids)) == 8 and all(re.fullmatch(r"sess_[A-Za-z0-9]{21}", i) for i in ids)
    assert wire(tmp_path / "one") == wire(tmp_path / "two")
    # Over sockets too: two servers seeded alike name their first sessions differently.
    names = []
    for _ in range(2):
        with running(speed=1000, seed=5) as sim:
            with connect(sim.url + "/v1/realtime?model=gpt-realtime") as ws:
                names.append(json.loads(ws.recv())["session"]["id"])
    assert names[0] != names[1]


def test_direct_time_is_the_simulated_time() -> None:
    session = SimSession(dialect="ga", model="m", rng=random.Random(1), faults=[parse_rule("stall seconds=7")], now=0)
    connection = DirectConnection(session)
    connection.open()
    assert connection.wait_for(lambda event: True)["type"] == "session.created"
    connection.send(json.dumps({"type": "response.create"}))
    done = connection.wait_for(lambda event: event["type"] == "response.done")
    assert done["response"]["status"] == "completed"
    audio_s = len(done["response"]["output"][0]["content"][0]["transcript"]) * MS_PER_CHAR / 1000
    # created after 0.05 s, the first chunk after 0.3 s more, audio at 4x real time, the stall
    assert connection.now == pytest.approx(0.05 + 0.3 + audio_s / 4 + 7)
    connection.close()
    assert (connection.closed_by, connection.close_code) == ("client", 1000)
    with pytest.raises(Ended):
        connection.send("{}")


def test_simulate_help_points_to_the_rules_where_they_are() -> None:
    from click.testing import CliRunner

    from analyzer.cli import cli

    text = " ".join(CliRunner().invoke(cli, ["simulate", "--help"]).output.split())
    # click prints the command's text, where the rules are, before its options.
    assert text.index("A fault RULE is an effect") < text.index("--fault RULE")
    assert "see below" not in text and "A fault rule (repeatable), as above." in text
