"""What precedes failures: planted causes found, random failures not; doctor; report; the demo."""

from __future__ import annotations

import base64
import itertools
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from analyzer.cli import cli
from analyzer.doctor import diagnose
from analyzer.precursors import analyse, fisher_greater, holm
from analyzer.sim.traffic import record_direct
from analyzer.views import open_captures
from recorder.session import RECEIVED, SENT

BASE = "fail p=0.04"
PLANTED = {
    "event": ("fail sent=input_audio_buffer.clear p=0.9", "input_audio_buffer.clear"),
    "field": (
        "fail field=response.create:response.tool_choice=required p=0.9",
        "response.create:response.tool_choice=required",
    ),
    "numeric": ("fail audio_ms>500 p=0.9", "audio_chunk_ms>=600"),  # traffic's long chunk: 600 ms
    "burst": ("fail rate>30 p=0.9", "events_per_second>="),  # a cut point above 30, from the data
}


@pytest.fixture(scope="module", params=[*PLANTED, "random"])
def corpus(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"precursors-{request.param}") / "captures"
    rules = [BASE] + ([PLANTED[request.param][0]] if request.param in PLANTED else [])
    record_direct(root, rules, sessions=60, seed=11)  # no sockets: they are not what is tested here
    return request.param, root


def test_a_planted_cause_ranks_first_and_random_failures_show_nothing(corpus) -> None:
    kind, root = corpus
    document = analyse(open_captures(root))
    assert document["failures"] >= 5 and document["controls"] >= 100
    features = document["features"]
    if kind == "random":
        assert not any(f["significant"] for f in features), features[:3]
        assert document["summary"].startswith("Nothing stands out")
        return
    top = features[0]
    expected = PLANTED[kind][1]
    names = [top["feature"], *top["merged"]]
    if kind == "burst":
        assert any(n.startswith(expected) and float(n.split(">=")[1]) > 30 for n in names), features[:3]
    else:
        assert expected in names, [(f["feature"], f["p_value"]) for f in features[:5]]
    assert top["significant"] and top["kind"] == ("numeric" if kind in ("numeric", "burst") else kind)
    assert top["lift"] > 3 and top["failures_with"] > top["controls_with"] * document["failures"] / document["controls"]
    assert document["summary"].startswith(
        f"server_error followed {top['feature']} in {top['failures_with']} of {document['failures']}"
    )
    assert top["examples"] and all(len(e) == 31 for e in top["examples"])


def test_fisher_and_holm_against_known_values() -> None:
    # 3 of 3 failures vs 0 of 3 controls: hypergeometric tail 1/C(6,3) = 0.05.
    assert fisher_greater(np.array([3]), 3, 3, np.array([3]))[0] == pytest.approx(0.05)
    # A feature in every window tells nothing: p = 1.
    assert fisher_greater(np.array([3]), 3, 3, np.array([6]))[0] == pytest.approx(1.0)
    assert list(holm(np.array([0.01, 0.04, 0.03]))) == pytest.approx([0.03, 0.06, 0.06])


def test_precursors_cli_formats(tmp_path: Path) -> None:
    root = tmp_path / "captures"
    record_direct(root, [BASE, PLANTED["event"][0]], sessions=12, seed=2)
    runner = CliRunner()
    document = json.loads(runner.invoke(cli, ["precursors", "--captures", str(root), "--format", "json"]).stdout)
    assert set(document) == {"failures", "controls", "window", "summary", "clustering", "position", "features"}
    assert document["window"] == {
        "seconds": 10,
        "events": 50,
        "failure": "server_error",
        "include_replays": False,
        "first_failures_only": False,
    }
    assert set(document["clustering"]) >= {"after_failure", "of", "after_success", "of2", "p_value"}
    assert set(document["features"][0]) == {
        "feature",
        "kind",
        "failures_with",
        "controls_with",
        "failure_rate",
        "lift",
        "p_value",
        "p_raw",
        "significant",
        "merged",
        "examples",
    }
    csv_out = runner.invoke(cli, ["precursors", "--captures", str(root), "--format", "csv"]).stdout
    assert csv_out.splitlines()[0].startswith("feature,kind,failures_with,controls_with")
    table = runner.invoke(cli, ["precursors", "--captures", str(root), "--format", "table"]).stdout
    assert table.splitlines()[0] == document["summary"]
    # A --failure that matches nothing says so, and is an error (issue 12): not an empty table.
    none = runner.invoke(cli, ["precursors", "--captures", str(root), "--failure", "no_such_error", "--format", "json"])
    assert none.exit_code == 1 and none.stdout == ""
    assert none.stderr.startswith("rtcap: error: No no_such_error in these captures")


