"""The in-process shim: `rtcap run` and `recorder.install()` with real clients."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.protocol import Protocol

import recorder
from analyzer.locate import capture_files
from recorder.capture import read_capture
from tests.conftest import REALTIME, EchoServer

ROOT = Path(__file__).parent.parent
APPS = Path(__file__).parent / "apps"
CANARY = "sk-canary-shim-8d3e1f0a"
CLOSE_AFTER_CLEAR = "close code=1000 reason=done sent=input_audio_buffer.clear"  # what ws_styles.py expects
RTCAP = str(Path(sys.executable).parent / "rtcap")  # the console script, as users run it
NOTHING_RECORDED = (
    "recorded no session: the program opened no connection with websockets or aiohttp; "
    "for other clients, use `rtcap proxy`"
)


def rtcap_run(captures: Path, *command: str, options: tuple[str, ...] = (), pythonpath: str | None = None, **kwargs):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTCAP_") and "PROXY" not in k.upper()}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run(
        [RTCAP, "run", "--captures", str(captures), *options, "--", *command],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=kwargs.pop("cwd", ROOT),
        **kwargs,
    )


def assert_same_as_server(path: Path, session, end: tuple[str, int, str] | None = None) -> None:
    """The capture holds exactly what the server saw and sent, handshake to close (the
    close as the server saw it, unless ``end`` gives the capture's (closed_by, code, reason))."""
    capture = read_capture(path)
    assert capture.state == "closed", capture.problems
    sent = [m.data() for m in capture.messages if m.direction == "sent"]
    received = [m.data() for m in capture.messages if m.direction == "received"]
    as_bytes = [m.encode() if isinstance(m, str) else m for m in session.received]
    assert sent == as_bytes
    assert received == [m.encode() if isinstance(m, str) else m for m in session.sent]
    assert capture.header["url"].endswith(session.path)
    seen = {k.lower(): v for k, v in session.headers.raw_items()}
    recorded = {k.lower(): v for k, v in capture.header["request_headers"]}
    for name, value in seen.items():
        assert recorded[name] == ("[REDACTED]" if name in ("authorization", "api-key") else value), name
    closer = "server" if session.close_reason == "done" else "client"  # the close fault says "done"
    assert (capture.end["closed_by"], capture.end["code"], capture.end["reason"]) == (
        end or (closer, session.close_code, session.close_reason)
    )


def test_openai_sdk_async_sync_and_agents_under_rtcap_run(simulator, captures) -> None:
    result = rtcap_run(
        captures,
        sys.executable,
        str(APPS / "sdk_app.py"),
        simulator.url,
        CANARY,
        "--agents",
        options=("--label", "app=sdk"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"
    paths = capture_files(captures)
    assert len(paths) == len(simulator.sessions) == 3
    for path, session in zip(paths, simulator.sessions, strict=True):
        assert session.done.wait(10)
        assert_same_as_server(path, session)
        capture = read_capture(path)
        assert capture.header["recorder"] == "shim" and capture.header["labels"] == {"app": "sdk"}
        assert CANARY.encode() not in path.read_bytes()
    audio = [a for m in read_capture(paths[0]).messages for a in m.audio()]
    assert audio[0] == bytes(range(256)) * 30


@pytest.mark.parametrize("version", ["oldest", "newest"])
def test_every_websockets_api_style_is_recorded(start_simulator, captures, version) -> None:
    simulator = start_simulator(CLOSE_AFTER_CLEAR)
    installed = ROOT / ".venv" / f"websockets-{version}"
    assert (installed / ".installed").exists(), f"{installed} is missing: run `make test`"
    result = rtcap_run(captures, sys.executable, str(APPS / "ws_styles.py"), simulator.url, pythonpath=str(installed))
    assert result.returncode == 0, result.stderr
    [dist] = installed.glob("websockets-*.dist-info")
    expected = dist.name.removeprefix("websockets-").removesuffix(".dist-info")
    assert version == "newest" or expected == "13.0"
    assert result.stdout.strip() == expected
    by_path = {s.path: s for s in simulator.sessions}
    paths = capture_files(captures)
    assert len(paths) == 8
    rejected = []
    for path in paths:
        capture = read_capture(path)
        route = capture.header["url"][len(simulator.url) :]
        if capture.header["response_status"] == 404:
            assert capture.state == "closed" and "HTTP 404" in capture.end["error"]
            rejected.append(route)
            continue
        session = by_path[route]
        assert session.done.wait(10)
        assert_same_as_server(path, session)
    assert sorted(rejected) == ["/legacy-rejected", "/rejected"]


def test_match_records_only_matching_urls(start_simulator, captures) -> None:
    simulator = start_simulator(CLOSE_AFTER_CLEAR)
    options = ("--match", "*style=sync")
    result = rtcap_run(captures, sys.executable, str(APPS / "ws_styles.py"), simulator.url, options=options)
    assert result.returncode == 0, result.stderr
    [path] = capture_files(captures)
    assert read_capture(path).header["url"] == f"{simulator.url}{REALTIME}&style=sync"


def test_an_unwritable_capture_directory_does_not_break_the_app(start_simulator, tmp_path) -> None:
    simulator = start_simulator(CLOSE_AFTER_CLEAR)
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = rtcap_run(blocker / "captures", sys.executable, str(APPS / "ws_styles.py"), simulator.url)
    assert result.returncode == 0 and result.stdout.strip()
    warnings = [line for line in result.stderr.splitlines() if line.startswith("rtcap: warning:")]
    assert len(warnings) == 1 and "cannot write captures" in warnings[0]
    assert (
        result.stderr.splitlines()[-1]
        == f"rtcap: recorded no session: 8 sessions could not be written to {blocker}/captures"
    )


def test_an_app_with_its_own_recorder_module_is_still_recorded(simulator, captures, tmp_path) -> None:
    (tmp_path / "recorder.py").write_text("NAME = 'the app own recorder'\n")
    (tmp_path / "app.py").write_text(
        "import sys, recorder\n"
        "from websockets.sync.client import connect\n"
        "with connect(sys.argv[1]) as ws:\n"
        "    ws.recv()\n"
        "print(recorder.NAME)\n"
    )
    result = rtcap_run(captures, sys.executable, "app.py", simulator.url + REALTIME, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "the app own recorder\n"
    [path] = capture_files(captures)
    assert len(read_capture(path).messages) == 1


def test_exit_codes_and_existing_sitecustomize_pass_through(captures, tmp_path) -> None:
    (tmp_path / "sitecustomize.py").write_text("import os\nos.environ['THEIRS'] = 'loaded'\n")
    code = "import os, sys; print(os.environ.get('THEIRS')); sys.exit(7)"
    result = rtcap_run(captures, sys.executable, "-c", code, pythonpath=str(tmp_path))
    assert (result.returncode, result.stdout) == (7, "loaded\n")
    assert result.stderr == f"rtcap: {NOTHING_RECORDED}\n"


def test_a_program_not_found_exits_127_and_one_not_runnable_126(captures, tmp_path) -> None:
    missing = rtcap_run(captures, "nosuchprog-xyz")
    assert missing.returncode == 127 and missing.stdout == ""
    assert missing.stderr.startswith("rtcap: error: cannot run nosuchprog-xyz") and missing.stderr.count("\n") == 1
    script = tmp_path / "not-executable.sh"
    script.write_text("echo ran\n")
    script.chmod(0o600)
    denied = rtcap_run(captures, str(script))
    assert denied.returncode == 126 and denied.stdout == ""
    assert denied.stderr.startswith(f"rtcap: error: cannot run {script}") and denied.stderr.count("\n") == 1


def test_an_interpreter_that_cannot_load_the_shim_gets_one_warning(captures, tmp_path) -> None:
    # A Python without msgpack stands for one the shim cannot run in.
    (tmp_path / "msgpack.py").write_text("raise ImportError('no msgpack here')\n")
    script = f'PYTHONPATH="$PYTHONPATH:{tmp_path}" exec {sys.executable} -c "print(\'ran\')"'
    result = rtcap_run(captures, "sh", "-c", script)
    assert result.returncode == 0 and result.stdout == "ran\n"
    [warning] = result.stderr.splitlines()
    assert warning.startswith("rtcap: warning: this interpreter") and "rtcap proxy" in warning


def test_kill_9_of_the_app_keeps_every_message_it_had(start_simulator, captures, tmp_path) -> None:
    simulator = start_simulator(speed=5)  # slow enough that the kill lands inside a response
    app = tmp_path / "stream.py"
    app.write_text(
        "import json, sys\n"
        "from websockets.sync.client import connect\n"
        "with connect(sys.argv[1]) as ws:\n"
        "    print(ws.recv(), flush=True)\n"
        "    ws.send(json.dumps({'type': 'response.create'}))\n"
        "    for message in ws:\n"
        "        print(message, flush=True)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTCAP_")}
    proc = subprocess.Popen(
        [RTCAP, "run", "--captures", str(captures), "--", sys.executable, str(app), simulator.url + REALTIME],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    try:
        got = [proc.stdout.readline().rstrip("\n") for _ in range(10)]
        os.kill(proc.pid, signal.SIGKILL)  # rtcap run exec'd the app: this is the app
        proc.wait(10)
    finally:
        proc.kill()
        proc.wait()
    assert json.loads(got[-1])["type"].endswith("delta")  # killed inside the response
    capture = read_capture(capture_files(captures)[0])
    assert capture.state == "damaged"
    assert [m.data().decode() for m in capture.messages if m.direction == "sent"] == ['{"type": "response.create"}']
    assert [m.data().decode() for m in capture.messages if m.direction == "received"][: len(got)] == got


def test_install_uninstall_and_recording_in_process(simulator, captures) -> None:
    originals = {name: Protocol.__dict__[name] for name in ("send_text", "events_received", "receive_eof")}

    async def talk(name: str) -> None:
        async with connect(f"{simulator.url}{REALTIME}&run={name}") as ws:
            await ws.recv()
            await ws.send("hello")
            assert json.loads(await ws.recv())["error"]["code"] == "invalid_json"

    with recorder.recording(captures=captures, labels={"via": "api"}):
        assert Protocol.__dict__["send_text"] is not originals["send_text"]
        asyncio.run(talk("recorded"))
    assert {name: Protocol.__dict__[name] for name in originals} == originals
    asyncio.run(talk("not-recorded"))
    recorder.install(captures=captures, audio=False)
    try:
        asyncio.run(talk("again"))
    finally:
        recorder.uninstall()
    urls = [read_capture(p).header["url"] for p in capture_files(captures)]
    assert urls == [f"{simulator.url}{REALTIME}&run=recorded", f"{simulator.url}{REALTIME}&run=again"]
    first = read_capture(capture_files(captures)[0])
    assert first.header["labels"] == {"via": "api"}
    assert [m.data() for m in first.messages] == [
        m.encode() for m in simulator.sessions[0].sent[:1] + ["hello"] + simulator.sessions[0].sent[1:]
    ]
    assert read_capture(capture_files(captures)[1]).header["audio"] is False


def test_uninstall_ends_sessions_still_open(simulator, captures) -> None:
    async def talk() -> None:
        async with connect(simulator.url + REALTIME) as ws:
            await ws.recv()
            recorder.uninstall()
            await ws.send("after uninstall")
            await ws.recv()

    recorder.install(captures=captures)
    asyncio.run(talk())
    capture = read_capture(capture_files(captures)[0])
    assert capture.state == "closed" and len(capture.messages) == 1
    assert capture.end["error"] == "recording stopped (recorder.uninstall)"


def test_any_payload_is_recorded_and_the_recording_goes_on(captures, capsys) -> None:
    from tests.test_proxy import PAYLOADS

    texts = list(PAYLOADS.values())

    async def talk(url: str) -> None:
        async with connect(url, max_size=None) as ws:
            for text in [*texts, '{"type":"after"}']:
                await ws.send(text)
                assert await ws.recv() == text

    with EchoServer() as echo, recorder.recording(captures=captures):
        asyncio.run(talk(echo.url + REALTIME))
    capture = read_capture(capture_files(captures)[0])
    assert capture.state == "closed" and capture.end["code"] == 1000
    assert [m.data().decode() for m in capture.messages] == [t for t in [*texts, '{"type":"after"}'] for _ in "sr"]
    assert "rtcap: warning" not in capsys.readouterr().err


def test_a_client_the_shim_does_not_record_is_named_once(simulator, captures, tmp_path) -> None:
    (tmp_path / "app.py").write_text(
        "import sys\n"
        "import websocket\n"
        "for _ in range(2):\n"
        "    ws = websocket.create_connection(sys.argv[1])\n"
        "    print(ws.recv()[:30])\n"
        "    ws.close()\n"
    )
    installed = ROOT / ".venv" / "websocket-client"
    assert (installed / ".installed").exists(), f"{installed} is missing: run `make test`"
    result = rtcap_run(
        captures, sys.executable, "app.py", simulator.url + REALTIME, pythonpath=str(installed), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == '{"type":"session.created","eve\n' * 2
    assert result.stderr.splitlines() == [
        "rtcap: warning: this program opens a WebSocket with websocket-client, which `rtcap run` does not record; "
        "put `rtcap proxy` in front of the app instead",
        f"rtcap: {NOTHING_RECORDED}",
    ]
    assert capture_files(captures) == []


def test_at_exit_the_program_says_how_many_sessions_it_recorded(simulator, captures, tmp_path) -> None:
    (tmp_path / "app.py").write_text(
        "import subprocess, sys\n"
        "from websockets.sync.client import connect\n"
        "for _ in range(int(sys.argv[2])):\n"
        "    with connect(sys.argv[1]) as ws:\n"
        "        ws.recv()\n"
        "if sys.argv[2] == '2':  # a child Python process reports what it recorded, if anything\n"
        "    subprocess.run([sys.executable, 'app.py', sys.argv[1], '1'], check=True)\n"
        "    subprocess.run([sys.executable, 'app.py', sys.argv[1], '0'], check=True)\n"
    )
    result = rtcap_run(captures, sys.executable, "app.py", simulator.url + REALTIME, "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"rtcap: recorded 1 session in {captures}",
        f"rtcap: recorded 2 sessions in {captures}",
    ]
    assert len(capture_files(captures)) == 3


def test_a_program_that_is_not_python_is_named_before_it_runs(captures) -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not installed on this machine")
    result = rtcap_run(captures, "node", "-e", "console.log('ran'); process.exit(3)")
    assert (result.returncode, result.stdout) == (3, "ran\n")
    assert result.stderr == (
        "rtcap: warning: node runs Node, which `rtcap run` cannot record; "
        "put `rtcap proxy` in front of the app instead\n"
    )
