"""`rtcap serve` and the `rtcap_serve` fixture with a client that leaves the recording:
where it differs, which message it never sent, and strict mode (1008, a failed test)."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from analyzer.reproduce.serve import Player, difference, first_difference, run_player
from recorder.capture import Message, read_capture
from recorder.serving import ServerThread
from recorder.session import RECEIVED, SENT
from tests.conftest import REALTIME

pytest_plugins = ["pytester"]

RTCAP = str(Path(sys.executable).parent / "rtcap")
UPDATE = {"type": "session.update", "session": {"type": "realtime", "instructions": "Be brief."}}
CREATE = {"type": "response.create", "response": {"tool_choice": "auto"}}
FORCED = {"type": "response.create", "response": {"tool_choice": {"type": "function", "name": "get_weather"}}}


def response(n: int, status: str) -> list[tuple[float, int, dict[str, Any]]]:
    return [
        (n + 0.05, RECEIVED, {"type": "response.created", "response": {"id": f"resp_{n}"}}),
        (n + 0.1, RECEIVED, {"type": "response.done", "response": {"id": f"resp_{n}", "status": status}}),
    ]


def recording(make_capture) -> Path:
    """session.created; the client updates the session (answered), then asks for two
    responses, the second of which fails."""
    return make_capture(
        [
            (0.0, RECEIVED, {"type": "session.created", "session": {"id": "sess_serve"}}),
            (0.1, SENT, UPDATE),
            (0.15, RECEIVED, {"type": "session.updated", "session": {"id": "sess_serve"}}),
            (1.0, SENT, CREATE),
            *response(1, "completed"),
            (2.0, SENT, CREATE),
            *response(2, "failed"),
        ]
    )


class Served:
    """A :class:`Player` on a free port, in a thread; ``lines`` what it reported."""

    def __init__(self, path: Path, **options: Any) -> None:
        self.lines: list[str] = []
        self.player = Player(read_capture(path), speed=1000, report=self.lines.append, **options)
        self.thread = ServerThread(lambda ready, stop: run_player(self.player, "127.0.0.1", 0, ready=ready, stop=stop))

    def __enter__(self) -> Served:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.thread.stop()


def types_until_done(ws) -> list[str]:
    got = []
    while not got or got[-1] != "response.done":
        got.append(json.loads(ws.recv())["type"])
    return got


# -- what differs, in one line ---------------------------------------------------------------


def text(event: dict[str, Any] | str) -> Message:
    data = event if isinstance(event, str) else json.dumps(event)
    return Message(1, 0, "sent", "text", data.encode(), None, 0)


AUDIO = base64.b64encode(bytes(4800)).decode()
DIFFERENCES = [
    (CREATE, json.dumps(FORCED), ' at response.tool_choice: "auto" -> {"type":"function","name":"get_weather"}'),
    (CREATE, json.dumps(UPDATE), ": response.create -> session.update"),
    (CREATE, json.dumps({"type": "response.create"}), ' at response: {"tool_choice":"auto"} -> (absent)'),
    ({"type": "x", "a": [1, 2]}, json.dumps({"type": "x", "a": [1, 3, 4]}), " at a[1]: 2 -> 3"),
    ({"type": "x", "a": True}, json.dumps({"type": "x", "a": 1}), " at a: true -> 1"),
    (CREATE, "not json", ": response.create -> text, 8 bytes, not an event"),
    (CREATE, b"\x00\x01", ": response.create -> binary, 2 bytes"),
    # The same event spelled otherwise, or with the ids a client makes up each time.
    (CREATE, '{ "response": {"tool_choice": "auto"}, "type": "response.create" }', None),
    (CREATE, json.dumps({**CREATE, "event_id": "evt_new"}), None),
    (CREATE, json.dumps(CREATE), None),
]


@pytest.mark.parametrize(("recorded", "got", "expected"), DIFFERENCES)
def test_a_difference_says_where_in_one_short_line(recorded, got, expected) -> None:
    assert difference(text(recorded), got) == expected


def test_binary_messages_differ_by_length_and_long_values_are_shown_where_they_part() -> None:
    assert difference(Message(1, 0, "sent", "binary", b"\x00" * 10, None, 0), b"\x00" * 12) == (
        ": binary, 10 bytes -> 12 bytes"
    )
    append = {"type": "input_audio_buffer.append", "audio": AUDIO}
    other = AUDIO[:5000] + "B" + AUDIO[5001:]
    line = difference(text(append), json.dumps({**append, "audio": other}))
    # Shown from ten characters before they part (a base64 string in JSON), with its length.
    left, right = "A" * 34, "A" * 10 + "B" + "A" * 23
    assert line == f" at audio: ...{left}... (6402 chars) -> ...{right}... (6402 chars)"
    assert first_difference({"a": {"b": [0, {"c": 1}]}}, {"a": {"b": [0, {"c": 2}]}}) == ("a.b[1].c", 1, 2)


# -- over a socket ---------------------------------------------------------------------------


def test_a_client_that_differs_in_a_field_is_told_where_and_served_on(make_capture) -> None:
    with Served(recording(make_capture)) as served, connect(served.thread.url + REALTIME) as ws:
        ws.recv()
        ws.send(json.dumps(UPDATE))
        ws.recv()
        ws.send(json.dumps(FORCED))
        assert types_until_done(ws) == ["response.created", "response.done"]
    assert served.lines == [
        'client message 1 differs from the recording at response.tool_choice: "auto" -> '
        '{"type":"function","name":"get_weather"}'
    ]


def test_a_client_that_never_sends_a_message_is_told_which_instead_of_hanging(make_capture) -> None:
    with Served(recording(make_capture), timeout=0.3) as served, connect(served.thread.url + REALTIME) as ws:
        ws.recv()
        ws.send(json.dumps(UPDATE))
        ws.recv()
        # No response.create: after the timeout the server goes on, and says what it missed.
        assert types_until_done(ws) == ["response.created", "response.done"]
        assert served.lines == [
            "waited 0.3 s for client message 1 (response.create) before server message 2 (response.created, seq 4)"
        ]


def test_strict_closes_a_diverging_client_with_1008_and_serves_the_next(make_capture) -> None:
    path = recording(make_capture)
    with Served(path, strict=True, timeout=0.3) as served:
        with connect(served.thread.url + REALTIME) as ws:
            ws.recv()
            ws.send(json.dumps(FORCED))  # a response.create where the session.update was
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv()
        assert closed.value.rcvd.code == 1008
        assert (
            closed.value.rcvd.reason == "client message 0 differs from the recording: session.update -> response.create"
        )
        with connect(served.thread.url + REALTIME) as ws:  # a client that keeps quiet
            ws.recv()
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv()
        assert closed.value.rcvd.code == 1008
        assert closed.value.rcvd.reason.startswith("waited 0.3 s for client message 0 (session.update) before server")
        assert len(closed.value.rcvd.reason.encode()) <= 123
        with connect(served.thread.url + REALTIME) as ws:  # one that follows the recording
            ws.recv()
            for event in (UPDATE, CREATE, CREATE):
                ws.send(json.dumps(event))
            assert json.loads(ws.recv())["type"] == "session.updated"
            assert types_until_done(ws) + types_until_done(ws) == ["response.created", "response.done"] * 2
    assert len(served.player.problems) == 2


# -- the CLI -------------------------------------------------------------------------------


def test_rtcap_serve_strict_closes_with_1008_and_keeps_serving(make_capture, tmp_path: Path) -> None:
    path = recording(make_capture)
    server = subprocess.Popen(
        [RTCAP, "serve", str(path), "--strict", "--speed", "1000", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        first = server.stdout.readline()
        url = next(word for word in first.split() if word.startswith("ws://"))
        for _ in range(2):  # the server goes on serving after a client left the recording
            with connect(url + REALTIME) as ws:
                ws.recv()
                ws.send(json.dumps(UPDATE))
                ws.recv()
                ws.send(json.dumps(FORCED))
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv()
            assert closed.value.rcvd.code == 1008
            assert closed.value.rcvd.reason.startswith("client message 1 differs from the recording at response.")
    finally:
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=10)
    line = 'rtcap serve: client message 1 differs from the recording at response.tool_choice: "auto" -> '
    assert stderr.count(line) == 2


# -- the fixture, in strict mode ------------------------------------------------------------------

INNER = """
import json

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

