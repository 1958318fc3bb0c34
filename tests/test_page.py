"""The session page (``rtcap show --html``, the report bundle's ``session.html``): what it
is computed from, and how it behaves in a real browser (Debian's chromium, one per module),
opened from disk with every network request blocked."""

from __future__ import annotations

import json
import os
import re
import stat
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from analyzer.cli import cli
from analyzer.page import peaks, pinned_seqs
from analyzer.sim.traffic import record_direct
from analyzer.views import open_captures

# -- what the page is computed from --------------------------------------------------


@pytest.mark.parametrize(
    ("evidence", "seqs"),
    [
        ("5 of 17 chunks outside 20-200 ms (seq 2, 164, 167, 264, 266); 100-600 ms", [2, 164, 167, 264, 266]),
        ("up to 3600 ms of audio and 35 events in one second (at seq 342)", [342]),
        ("session_expired at seq 7", [7]),
        ("every response after the first failure (response at seq 12) failed: 2 of 2", [12]),
        ("a failed response right after a failed one (seq 3, 9, ...)", [3, 9]),
        ("lowest tokens remaining 0 (0%) at seq 40", [40]),
        ("input tokens 120", []),
        ("subsequent 12 chunks", []),
    ],
)
def test_doctor_findings_are_pinned_at_the_seqs_they_name(evidence: str, seqs: list[int]) -> None:
    assert pinned_seqs(evidence) == seqs


def _tone(n: int, level: int) -> np.ndarray:
    return np.full(n, level, dtype="<i2")


@pytest.mark.parametrize(
    ("chunks", "duration", "width", "expected_peaks", "segments"),
    [
        # nothing: silence
        ([], 1.0, 4, [0, 0, 0, 0], []),
        # one chunk of 0.5 s at t=0: the first half of the axis
        ([(0, _tone(50, 16384))], 1.0, 4, [0.5, 0.5, 0, 0], [[0.0, 0.0, 0.5]]),
        # sent faster than real time: the second chunk queues after the first
        (
            [(0, _tone(25, 32767)), (int(0.1e9), _tone(25, 16384))],
            1.0,
            4,
            [1.0, 0.5, 0, 0],
            [[0.0, 0.0, 0.5]],
        ),
        # a pause: the second chunk starts when it was sent, a segment of its own
        (
            [(0, _tone(25, 8192)), (int(0.75e9), _tone(25, -32768))],
            1.0,
            4,
            [0.25, 0, 0, 1.0],
            [[0.0, 0.0, 0.25], [0.75, 0.25, 0.25]],
        ),
    ],
)
def test_peaks_place_audio_as_it_is_played(chunks, duration, width, expected_peaks, segments) -> None:
    levels, found = peaks(chunks, 100, duration, width)
    assert levels == pytest.approx(expected_peaks, abs=1e-3)
    assert [pytest.approx(s) for s in segments] == found


# -- a corpus, its pages, and a browser --------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three simulated voice sessions whose second response fails (no sockets), and the
    first one's failure as the views see it."""
    root = tmp_path_factory.mktemp("page") / "captures"
    record_direct(root, ["fail nth=2"], sessions=3, seed=5, think=1.0)
    captures = open_captures(root)
    [failure] = captures.sql(
        "SELECT session_id, seq, t_s, error_type FROM failures ORDER BY session_id LIMIT 1"
    ).to_pylist()
    sid = failure["session_id"]
    [audio] = captures.sql(
        "SELECT sum(audio_ms) FILTER (WHERE direction = 'sent') / 1000 AS input, "
        "sum(audio_ms) FILTER (WHERE direction = 'received') / 1000 AS output FROM events WHERE session_id = ?",
        [sid],
    ).to_pylist()
    # a client event to point at: the last of those sent at one moment (drawn on top), well
    # before the next
    [alone] = captures.sql(
        """SELECT seq, t_s, type FROM (
               SELECT seq, t_s, type, lead(t_s, 1, 1e9) OVER (ORDER BY seq) - t_s AS room
               FROM events WHERE session_id = ? AND direction = 'sent')
           WHERE room > 0.2 AND t_s > 0 ORDER BY seq LIMIT 1""",
        [sid],
    ).to_pylist()
    return {"root": root, "sid": sid, "failure": failure, "audio": audio, "alone": alone}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


class Offline:
    """A page of its own with every network request refused; what it tried and what it
    said on the console are kept."""

    def __init__(self, browser: Any) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 900})
        self.requests: list[str] = []
        self.errors: list[str] = []
        # The page itself comes from disk; anything else it asks for is refused.
        self.context.route("**/*", self._only_the_page)
        self.page = self.context.new_page()
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    @staticmethod
    def _only_the_page(route: Any) -> None:
        request = route.request
        if request.is_navigation_request() and request.url.startswith("file:"):
            route.continue_()
        else:
            route.abort()

    def open(self, path: Path, hash: str = "") -> Any:
        self.page.goto(path.resolve().as_uri() + hash)
        self.page.wait_for_function("() => window.rtcap && window.rtcap.ready")
        return self.page

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def offline(browser: Any) -> Any:
    opened = Offline(browser)
    yield opened
    opened.close()


def _show_html(corpus: dict[str, Any], path: Path, *extra: str) -> Any:
    return CliRunner().invoke(
        cli, ["show", corpus["sid"], "--html", str(path), "--captures", str(corpus["root"]), *extra]
    )


