"""``rtcap proxy`` between real clients (the openai SDK, websockets) and a loopback server."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from openai import AsyncAzureOpenAI, AsyncOpenAI
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from analyzer.cli import cli
from analyzer.locate import capture_files
from recorder.capture import read_capture
from recorder.proxy import upstream_url
from tests.conftest import REALTIME, EchoServer

CANARY = "sk-canary-5f2b9c1e7a4d"
README = (Path(__file__).parent.parent / "README.md").read_text()


def export(captures: Path, session: str) -> list[dict]:
    result = CliRunner().invoke(cli, ["export", session, "--captures", str(captures)])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def only_capture(captures: Path) -> Path:
    [path] = capture_files(captures)
    return path


def audio_bytes(messages) -> int:
    """Decoded audio bytes in a list of JSON texts (appends and audio deltas)."""
    total = 0
    for text in messages:
        event = json.loads(text)
        value = event.get("audio") if event["type"] == "input_audio_buffer.append" else event.get("delta")
        if event["type"].endswith("audio.delta") or event["type"] == "input_audio_buffer.append":
            total += len(base64.b64decode(value))
    return total


def until_done(ws) -> list[str]:
    """Receive until the response ends; returns what came."""
    got = [ws.recv()]
    while json.loads(got[-1])["type"] != "response.done":
        got.append(ws.recv())
    return got


def wait_for(predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


def test_openai_sdk_through_the_proxy_is_recorded_byte_for_byte(simulator, start_proxy, captures) -> None:
    proxy = start_proxy(simulator.url, labels={"app": "sdk"})
    received = []

    async def talk() -> None:
        client = AsyncOpenAI(api_key=CANARY, websocket_base_url=proxy.url + "/v1")
        async with client.realtime.connect(model="gpt-realtime") as conn:
            await conn.session.update(session={"type": "realtime", "instructions": "Be brief."})
            await conn.input_audio_buffer.append(audio=base64.b64encode(os.urandom(4800)).decode())
            await conn.input_audio_buffer.commit()
            await conn.response.create()
            async for event in conn:
                received.append(event.type)
                if event.type == "response.done":
                    break

    asyncio.run(talk())
    [session] = simulator.sessions
    session.done.wait(10)
    assert session.path == REALTIME
    wait_for(lambda: read_capture(only_capture(captures)).state == "closed")
    path = only_capture(captures)
    rows = export(captures, path.stem)
    assert [r["seq"] for r in rows] == list(range(len(rows)))
    assert [r["data"] for r in rows if r["direction"] == "sent"] == session.received
    assert [r["data"] for r in rows if r["direction"] == "received"] == session.sent
    assert received[-1] == "response.done" and len(received) == len(session.sent)
    got = read_capture(path)
    assert got.header["labels"] == {"app": "sdk"}
    assert got.header["url"] == simulator.url + REALTIME
    assert got.end is not None and (got.end["closed_by"], got.end["code"]) == ("client", 1000)
    expected = audio_bytes(session.received) + audio_bytes(session.sent)
    assert expected > 4800 and sum(len(a) for m in got.messages for a in m.audio()) == expected
    assert CANARY.encode() not in path.read_bytes()


def test_a_canary_key_appears_nowhere_in_the_captures(simulator, start_proxy, captures) -> None:
    proxy = start_proxy(simulator.url)
    with connect(
        f"{proxy.url}{REALTIME}&api-key={CANARY}",
        additional_headers={"Authorization": f"Bearer {CANARY}", "api-key": CANARY, "X-Custom": "kept"},
        subprotocols=["realtime", f"openai-insecure-api-key.{CANARY}"],
    ) as ws:
        assert ws.subprotocol == "realtime"
        ws.recv()  # session.created
        ws.send(json.dumps({"type": CANARY}))  # the server's error echoes the bad value
        echoed = json.loads(ws.recv())
        assert CANARY in echoed["error"]["message"]
        tools = [{"type": "mcp", "authorization": "mcp-secret-0000", "headers": {"X-Token": "hdr-secret-0000"}}]
        ws.send(json.dumps({"type": "session.update", "session": {"tools": tools}}))
        ws.recv()
    [session] = simulator.sessions
    session.done.wait(10)
    # The server got the real credentials...
    assert session.headers["api-key"] == CANARY and session.headers["X-Custom"] == "kept"
    assert f"api-key={CANARY}" in session.path
    # ...the capture directory has none of them, in any form.
    wait_for(lambda: read_capture(only_capture(captures)).state == "closed")
    for path in captures.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            for secret in (CANARY, "mcp-secret-0000", "hdr-secret-0000"):
                assert secret.encode() not in blob, (path, secret)
                assert base64.b64encode(secret.encode()) not in blob
    got = read_capture(only_capture(captures))
    headers = dict((k.lower(), v) for k, v in got.header["request_headers"])
    assert headers["authorization"] == headers["api-key"] == "[REDACTED]"
    assert headers["x-custom"] == "kept"
    assert "openai-insecure-api-key.[REDACTED]" in headers["sec-websocket-protocol"]
    assert "api-key=[REDACTED]" in got.header["url"]
    rows = export(captures, got.session_id)
    assert [r["redacted"] for r in rows] == [False, True, True, True, True]


def test_user_named_secrets_are_redacted_too(simulator, start_proxy, captures) -> None:
    proxy = start_proxy(simulator.url, redact_headers=["X-Tenant"], redact_query=["sig"])
    with connect(f"{proxy.url}{REALTIME}&sig=signature-secret", additional_headers={"X-Tenant": "tenant-secret"}) as ws:
        ws.recv()
    wait_for(lambda: read_capture(only_capture(captures)).state == "closed")
    blob = only_capture(captures).read_bytes()
    assert b"signature-secret" not in blob and b"tenant-secret" not in blob


def test_an_upstream_401_reaches_the_client_as_401(start_simulator, start_proxy, captures) -> None:
    simulator = start_simulator(api_key="sk-the-right-key-0000")
    proxy = start_proxy(simulator.url)
    with pytest.raises(InvalidStatus) as caught:
        connect(f"{proxy.url}{REALTIME}", additional_headers={"Authorization": "Bearer reject-me-please"})
    response = caught.value.response
    assert response.status_code == 401
    assert json.loads(response.body)["error"]["code"] == "invalid_api_key"
    assert response.headers["X-Request-Id"].startswith("req_")
    got = read_capture(only_capture(captures))
    assert got.state == "closed" and got.header["response_status"] == 401
    assert "HTTP 401" in got.end["error"] and b"reject-me-please" not in only_capture(captures).read_bytes()


def test_an_unreachable_upstream_gives_502_and_a_recorded_session(start_proxy, captures) -> None:
    proxy = start_proxy("ws://127.0.0.1:9/v1")  # discard port: nothing listens
    with pytest.raises(InvalidStatus) as caught:
        connect(f"{proxy.url}/realtime")
    assert caught.value.response.status_code == 502
    got = read_capture(only_capture(captures))
    assert got.header["url"] == "ws://127.0.0.1:9/v1/realtime" and got.messages == []
    assert "upstream unreachable" in got.end["error"] and got.end["closed_by"] == "rtcap"


@pytest.mark.parametrize(("code", "reason"), [(1011, "internal error"), (1000, "done"), (4001, "app code")])
def test_server_close_codes_reach_the_client(start_simulator, start_proxy, captures, code, reason) -> None:
    simulator = start_simulator(f"close code={code} reason={reason.replace(' ', '_')}")
    proxy = start_proxy(simulator.url)
    with connect(proxy.url + REALTIME) as ws:
        ws.recv()
        ws.send(json.dumps({"type": "response.create"}))
        with pytest.raises(ConnectionClosed):
            until_done(ws)
        assert (ws.close_code, ws.close_reason) == (code, reason)
    wait_for(lambda: read_capture(only_capture(captures)).state == "closed")
    end = read_capture(only_capture(captures)).end
    assert (end["closed_by"], end["code"], end["reason"]) == ("server", code, reason)


def test_client_close_codes_reach_the_server(simulator, start_proxy, captures) -> None:
    proxy = start_proxy(simulator.url)
    with connect(proxy.url + REALTIME) as ws:
        ws.recv()
        ws.close(4002, "client says bye")
    [session] = simulator.sessions
    assert session.done.wait(10)
    assert (session.close_code, session.close_reason) == (4002, "client says bye")
    wait_for(lambda: read_capture(only_capture(captures)).state == "closed")
    end = read_capture(only_capture(captures)).end
    assert (end["closed_by"], end["code"]) == ("client", 4002)


def test_a_dropped_upstream_is_a_dropped_client(start_simulator, start_proxy, captures) -> None:
    proxy = start_proxy(start_simulator("drop nth=1").url)
    with connect(proxy.url + REALTIME) as ws:
        ws.recv()
        ws.send(json.dumps({"type": "response.create"}))
        with pytest.raises(ConnectionClosed):
            until_done(ws)
        assert ws.close_code == 1006
    wait_for(lambda: read_capture(only_capture(captures)).state == "closed")
    end = read_capture(only_capture(captures)).end
    assert (end["closed_by"], end["code"]) == ("server", 1006)


def test_large_binary_and_non_json_messages_and_ping(simulator, start_proxy, captures) -> None:
    proxy = start_proxy(simulator.url)
    big = json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(os.urandom(3 << 20)).decode()})
    with connect(proxy.url + REALTIME, max_size=None) as ws:
        ws.recv()
        ws.send(big)
        ws.recv()  # speech_started: random bytes are loud
        ws.send(b"\x00\x01\x02binary")
        assert json.loads(ws.recv())["type"] == "error"
        ws.send("hello, not json")
        assert json.loads(ws.recv())["error"]["code"] == "invalid_json"
        assert ws.ping().wait(10)
    [session] = simulator.sessions
    session.done.wait(10)
    wait_for(lambda: read_capture(only_capture(captures)).state == "closed")
    rows = export(captures, only_capture(captures).stem)
    assert rows[1]["data"] == big and rows[1]["opcode"] == "text"
    sent = [
        r["data"] if r["opcode"] == "text" else base64.b64decode(r["data"]) for r in rows if r["direction"] == "sent"
    ]
    assert sent == session.received == [big, b"\x00\x01\x02binary", "hello, not json"]
    assert [r["data"] for r in rows if r["direction"] == "received"] == session.sent


def test_concurrent_connections_get_their_own_files(simulator, start_proxy, captures) -> None:
    proxy = start_proxy(simulator.url)

    async def one(n: int) -> None:
        from websockets.asyncio.client import connect as aconnect

        async with aconnect(f"{proxy.url}{REALTIME}&n={n}") as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "response.create"}))
            while json.loads(await ws.recv())["type"] != "response.done":
                pass

    async def many() -> None:
        await asyncio.gather(*(one(n) for n in range(5)))

    asyncio.run(many())
    paths = capture_files(captures)
    wait_for(lambda: len(capture_files(captures)) == 5 and all(read_capture(p).state == "closed" for p in paths))
    by_url = {read_capture(p).header["url"]: read_capture(p) for p in capture_files(captures)}
    assert sorted(by_url) == sorted(f"{simulator.url}{REALTIME}&n={n}" for n in range(5))
    for session in simulator.sessions:
        capture = by_url[simulator.url + session.path]
        assert [m.data().decode() for m in capture.messages if m.direction == "received"] == session.sent


def test_an_unwritable_capture_directory_never_stops_the_relay(simulator, start_proxy, tmp_path, capsys) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    proxy = start_proxy(simulator.url, captures=blocker / "captures")
    for _ in range(2):
        with connect(proxy.url + REALTIME) as ws:
            assert json.loads(ws.recv())["type"] == "session.created"
            ws.send(json.dumps({"type": "response.create"}))
            until_done(ws)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "cannot write captures" in line]
    assert len(warnings) == 1


def test_upstream_url_joins_paths_and_merges_queries() -> None:
    assert upstream_url("wss://api.openai.com/v1", "/realtime?model=m") == "wss://api.openai.com/v1/realtime?model=m"
    assert upstream_url("wss://h/v1/", "/v1x") == "wss://h/v1/v1x"
    # An app path that already begins with the upstream's path is not doubled.
    assert upstream_url("wss://api.openai.com/v1", "/v1/realtime?model=m") == "wss://api.openai.com/v1/realtime?model=m"
    assert upstream_url("wss://h/openai/v1/", "/openai/v1/realtime") == "wss://h/openai/v1/realtime"
    assert upstream_url("wss://h/openai", "/openai/realtime?api-version=1") == "wss://h/openai/realtime?api-version=1"
    assert upstream_url("wss://h/openai", "/openai") == "wss://h/openai"
    assert upstream_url("wss://h/openai", "/openaix/realtime") == "wss://h/openai/openaix/realtime"
    assert (
        upstream_url("wss://h/openai/realtime?api-version=1&deployment=d", "/")
        == "wss://h/openai/realtime?api-version=1&deployment=d"
    )
    assert upstream_url("wss://h/p?a=1&b=2", "/q?b=3&c=4") == "wss://h/p/q?a=1&b=3&c=4"
    assert upstream_url("wss://h", "/v1/realtime") == "wss://h/v1/realtime"


def test_kill_9_mid_stream_keeps_every_message_the_client_received(start_simulator, tmp_path) -> None:
    simulator = start_simulator(speed=5)  # slow enough that the kill lands inside a response
    captures = tmp_path / "captures"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "analyzer",
            "proxy",
            "--upstream",
            simulator.url,
            "--listen",
            "127.0.0.1:0",
            "--captures",
            str(captures),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    try:
        first = proc.stdout.readline()
        assert first.startswith("rtcap proxy: ws://127.0.0.1:")
        url = first.split()[2]
        got = []
        with connect(url + REALTIME, close_timeout=0.1) as ws:
            got.append(ws.recv())
            ws.send(json.dumps({"type": "response.create"}))
            for _ in range(10):  # a few deltas into the response
                got.append(ws.recv())
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    finally:
        proc.kill()
        proc.wait()
    capture = read_capture(only_capture(captures))
    assert capture.state == "damaged"
    recorded = [m.data().decode() for m in capture.messages if m.direction == "received"]
    assert recorded[: len(got)] == got
    assert json.loads(got[-1])["type"].endswith("delta")


def test_a_dropped_client_is_a_dropped_upstream(simulator, start_proxy, captures) -> None:
    proxy = start_proxy(simulator.url)

    async def drop() -> None:
        from websockets.asyncio.client import connect as aconnect

        ws = await aconnect(proxy.url + REALTIME)
        await ws.recv()
        ws.transport.abort()

    asyncio.run(drop())
    [session] = simulator.sessions
    assert session.done.wait(10) and session.close_code == 1006
    wait_for(lambda: read_capture(only_capture(captures)).state == "closed")
    end = read_capture(only_capture(captures)).end
    assert (end["closed_by"], end["code"]) == ("client", 1006)


def test_stopping_the_proxy_ends_open_sessions_cleanly(simulator, start_proxy, captures) -> None:
    proxy = start_proxy(simulator.url)
    with connect(proxy.url + REALTIME) as ws:
        ws.recv()
        proxy.__exit__(None, None, None)
        with pytest.raises(ConnectionClosed):
            ws.recv()
        assert ws.close_code == 1001
    [session] = simulator.sessions
    assert session.done.wait(10) and session.close_code == 1001
    got = read_capture(only_capture(captures))
    assert got.state == "closed" and (got.end["closed_by"], got.end["code"]) == ("rtcap", 1001)


# -- every pairing README documents, against a server that routes only the real paths ----------

MODEL, DEPLOYMENT, API_VERSION = "gpt-realtime", "DEPLOYMENT", "2025-04-01-preview"


async def openai_sdk(base_url: str) -> None:
    client = AsyncOpenAI(api_key=CANARY, websocket_base_url=base_url)
    async with client.realtime.connect(model=MODEL) as conn:
        await conn.recv()


async def azure_ga_sdk(base_url: str) -> None:
    client = AsyncOpenAI(
        api_key=CANARY, base_url="https://RESOURCE.openai.azure.com/openai/v1", websocket_base_url=base_url
    )
    async with client.realtime.connect(model=DEPLOYMENT) as conn:
        await conn.recv()


async def azure_preview_sdk(base_url: str) -> None:
    client = AsyncAzureOpenAI(
        api_key=CANARY,
        azure_endpoint="https://RESOURCE.openai.azure.com",
        api_version=API_VERSION,
        websocket_base_url=base_url,
    )
    async with client.realtime.connect(model=DEPLOYMENT) as conn:
        await conn.recv()


# (README's --upstream, what the app is pointed at as README writes it, how it connects, the
# path the real server must get). README's hosts stand for the simulator and the proxy.
PAIRINGS = [
    (
        "wss://api.openai.com/v1",
        'websocket_base_url="ws://127.0.0.1:8765/v1"',
        openai_sdk,
        f"/v1/realtime?model={MODEL}",
    ),
    ("wss://api.openai.com/v1", f"ws://127.0.0.1:8765/v1/realtime?model={MODEL}", None, f"/v1/realtime?model={MODEL}"),
    (
        "wss://RESOURCE.openai.azure.com/openai/v1",
        'websocket_base_url="ws://127.0.0.1:8765/openai/v1"',
        azure_ga_sdk,
        f"/openai/v1/realtime?model={DEPLOYMENT}",
    ),
    (
        "wss://RESOURCE.openai.azure.com/openai/v1",
        f"ws://127.0.0.1:8765/realtime?model={DEPLOYMENT}",
        None,
        f"/openai/v1/realtime?model={DEPLOYMENT}",
    ),
    (
        "wss://RESOURCE.openai.azure.com/openai",
        'websocket_base_url="ws://127.0.0.1:8765/openai"',
        azure_preview_sdk,
        f"/openai/realtime?api-version={API_VERSION}&deployment={DEPLOYMENT}",
    ),
    (
        "wss://RESOURCE.openai.azure.com/openai",
        f"ws://127.0.0.1:8765/realtime?api-version={API_VERSION}&deployment={DEPLOYMENT}",
        None,
        f"/openai/realtime?api-version={API_VERSION}&deployment={DEPLOYMENT}",
    ),
]


@pytest.mark.parametrize(("upstream", "app", "sdk", "path"), PAIRINGS)
def test_every_readme_pairing_reaches_the_real_path(simulator, start_proxy, captures, upstream, app, sdk, path) -> None:
    assert re.search(re.escape(f"--upstream {upstream}") + r"(?![\w/])", README) and app in README
    upstream_host = upstream.split("/")[2]
    proxy = start_proxy(upstream.replace(f"wss://{upstream_host}", simulator.url))
    if sdk is not None:
        base_url = app.split('"')[1].replace("ws://127.0.0.1:8765", proxy.url)
        asyncio.run(sdk(base_url))
    else:
        with connect(app.replace("ws://127.0.0.1:8765", proxy.url)) as ws:
            assert json.loads(ws.recv())["type"] == "session.created"
    [session] = simulator.sessions
    assert session.done.wait(10)
    assert session.path == path
    assert read_capture(only_capture(captures)).header["url"] == simulator.url + path


def test_a_path_the_real_server_does_not_know_is_its_404(simulator, start_proxy) -> None:
    proxy = start_proxy(simulator.url + "/v1")
    with pytest.raises(InvalidStatus) as caught:
        connect(proxy.url + "/v2/realtime?model=m")
    assert caught.value.response.status_code == 404


# -- transparency: the relay forwards what the other side accepts ------------------------------

PAYLOADS = {
    "nested 5,000 deep": '{"type":"conversation.item.create","deep":' + "[" * 5000 + "]" * 5000 + "}",
    "an object nested 5,000 deep": '{"type":"x","a":' + '{"a":' * 5000 + "1" + "}" * 5000 + "}",
    "a lone surrogate as audio": '{"audio":"\\ud800","type":"input_audio_buffer.append"}',
    "a lone surrogate in an item": (
        '{"type":"conversation.item.create","item":{"content":[{"type":"input_audio","audio":"\\udfff"}]}}'
    ),
    "not json": "{" * 100,
}


@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_any_payload_is_relayed_both_ways_and_recorded_as_it_came(start_proxy, captures, payload) -> None:
    text = PAYLOADS[payload]
    with EchoServer() as echo:
        proxy = start_proxy(echo.url)
        with connect(proxy.url + REALTIME, max_size=None) as ws:
            ws.send(text)
            assert ws.recv() == text  # the server got it, and its copy came back
            ws.send('{"type":"after"}')
            assert ws.recv() == '{"type":"after"}'
    wait_for(lambda: read_capture(only_capture(captures)).state == "closed")
    got = read_capture(only_capture(captures))
    assert got.end["closed_by"] == "client" and got.end["code"] == 1000
    assert [(m.direction, m.data().decode()) for m in got.messages] == [
        ("sent", text),
        ("received", text),
        ("sent", '{"type":"after"}'),
        ("received", '{"type":"after"}'),
    ]