# -- doctor ----------------------------------------------------------------------------


def pcm(ms: int) -> str:
    return base64.b64encode(b"\x00\x10" * 24 * ms).decode()


SERVER_IDS = itertools.count()


def make_session(make_capture, root: Path, events: list[tuple[float, int, dict | str]], headers=()) -> str:
    """A capture written directly, after the server's session.created: (seconds, direction,
    event) in order. Returns its session id."""
    created = {
        "type": "session.created",
        "event_id": "event_1",
        "session": {"id": f"sess_doctor{next(SERVER_IDS)}", "model": "gpt-realtime", "expires_at": 1_900_000_000},
    }
    return make_capture([(0, RECEIVED, created), *events], root=root, headers=headers).stem


def response(n: int, status: str = "completed", tokens: int = 500) -> list[tuple[float, int, dict]]:
    rid = f"resp_{n}"
    details = (
        {"type": "failed", "error": {"type": "server_error", "code": None, "message": "boom"}}
        if status == "failed"
        else None
    )
    return [
        (n * 2.0, SENT, {"type": "response.create"}),
        (
            n * 2.0 + 0.05,
            RECEIVED,
            {"type": "response.created", "event_id": f"e{n}a", "response": {"id": rid, "status": "in_progress"}},
        ),
        (
            n * 2.0 + 0.06,
            RECEIVED,
            {
                "type": "rate_limits.updated",
                "event_id": f"e{n}b",
                "rate_limits": [{"name": "tokens", "limit": 20000, "remaining": 15000, "reset_seconds": 1}],
            },
        ),
        (
            n * 2.0 + 0.5,
            RECEIVED,
            {
                "type": "response.done",
                "event_id": f"e{n}c",
                "response": {
                    "id": rid,
                    "status": status,
                    "status_details": details,
                    "usage": {"input_tokens": tokens, "output_tokens": 20},
                },
            },
        ),
    ]


def appends(start: float, chunks: list[int], spacing: float = 0.1) -> list[tuple[float, int, dict]]:
    return [
        (start + i * spacing, SENT, {"type": "input_audio_buffer.append", "audio": pcm(ms)})
        for i, ms in enumerate(chunks)
    ]


def statuses(rows: list[dict[str, str]], session_id: str) -> dict[str, str]:
    return {row["check"]: row["status"] for row in rows if row["session_id"] == session_id}


def test_doctor_flags_what_each_session_was_made_to_have(tmp_path: Path, make_capture) -> None:
    root = tmp_path / "captures"
    clean = make_session(make_capture, root, appends(0.1, [100, 100, 100]) + response(1))
    mismatch = make_session(
        make_capture,
        root,
        [
            (0.1, SENT, {"type": "session.update", "session": {"input_audio_format": "g711_ulaw"}}),
            (0.2, RECEIVED, {"type": "session.updated", "event_id": "e", "session": {"input_audio_format": "pcm16"}}),
            (0.3, SENT, {"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\x00" * 4801).decode()}),
        ]
        + response(1),
    )
    sizes = make_session(make_capture, root, appends(0.1, [1500]) + appends(2.0, [10, 10, 100]) + response(2))
    garbage = make_session(
        make_capture, root, [(0.1, SENT, '{"type":"input_audio_buffer.append","audio":"not base64!!"}')] + response(1)
    )
    burst = make_session(make_capture, root, appends(0.1, [20] * 60, spacing=0.005) + response(1))
    retry = make_session(
        make_capture, root, response(1, status="failed") + [(2.6, SENT, {"type": "response.create"})] + response(2)[1:]
    )
    big = make_session(make_capture, root, response(1, tokens=15_000))
    old = make_session(
        make_capture,
        root,
        [
            (
                0.1,
                RECEIVED,
                {
                    "type": "error",
                    "event_id": "e",
                    "error": {
                        "type": "invalid_request_error",
                        "code": "session_expired",
                        "message": "Your session hit the maximum duration of 60 minutes.",
                    },
                },
            )
        ],
    )
    rows = diagnose(open_captures(root)).to_pylist()
    assert set(statuses(rows, clean).values()) == {"pass"}
    assert statuses(rows, mismatch)["audio format"] == "fail"
    assert statuses(rows, sizes)["chunk size"] == "fail"
    assert statuses(rows, garbage)["base64"] == "fail"
    assert statuses(rows, burst)["bursts"] == "warn"
    assert statuses(rows, retry)["retries"] == "fail"
    assert statuses(rows, big)["prompt size"] == "fail"
    assert statuses(rows, old)["session age"] == "fail"
    evidence = {row["check"]: row["evidence"] for row in rows if row["session_id"] == retry}
    assert "seq" in evidence["retries"]


