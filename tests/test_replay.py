"""Reproducing: `rtcap replay` against the simulator, `rtcap serve` to the openai SDK,
the `rtcap_serve` fixture, and the pacing plans."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from openai import AsyncOpenAI
from websockets.sync.client import connect

from analyzer.cli import cli
from analyzer.locate import capture_files
from analyzer.reproduce.pacing import IdMap, plan
from analyzer.reproduce.replay import run
from analyzer.views import open_captures
from recorder.capture import read_capture
from recorder.proxy import RecordingProxy
from recorder.session import RECEIVED, SENT
from tests.conftest import REALTIME, ProxyThread


def until_done(ws) -> dict:
    while True:
        event = json.loads(ws.recv())
        if event["type"] == "response.done":
            return event


def record_truncating_session(simulator_url: str, root: Path) -> Path:
    """A session whose second response follows a truncate of the first response's item
    (a server-assigned id) and an input_audio_buffer.clear."""
    with ProxyThread(RecordingProxy(simulator_url, root)) as proxy:
        with connect(proxy.url + REALTIME) as ws:
            ws.recv()
            ws.send(json.dumps({"type": "response.create"}))
            item = until_done(ws)["response"]["output"][0]["id"]
            ws.send(
                json.dumps(
                    {"type": "conversation.item.truncate", "item_id": item, "content_index": 0, "audio_end_ms": 300}
                )
            )
            assert json.loads(ws.recv())["type"] == "conversation.item.truncated"
            ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            ws.recv()
            ws.send(json.dumps({"type": "response.create"}))
            assert until_done(ws)["response"]["status"] == "failed"
    [path] = capture_files(root)
    return path


def test_a_deterministic_failure_reproduces_with_ids_mapped(start_simulator, tmp_path: Path) -> None:
    simulator = start_simulator("fail sent=input_audio_buffer.clear", seed=3)
    root = tmp_path / "captures"
    capture = read_capture(record_truncating_session(simulator.url, root))
    result = run(capture, to=simulator.url, captures=root, speed=100, timeout=5, repeat=2)
    assert (result["reproduced"], result["of"]) == (2, 2)
    assert result["target"]["error_type"] == "server_error" and result["target"]["response_index"] == 1
    assert all(r["diverged_at"] is None and r["failure"]["response_index"] == 1 for r in result["replays"])
    assert "deterministic" in result["summary"]
    # What the simulator received is what was recorded, the item id mapped to the new one.
    recorded = [json.loads(m.data()) for m in capture.messages if m.direction == "sent"]
    for replay_log in simulator.sessions[1:]:
        got = [json.loads(m) for m in replay_log.received]
        new_item = got[1]["item_id"]
        assert new_item != recorded[1]["item_id"]
        assert got == [recorded[0], {**recorded[1], "item_id": new_item}, recorded[2], recorded[3]]
        assert not any(json.loads(m)["type"] == "error" for m in replay_log.sent)
    # Each replay is a recorded session that names what it replays.
    replays = open_captures(root, include_replays=True)
    rows = replays.sql("SELECT recorder, replay_of FROM sessions WHERE recorder = 'replay'").to_pylist()
    assert open_captures(root).sql("SELECT count(*) AS n FROM sessions WHERE is_replay").to_pylist() == [{"n": 0}]
    assert rows == [{"recorder": "replay", "replay_of": capture.session_id}] * 2


def test_without_the_mapping_the_truncate_fails(start_simulator, tmp_path: Path) -> None:
    simulator = start_simulator("fail sent=input_audio_buffer.clear", seed=3)
    root = tmp_path / "captures"
    capture = read_capture(record_truncating_session(simulator.url, root))
    result = run(capture, to=simulator.url, captures=root, speed=100, timeout=5, map_ids=False)
    diverged = result["replays"][0]["diverged_at"]
    assert (diverged["expected"], diverged["got"]) == ("conversation.item.truncated", "error")
    assert json.loads(simulator.sessions[-1].sent[-1])["type"] == "response.done"
    errors = [json.loads(m) for m in simulator.sessions[-1].sent if json.loads(m)["type"] == "error"]
    assert errors[0]["error"]["code"] == "item_not_found"


def test_a_probabilistic_failure_reproduces_at_its_rate(start_simulator, tmp_path: Path) -> None:
    simulator = start_simulator("fail p=0.5", seed=21)
    root = tmp_path / "captures"
    with ProxyThread(RecordingProxy(simulator.url, root)) as proxy:
        for _ in range(10):  # until one fails: that is the recording to replay
            with connect(proxy.url + REALTIME) as ws:
                ws.recv()
                ws.send(json.dumps({"type": "response.create"}))
                if until_done(ws)["response"]["status"] == "failed":
                    break
    path = max(capture_files(root), key=lambda p: p.stem)
    result = CliRunner().invoke(
        cli,
        [
            "replay",
            str(path),
            "--to",
            simulator.url,
            "--repeat",
            "40",
            "--pace",
            "asap",
            "--captures",
            str(root),
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    # The 99% binomial band around 0.5 for n = 40: 20 +- 2.576 * sqrt(40 * 0.25) -> 12..28.
    assert 12 <= document["reproduced"] <= 28 and document["of"] == 40
    assert "transient" in document["summary"]


async def sdk_receives(url: str) -> list[bytes]:
    client = AsyncOpenAI(api_key="sk-test", websocket_base_url=url + "/v1")
    got = []
    async with client.realtime.connect(model="gpt-realtime") as conn:
        got.append(await conn.recv_bytes())  # session.created
        await conn.send({"type": "response.create"})
        await conn.send({"type": "response.create"})
        while True:
            raw = await conn.recv_bytes()
            got.append(raw)
            event = json.loads(raw)
            if event["type"] == "response.done" and event["response"]["status"] == "failed":
                return got


def record_failing_pair(simulator_url: str, root: Path) -> Path:
    with ProxyThread(RecordingProxy(simulator_url, root)) as proxy:
        with connect(proxy.url + REALTIME) as ws:
            ws.recv()
            for _ in range(2):
                ws.send(json.dumps({"type": "response.create"}))
                until_done(ws)
    [path] = capture_files(root)
    return path


def test_the_openai_sdk_gets_exactly_the_recorded_server_from_rtcap_serve(start_simulator, tmp_path: Path) -> None:
    from analyzer.reproduce.serve import Player, run_player
    from recorder.serving import ServerThread

    path = record_failing_pair(start_simulator("fail nth=2").url, tmp_path / "captures")
    capture = read_capture(path)
    differences: list[str] = []
    player = Player(capture, speed=1000, report=differences.append)
    server = ServerThread(lambda ready, stop: run_player(player, "127.0.0.1", 0, ready=ready, stop=stop)).start()
    try:
        got = asyncio.run(sdk_receives(server.url))
    finally:
        server.stop()
    assert got == [m.data() for m in capture.messages if m.direction == "received"]
    assert differences == []  # the SDK sent what was recorded, byte for byte


def test_the_rtcap_serve_fixture(rtcap_serve, start_simulator, tmp_path: Path) -> None:
    path = record_failing_pair(start_simulator("fail nth=2").url, tmp_path / "captures")
    url = rtcap_serve(path)
    with connect(url + REALTIME) as ws:
        assert json.loads(ws.recv())["type"] == "session.created"
        ws.send(json.dumps({"type": "response.create"}))
        assert until_done(ws)["response"]["status"] == "completed"
        ws.send(json.dumps({"type": "response.create"}))
        assert until_done(ws)["response"]["status"] == "failed"


# -- plans, without a socket or a clock -----------------------------------------------------


def synthetic(make_capture, root: Path) -> Path:
    """Client messages at 0.5 s and 2.0 s and 3.0 s, with server messages between them."""
    messages: list = [
        (0, RECEIVED, {"type": "session.created", "session": {"id": "sess_1"}}),
        (0.5, SENT, {"type": "response.create"}),
        (1, RECEIVED, {"type": "response.created", "response": {"id": "resp_A"}}),
        (1, RECEIVED, {"type": "response.output_item.added", "item": {"id": "item_A"}}),
    ]
    messages += [(1 + n / 1e9, RECEIVED, {"type": "response.output_audio.delta", "delta": ""}) for n in range(5)]
    messages += [
        (1.5, RECEIVED, {"type": "response.done", "response": {"id": "resp_A"}}),
        (2, SENT, {"type": "conversation.item.truncate", "item_id": "item_A", "audio_end_ms": 10}),
        (3, SENT, {"type": "response.cancel", "response_id": "resp_A"}),
    ]
    return make_capture(messages, root=root, url="ws://h/v1/realtime?model=m")


def test_pacing_plans(tmp_path: Path, make_capture) -> None:
    capture = read_capture(synthetic(make_capture, tmp_path))
    causal = plan(capture, "causal", speed=2)
    assert [(s.recorded_seq, s.after_server, s.not_before_s) for s in causal] == [
        (1, 1, 0.25),
        (10, 4, 0.75),
        (11, 0, 0.5),
    ]
    assert [s.needs for s in causal] == [[], ["item_A"], ["resp_A"]]
    timed = plan(capture, "timed")
    assert [(s.after_server, s.not_before_s) for s in timed] == [(0, 0.5), (0, 2.0), (0, 3.0)]
    asap = plan(capture, "asap", speed=10)
    assert [(s.after_server, s.not_before_s) for s in asap] == [(0, 0.0), (0, 0.0), (0, 0.0)]


def test_id_mapping_by_kind_and_order(tmp_path: Path, make_capture) -> None:
    ids = IdMap(read_capture(synthetic(make_capture, tmp_path)))
    truncate = json.dumps({"type": "conversation.item.truncate", "item_id": "item_A", "audio_end_ms": 10})
    assert ids.rewrite(truncate) == truncate  # nothing learned yet
    ids.learn({"type": "response.created", "response": {"id": "resp_NEW"}})
    ids.learn({"type": "response.output_item.added", "item": {"id": "item_NEW"}})
    assert json.loads(ids.rewrite(truncate))["item_id"] == "item_NEW"
    assert (
        json.loads(ids.rewrite(json.dumps({"type": "response.cancel", "response_id": "resp_A"})))["response_id"]
        == "resp_NEW"
    )


@pytest.mark.parametrize("bad", [["--pace", "sometimes"], ["--header", "no-colon"], ["--to", "http://x"]])
def test_replay_usage_errors(tmp_path: Path, bad: list[str], make_capture) -> None:
    path = synthetic(make_capture, tmp_path)
    assert CliRunner().invoke(cli, ["replay", str(path), *bad]).exit_code == 2


def test_an_unreachable_target_is_one_error_line_and_leaves_nothing(tmp_path: Path, make_capture) -> None:
    path = synthetic(make_capture, tmp_path / "in")
    captures = tmp_path / "captures"
    captures.mkdir()
    result = CliRunner().invoke(cli, ["replay", str(path), "--to", "ws://127.0.0.1:9", "--captures", str(captures)])
    assert result.exit_code == 1
    assert (
        result.stderr.startswith("rtcap: error: cannot replay to ws://127.0.0.1:9") and result.stderr.count("\n") == 1
    )
    assert list(captures.rglob("*.msgpack")) == []


# -- a connection dropped during a response --------------------------------------------------


def record_dropped_session(simulator_url: str, root: Path) -> Path:
    """A session whose first response is cut off: the server drops the connection."""
    from websockets.exceptions import ConnectionClosed

    with ProxyThread(RecordingProxy(simulator_url, root)) as proxy:
        with connect(proxy.url + REALTIME) as ws:
            ws.recv()
            ws.send(json.dumps({"type": "response.create"}))
            with pytest.raises(ConnectionClosed):
                until_done(ws)
    [path] = capture_files(root)
    return path


def test_a_dropped_connection_is_a_failure_to_reproduce(start_simulator, tmp_path: Path) -> None:
    simulator = start_simulator("drop nth=1")
    root = tmp_path / "captures"
    capture = read_capture(record_dropped_session(simulator.url, root))
    # The failures view and replay agree on what failed: the close, during response 0.
    [row] = open_captures(root).sql("SELECT class, source FROM failures").to_pylist()
    assert row == {"class": "connection", "source": "close"}
    result = run(capture, to=simulator.url, captures=root, speed=100, timeout=5, failure="any")
    target = result["target"]
    assert (target["source"], target["error_type"], target["response_index"]) == ("close", "connection_closed", 0)
    assert set(target) == {"seq", "source", "error_type", "code", "message", "response_index"}
    assert (result["reproduced"], result["of"]) == (1, 1)
    assert result["replays"][0]["failure"]["source"] == "close"


# -- the verdict: transient only for replays that followed the recording to the failure ------


def test_a_replay_that_diverged_before_the_failure_is_inconclusive_not_transient(start_simulator, tmp_path) -> None:
    simulator = start_simulator("fail nth=2")
    root = tmp_path / "captures"
    capture = read_capture(record_failing_pair(simulator.url, root))
    # asap sends the second response.create while the first response runs: the server
    # refuses it, and the second response, the one that failed, never happens. The first
    # response stalls at its start for 0.3 s, so that it is still running however late a
    # loaded machine lets the second request through (without, it could end first).
    slow = start_simulator("fail nth=2", "stall nth=1 at=0 seconds=300")
    result = run(capture, to=slow.url, captures=root, pace="asap", speed=100, timeout=0.5)
    [replayed] = result["replays"]
    assert not replayed["reproduced"] and replayed["diverged_at"]["got"] == "error"
    assert replayed["diverged_at"]["recorded_seq"] < result["target"]["seq"]
    assert "inconclusive" in result["summary"] and "transient" not in result["summary"]


def test_a_replay_that_followed_the_recording_and_did_not_fail_is_transient(start_simulator, tmp_path) -> None:
    root = tmp_path / "captures"
    capture = read_capture(record_failing_pair(start_simulator("fail nth=2").url, root))
    healthy = start_simulator()
    result = run(capture, to=healthy.url, captures=root, speed=100, timeout=5)
    [replayed] = result["replays"]
    assert not replayed["reproduced"]
    # It left the recording where the recording failed: the response went on instead.
    diverged = replayed["diverged_at"]
    assert (diverged["recorded_seq"], diverged["expected"]) == (result["target"]["seq"], "response.done:failed")
    assert "transient" in result["summary"] and "inconclusive" not in result["summary"]


@pytest.mark.parametrize(
    ("reproduced", "diverged", "words"),
    [
        (5, 0, "deterministic"),
        (0, 0, "transient"),
        (2, 0, "transient"),
        (0, 5, "inconclusive"),
        (2, 1, "inconclusive"),
        (0, 1, "inconclusive"),
    ],
)
def test_verdict_words(reproduced: int, diverged: int, words: str) -> None:
    from analyzer.reproduce.replay import verdict

    sentence = verdict(reproduced, 5, True, "server_error", diverged=diverged)
    assert words in sentence
    assert sum(w in sentence for w in ("deterministic", "transient", "inconclusive")) == 1
    if reproduced:
        assert f"reproduced {reproduced} of 5 times" in sentence
