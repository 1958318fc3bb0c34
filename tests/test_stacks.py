"""The stacks voice agents are built on, as real clients: aiohttp under `rtcap run` (the
oldest and newest aiohttp the shim supports), LiveKit Agents' and Pipecat's OpenAI realtime
clients under `rtcap run` (each in a venv of its own, made by `make test`), and whatever
else stands in the README's table of stacks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from analyzer.locate import capture_files
from recorder.capture import read_capture
from tests.test_shim import APPS, CLOSE_AFTER_CLEAR, ROOT, assert_same_as_server, rtcap_run

DROP_ON_REQUEST = "drop field=response.create:response.metadata.drop=yes"  # what aiohttp_styles.py expects
AIOHTTP_CANARY = "sk-aiohttp-canary-1234"


def installed(name: str) -> Path:
    path = ROOT / ".venv" / name
    assert (path / ".installed").exists(), f"{path} is missing: run `make test`"
    return path


@pytest.mark.parametrize("version", ["oldest", "newest"])
def test_every_aiohttp_style_is_recorded(start_simulator, captures, version) -> None:
    simulator = start_simulator(CLOSE_AFTER_CLEAR, DROP_ON_REQUEST)
    aiohttp = installed(f"aiohttp-{version}")
    result = rtcap_run(
        captures, sys.executable, str(APPS / "aiohttp_styles.py"), simulator.url, pythonpath=str(aiohttp)
    )
    assert result.returncode == 0, result.stderr
    [dist] = aiohttp.glob("aiohttp-*.dist-info")
    expected = dist.name.removeprefix("aiohttp-").removesuffix(".dist-info")
    assert version == "newest" or expected == "3.9.0"
    assert result.stdout.strip() == expected
    assert result.stderr == f"rtcap: recorded 5 sessions in {captures}\n"
    by_path = {s.path: s for s in simulator.sessions}
    styles = {}
    for path in capture_files(captures):
        capture = read_capture(path)
        assert capture.state == "closed", capture.problems
        assert capture.header["recorder"] == "shim"
        assert AIOHTTP_CANARY.encode() not in path.read_bytes()
        url = capture.header["url"]
        styles[url.rpartition("style=")[2] if "style=" in url else url.rpartition("/")[2]] = capture
        if url.startswith(simulator.url) and capture.header["response_status"] == 101:
            session = by_path[url[len(simulator.url) :]]
            assert session.done.wait(10)
            if "dropped" in url:
                assert [m.data() for m in capture.messages if m.direction == "received"] == [
                    m.encode() for m in session.sent
                ]
                assert [m.data() for m in capture.messages if m.direction == "sent"] == [
                    m.encode() for m in session.received
                ]
                assert (capture.end["closed_by"], capture.end["code"]) == ("server", 1006)
            else:
                # aiohttp answers the server's close with 1000 and no reason: the server
                # logs the client's close frame, the capture who closed first.
                closed = ("server", 1000, "done") if "context" in url else ("client", 1000, "")
                assert_same_as_server(path, session, end=closed)
    assert sorted(styles) == ["awaited", "context", "dropped", "rejected", "unreachable"]
    assert styles["context"].header["subprotocol"] == "realtime"
    assert styles["context"].header["subprotocols"] == ["realtime"]
    assert any(m.opcode == "binary" for m in styles["context"].messages)
    assert styles["rejected"].header["response_status"] == 404 and "HTTP 404" in styles["rejected"].end["error"]
    assert styles["unreachable"].header["response_status"] is None
    assert "handshake failed" in styles["unreachable"].end["error"]


@pytest.mark.parametrize("framework", ["livekit", "pipecat"])
def test_a_framework_turn_with_a_tool_call_is_recorded(simulator, captures, framework) -> None:
    # LiveKit's realtime model talks over aiohttp, Pipecat's over websockets.
    venv = ROOT / f".venv-{framework}"
    assert (venv / ".installed").exists(), f"{venv} is missing: run `make test`"
    key = f"sk-{framework}-canary-5678"
    result = rtcap_run(captures, str(venv / "bin" / "python"), str(APPS / f"{framework}_app.py"), simulator.url, key)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == ["get_weather", "True"]  # the tool was called, then a reply
    assert result.stderr.endswith(f"rtcap: recorded 1 session in {captures}\n")
    [path] = capture_files(captures)
    [session] = simulator.sessions
    assert session.done.wait(10)
    assert_same_as_server(path, session)
    assert key.encode() not in path.read_bytes()
    messages = [(m.direction, json.loads(m.data())) for m in read_capture(path).messages]
    assert ("received", "response.function_call_arguments.done") in [(d, e["type"]) for d, e in messages]
    assert any(d == "sent" and e.get("item", {}).get("type") == "function_call_output" for d, e in messages)
