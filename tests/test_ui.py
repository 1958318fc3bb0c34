"""``rtcap ui`` served by uvicorn on a loopback port, driven by Debian's chromium
(one per module): the sessions list, a session's page, precursors, SQL and its downloads,
new captures appearing, and the token."""

from __future__ import annotations

import csv
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from analyzer.cli import cli
from analyzer.sim.traffic import record_direct
from analyzer.views import open_captures

pytest.importorskip("starlette")
pytest.importorskip("playwright.sync_api")  # the whole module drives a browser


class UiServer:
    """``rtcap ui``'s app under uvicorn in a thread, on a port of its own."""

    def __init__(self, root: Path, token: str | None = None) -> None:
        import uvicorn

        from analyzer.ui.app import create_app

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(create_app(root, token=token), log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "rtcap ui did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ui") / "captures"
    record_direct(root, ["fail field=response.create:response.tool_choice.type=function p=0.9"], sessions=12, seed=3)
    return root


@pytest.fixture(scope="module")
def server(root: Path) -> Any:
    running = UiServer(root)
    yield running
    running.stop()


@pytest.fixture
def page(browser: Any, tmp_path: Path) -> Any:
    context = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    opened = context.new_page()
    opened.errors = []
    opened.on("console", lambda message: message.type == "error" and opened.errors.append(message.text))
    opened.on("pageerror", lambda error: opened.errors.append(str(error)))
    yield opened
    opened.screenshot(path=str(tmp_path / "ui.png"), full_page=True)  # an artifact of every test
    context.close()


def _ids(page: Any) -> list[str]:
    return page.locator("#sessions tbody td:first-child a").all_inner_texts()


def test_sessions_list_filters_searches_sorts_and_links(server, root, page) -> None:
    captures = open_captures(root)
    everything = captures.sql(
        "SELECT session_id, server_session_id, failed, messages FROM sessions ORDER BY started_at DESC, session_id DESC"
    ).to_pylist()
    page.goto(server.url + "/")
    assert page.locator("#total").inner_text() == f"{len(everything)} sessions"
    assert _ids(page) == [s["session_id"] for s in everything]  # newest first
    page.locator("input[name=failed]").check()
    with page.expect_navigation():  # the filter is a new page: read it once it has loaded
        page.locator("button", has_text="filter").click()
    failed = [s["session_id"] for s in everything if s["failed"]]
    assert 0 < len(failed) < len(everything) and _ids(page) == failed
    assert "failed=1" in page.url  # the URL is the state: it can be shared
    # search by the server's sess_ id
    one = everything[3]
    page.goto(server.url + "/?q=" + one["server_session_id"])
    assert _ids(page) == [one["session_id"]]
    # sorting by a column's header
    page.goto(server.url + "/")
    with page.expect_navigation():
        page.locator("#sessions th a", has_text="messages").click()
    with page.expect_navigation():
        page.locator("#sessions th a", has_text="messages").click()  # the second click sorts ascending
    assert "order=asc" in page.url
    ordered = sorted(everything, key=lambda s: (s["messages"], s["session_id"]))
    assert _ids(page) == [s["session_id"] for s in ordered]
    with page.expect_navigation():
        page.locator("#sessions tbody a").first.click()
    page.wait_for_function("() => window.rtcap && window.rtcap.ready")
    assert page.locator("header.session h1").inner_text() == ordered[0]["session_id"]
    assert page.errors == []


def test_a_session_page_in_the_ui(server, root, page) -> None:
    captures = open_captures(root)
    [failure] = captures.sql("SELECT session_id, seq, t_s FROM failures ORDER BY session_id LIMIT 1").to_pylist()
    [audio] = captures.sql(
        "SELECT sum(audio_ms) / 1000 AS s FROM events WHERE session_id = ? AND direction = 'received'",
        [failure["session_id"]],
    ).to_pylist()
    page.goto(f"{server.url}/session/{failure['session_id']}#seq={failure['seq']}")
    page.wait_for_function("() => window.rtcap && window.rtcap.ready")
    marker = page.locator(f".marker.failure[data-seq='{failure['seq']}']")
    assert f"@ {failure['t_s']:.3f} s" in marker.inner_text()
    assert page.locator("#json").get_attribute("data-seq") == str(failure["seq"])
    duration = page.evaluate(
        """() => new Promise(done => {
            const a = document.getElementById('audio-output');
            if (a.readyState >= 1) done(a.duration); else a.addEventListener('loadedmetadata', () => done(a.duration));
        })"""
    )
    assert duration == pytest.approx(audio["s"], abs=0.001)
    assert page.locator("nav.top a", has_text="SQL").count() == 1
    assert page.errors == []


