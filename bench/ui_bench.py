"""The session page and ``rtcap ui`` at scale, in headless Chromium (Debian's, through Playwright).

1. A long call of about 20,000 messages (the simulator, no sockets): how long the page takes
   to compute server-side, and, in the browser, until it is drawn (navigation start to the
   first paint of every lane) and how long a click on an event takes to show its JSON and a
   zoom to redraw. Target: drawn and interactive within 1 s. Measured for the page as
   ``rtcap ui`` serves it (audio by URL), as ``rtcap show --html --no-audio`` writes it, and
   with the audio embedded (a long call's audio is tens of MB of base64: shown, not targeted).
2. 100,000 sessions: the sessions list's first, middle and last pages, a sort, a search and a
   filter, each a page of 50 rows computed by DuckDB (never all the sessions in Python or in
   the page), timed in the browser; the server's memory before and after.

    .venv/bin/python bench/ui_bench.py [--messages 20000] [--sessions 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analyzer.locate import load_session  # noqa: E402
from analyzer.page import page_data, render  # noqa: E402
from analyzer.sim.traffic import record_direct  # noqa: E402
from analyzer.views import open_captures  # noqa: E402
from recorder.session import RECEIVED, SENT, SessionRecorder  # noqa: E402

TARGET_MS = 1000.0


class Server:
    def __init__(self, root: Path) -> None:
        import uvicorn

        from analyzer.ui.app import create_app

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(root), log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def long_call(root: Path, messages: int) -> str:
    """One simulated voice session of about ``messages`` messages (turns of ~90 each)."""
    turns = max(1, round(messages / 91))
    record_direct(root, ["fail p=0.03"], sessions=1, seed=11, turns=(turns, turns), think=3.0)
    [row] = open_captures(root).sql("SELECT session_id FROM sessions").to_pylist()
    return row["session_id"]


def page_timings(browser: Any, url: str, click_seq: int) -> dict[str, float]:
    """Navigation start to drawn; then a click on an event until its JSON shows; a zoom until redrawn."""
    context = browser.new_context(viewport={"width": 1600, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    started = time.perf_counter()
    page.goto(url, wait_until="commit")
    page.wait_for_function("() => window.rtcap && window.rtcap.ready", timeout=120_000)
    wall_ms = (time.perf_counter() - started) * 1000
    drawn_ms = page.evaluate("window.rtcap.readyAt")
    page.evaluate(f"window.rtcap.go({click_seq})")
    point = page.evaluate(f"window.rtcap.point({click_seq})")
    page.evaluate("document.getElementById('json').dataset.seq = ''")
    started = time.perf_counter()
    page.mouse.click(point["x"], point["y"])
    page.wait_for_function("() => document.getElementById('json').dataset.seq !== ''")
    click_ms = (time.perf_counter() - started) * 1000
    page.evaluate("window.rtcap.setView(0, 1e9)")
    before = page.evaluate("window.rtcap.drawn")
    started = time.perf_counter()
    page.mouse.move(800, 150)
    page.mouse.wheel(0, -300)
    page.wait_for_function(f"() => window.rtcap.drawn > {before}")
    zoom_ms = (time.perf_counter() - started) * 1000
    context.close()
    if errors:
        raise SystemExit(f"page errors: {errors}")
    return {"drawn_ms": drawn_ms, "wall_ms": wall_ms, "click_ms": click_ms, "zoom_ms": zoom_ms}


def bench_page(browser: Any, messages: int, work: Path) -> None:
    root = work / "long"
    sid = long_call(root, messages)
    captures = open_captures(root)
    [info] = captures.sql("SELECT messages, duration_s FROM sessions").to_pylist()
    [click] = captures.sql(
        "SELECT seq FROM events WHERE type = 'response.create' ORDER BY seq LIMIT 1 OFFSET 100"
    ).to_pylist()
    capture = load_session(root, sid)
    print(f"1. a session of {info['messages']} messages, {info['duration_s'] / 60:.1f} minutes")
    variants = []
    for name, audio in (("without audio", None), ("audio embedded", "embed")):
        started = time.perf_counter()
        text = render(page_data(captures, capture, audio=audio))
        compute_s = time.perf_counter() - started
        path = work / f"page-{audio or 'none'}.html"
        path.write_text(text)
        variants.append((f"rtcap show --html ({name})", path.as_uri(), compute_s, len(text.encode())))
    server = Server(root)
    try:
        started = time.perf_counter()
        import urllib.request

        body = urllib.request.urlopen(f"{server.url}/session/{sid}").read()
        variants.insert(
            0, ("rtcap ui (audio by URL)", f"{server.url}/session/{sid}", time.perf_counter() - started, len(body))
        )
        for name, url, compute_s, size in variants:
            t = page_timings(browser, url, click["seq"])
            ok = "meets" if t["drawn_ms"] + t["click_ms"] < TARGET_MS else "MISSES"
            print(
                f"   {name:36} page {size / 1e6:6.1f} MB, computed in {compute_s:5.2f} s; in Chromium: drawn "
                f"{t['drawn_ms']:6.0f} ms after navigation (load to ready {t['wall_ms']:6.0f} ms), click to JSON "
                f"{t['click_ms']:4.0f} ms, zoom redraw {t['zoom_ms']:4.0f} ms: drawn + click "
                f"{t['drawn_ms'] + t['click_ms']:5.0f} ms, {(t['drawn_ms'] + t['click_ms']) / TARGET_MS:.2f}x the "
                f"1 s target ({ok})"
            )
    finally:
        server.stop()


def many_sessions(root: Path, count: int) -> None:
    """``count`` small sessions (session.created, a response, one failure in 20), as a proxy writes them."""
    for i in range(count):
        session = SessionRecorder.create(
            root,
            url="wss://api.openai.com/v1/realtime?model=gpt-realtime",
            request_headers=[],
            recorder="proxy",
            labels={"app": f"app{i % 7}"},
        )
        session.start(0)
        created = {"type": "session.created", "session": {"id": f"sess_bench{i:07d}", "model": "gpt-realtime"}}
        session.message(RECEIVED, json.dumps(created), 1_000_000)
        session.message(SENT, json.dumps({"type": "response.create"}), 2_000_000)
        status = "failed" if i % 20 == 0 else "completed"
        for n in range(i % 5):
            session.message(RECEIVED, json.dumps({"type": "response.output_text.delta", "delta": "x"}), 3_000_000 + n)
        done = {"type": "response.done", "response": {"id": f"resp_{i}", "status": status}}
        if status == "failed":
            done["response"]["status_details"] = {"error": {"type": "server_error", "message": "boom"}}
        session.message(RECEIVED, json.dumps(done), 9_000_000)
        session.end(10_000_000, closed_by="client", code=1000)


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 1e6


def bench_sessions(browser: Any, count: int, work: Path) -> None:
    root = work / "many"
    started = time.perf_counter()
    many_sessions(root, count)
    written = time.perf_counter() - started
    started = time.perf_counter()
    open_captures(root)
    indexed = time.perf_counter() - started
    print(f"\n2. {count} sessions: written in {written:.0f} s, indexed in {indexed:.0f} s")
    server = Server(root)
    context = browser.new_context()
    page = context.new_page()
    before = rss_mb()
    try:
        last = -(-count // 50)
        for name, query in (
            ("first page", ""),
            ("page 2", "page=2"),
            ("middle page", f"page={last // 2}"),
            ("last page", f"page={last}"),
            ("sorted by messages, page 100", "sort=messages&order=asc&page=100"),
            ("search by sess_ id", f"q=sess_bench{count // 3:07d}"),
            ("failed, label app=app3", "failed=1&label=app=app3"),
        ):
            timings = []
            for _ in range(3):
                started = time.perf_counter()
                page.goto(f"{server.url}/?{query}")
                timings.append((time.perf_counter() - started) * 1000)
            rows = page.locator("#sessions tbody td:first-child a").count()
            size = len(page.content().encode())
            print(
                f"   {name:32} {min(timings):6.0f} ms (best of 3, median {sorted(timings)[1]:.0f}), "
                f"{rows} rows, {size / 1e3:.0f} kB of HTML, of '{page.locator('#total').inner_text()}'"
            )
        print(f"   the server's process: {before:.0f} MB before the pages, {rss_mb():.0f} MB after")
    finally:
        context.close()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--sessions", type=int, default=100_000)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("ui_bench needs Debian's chromium (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="rtcap-ui-bench-") as tmp, sync_playwright() as playwright:
        os.environ.pop("RTCAP_CAPTURES", None)
        browser = playwright.chromium.launch(executable_path=chromium)
        bench_page(browser, args.messages, Path(tmp))
        bench_sessions(browser, args.sessions, Path(tmp))
        browser.close()


if __name__ == "__main__":
    main()
