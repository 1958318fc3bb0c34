"""The stacks voice agents are built on, as real clients: aiohttp under `rtcap run` (the
oldest and newest aiohttp the shim supports), LiveKit Agents' and Pipecat's OpenAI realtime
clients under `rtcap run` (each in a venv of its own, made by `make test`), Node clients
(the openai package's realtime client and `ws`, installed in tests/node by `make test`) and
Debian's headless Chromium through `rtcap proxy`."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from analyzer.locate import capture_files
from recorder.capture import read_capture
from tests.conftest import PROXY_VARS
from tests.test_proxy import wait_for
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


def test_install_and_uninstall_with_aiohttp_in_process(simulator, captures) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTCAP_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(installed("aiohttp-newest"))])
    app = APPS / "aiohttp_install.py"
    result = subprocess.run(
        [sys.executable, str(app), simulator.url, str(captures)], capture_output=True, text=True, timeout=60, env=env
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok\n", "")
    [path] = capture_files(captures)
    capture = read_capture(path)
    assert capture.header["url"].endswith("&run=recorded") and capture.header["labels"] == {"via": "api"}
    [recorded, _] = simulator.sessions
    assert recorded.done.wait(10)
    assert_same_as_server(path, recorded, end=("client", 1000, ""))


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


NODE_DIR = ROOT / "tests" / "node"
PAGE = ROOT / "tests" / "browser" / "realtime.html"


def assert_relayed_exactly(captures: Path, session, key: str):
    """The proxy's one capture holds exactly what the server received and sent, unredacted
    (no message held the key), and the key appears nowhere in the file."""
    [path] = capture_files(captures)
    wait_for(lambda: read_capture(path).state == "closed")
    capture = read_capture(path)
    assert [m.data() for m in capture.messages if m.direction == "sent"] == [
        m.encode() if isinstance(m, str) else m for m in session.received
    ]
    assert [m.data() for m in capture.messages if m.direction == "received"] == [
        m.encode() if isinstance(m, str) else m for m in session.sent
    ]
    assert not any(m.redacted for m in capture.messages)
    assert key.encode() not in path.read_bytes()
    return capture


@pytest.mark.parametrize("script", ["openai_realtime.mjs", "ws_client.mjs"])
def test_node_clients_are_recorded_through_the_proxy(simulator, start_proxy, captures, script) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed on this machine (the Node clients need it)")
    assert (NODE_DIR / "node_modules" / ".installed").exists(), "tests/node/node_modules is missing: run `make test`"
    proxy = start_proxy(simulator.url)
    key = "sk-node-canary-0a1b2c3d"
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    result = subprocess.run(
        [node, script, proxy.url, key], cwd=NODE_DIR, capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == (["get_weather", "ok"] if script.startswith("openai") else ["ok"])
    [session] = simulator.sessions
    assert session.done.wait(10)
    capture = assert_relayed_exactly(captures, session, key)
    headers = {k.lower(): v for k, v in capture.header["request_headers"]}
    assert headers["authorization"] == "[REDACTED]" and session.headers["Authorization"] == f"Bearer {key}"
    assert (capture.end["closed_by"], capture.end["code"]) == ("client", 1000)
    if script.startswith("openai"):  # a turn with a tool call
        sent = [json.loads(m.data()) for m in capture.messages if m.direction == "sent"]
        assert [e["type"] for e in sent][-2:] == ["conversation.item.create", "response.create"]
        assert sent[-2]["item"]["type"] == "function_call_output"
    else:
        assert any(m.opcode == "binary" for m in capture.messages)


class _Page(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, directory=str(PAGE.parent), **kwargs)

    def log_message(self, *args) -> None:
        pass


def test_a_browser_is_recorded_through_the_proxy(simulator, start_proxy, captures, browser) -> None:
    proxy = start_proxy(simulator.url)
    key = "sk-browser-canary-4e5f6a7b"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page = browser.new_page()
        try:
            page.goto(f"http://127.0.0.1:{server.server_port}/{PAGE.name}?url={proxy.url}&key={key}")
            page.wait_for_function("window.result !== undefined", timeout=30_000)
            result = page.evaluate("window.result")
        finally:
            page.close()
    finally:
        server.shutdown()
        server.server_close()
    assert result["protocol"] == "realtime" and result["code"] == 1000
    assert result["types"][0] == "session.created" and result["types"][-1] == "response.done"
    [session] = simulator.sessions
    assert session.done.wait(10)
    assert session.headers["Sec-WebSocket-Protocol"] == f"realtime, openai-insecure-api-key.{key}"
    capture = assert_relayed_exactly(captures, session, key)
    assert capture.header["subprotocol"] == "realtime"
    assert capture.header["subprotocols"] == ["realtime", "openai-insecure-api-key.[REDACTED]"]
    assert any(m.opcode == "binary" for m in capture.messages)
    assert (capture.end["closed_by"], capture.end["code"], capture.end["reason"]) == ("client", 1000, "bye")


def test_kill_9_of_an_aiohttp_app_keeps_every_message_it_had(start_simulator, captures, tmp_path) -> None:
    simulator = start_simulator(speed=5)  # slow enough that the kill lands inside a response
    app = tmp_path / "stream.py"
    app.write_text(
        "import asyncio, json, sys\n"
        "import aiohttp\n"
        "async def main():\n"
        "    async with aiohttp.ClientSession() as session, session.ws_connect(sys.argv[1]) as ws:\n"
        "        print(await ws.receive_str(), flush=True)\n"
        "        await ws.send_str(json.dumps({'type': 'response.create'}))\n"
        "        async for message in ws:\n"
        "            print(message.data, flush=True)\n"
        "asyncio.run(main())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTCAP_") and k not in PROXY_VARS}
    env["PYTHONPATH"] = str(installed("aiohttp-newest"))
    command = [sys.executable, "-m", "analyzer", "run", "--captures", str(captures), "--"]
    proc = subprocess.Popen(
        [*command, sys.executable, str(app), simulator.url + "/v1/realtime?model=gpt-realtime"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    try:
        got = [proc.stdout.readline().rstrip("\n") for _ in range(10)]
        os.kill(proc.pid, 9)  # rtcap run exec'd the app: this is the app
        proc.wait(10)
    finally:
        proc.kill()
        proc.wait()
    assert json.loads(got[-1])["type"].endswith("delta")  # killed inside the response
    capture = read_capture(capture_files(captures)[0])
    assert capture.state == "damaged"
    assert [m.data().decode() for m in capture.messages if m.direction == "received"][: len(got)] == got