def test_sql_runs_in_the_sandbox_and_downloads(server, page, tmp_path: Path) -> None:
    page.goto(server.url + "/sql")
    query = "SELECT session_id, count(*) AS n FROM events GROUP BY ALL ORDER BY session_id"
    page.locator("#q").fill(query)
    page.locator("#run").click()
    rows = page.locator("#results tbody tr")
    assert rows.count() == 12
    with page.expect_download() as download:
        page.locator("#csv").click()
    saved = tmp_path / "rows.csv"
    download.value.save_as(saved)
    lines = list(csv.reader(io.StringIO(saved.read_text())))
    assert lines[0] == ["session_id", "n"] and len(lines) == 13
    assert lines[1] == rows.first.locator("td").all_inner_texts()
    parquet = urllib.request.urlopen(server.url + "/sql.parquet?" + urllib.parse.urlencode({"q": query})).read()
    assert parquet[:4] == b"PAR1"
    # the sandbox: no files, no writes
    for forbidden in ("SELECT * FROM read_csv('/etc/passwd')", "CREATE TABLE t AS SELECT 1"):
        page.goto(server.url + "/sql?" + urllib.parse.urlencode({"q": forbidden}))
        assert page.locator("#error").count() == 1 and page.locator("#results").count() == 0
    assert page.errors == []


def test_precursors_rank_with_lift_bars_and_link_to_windows(server, page) -> None:
    page.goto(server.url + "/precursors")
    assert "tool_choice" in page.locator("#summary").inner_text()
    assert page.locator("#features .bar").count() > 0
    link = page.locator("#features tbody a").first
    href = link.get_attribute("href")
    assert href.startswith("/session/") and "#seq=" in href
    link.click()
    page.wait_for_function("() => window.rtcap && window.rtcap.ready")
    seq = href.split("#seq=")[1]
    assert page.locator("#json").get_attribute("data-seq") == seq
    assert json.loads(page.locator("#json").inner_text())["type"] == "response.created"
    assert page.errors == []


def test_new_captures_appear_as_they_are_indexed(tmp_path: Path, page) -> None:
    root = tmp_path / "captures"
    record_direct(root, [], sessions=1, seed=1)
    live = UiServer(root)
    try:
        page.goto(live.url + "/")
        assert page.locator("#total").inner_text() == "1 session"
        record_direct(root, [], sessions=2, seed=2)
        page.wait_for_function("() => document.getElementById('total').textContent === '3 sessions'", timeout=15_000)
        assert len(_ids(page)) == 3
    finally:
        live.stop()


def test_a_token_guards_every_request(root: Path) -> None:
    guarded = UiServer(root, token="s3cret-t0ken")
    try:
        for path in ("/", "/sql?q=SELECT+1", "/precursors", "/api/version"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(guarded.url + path)
            assert refused.value.code == 401
        with urllib.request.urlopen(guarded.url + "/api/version?token=s3cret-t0ken") as answer:
            cookie = answer.headers["set-cookie"].split(";")[0]
            assert json.load(answer)["n"] == 12
        with urllib.request.urlopen(urllib.request.Request(guarded.url + "/", headers={"Cookie": cookie})) as answer:
            assert answer.status == 200
        bearer = urllib.request.Request(guarded.url + "/", headers={"Authorization": "Bearer s3cret-t0ken"})
        assert urllib.request.urlopen(bearer).status == 200
        wrong = urllib.request.Request(guarded.url + "/", headers={"Authorization": "Bearer nope"})
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(wrong)
    finally:
        guarded.stop()


def test_without_a_token_only_loopback_names_are_answered(server) -> None:
    rebound = urllib.request.Request(server.url + "/", headers={"Host": "attacker.example:80"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(rebound)
    assert refused.value.code == 421
    assert urllib.request.urlopen(server.url.replace("127.0.0.1", "localhost") + "/").status == 200


def test_it_is_read_only(server) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(server.url + "/sql?q=SELECT+1", data=b"", method="POST"))
    assert refused.value.code == 405
    for elsewhere in ("/session/%2Fetc%2Fpasswd", "/session/..%2F..%2Fcaptures", "/session/nosuchsession"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(server.url + elsewhere)
        assert refused.value.code == 404


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "0.0.0.0:0"], "listening on 0.0.0.0:0 (not loopback) needs --token"),
        (["--listen", "nonsense:port"], "bad --listen"),
    ],
)
def test_ui_usage(root: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["ui", *args, "--captures", str(root)])
    assert result.exit_code == 2 and message in result.stderr
