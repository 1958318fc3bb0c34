"""Interchange: ``rtcap import`` (HAR in), and the HAR that ``rtcap export --har`` writes."""

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
