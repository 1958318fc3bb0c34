"""Secrets, widened (SPEC): any credential-bearing name, every form of a value seen, tool
credentials read on the decoded JSON, and nothing printed in clear."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from click.testing import CliRunner
from websockets.asyncio.client import connect as aconnect
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

import recorder
from analyzer.cli import cli
from analyzer.locate import capture_files
from analyzer.reproduce.replay import run
from recorder import shim
from recorder.capture import Capture, parse, read_capture
from recorder.redact import REDACTED, Redactor, Scrubber, redact_tools
from recorder.session import RECEIVED, SENT, SessionRecorder
from tests.conftest import REALTIME, EchoServer, ListSink
from tests.test_proxy import only_capture, wait_for


def record(
    messages: list[tuple[int, str | bytes]], headers: list[tuple[str, str]], url: str = "wss://h/v1/realtime"
) -> Capture:
    """A recording made without a socket, read back."""
    sink = ListSink()
    session = SessionRecorder(
        sink, session_id="20261125T120000000000Z-abcdefgh", url=url, request_headers=headers, recorder="proxy"
    )
    session.start(0)
    for n, (direction, data) in enumerate(messages):
        session.message(direction, data, n + 1)
    session.end(len(messages) + 1, closed_by="client", code=1000)
    return parse(b"".join(sink.records))


def closed_capture(captures: Path) -> Capture:
    wait_for(lambda: read_capture(only_capture(captures)).state == "closed")
    return read_capture(only_capture(captures))


# -- which names are secrets -----------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "Ocp-Apim-Subscription-Key",
        "x-goog-api-key",
        "X-My-Token",
        "X-Client-Secret",
        "X-Password",
        "X-Amz-Signature",
        "X-Ms-Credential",
        "X-Custom-Auth",
        "Authorization",
        "Cookie",
        "OpenAI-Project",
    ],
)
def test_a_header_whose_name_holds_a_secret_word_is_redacted(name: str) -> None:
    assert Redactor().is_secret_header(name)


@pytest.mark.parametrize(
    "name",
    [
        "Sec-WebSocket-Key",  # a nonce made afresh for each connection
        "Sec-WebSocket-Accept",
        "WWW-Authenticate",  # a server's challenge: why it refused
        "x-ratelimit-remaining-tokens",
        "User-Agent",
        "X-Stainless-Package-Version",
        "OpenAI-Beta",
        "Content-Type",
    ],
)
def test_harmless_protocol_headers_stay_readable(name: str) -> None:
    assert not Redactor().is_secret_header(name)


def test_a_user_named_header_wins_over_the_readable_ones() -> None:
    assert Redactor(headers=["Sec-WebSocket-Key"]).is_secret_header("sec-websocket-key")


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("api_key", True),
        ("apiKey", True),
        ("api-key", True),
        ("access_token", True),
        ("X-Amz-Credential", True),
        ("client_secret", True),
        ("sig", True),
        ("auth%5Fcode", True),
        ("model", False),
        ("api-version", False),
        ("deployment", False),
        ("intent", False),
        ("call_id", False),
    ],
)
def test_query_parameters_by_name(name: str, secret: bool) -> None:
    assert Redactor().is_secret_query(name) is secret


# -- through the proxy -----------------------------------------------------------------------


def test_credential_headers_and_api_key_query_never_reach_the_capture(simulator, start_proxy, captures) -> None:
    secrets = {
        "Ocp-Apim-Subscription-Key": "apim-secret-7c1d9e",
        "x-goog-api-key": "goog-secret-2b8f4a",
        "X-My-Token": "mytoken-secret-9e3a",
    }
    query_secret = "query-secret-5d2c7b"
    proxy = start_proxy(simulator.url)
    with connect(
        f"{proxy.url}{REALTIME}&api_key={query_secret}", additional_headers={**secrets, "X-Custom": "kept"}
    ) as ws:
        ws.recv()
        for value in [*secrets.values(), query_secret]:
            ws.send(json.dumps({"type": value}))  # the server's error echoes the bad value
            assert value in ws.recv()
    [session] = simulator.sessions
    assert session.done.wait(10) and session.headers["Ocp-Apim-Subscription-Key"] == "apim-secret-7c1d9e"
    got = closed_capture(captures)
    blob = only_capture(captures).read_bytes()
    for value in [*secrets.values(), query_secret]:
        assert value.encode() not in blob, value
    headers = {k.lower(): v for k, v in got.header["request_headers"]}
    assert all(headers[name.lower()] == REDACTED for name in secrets)
    assert headers["x-custom"] == "kept"
    assert headers["sec-websocket-key"] != REDACTED and len(headers["sec-websocket-key"]) == 24
    assert got.header["url"].endswith(f"&api_key={REDACTED}")
    assert [m.redacted for m in got.messages] == [False] + [True, True] * 4
    opened = next(line for line in proxy.lines if " opened: " in line)
    assert opened.endswith(f"{REALTIME}&api_key={REDACTED}")
    assert not any(value in line for line in proxy.lines for value in [*secrets.values(), query_secret])


def test_basic_auth_made_from_the_upstream_userinfo_is_scrubbed_when_echoed(start_proxy, captures) -> None:
    user, password = "rtcap-user", "pass-word-4e7f1a"

    def greet(request: Any) -> list[str]:
        authorization = request.headers["Authorization"]  # built by websockets from user:password@
        token = authorization.split()[1]
        headers = json.dumps(dict(request.headers.raw_items())).encode()
        return [
            json.dumps({"type": "error", "error": {"message": f"rejected {authorization}"}}),
            json.dumps({"type": "debug", "decoded": base64.b64decode(token).decode()}),
            json.dumps({"type": "debug", "headers": base64.b64encode(headers).decode()}),
            json.dumps({"type": "debug", "headers": base64.urlsafe_b64encode(b"x" + headers).decode()}),
        ]

    with EchoServer(greet) as echo:
        upstream = echo.url.replace("ws://", f"ws://{user}:{password}@")
        proxy = start_proxy(upstream)
        with connect(proxy.url + REALTIME) as ws:
            greeting = [ws.recv() for _ in range(4)]
        [request] = echo.requests
    token = request.headers["Authorization"].split()[1]
    assert token == base64.b64encode(f"{user}:{password}".encode()).decode()
    got = closed_capture(captures)
    blob = only_capture(captures).read_bytes()
    for secret in (password, token, f"{user}:{password}"):
        assert secret.encode() not in blob
    assert got.header["url"].startswith(f"ws://{REDACTED}@127.0.0.1:")
    assert all(m.redacted for m in got.messages)
    for sent, kept in zip(greeting[2:], got.messages[2:], strict=True):
        assert token.encode() not in decoded_around_redactions(kept.data())
        assert len(kept.data()) < len(sent)
    assert password not in proxy.first_line and not any(password in line for line in proxy.lines)


def decoded_around_redactions(data: bytes) -> bytes:
    """What the base64 left on either side of each ``[REDACTED]`` decodes to."""
    text = json.loads(data)["headers"]
    out = b""
    for piece in text.split(REDACTED):
        piece = piece.translate(str.maketrans("-_", "+/"))
        for skip in range(4):
            usable = piece[skip:]
            usable = usable[: len(usable) // 4 * 4]
            try:
                out += base64.b64decode(usable)
            except ValueError:
                pass
    return out


# -- every form of a value seen --------------------------------------------------------------

SECRET = "sk-proj-Ab+/Cd_ef-0123456789xyz"


def forms_of(secret: str) -> dict[str, str]:
    """How a server could write ``secret`` inside a JSON string."""
    raw = secret.encode()
    forms = {
        "raw": secret,
        "json \\/": secret.replace("/", "\\/"),
        "quoted": quote(secret, safe=""),
        "quoted plus": quote_plus(f"Bearer {secret}", safe=""),
        "base64": base64.b64encode(raw).decode(),
        "base64 unpadded": base64.b64encode(raw).decode().rstrip("="),
        "urlsafe base64": base64.urlsafe_b64encode(raw).decode(),
        "base64 of Bearer": base64.b64encode(b"Bearer " + raw).decode(),
        "base64 of user:password": base64.b64encode(b"someone:" + raw).decode(),
        "base64 \\/": base64.b64encode(b"?" + raw).decode().replace("/", "\\/"),
    }
    for shift in range(3):
        inside = b'{"headers": {"x": "' + b"y" * shift + raw + b'"}}'
        forms[f"base64 at alignment {shift}"] = base64.b64encode(inside).decode()
    return forms


@pytest.mark.parametrize("form", list(forms_of(SECRET)))
def test_every_form_of_a_handshake_secret_is_scrubbed(form: str) -> None:
    written = forms_of(SECRET)[form]
    text = '{"type":"error","error":{"message":"echo ' + written + '"}}'
    got = record([(RECEIVED, text), (SENT, written.encode())], [("Authorization", f"Bearer {SECRET}")])
    for message in got.messages:
        assert message.redacted
        assert written.encode() not in message.data()
        assert SECRET.encode() not in message.data()
    assert REDACTED in json.loads(got.messages[0].data())["error"]["message"]


def test_short_values_are_redacted_where_they_stand_but_not_hunted() -> None:
    got = record([(RECEIVED, '{"type":"x","text":"abc1234 and key-12345678"}')], [("X-Token", "abc1234")])
    assert got.header["request_headers"] == [["X-Token", REDACTED]]
    [message] = got.messages
    assert not message.redacted and b"abc1234" in message.data()


def test_a_message_without_a_secret_is_untouched_with_many_secrets_known() -> None:
    headers = [("Authorization", "Bearer sk-one-0123456789"), ("api-key", "azure-key-abcdef0123"), ("X-Key", "x" * 40)]
    text = json.dumps({"type": "response.output_text.delta", "delta": "Bearer tokens, api keys and xxxx."})
    got = record([(RECEIVED, text)], headers, url="wss://h/v1/realtime?model=m&token=query-secret-9876")
    assert got.messages[0].data() == text.encode() and not got.messages[0].redacted


# -- tool credentials ------------------------------------------------------------------------

DEEP = "[" * 5000 + "]" * 5000
TOOL_TEXTS = {
    "escaped authorization key": (
        '{"type":"session.update","session":{"tools":[{"type":"mcp","auth\\u006frization":"tool-secret-a1b2c3"}]}}'
    ),
    "escaped tools key, type first": (
        '{"type":"response.create","response":{"tool\\u0073":[{"type":"mcp","authorization":"tool-secret-a1b2c3"}]}}'
    ),
    "escaped headers key": (
        '{"type":"session.update","session":{"tools":[{"head\\u0065rs":{"X-Key":"tool-secret-a1b2c3","X-Other":null}}]}}'
    ),
    "tools before the type": '{"session":{"tools":[{"authorization":"tool-secret-a1b2c3"}]},"type":"session.update"}',
    "nested too deep to parse": (
        '{"type":"session.update","session":{"tools":[{"authorization":"tool-secret-a1b2c3"}]},"deep":' + DEEP + "}"
    ),
    "a lone surrogate beside it": (
        '{"type":"session.update","session":{"instructions":"\\ud800",'
        '"tools":[{"type":"mcp","authorization":"tool-secret-a1b2c3"}]}}'
    ),
    "an audio delta carrying tools": (
        '{"type":"response.output_audio.delta","delta":"AAAA","tools":[{"authorization":"tool-secret-a1b2c3"}]}'
    ),
    "a key in a tool's server_url": (
        '{"type":"session.update","session":{"tools":[{"type":"mcp",'
        '"server_url":"https://mcp.example.com/sse?api_key=tool-secret-a1b2c3&region=eu"}]}}'
    ),
}


@pytest.mark.parametrize("direction", [SENT, RECEIVED])
@pytest.mark.parametrize("shape", list(TOOL_TEXTS))
def test_tool_credentials_are_found_on_the_decoded_json(shape: str, direction: int) -> None:
    text = TOOL_TEXTS[shape]
    echo = '{"type":"error","error":{"message":"bad tool-secret-a1b2c3"}}'
    got = record([(direction, text), (RECEIVED, echo)], [])
    first, second = got.messages
    assert first.redacted and second.redacted
    # Only the credential changed; every other byte is as it came.
    if shape == "a key in a tool's server_url":
        assert first.data() == text.replace("tool-secret-a1b2c3", REDACTED).encode()
    else:
        assert first.data() == text.replace('"tool-secret-a1b2c3"', f'"{REDACTED}"').encode()
    assert second.data() == echo.replace("tool-secret-a1b2c3", REDACTED).encode()


def test_tool_credentials_of_every_kind() -> None:
    text = json.dumps(
        {
            "type": "session.update",
            "session": {
                "tools": [
                    {"authorization": {"scheme": "bearer", "token": "nested-secret-1"}, "headers": "all-of-them-1"},
                    {"authorization": None, "headers": {"A": "[REDACTED]"}, "name": "kept"},
                    {"authorization": 12345678},
                ],
                "nested": {"tools": [{"headers": {"B": {"deep": "deeper-secret-1"}}}]},
            },
        }
    )
    got, redacted = redact_tools(text.encode(), scrubber := Scrubber())
    assert redacted and json.loads(got) == {
        "type": "session.update",
        "session": {
            "tools": [
                {"authorization": REDACTED, "headers": REDACTED},
                {"authorization": None, "headers": {"A": REDACTED}, "name": "kept"},
                {"authorization": REDACTED},
            ],
            "nested": {"tools": [{"headers": {"B": REDACTED}}]},
        },
    }
    for secret in ("nested-secret-1", "all-of-them-1", "deeper-secret-1"):
        assert scrubber.finds(secret.encode())
    assert not scrubber.finds(b"scheme bearer token kept")


# -- nothing printed shows a secret ----------------------------------------------------------


def test_an_upstream_url_error_is_printed_redacted(start_proxy, captures) -> None:
    proxy = start_proxy("ws://user-without-password-77@127.0.0.1:9/v1")  # websockets: InvalidURI
    with pytest.raises(InvalidStatus) as caught:
        connect(proxy.url + "/realtime")
    assert caught.value.response.status_code == 502
    body = caught.value.response.body.decode()
    assert "InvalidURI" in body and REDACTED in body
    got = closed_capture(captures)
    for shown in (body, got.end["error"], proxy.first_line, *proxy.lines):
        assert "user-without-password-77" not in shown, shown


def test_replay_shows_its_target_redacted(simulator, make_capture, tmp_path: Path) -> None:
    path = make_capture([(0, SENT, {"type": "input_audio_buffer.clear"})])
    to = f"{simulator.url}{REALTIME}&api-key=replay-secret-3c4d5e"
    result = run(read_capture(path), to=to, captures=tmp_path / "replays", timeout=5)
    assert result["url"] == f"{simulator.url}{REALTIME}&api-key={REDACTED}"
    assert "replay-secret-3c4d5e" not in json.dumps(result)
    bad = CliRunner().invoke(
        cli,
        ["replay", str(path), "--to", "ws:///v1/realtime?api-key=replay-secret-3c4d5e", "--captures", str(tmp_path)],
    )
    assert bad.exit_code == 1 and "replay-secret-3c4d5e" not in bad.output, bad.output
    assert f"api-key={REDACTED}" in bad.stderr
    for to, code in [
        ("ws://127.0.0.1:9/v1/realtime?api-key=replay-secret-3c4d5e", 1),  # nothing listens there
        ("http://127.0.0.1:9/v1/realtime?api-key=replay-secret-3c4d5e", 2),
    ]:
        refused = CliRunner().invoke(cli, ["replay", str(path), "--to", to, "--captures", str(tmp_path)])
        assert refused.exit_code == code and "replay-secret-3c4d5e" not in refused.output, refused.output
        assert f"api-key={REDACTED}" in refused.stderr


def test_the_shims_warnings_show_no_secret(simulator, captures, monkeypatch, capsys) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("recording broke")

    monkeypatch.setattr(shim._Connection, "frame", broken)
    url = f"{simulator.url}{REALTIME}&api-key=shim-secret-6f7a8b"

    async def talk() -> None:
        async with aconnect(url, additional_headers={"api-key": "shim-secret-6f7a8b"}) as ws:
            await ws.recv()

    with recorder.recording(captures=captures):
        asyncio.run(talk())
    err = capsys.readouterr().err
    assert "recording stopped for a connection to" in err and f"api-key={REDACTED}" in err
    assert "shim-secret-6f7a8b" not in err
    assert all(b"shim-secret-6f7a8b" not in p.read_bytes() for p in capture_files(captures))


def test_scrubbing_is_one_pattern_however_many_secrets() -> None:
    scrubber = Scrubber([f"secret-number-{n:04d}" for n in range(50)])
    assert scrubber.finds(b"... secret-number-0042 ...")
    assert scrubber.scrub_bytes(b"a secret-number-0007 b") == (b"a [REDACTED] b", True)
    assert scrubber.scrub_bytes(b"nothing here") == (b"nothing here", False)
    assert Scrubber(["a.b*c+d?e(f)"]).scrub_text("x a.b*c+d?e(f) y") == (f"x {REDACTED} y", True)
    assert Scrubber(["a.b*c+d?e(f)"]).scrub_text("x aXb*c+d?e(f) y")[1] is False
