"""Doctor's retries and reconnects: what counts as asking again, and as the same app."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from analyzer.cli import cli
from analyzer.doctor import diagnose
from analyzer.views import open_captures
from recorder.session import RECEIVED, SENT, SessionRecorder

T0 = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
OPENAI = "wss://api.openai.com/v1/realtime?model=gpt-realtime"


def write(
    root: Path,
    messages: list[tuple[float, int, Any]],
    *,
    start: float = 0.0,
    end: float | None = None,
    code: int = 1000,
    url: str = OPENAI,
    headers: tuple[tuple[str, str], ...] = (),
    labels: dict[str, str] | None = None,
) -> str:
    """A capture that began ``start`` seconds after :data:`T0` and ended ``end`` seconds
    after its own start (after its last message by default), closed with ``code``."""
    session = SessionRecorder.create(root, url=url, request_headers=list(headers), recorder="proxy", labels=labels)
    session.start(0, wall=T0 + dt.timedelta(seconds=start))
    model = url.rpartition("model=")[2]
    created = {"type": "session.created", "event_id": "e0", "session": {"id": f"sess_{start}", "model": model}}
    last = 0.0
    for seconds, direction, event in [(0.0, RECEIVED, created), *messages]:
        session.message(direction, json.dumps(event), round(seconds * 1e9))
        last = seconds
    closer = "client" if code == 1000 else "server"
    session.end(round((last if end is None else end) * 1e9) + 1, closed_by=closer, code=code)
    return session.session_id


def failed_response(at: float, *, committed: bool = False) -> list[tuple[float, int, Any]]:
    """A response.create at ``at`` whose response fails 0.5 s later (``committed``: server
    VAD committed the user's audio just before)."""
    error = {"type": "server_error", "code": None, "message": "boom"}
    before = [(at - 0.05, RECEIVED, {"type": "input_audio_buffer.committed", "item_id": "item_u"})] if committed else []
    create = [] if committed else [(at, SENT, {"type": "response.create"})]
    return [
        *before,
        *create,
        (at + 0.05, RECEIVED, {"type": "response.created", "response": {"id": f"resp_{at}", "status": "in_progress"}}),
        (
            at + 0.5,
            RECEIVED,
            {
                "type": "response.done",
                "response": {"id": f"resp_{at}", "status": "failed", "status_details": {"error": error}},
            },
        ),
    ]


USER_MESSAGE = {
    "type": "conversation.item.create",
    "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "and tomorrow?"}]},
}


def status(root: Path, session_id: str, check: str) -> tuple[str, str]:
    """The check's status and evidence for one session, doctor having run on them all."""
    rows = diagnose(open_captures(root)).to_pylist()
    [row] = [r for r in rows if r["check"] == check and r["session_id"] == session_id]
    return row["status"], row["evidence"]


# -- retries --------------------------------------------------------------------------------

RETRY_CASES = {
    "the user's next message right after the failure": (
        [*failed_response(1.0), (1.55, SENT, USER_MESSAGE), (1.6, SENT, {"type": "response.create"})],
        "pass",
    ),
    "the user's next spoken turn right after the failure": (
        [
            *failed_response(1.0),
            (1.52, SENT, {"type": "input_audio_buffer.append", "audio": "AAAA"}),
            (1.55, SENT, {"type": "input_audio_buffer.commit"}),
            (1.56, RECEIVED, {"type": "input_audio_buffer.committed", "item_id": "item_2"}),
            (1.6, SENT, {"type": "response.create"}),
        ],
        "pass",
    ),
    "the user spoke while the failing response ran": (
        [
            (1.0, SENT, {"type": "response.create"}),
            (1.05, RECEIVED, {"type": "response.created", "response": {"id": "resp_1"}}),
            (1.2, RECEIVED, {"type": "input_audio_buffer.committed", "item_id": "item_2"}),
            (1.5, RECEIVED, {"type": "response.done", "response": {"id": "resp_1", "status": "failed"}}),
            (1.55, SENT, {"type": "response.create"}),
        ],
        "pass",
    ),
    "a client mistake outside any response, then the next request": (
        [
            (0.5, SENT, {"type": "session.update", "session": {"voice": 7}}),
            (0.55, RECEIVED, {"type": "error", "error": {"type": "invalid_request_error", "code": "invalid_type"}}),
            (0.6, SENT, {"type": "response.create"}),
        ],
        "pass",
    ),
    "the same request again with backoff": ([*failed_response(1.0), (3.0, SENT, {"type": "response.create"})], "pass"),
    "the same request again at once": ([*failed_response(1.0), (1.6, SENT, {"type": "response.create"})], "fail"),
    "again at once after a server-VAD turn failed": (
        [*failed_response(1.0, committed=True), (1.55, SENT, {"type": "response.create"})],
        "fail",
    ),
    "a loop: again at once, failing each time": (
        [*failed_response(1.0), *failed_response(1.6), (2.2, SENT, {"type": "response.create"})],
        "fail",
    ),
}


@pytest.mark.parametrize("case", RETRY_CASES)
def test_a_retry_is_asking_again_with_nothing_new_said(tmp_path: Path, case: str) -> None:
    messages, expected = RETRY_CASES[case]
    session_id = write(tmp_path, messages)
    got, evidence = status(tmp_path, session_id, "retries")
    assert got == expected, evidence
    if expected == "fail":
        assert "nothing new said" in evidence and "seq" in evidence


# -- reconnects -----------------------------------------------------------------------------


def pair(root: Path, first: dict[str, Any], second: dict[str, Any], gap: float = 1.0) -> str:
    """A session that drops (1006) after 2 s, and one that opens ``gap`` s after it ended."""
    write(root, [], start=0.0, end=2.0, code=1006, **first)
    return write(root, [], start=2.0 + gap, **second)


KIOSK = {"headers": (("User-Agent", "kiosk/1.2 websockets/15"),)}
BOT = {"headers": (("User-Agent", "OpenAI/Python 3.57.0"),)}
RECONNECT_CASES = {
    "unlabelled, the same client": (KIOSK, KIOSK, 1.0, "warn"),
    "unlabelled, no user agent in either": ({}, {}, 1.0, "warn"),
    "the same labels and client": ({**KIOSK, "labels": {"app": "k"}}, {**KIOSK, "labels": {"app": "k"}}, 1, "warn"),
    "unlabelled, another user agent": (KIOSK, BOT, 1.0, "pass"),
    "unlabelled, a user agent in one only": (KIOSK, {}, 1.0, "pass"),
    "unlabelled, another host": (
        KIOSK,
        {**KIOSK, "url": "wss://r.openai.azure.com/openai/v1/realtime?model=gpt-realtime"},
        1.0,
        "pass",
    ),
    "unlabelled, another model": (
        KIOSK,
        {**KIOSK, "url": "wss://api.openai.com/v1/realtime?model=gpt-realtime-mini"},
        1.0,
        "pass",
    ),
    "other labels": ({**KIOSK, "labels": {"app": "k"}}, {**KIOSK, "labels": {"app": "j"}}, 1.0, "pass"),
    "the same client, later than 5 s": (KIOSK, KIOSK, 6.0, "pass"),
}


@pytest.mark.parametrize("case", RECONNECT_CASES)
def test_a_reconnect_is_a_new_session_of_the_same_app(tmp_path: Path, case: str) -> None:
    first, second, gap, expected = RECONNECT_CASES[case]
    session_id = pair(tmp_path, first, second, gap)
    got, evidence = status(tmp_path, session_id, "reconnects")
    assert got == expected, evidence


def test_a_reconnect_is_found_when_doctor_is_asked_about_that_session_alone(tmp_path: Path) -> None:
    second = pair(tmp_path, KIOSK, KIOSK)
    result = CliRunner().invoke(cli, ["doctor", second, "--captures", str(tmp_path), "--format", "json"])
    assert result.exit_code == 0, result.output
    [row] = [r for r in json.loads(result.stdout) if r["check"] == "reconnects"]
    assert row["session_id"] == second and row["status"] == "warn"
    assert "closed abnormally (1006)" in row["evidence"]


# -- repeat failures ------------------------------------------------------------------------


def healthy_response(at: float) -> list[tuple[float, int, Any]]:
    return [
        (at, SENT, {"type": "response.create"}),
        (at + 0.05, RECEIVED, {"type": "response.created", "response": {"id": f"resp_{at}"}}),
        (at + 0.5, RECEIVED, {"type": "response.done", "response": {"id": f"resp_{at}", "status": "completed"}}),
    ]


REPEAT_CASES = {
    "no failure": ([*healthy_response(1), *healthy_response(3)], "pass"),
    "one failure, then healthy": ([*failed_response(1), *healthy_response(3), *healthy_response(5)], "pass"),
    "a failure right after a failure, then healthy": (
        [*failed_response(1), *failed_response(3), *healthy_response(5)],
        "warn",
    ),
    "every response after the first failure failed": (
        [*healthy_response(1), *failed_response(3), *failed_response(5), *failed_response(7)],
        "fail",
    ),
}


@pytest.mark.parametrize("case", REPEAT_CASES)
def test_a_session_that_keeps_failing_is_flagged(tmp_path: Path, case: str) -> None:
    messages, expected = REPEAT_CASES[case]
    session_id = write(tmp_path, messages)
    got, evidence = status(tmp_path, session_id, "repeat failures")
    assert got == expected, evidence


def limits(*limits: dict[str, Any]) -> list[tuple[float, int, Any]]:
    return [(0.1, RECEIVED, {"type": "rate_limits.updated", "rate_limits": list(limits)})]


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([], ("pass", "no rate limits recorded")),
        (limits({"name": "tokens", "limit": 1000, "remaining": 500}), ("pass", "lowest tokens remaining 500 (50%)")),
        (
            limits(
                {"name": "requests", "limit": 100, "remaining": 9}, {"name": "tokens", "limit": 100, "remaining": 40}
            ),
            ("warn", "lowest requests remaining 9 (9%)"),
        ),
        (limits({"name": "tokens", "limit": 1000, "remaining": 0}), ("fail", "lowest tokens remaining 0 (0%)")),
        # What a server should not send is read past, not a crash.
        (
            limits({"name": "tokens", "limit": 1000, "remaining": "lots"}, "junk", {"limit": 5}),
            ("pass", "no rate limits recorded"),
        ),
        (limits({"name": "tokens", "limit": 0, "remaining": 0}), ("pass", "no rate limits recorded")),
    ],
)
def test_rate_limits(tmp_path: Path, messages: list[tuple[float, int, Any]], expected: tuple[str, str]) -> None:
    sid = write(tmp_path, messages)
    got, evidence = status(tmp_path, sid, "rate limits")
    assert (got, evidence[: len(expected[1])]) == expected
