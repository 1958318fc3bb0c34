"""OpenTelemetry traces of recorded sessions, sent over OTLP/HTTP (``rtcap otel``).

One trace per session: a root span for the connection; a span per response, from the
``response.create`` or the commit that started it to its ``response.done``; under it a
span per tool call, from the call's first event to the client's output for it; under the
root a span per stretch of user speech (``speech_started`` to ``speech_stopped``).
Attributes follow the OpenTelemetry GenAI conventions where they have a name (provider,
request model, response id, usage tokens, conversation id = the server's session id);
rtcap's own are ``rtcap.*``, with the session id and the seq range on every span, so that
a span leads back to its capture. Span times are the recorded times.

:func:`session_trace` plans a session's spans from its capture, as plain data, with the
rules of :mod:`recorder.events` and :mod:`recorder.turns`; :func:`send_traces` hands the
plans to the OpenTelemetry SDK and its OTLP/HTTP exporter (the ``otel`` extra), which
retries a busy endpoint (429, 502, 503, 504, honouring ``Retry-After``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from recorder import __version__, events, telemetry, turns
from recorder.capture import Capture

USAGE_ATTRIBUTES = {
    "input_tokens": "gen_ai.usage.input_tokens",
    "output_tokens": "gen_ai.usage.output_tokens",
    "input_audio_tokens": "rtcap.usage.input_audio_tokens",
    "output_audio_tokens": "rtcap.usage.output_audio_tokens",
    "input_cached_tokens": "rtcap.usage.input_cached_tokens",
}
"""Each usage count's attribute: GenAI's name where it has one, else rtcap's."""
TRACES_PATH = "/v1/traces"
EXTRA = "otel"
"""The extra that installs the OpenTelemetry SDK and exporter."""


@dataclasses.dataclass
class SpanPlan:
    """One span to send: times in ns since the session's time zero."""

    name: str
    start: int
    end: int
    attributes: dict[str, Any]
    error: str | None = None
    """The span's ``error.type``, making its status ERROR."""
    events: list[tuple[str, int, dict[str, Any]]] = dataclasses.field(default_factory=list)
    children: list[SpanPlan] = dataclasses.field(default_factory=list)

    def walk(self) -> Iterable[SpanPlan]:
        """This span and all below it."""
        yield self
        for child in self.children:
            yield from child.walk()


@dataclasses.dataclass
class SessionTrace:
    """A session's spans, and the wall-clock time of its time zero."""

    session_id: str
    started_ns: int
    root: SpanPlan


def session_trace(capture: Capture, content: bool = False) -> SessionTrace:
    """Plan the spans of one session (see the module's docstring). ``content`` adds what
    was said: the responses' output items and the tool calls' arguments and results."""
    sid = capture.session_id
    parsed: list[tuple[int, int, str, Mapping[str, Any] | None]] = [
        (m.seq, m.t_ns, m.direction, events.parse(m.payload) if m.opcode == "text" else None) for m in capture.messages
    ]
    end = capture.end or {}
    end_t: int = end["t_ns"] if isinstance(end.get("t_ns"), int) else 0
    last_t = max([t for _, t, _, _ in parsed] + [end_t])
    created = next((e for _, _, _, e in parsed if events.event_type(e) == turns.SESSION_CREATED), None)
    server_session = events.dig(created, telemetry.SESSION_ID_PATH)
    model = events.dig(created, telemetry.SESSION_MODEL_PATH)
    url = capture.header.get("url")
    common = {"rtcap.session_id": sid, "gen_ai.provider.name": telemetry.VENDORS[telemetry.vendor(url)]}
    if isinstance(server_session, str):
        common["gen_ai.conversation.id"] = server_session
    if isinstance(model, str):
        common["gen_ai.request.model"] = model
    root = SpanPlan(
        "realtime session",
        0,
        last_t,
        {**common, **_seqs(parsed[0][0] if parsed else None, parsed[-1][0] if parsed else None)},
    )
    root.attributes.update(_session_attributes(capture))

    done: dict[str, tuple[int, int, Mapping[str, Any]]] = {}
    tracker = events.FailureTracker()
    on_response: dict[str, list[tuple[str, int, dict[str, Any]]]] = {}
    for seq, t_ns, direction, event in parsed:
        if direction != events.RECEIVED or event is None:
            continue
        kind = events.event_type(event)
        if kind == events.RESPONSE_DONE:
            response_id = events.dig(event, ("response", "id"))
            if isinstance(response_id, str):
                done.setdefault(response_id, (seq, t_ns, event))
        active = max(tracker.active, key=tracker.active.__getitem__) if tracker.active else None
        failure = tracker.add(seq, event)
        if kind == events.ERROR and failure is not None:
            note = ("error", t_ns, _failure_attributes(failure))
            on_response.setdefault(failure.response_id or "", []).append(note)
        elif kind == telemetry.RATE_LIMITS_UPDATED:
            note = (telemetry.RATE_LIMITS_UPDATED, t_ns, _rate_limits(event))
            on_response.setdefault(active or "", []).append(note)
    code = end.get("code") if isinstance(end.get("code"), int) else None
    dropped = tracker.end(code, end.get("error") if isinstance(end.get("error"), str) else None) if end else None
    root.events += on_response.pop("", [])

    calls = _tool_calls(parsed)
    for turn in turns.turns((seq, t, d, e) for seq, t, d, e in parsed):
        if "speech_started" in turn.marks:
            first, start = turn.marks["speech_started"]
            last, stop = turn.marks.get("speech_stopped", (first, start))
            root.children.append(SpanPlan("user speech", start, stop, {**common, **_seqs(first, last)}))
        if turn.response_id is None or "response_created" not in turn.marks:
            continue
        span = _response_span(turn, done.get(turn.response_id), common, capture.state, last_t, content)
        if dropped is not None and dropped.response_id == turn.response_id:
            span.error = dropped.error_type
        span.events += on_response.pop(turn.response_id, [])
        span.children += [
            _tool_span(call, common, content) for call in calls.values() if call["response_id"] == turn.response_id
        ]
        root.children.append(span)
    for notes in on_response.values():  # of responses the turns did not see created
        root.events += notes
    root.children.sort(key=lambda span: span.start)
    started = capture.header.get("started_ns")
    return SessionTrace(sid, started if isinstance(started, int) else 0, root)


