"""``rtcap report``: a support bundle for the API vendor, for one session.

The zip holds the redacted capture and its export, the session's identity (the server's
session id, timestamps, URL, model), the failure with the messages around it, doctor's
checks, the session's page (``session.html``, opened at the failure; see
:mod:`analyzer.page`), and a README in plain English. Everything comes from the (already redacted)
capture, so no secret can reach the bundle.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import zipfile
from pathlib import Path
from typing import Any

from recorder import events
from recorder.capture import Capture

from .doctor import ADVICE, diagnose
from .export import export_rows
from .page import focus_seq, page_data, render
from .render import private_file
from .render import rows as plain_rows
from .views import Captures, batched

AROUND = 20


@batched
def build(captures: Captures, capture: Capture, output: Path) -> dict[str, Any]:
    """Write the bundle for ``capture`` to ``output``; returns what it says."""
    path = capture.path
    session_id = capture.session_id
    [session] = plain_rows(captures.sql("SELECT * FROM sessions WHERE session_id = ?", [session_id])) or [{}]
    failures = plain_rows(captures.sql("SELECT * FROM failures WHERE session_id = ? ORDER BY t_s", [session_id]))
    checks = diagnose(captures, session_id).to_pylist()
    exported = list(export_rows(capture))
    first = next((f for f in failures if f["class"] in ("server", "connection")), failures[0] if failures else None)
    around: list[dict[str, Any]] = []
    if first is not None:
        center = first["seq"] if first["seq"] is not None else len(exported) - 1
        around = [row for row in exported if abs(row["seq"] - center) <= AROUND]
    story = readme(session, first, failures, checks, len(exported))
    page = render(page_data(captures, capture, focus=focus_seq(captures, session_id), checks=checks))
    with private_file(output, binary=True) as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("README.txt", story)
        bundle.write(path, f"capture/{path.name}")
        bundle.writestr("export.jsonl", _jsonl(exported))
        bundle.writestr("session.json", json.dumps(session, indent=2, ensure_ascii=False) + "\n")
        bundle.writestr("failures.json", json.dumps(failures, indent=2, ensure_ascii=False) + "\n")
        bundle.writestr("around-failure.jsonl", _jsonl(around))
        bundle.writestr("doctor.json", json.dumps(checks, indent=2, ensure_ascii=False) + "\n")
        bundle.writestr("session.html", page)
    return {"session_id": session_id, "failure": first, "files": 8}


def _jsonl(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    for row in rows:
        buffer.write(json.dumps(row, ensure_ascii=False) + "\n")
    return buffer.getvalue()


def readme(
    session: dict[str, Any],
    first: dict[str, Any] | None,
    failures: list[dict[str, Any]],
    checks: list[dict[str, str]],
    messages: int,
) -> str:
    """What happened, in plain English, for someone who has never seen rtcap."""
    lines = [
        f"Realtime session {session.get('server_session_id') or '(no server session id)'}",
        "",
        f"rtcap session id: {session.get('session_id')}",
        f"Endpoint: {session.get('url')} (model {session.get('model')}, {session.get('dialect')} protocol)",
        f"Opened: {session.get('started_at')}; ended: {session.get('ended_at')}",
        f"Duration: {session.get('duration_s') or 0:.1f} s",
        f"Messages: {messages} ({session.get('sent')} sent by the client, {session.get('received')} by the server)",
        f"Closed by: {session.get('close_by')} with code {session.get('close_code')}",
        "",
    ]
    if first is None:
        lines.append("No failure was recorded in this session.")
    else:
        if first["source"] == events.HANDSHAKE:
            where = "during the WebSocket handshake, before any message was exchanged"
        elif first["seq"] is not None:
            where = f"at message {first['seq']}"
        else:
            where = "when the connection ended"
        message = f': "{first["message"]}"' if first.get("message") else ""
        lines.append(
            f"What failed: {first['source']} reported {first['error_type']}"
            f"{' (code ' + str(first['code']) + ')' if first.get('code') else ''}{message}, {where}, "
            f"{first['t_s']:.3f} s into the session, during response {first.get('response_id') or '(none)'}."
        )
        if len(failures) > 1:
            lines.append(f"The session had {len(failures)} failures in all (see failures.json).")
    flagged = [c for c in checks if c["status"] != "pass"]
    lines += ["", "Client-side checks (rtcap doctor):"]
    if not flagged:
        lines.append("  every check passed (" + ", ".join(ADVICE) + ").")
    for check in flagged:
        lines.append(f"  {check['status'].upper()} {check['check']}: {check['evidence']}")
    lines += [
        "",
        "Files:",
        "  session.html           the session on a timeline, with its audio: open it in a browser (no network needed)",
        "  capture/*.msgpack      the recorded session (rtcap's format; secrets were redacted at recording)",
        "  export.jsonl           every message, exactly as sent or received, one JSON object per line",
        "  around-failure.jsonl   the messages just before and after the failure",
        "  failures.json          every failure in the session",
        "  session.json           identifiers, timestamps and counts",
        "  doctor.json            the client-side checks, with evidence",
        "",
        f"Made by rtcap on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC.",
    ]
    return "\n".join(lines) + "\n"