PATH = {path!r}
UPDATE, CREATE, FORCED = {update!r}, {create!r}, {forced!r}


def test_a_client_that_changes_a_field(rtcap_serve):
    with connect(rtcap_serve(PATH, strict=True) + "/v1/realtime?model=gpt-realtime") as ws:
        ws.recv()
        ws.send(json.dumps(UPDATE))
        ws.recv()
        ws.send(json.dumps(FORCED))
        ws.recv()  # the server closed: ConnectionClosedError


def test_a_client_that_stops_early_and_waits(rtcap_serve):
    with connect(rtcap_serve(PATH, strict=True, timeout=0.3) + "/v1/realtime?model=gpt-realtime") as ws:
        ws.recv()
        ws.send(json.dumps(UPDATE))
        ws.recv()
        try:
            ws.recv()
        except ConnectionClosed:
            pass  # the client copes: the test itself would pass


def test_a_client_that_follows_the_recording(rtcap_serve):
    with connect(rtcap_serve(PATH, strict=True) + "/v1/realtime?model=gpt-realtime") as ws:
        ws.recv()
        for event in (UPDATE, CREATE, CREATE):
            ws.send(json.dumps(event))
        done = 0
        while done < 2:
            done += json.loads(ws.recv())["type"] == "response.done"
"""


def test_the_fixture_in_strict_mode_fails_the_test_with_the_difference(pytester, make_capture) -> None:
    source = INNER.format(path=str(recording(make_capture)), update=UPDATE, create=CREATE, forced=FORCED)
    pytester.makepyfile(test_inner=source)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(failed=2, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_a_client_that_changes_a_field*",
            "rtcap_serve (strict): the client left the recording:",
            '  client message 1 differs from the recording at response.tool_choice: "auto" -> {"type":*',
            "(the test then raised ConnectionClosedError: received 1008 (policy violation) client message 1*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*test_a_client_that_stops_early_and_waits*",
            "rtcap_serve (strict): the client left the recording:",
            "  waited 0.3 s for client message 1 (response.create) before server message 2 (response.created, seq 4)",
        ]
    )