def _seqs(first: int | None, last: int | None) -> dict[str, int]:
    return {} if first is None or last is None else {"rtcap.seq.first": first, "rtcap.seq.last": last}


def _session_attributes(capture: Capture) -> dict[str, Any]:
    header, end = capture.header, capture.end or {}
    found: dict[str, Any] = {"rtcap.recorder": header.get("recorder"), "url.full": header.get("url")}
    try:
        found["server.address"] = urlsplit(str(header.get("url") or "")).hostname
    except ValueError:
        pass
    found.update({"rtcap.close_code": end.get("code"), "rtcap.close_by": end.get("closed_by")})
    for key, value in (header.get("labels") or {}).items():
        found[f"rtcap.label.{key}"] = value
    return {key: value for key, value in found.items() if value is not None}


def _response_span(
    turn: turns.Turn,
    done: tuple[int, int, Mapping[str, Any]] | None,
    common: dict[str, Any],
    state: str,
    last_t: int,
    content: bool,
) -> SpanPlan:
    created_seq, created_t = turn.marks["response_created"]
    first_seq, start = turn.marks.get("response_create", turn.marks.get("committed", (created_seq, created_t)))
    first_seq = min(first_seq, created_seq)
    attributes: dict[str, Any] = {
        **common,
        "gen_ai.operation.name": "chat",
        "gen_ai.response.id": turn.response_id,
        "rtcap.response.created_seq": created_seq,
    }
    span = SpanPlan("response", start, last_t, attributes)
    span.events.append((events.RESPONSE_STARTED, created_t, {"rtcap.seq": created_seq}))
    if "first_audio" in turn.marks:
        seq, t_ns = turn.marks["first_audio"]
        attributes["rtcap.time_to_first_audio_ms"] = (t_ns - start) / 1e6
        span.events.append(("first_audio", t_ns, {"rtcap.seq": seq}))
    if done is None:
        attributes["rtcap.response.status"] = "in_progress" if state == "open" else events.DROPPED
        attributes.update(_seqs(first_seq, created_seq))
        return span
    done_seq, span.end, event = done
    attributes.update(_seqs(first_seq, done_seq))
    attributes["rtcap.response.done_seq"] = done_seq
    status = events.response_status(event)
    if status is not None:
        attributes["rtcap.response.status"] = status
        attributes["gen_ai.response.finish_reasons"] = [status]
    failure = events.failure_fields(event)
    if failure is not None:
        span.error = failure[1]
        if failure[3]:
            attributes["error.message"] = failure[3]
    for name, count in telemetry.usage(event).items():
        attributes[USAGE_ATTRIBUTES[name]] = count
    if content:
        attributes["gen_ai.output.messages"] = json.dumps(events.dig(event, turns.RESPONSE_OUTPUT_PATH) or [])
    return span


def _tool_calls(parsed: list[tuple[int, int, str, Mapping[str, Any] | None]]) -> dict[str, dict[str, Any]]:
    """Each function call: the response and first event that named it, its name and
    arguments (from its item), and the client's output for it."""
    calls: dict[str, dict[str, Any]] = {}
    for seq, t_ns, direction, event in parsed:
        if event is None:
            continue
        if direction == events.RECEIVED:
            for kind, call_id in events.server_ids(event):
                item = event.get("item")
                if kind != "call" or not isinstance(item, dict) or item.get("type") != turns.FUNCTION_CALL:
                    continue
                call = calls.setdefault(call_id, {"start": (seq, t_ns), "response_id": event.get("response_id")})
                call["name"] = item.get("name", call.get("name"))
                call["arguments"] = item.get("arguments") or call.get("arguments")
        else:
            for kind, call_id in turns.referred_ids(event):
                if kind == "call" and call_id in calls and "output" not in calls[call_id]:
                    calls[call_id]["output"] = (seq, t_ns, events.dig(event, ("item", "output")))
    for call_id, call in calls.items():
        call["id"] = call_id
    return calls