def test_show_html_writes_a_private_self_contained_page(corpus, tmp_path: Path) -> None:
    result = _show_html(corpus, tmp_path / "page.html")
    assert result.exit_code == 0, result.output
    assert re.fullmatch(r"wrote .*page\.html \(\d+ KiB\); open it in a browser\n", result.stderr)
    page = tmp_path / "page.html"
    assert stat.S_IMODE(page.stat().st_mode) == 0o600
    text = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)  # nothing loaded from anywhere
    data = json.loads(re.search(r"<script id=rtcap-data type=application/json>(.*?)</script>", text, re.S)[1])
    assert data["session"]["session_id"] == corpus["sid"]
    assert data["audio"]["output"]["src"] == "embedded"  # after the script, which draws first
    assert "<script id=rtcap-audio-output type=text/plain>data:audio/wav;base64," in text
    assert [f["seq"] for f in data["failures"]] == [corpus["failure"]["seq"]]

    assert _show_html(corpus, tmp_path / "quiet.html", "--no-audio").exit_code == 0
    quiet = (tmp_path / "quiet.html").read_text()
    assert "data:audio" not in quiet and len(quiet) < len(text) / 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--no-audio"], "--no-audio goes with --html"),
        (["--html", "x.html", "--around", "3"], "--html writes the whole session's page"),
        (["--html", "x.html", "--format", "csv"], "--html writes the whole session's page"),
    ],
)
def test_show_html_usage(corpus, args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["show", corpus["sid"], *args, "--captures", str(corpus["root"])])
    assert result.exit_code == 2 and message in result.stderr


def test_the_page_draws_offline_with_its_failure_audio_and_json(corpus, offline, tmp_path, artifacts) -> None:
    _show_html(corpus, tmp_path / "page.html")
    page = offline.open(tmp_path / "page.html")
    # the failure's marker: at its seq, at its time on the axis
    failure = corpus["failure"]
    marker = page.locator(f".marker.failure[data-seq='{failure['seq']}']")
    assert marker.count() == 1
    assert marker.inner_text() == f"seq {failure['seq']} {failure['error_type']} @ {failure['t_s']:.3f} s"
    left = marker.evaluate("m => m.getBoundingClientRect().left")
    assert abs(left - page.evaluate(f"window.rtcap.x({failure['t_s']})")) <= 1.5
    # the audio elements last as long as the session's audio
    for side in ("input", "output"):
        duration = page.evaluate(
            f"""() => new Promise(done => {{
                const a = document.getElementById('audio-{side}');
                if (a.readyState >= 1) done(a.duration);
                else a.addEventListener('loadedmetadata', () => done(a.duration));
            }})"""
        )
        assert duration == pytest.approx(corpus["audio"][side], abs=0.001)
    # hovering shows a summary; clicking shows the JSON, and the URL names the seq
    alone = corpus["alone"]
    page.evaluate(f"window.rtcap.setView({alone['t_s']} - 1, {alone['t_s']} + 1)")
    point = page.evaluate(f"window.rtcap.point({alone['seq']})")
    page.mouse.move(point["x"], point["y"])
    assert f"seq {alone['seq']} " in page.locator("#tip").inner_text()
    assert alone["type"] in page.locator("#tip").inner_text()
    page.mouse.click(point["x"], point["y"])
    assert json.loads(page.locator("#json").inner_text())["type"] == alone["type"]
    assert page.evaluate("location.hash") == f"#seq={alone['seq']}"
    # zoom and pan change the view
    before = page.evaluate("window.rtcap.view()")
    page.mouse.wheel(0, -400)
    page.wait_for_function(f"() => window.rtcap.view()[1] - window.rtcap.view()[0] < {before[1] - before[0]}")
    page.screenshot(path=str(artifacts / "session-page.png"), full_page=True)
    assert (artifacts / "session-page.png").stat().st_size > 10_000
    assert offline.errors == []
    assert offline.requests == [page.url.split("#")[0]], offline.requests


def test_a_link_to_a_seq_opens_there(corpus, offline, tmp_path) -> None:
    _show_html(corpus, tmp_path / "page.html", "--no-audio")
    page = offline.open(tmp_path / "page.html", f"#seq={corpus['alone']['seq']}")
    assert page.locator("#json").get_attribute("data-seq") == str(corpus["alone"]["seq"])
    t0, t1 = page.evaluate("window.rtcap.view()")
    [t] = page.evaluate(f"[window.rtcap.x(0)]")  # noqa: F541 - the axis exists
    assert t0 < t1 and t is not None
    assert page.locator("audio").count() == 0
    assert offline.errors == []


def test_the_report_bundle_page_opens_at_the_failure_from_disk(corpus, offline, tmp_path, artifacts) -> None:
    bundle = tmp_path / "bundle.zip"
    result = CliRunner().invoke(
        cli, ["report", corpus["sid"], "--output", str(bundle), "--captures", str(corpus["root"])]
    )
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(bundle) as z:
        assert "session.html" in z.read("README.txt").decode()
        z.extract("session.html", tmp_path / "unzipped")
    page = offline.open(tmp_path / "unzipped" / "session.html")
    assert page.locator("#json").get_attribute("data-seq") == str(corpus["failure"]["seq"])
    assert json.loads(page.locator("#json").inner_text())["type"] == "response.done"
    # it drew: the canvas holds more than its background
    painted = page.evaluate(
        """() => { const c = document.getElementById('lanes');
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }"""
    )
    assert painted > 1000
    page.screenshot(path=str(artifacts / "report-page.png"))
    assert offline.errors == []
    assert offline.requests == [page.url.split("#")[0]], offline.requests
    assert os.path.getsize(artifacts / "report-page.png") > 10_000
