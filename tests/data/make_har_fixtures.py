"""Make the HAR fixtures of tests/test_har.py from real tools (run once; the files are data).

One conversation, recorded three ways at once:

    headless Chromium (Playwright, record_har) -> mitmdump 11.0.2 (reverse proxy, savehar)
                                                -> rtcap simulate --record

- ``har-chromium.har``: the HAR Chromium wrote (Playwright's ``record_har_path``, content
  embedded: ``_webSocketMessages``);
- ``har-mitmproxy.har``: the HAR mitmproxy's savehar addon wrote (``--set hardump=``);
- ``har-simulator.jsonl``: ``rtcap export`` of the session the simulator recorded, what
  the server saw: the messages both HARs must hold.

The page offers a key-bearing subprotocol, so that the fixtures show its redaction. The
simulator answers with server VAD (speech started and stopped), a tool call, a failed
response (``fail nth=2``) and a completed one.

Needs Debian's chromium, Playwright's Python package in .venv (``.venv/bin/pip install
playwright``) and ``make .venv-mitmproxy/bin/mitmdump``. Run from the repository root:

    .venv/bin/python tests/data/make_har_fixtures.py
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
RTCAP = ROOT / ".venv" / "bin" / "rtcap"
MITMDUMP = ROOT / ".venv-mitmproxy" / "bin" / "mitmdump"

PAGE = """<!doctype html><title>rtcap HAR fixture</title><script>
function tone(ms, level) {
  const bytes = new Uint8Array(48 * ms);
  for (let i = 1; i < bytes.length; i += 2) bytes[i] = level;
  let text = "";
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text);
}
const TOOL = {type: "function", name: "get_weather", description: "The weather in a city",
  parameters: {type: "object", properties: {city: {type: "string"}}, required: ["city"]}};
window.conversation = new Promise((resolve, reject) => {
  const ws = new WebSocket(URL_HERE, ["realtime", "openai-insecure-api-key.sk-fixture-secret-1234"]);
  const send = (event) => ws.send(JSON.stringify(event));
  let done = 0;
  ws.onerror = () => reject(new Error("websocket error"));
  ws.onclose = (e) => resolve({code: e.code, reason: e.reason, done});
  ws.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.type === "session.created") {
      send({type: "session.update", session: {type: "realtime", tools: [TOOL], tool_choice: "required"}});
      for (let i = 0; i < 3; i++) send({type: "input_audio_buffer.append", audio: tone(100, 48)});
      for (let i = 0; i < 7; i++) send({type: "input_audio_buffer.append", audio: tone(100, 0)});
    }
    if (event.type !== "response.done") return;
    done += 1;
    const output = event.response.output || [];
    if (done === 1 && output.length && output[0].type === "function_call") {
      send({type: "conversation.item.create", item: {type: "function_call_output",
        call_id: output[0].call_id, output: '{"celsius": 21}'}});
      send({type: "response.create", response: {tool_choice: "none"}});
    } else if (done === 2) {
      send({type: "conversation.item.create", item: {type: "message", role: "user",
        content: [{type: "input_text", text: "Try again, please."}]}});
      send({type: "response.create", response: {tool_choice: "none", metadata: {topic: "weather"}}});
    } else {
      ws.close(1000, "bye");
    }
  };
});
</script>"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def main() -> None:
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="rtcap-har-"))
    captures = work / "captures"
    simulator = subprocess.Popen(
        [RTCAP, "simulate", "--listen", "127.0.0.1:0", "--seed", "7", "--speed", "5"]
        + ["--fault", "fail nth=2", "--record", "--captures", str(captures)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert simulator.stdout is not None
    simulator_url = simulator.stdout.readline().split()[-1]  # "rtcap simulate: ws://HOST:PORT"
    port = free_port()
    mitm_har = work / "mitmproxy.har"
    mitm = subprocess.Popen(
        [MITMDUMP, "--mode", f"reverse:{simulator_url.replace('ws://', 'http://')}", "--listen-host", "127.0.0.1"]
        + ["--listen-port", str(port), "--set", f"hardump={mitm_har}", "-q"],
    )
    try:
        wait_for_port(port, time.monotonic() + 30)
        chromium_har = work / "chromium.har"
        url = f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True)
            context = browser.new_context(record_har_path=str(chromium_har), record_har_content="embed")
            page = context.new_page()
            page.set_content(PAGE.replace("URL_HERE", json.dumps(url)))
            print("page:", page.evaluate("window.conversation"), file=sys.stderr)
            context.close()
            browser.close()
    finally:
        mitm.send_signal(signal.SIGINT)
        mitm.wait(30)
        simulator.send_signal(signal.SIGINT)
        simulator.wait(30)
    [recorded] = sorted(captures.glob("*/*.msgpack"))
    exported = subprocess.run([RTCAP, "export", str(recorded)], check=True, capture_output=True, text=True).stdout
    (DATA / "har-simulator.jsonl").write_text(exported)
    shutil.copyfile(chromium_har, DATA / "har-chromium.har")
    shutil.copyfile(mitm_har, DATA / "har-mitmproxy.har")
    print(f"wrote {DATA}/har-chromium.har, har-mitmproxy.har, har-simulator.jsonl", file=sys.stderr)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