def _tool_span(call: dict[str, Any], common: dict[str, Any], content: bool) -> SpanPlan:
    first, start = call["start"]
    last, end, result = call.get("output", (first, start, None))
    attributes = {
        **common,
        **_seqs(first, last),
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.type": "function",
        "gen_ai.tool.call.id": call["id"],
    }
    if isinstance(call.get("name"), str):
        attributes["gen_ai.tool.name"] = call["name"]
    if content:
        attributes["gen_ai.tool.call.arguments"] = str(call.get("arguments") or "")
        attributes["gen_ai.tool.call.result"] = "" if result is None else str(result)
    return SpanPlan(f"execute_tool {call.get('name') or ''}".strip(), start, end, attributes)


def _failure_attributes(failure: events.Failure) -> dict[str, Any]:
    found = {"error.type": failure.error_type, "rtcap.error.code": failure.code, "error.message": failure.message}
    return {key: value for key, value in found.items() if value is not None} | {"rtcap.seq": failure.seq or 0}


def _rate_limits(event: Mapping[str, Any]) -> dict[str, Any]:
    return {
        f"rtcap.rate_limits.{name}.{key}": value
        for name, fields in telemetry.rate_limits(event).items()
        for key, value in fields.items()
    }


# -- sending ---------------------------------------------------------------------------


class OtelError(Exception):
    """The SDK is missing, or the endpoint did not take the spans; one line."""


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of an endpoint given as ``OTEL_EXPORTER_OTLP_ENDPOINT`` is
    (``http://host:4318``, or a path prefix): ``/v1/traces`` appended, unless it is there."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith(TRACES_PATH) else endpoint + TRACES_PATH


def send_traces(
    traces: Iterable[SessionTrace],
    endpoint: str,
    headers: Mapping[str, str] | None = None,
    *,
    batch: int = 50,
    timeout: float = 30.0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, int]:
    """Send each session's trace, ``batch`` sessions to a request; returns (sessions,
    spans) sent. ``headers`` of ``None`` leaves them to ``OTEL_EXPORTER_OTLP_HEADERS``.
    Raises :class:`OtelError` when a batch is refused after the exporter's retries."""
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    except ImportError:
        raise OtelError(f"rtcap otel needs the OpenTelemetry SDK: pip install 'rtcap[{EXTRA}]'") from None

    exporter = OTLPSpanExporter(
        endpoint=traces_url(endpoint), headers=dict(headers) if headers else None, timeout=timeout
    )
    collected = InMemorySpanExporter()
    tracer_provider = TracerProvider(
        resource=Resource.create({"service.name": "rtcap", "service.version": __version__})
    )
    tracer_provider.add_span_processor(SimpleSpanProcessor(collected))
    tracer = tracer_provider.get_tracer("rtcap", __version__)
    sessions = spans = pending = 0

    said = _SdkLog()

    def flush() -> None:
        nonlocal spans, pending
        finished = collected.get_finished_spans()
        if finished and exporter.export(finished) != SpanExportResult.SUCCESS:
            why = f": {said.lines[0]}" if said.lines else ""
            raise OtelError(f"{traces_url(endpoint)} did not take {len(finished)} spans{why}")
        collected.clear()
        spans += len(finished)
        pending = 0

    try:
        said.attach()
        for session in traces:
            _emit(tracer, trace, session.root, session.started_ns, None)
            sessions += 1
            pending += 1
            if pending >= batch:
                flush()
                if progress is not None:
                    progress(sessions, spans)
        if pending or not sessions:
            flush()
            if progress is not None:
                progress(sessions, spans)
    finally:
        said.detach()
        exporter.shutdown()
        tracer_provider.shutdown()
    return sessions, spans


class _SdkLog(logging.Handler):
    """What the SDK logs while sending, kept for rtcap's one error line rather than
    printed (its retries and its final complaint, which names no cause)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []
        self._logger = logging.getLogger("opentelemetry")
        self._propagate = self._logger.propagate

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(" ".join(record.getMessage().split()))

    def attach(self) -> None:
        self._logger.addHandler(self)
        self._logger.propagate = False

    def detach(self) -> None:
        self._logger.removeHandler(self)
        self._logger.propagate = self._propagate


def _emit(tracer: Any, trace: Any, plan: SpanPlan, zero: int, parent: Any) -> None:
    from opentelemetry.trace import Status, StatusCode

    context = trace.set_span_in_context(parent) if parent is not None else None
    attributes = {key: value for key, value in plan.attributes.items() if value is not None}
    if plan.error is not None:
        attributes["error.type"] = plan.error
    span = tracer.start_span(plan.name, context=context, attributes=attributes, start_time=zero + plan.start)
    for name, t_ns, fields in plan.events:
        span.add_event(name, fields, timestamp=zero + t_ns)
    if plan.error is not None:
        span.set_status(Status(StatusCode.ERROR, plan.error))
    for child in plan.children:
        _emit(tracer, trace, child, zero, span)
    span.end(end_time=zero + max(plan.end, plan.start))
