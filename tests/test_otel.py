"""rtcap otel: traces sent through the OpenTelemetry SDK to a real OTLP/HTTP receiver on
loopback (standard library HTTP, protobuf decoded with opentelemetry-proto)."""

from __future__ import annotations

import gzip
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from analyzer.cli import cli
from analyzer.har import import_har
from analyzer.sim.traffic import record_direct
from analyzer.views import open_captures

DATA = Path(__file__).parent / "data"
ERROR = 2  # Status.STATUS_CODE_ERROR


class Receiver(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP traces receiver: keeps each request it decodes; answers the first
    ``busy`` requests 503 with ``Retry-After: 0``, as a loaded collector does."""

    def __init__(self, busy: int = 0) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.busy = busy
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """Every span received, with its resource's attributes."""
        return [
            (_attributes(resource.resource.attributes), span)
            for request in self.requests
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.server.paths.append(self.path)
        self.server.headers.append(dict(self.headers))
        if self.server.busy > 0:
            self.server.busy -= 1
            self.send_response(503)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.server.requests.append(request)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simulated session with a tool call and a failed response (seed 4: four responses,
    the second failed by ``fail nth=2``, the third calls get_weather), and the Chromium
    HAR fixture imported (server VAD: user speech)."""
    root = tmp_path_factory.mktemp("otel") / "captures"
    record_direct(root, ["fail nth=2"], sessions=1, seed=4, labels={"app": "otel-test"})
    import_har([DATA / "har-chromium.har"], root, {"app": "har"})
    return root


def _send(corpus: Path, receiver: Receiver, *args: str) -> Any:
    result = CliRunner().invoke(cli, ["otel", *args, "--endpoint", receiver.url, "--captures", str(corpus)])
    assert result.exit_code == 0, result.output
    return result


def test_spans_match_the_responses_view(corpus: Path, receiver: Receiver) -> None:
    _send(corpus, receiver, "--label", "app=otel-test")
    assert receiver.paths == ["/v1/traces"]
    views = open_captures(corpus, include_replays=True)
    [session] = views.sql(
        "SELECT session_id, started_at, server_session_id FROM sessions WHERE labels['app'] = 'otel-test'"
    ).to_pylist()
    rows = views.sql(
        "SELECT * FROM responses WHERE session_id = ? ORDER BY created_seq", [session["session_id"]]
    ).to_pylist()
    assert [r["status"] for r in rows] == ["completed", "failed", "completed", "completed"]

    spans = [span for _, span in receiver.spans()]
    assert {span.trace_id for span in spans} == {spans[0].trace_id}  # one trace for the session
    [root] = [span for span in spans if not span.parent_span_id]
    zero = int(session["started_at"].timestamp() * 1e6) * 1000
    assert abs(root.start_time_unix_nano - zero) < 1000  # started_at is microseconds
    zero = root.start_time_unix_nano
    responses = [span for span in spans if span.name == "response"]
    assert len(responses) == len(rows)
    for row, span in zip(rows, sorted(responses, key=lambda s: s.start_time_unix_nano), strict=True):
        attributes = _attributes(span.attributes)
        assert span.parent_span_id == root.span_id
        assert attributes["gen_ai.response.id"] == row["response_id"]
        assert attributes["rtcap.session_id"] == session["session_id"]
        assert attributes["gen_ai.conversation.id"] == session["server_session_id"]
        assert attributes["rtcap.response.status"] == row["status"]
        assert attributes["rtcap.response.created_seq"] == row["created_seq"]
        assert attributes["rtcap.response.done_seq"] == row["done_seq"] == attributes["rtcap.seq.last"]
        assert attributes["gen_ai.usage.input_tokens"] == row["input_tokens"]
        assert attributes["gen_ai.usage.output_tokens"] == row["output_tokens"]
        assert span.end_time_unix_nano - zero == round(row["done_t_s"] * 1e9)
        [created] = [event for event in span.events if event.name == "response.created"]
        assert created.time_unix_nano - zero == round(row["created_t_s"] * 1e9)
        assert span.start_time_unix_nano <= created.time_unix_nano
        if row["status"] == "failed":
            assert span.status.code == ERROR
            assert attributes["error.type"] == row["error_type"] == "server_error"
        else:
            assert span.status.code != ERROR and "error.type" not in attributes
        assert "gen_ai.output.messages" not in attributes  # only with --content

    tools = [span for span in spans if _attributes(span.attributes).get("gen_ai.operation.name") == "execute_tool"]
    calls = views.sql(
        "SELECT payload->'item'->>'call_id' AS call_id, response_id FROM events "
        "WHERE session_id = ? AND type = 'response.output_item.done' AND payload->'item'->>'type' = 'function_call'",
        [session["session_id"]],
    ).to_pylist()
    assert len(tools) == len(calls) == 1
    parent = {span.span_id: _attributes(span.attributes).get("gen_ai.response.id") for span in responses}
    assert _attributes(tools[0].attributes)["gen_ai.tool.call.id"] == calls[0]["call_id"]
    assert parent[tools[0].parent_span_id] == calls[0]["response_id"]
    for span in spans:
        attributes = _attributes(span.attributes)
        assert attributes["rtcap.session_id"] == session["session_id"]
        assert attributes["rtcap.seq.first"] <= attributes["rtcap.seq.last"]


def test_speech_spans_and_content(corpus: Path, receiver: Receiver) -> None:
    _send(corpus, receiver, "--label", "app=har", "--content")
    views = open_captures(corpus, include_replays=True)
    speech = views.sql(
        "SELECT e.seq, e.t_s, e.type FROM events e JOIN sessions s USING (session_id) "
        "WHERE s.labels['app'] = 'har' AND e.type LIKE 'input_audio_buffer.speech_%' ORDER BY seq"
    ).to_pylist()
    assert [e["type"] for e in speech] == ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped"]
    spans = [span for _, span in receiver.spans()]
    [root] = [span for span in spans if not span.parent_span_id]
    [spoken] = [span for span in spans if span.name == "user speech"]
    assert spoken.parent_span_id == root.span_id
    assert spoken.start_time_unix_nano - root.start_time_unix_nano == round(speech[0]["t_s"] * 1e9)
    assert spoken.end_time_unix_nano - root.start_time_unix_nano == round(speech[1]["t_s"] * 1e9)
    outputs = [_attributes(span.attributes).get("gen_ai.output.messages") for span in spans if span.name == "response"]
    assert all(outputs) and "get_weather" in outputs[0]


def test_a_busy_endpoint_is_retried_and_headers_are_sent(corpus: Path, receiver: Receiver) -> None:
    receiver.busy = 1
    result = _send(corpus, receiver, "--header", "x-langfuse-test=yes", "--batch", "1")
    assert len(receiver.paths) == 3  # one 503, then a request per session
    assert receiver.headers[-1]["x-langfuse-test"] == "yes"
    assert {resource["service.name"] for resource, _ in receiver.spans()} == {"rtcap"}
    progress = [line.split(" (")[0] for line in result.output.splitlines()]
    assert progress == ["rtcap otel: sent 1 of 2 sessions", "rtcap otel: sent 2 of 2 sessions"]


def test_errors(corpus: Path) -> None:
    runner = CliRunner(env={"OTEL_EXPORTER_OTLP_ENDPOINT": None})
    result = runner.invoke(cli, ["otel", "--captures", str(corpus)])
    assert result.exit_code == 2 and "no endpoint" in result.output
    # Nothing listens there: the exporter gives up (connection refused), one error line.
    result = runner.invoke(
        cli,
        [
            "otel",
            "--captures",
            str(corpus),
            "--endpoint",
            "http://127.0.0.1:9",
            "--label",
            "app=har",
            "--timeout",
            "0.5",
        ],
    )
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("rtcap: error: http://127.0.0.1:9/v1/traces did not take")


def test_environment_and_a_dropped_response(tmp_path: Path, receiver: Receiver, make_capture: Any) -> None:
    from recorder.capture import RECEIVED, SENT

    root = tmp_path / "captures"
    make_capture(
        [
            (0.0, RECEIVED, {"type": "session.created", "session": {"id": "sess_x", "model": "gpt-realtime"}}),
            (0.1, SENT, {"type": "response.create"}),
            (0.2, RECEIVED, {"type": "response.created", "response": {"id": "resp_1"}}),
            (0.3, RECEIVED, {"type": "rate_limits.updated", "rate_limits": [{"name": "tokens", "remaining": 7}]}),
        ],
        end_code=1006,
        closed_by="server",
        root=root,
        url="wss://res.openai.azure.com/openai/v1/realtime?model=d",
    )
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_EXPORTER_OTLP_HEADERS": "x-from-env=1"}
    result = CliRunner(env=env).invoke(cli, ["otel", "--captures", str(root)])
    assert result.exit_code == 0, result.output
    assert receiver.headers[0]["x-from-env"] == "1"
    [row] = open_captures(root).sql("SELECT status, done_t_s FROM responses").to_pylist()
    assert row == {"status": "dropped", "done_t_s": None}
    [span] = [span for _, span in receiver.spans() if span.name == "response"]
    attributes = _attributes(span.attributes)
    assert attributes["rtcap.response.status"] == "dropped"
    assert span.status.code == ERROR and attributes["error.type"] == "connection_closed"
    assert attributes["gen_ai.provider.name"] == "azure.ai.openai"
    assert [(e.name, _attributes(e.attributes)) for e in span.events][1] == (
        "rate_limits.updated",
        {"rtcap.rate_limits.tokens.remaining": 7},
    )
