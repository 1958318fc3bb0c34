"""Interchange: ``rtcap import`` (HAR in), ``rtcap otel`` (traces out), and the HAR that
``rtcap export --har`` writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from analyzer.cliutil import (
    BadUsage,
    Failure,
    captures_option,
    emit,
    labels_from,
    load,
    open_captures_for_cli,
    output_options,
    plural,
)


@click.command("import")
@click.argument("files", metavar="FILE...", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--label", "labels", multiple=True, metavar="K=V", help="Label the imported sessions (repeatable).")
@output_options
@captures_option
def import_(
    files: tuple[Path, ...], labels: tuple[str, ...], fmt: str | None, output: Path | None, captures: Path
) -> None:
    """Import the WebSockets of HAR files as sessions (recorder har).

    Reads every entry with _webSocketMessages (Chrome and Edge DevTools, Playwright's
    record_har, mitmproxy's savehar, rtcap export --har): one capture per WebSocket, with
    its URL and handshake headers (redacted as rtcap redacts), and each message's
    direction, time and opcode; times count from the handshake. What the HAR does not
    hold, such as the close code, stays empty. Importing a file again adds nothing: a
    session's id comes from its entry. One row per WebSocket.

    \b
    Example:
      rtcap import devtools-export.har
    """
    import pyarrow as pa

    from analyzer.har import HarError, import_har

    for file in files:
        if not file.is_file():
            raise BadUsage(f"no file {file}")
    try:
        done = import_har(files, captures, labels_from(labels))
    except HarError as e:
        raise Failure(str(e)) from None
    rows = [
        {"file": d.file, "entry": d.entry, "session_id": d.session_id, "messages": d.messages, "status": d.status}
        for d in done
    ]
    emit(pa.Table.from_pylist(rows), fmt, output)


def export_har(capture_list: list[Any], path: Path, audio: str) -> None:
    """``rtcap export --har``: write the captures as one HAR file (0600)."""
    from analyzer.har import har_document
    from analyzer.render import private_file

    for capture in capture_list:
        if capture.state == "damaged":
            click.echo(f"rtcap: warning: {capture.path} is damaged: {'; '.join(capture.problems)}", err=True)
    document = har_document(capture_list, audio)
    try:
        with private_file(path) as f:
            json.dump(document, f, ensure_ascii=False)
    except OSError as e:
        raise Failure(f"cannot write {path}: {e.strerror or e}") from None
    messages = sum(len(capture.messages) for capture in capture_list)
    click.echo(f"wrote {plural(len(capture_list), 'session')} ({plural(messages, 'message')}) to {path}", err=True)


@click.command()
@click.argument("sessions", metavar="[SESSION]...", nargs=-1)
@click.option(
    "--endpoint",
    envvar="OTEL_EXPORTER_OTLP_ENDPOINT",
    metavar="URL",
    help="OTLP/HTTP endpoint (/v1/traces is added; also $OTEL_EXPORTER_OTLP_ENDPOINT).",
)
@click.option(
    "--header",
    "headers",
    multiple=True,
    metavar="K=V",
    help="A header for the endpoint (repeatable; else $OTEL_EXPORTER_OTLP_HEADERS).",
)
@click.option("--content", is_flag=True, help="Also send what was said: output items, tool arguments and results.")
@click.option("--failed", is_flag=True, help="Only sessions with server or connection failures.")
@click.option("--label", "labels", multiple=True, metavar="K=V", help="Only sessions with this label (repeatable).")
@click.option("--since", metavar="WHEN", help="Only sessions started since WHEN: an ISO time, or 30m, 2h, 7d ago.")
@click.option("--batch", type=click.IntRange(min=1), default=50, show_default=True, help="Sessions per request.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    metavar="S",
    help="Give up on a request after S seconds of retries.",
)
@captures_option
def otel(
    sessions: tuple[str, ...],
    endpoint: str | None,
    headers: tuple[str, ...],
    content: bool,
    failed: bool,
    labels: tuple[str, ...],
    since: str | None,
    batch: int,
    timeout: float,
    captures: Path,
) -> None:
    """Send sessions as OpenTelemetry traces over OTLP/HTTP.

    One trace per session: a root span for the connection, a span per response (from
    its response.create or commit to response.done; failed ones with status ERROR and
    error.type), spans for tool calls and user speech, gen_ai.* attributes, and
    rtcap.session_id with the seq range on every span. Without SESSION, every session
    matching --since, --label and --failed (all of them without filters), in batches.
    Langfuse, Arize Phoenix, Datadog, LangSmith and Braintrust take OTLP: see the README.

    \b
    Example:
      rtcap otel --since 1h --failed --endpoint http://localhost:6006
    """
    from analyzer.explore import list_sessions, since_time
    from analyzer.otel import OtelError, send_traces, session_trace
    from recorder.session import parse_labels

    if not endpoint:
        raise BadUsage("no endpoint: give --endpoint URL or set OTEL_EXPORTER_OTLP_ENDPOINT")
    pairs: dict[str, str] = {}
    for header in headers:
        key, sep, value = header.partition("=")
        if not sep or not key.strip():
            raise BadUsage(f"malformed header {header!r}: expected KEY=VALUE")
        pairs[key.strip()] = value.strip()
    if sessions and (failed or labels or since):
        raise BadUsage("give SESSIONs or --failed/--label/--since, not both")
    if sessions:
        ids = [load(captures, session, max_messages=0).session_id for session in sessions]
    else:
        try:
            wanted = parse_labels(labels, env="")
            when = since_time(since) if since else None
        except ValueError as e:
            raise BadUsage(str(e)) from None
        opened = open_captures_for_cli(captures)
        ids = list_sessions(opened, failed=failed, labels=wanted, since=when).column("session_id").to_pylist()
    if not ids:
        click.echo("rtcap otel: no sessions to send", err=True)
        return

    def progress(sent: int, spans: int) -> None:
        click.echo(f"rtcap otel: sent {sent} of {plural(len(ids), 'session')} ({plural(spans, 'span')})", err=True)

    traces = (session_trace(load(captures, session_id), content) for session_id in ids)
    try:
        send_traces(traces, endpoint, pairs or None, batch=batch, timeout=timeout, progress=progress)
    except OtelError as e:
        raise Failure(str(e)) from None