def test_doctor_warns_about_small_chunks_and_cli_strict(tmp_path: Path, make_capture) -> None:
    root = tmp_path / "captures"
    small = make_session(make_capture, root, appends(0.1, [10, 10, 100]) + response(1))
    rows = diagnose(open_captures(root), small).to_pylist()
    assert statuses(rows, small)["chunk size"] == "warn"
    runner = CliRunner()
    assert runner.invoke(cli, ["doctor", small[:24], "--captures", str(root), "--format", "json"]).exit_code == 0
    make_session(make_capture, root, appends(0.1, [1500]) + response(1))
    assert runner.invoke(cli, ["doctor", "--strict", "--captures", str(root), "--format", "csv"]).exit_code == 1


def test_report_bundle_holds_what_spec_lists_and_no_secret(tmp_path: Path, make_capture) -> None:
    root = tmp_path / "captures"
    canary = "sk-report-canary-7f3e2a91"
    failing = make_session(
        make_capture,
        root,
        appends(0.1, [100, 100]) + response(1) + response(2, status="failed"),
        headers=[("Authorization", f"Bearer {canary}")],
    )
    out = tmp_path / "bundle.zip"
    result = CliRunner().invoke(cli, ["report", failing, "--output", str(out), "--captures", str(root)])
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(out) as bundle:
        names = set(bundle.namelist())
        assert {
            "README.txt",
            "export.jsonl",
            "session.json",
            "failures.json",
            "around-failure.jsonl",
            "doctor.json",
        } <= names
        assert any(n.startswith("capture/") and n.endswith(".msgpack") for n in names)
        for name in names:
            assert canary.encode() not in bundle.read(name), name
        story = bundle.read("README.txt").decode()
        session = json.loads(bundle.read("session.json"))
        failures = json.loads(bundle.read("failures.json"))
    assert session["server_session_id"] in story and "server_error" in story and "boom" in story
    assert failures[0]["error_type"] == "server_error" and failures[0]["source"] == "response.done"
    bad = CliRunner().invoke(cli, ["report", failing, "--output", str(tmp_path / "x.tar"), "--captures", str(root)])
    assert bad.exit_code == 2


def test_the_demo_end_to_end(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["demo", "--captures", str(tmp_path)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "server_error followed response.create:response.tool_choice.type=function in" in out
    [deterministic, transient] = [line for line in out.splitlines() if "reproduced" in line and "times" in line]
    rate = [int(line.split("reproduced ")[1].split(" of")[0]) for line in (deterministic, transient)]
    assert rate[0] >= 4 and rate[1] <= 2 and rate[0] > rate[1]
    assert (tmp_path / "demo").is_dir() and list((tmp_path / "demo").glob("report-*.zip"))
    assert (tmp_path / "demo").stat().st_mode & 0o777 == 0o700
    assert f"rtcap sessions --captures {tmp_path / 'demo'} --failed" in out
    [page] = [line.rsplit(": ", 1)[1] for line in out.splitlines() if line.startswith("8. The failed session")]
    assert Path(page).stat().st_mode & 0o777 == 0o600 and Path(page).name.startswith("session-")


def test_busiest_second() -> None:
    from analyzer.stats import busiest_second

    assert busiest_second([]) == 0
    assert busiest_second([0.0, 0.5, 1.0, 1.01, 3.0]) == 3
    assert busiest_second([float(i) / 100 for i in range(60)]) == 60
