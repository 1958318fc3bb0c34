"""``rtcap export``: a capture's exact messages as JSON lines."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import IO, Any

from recorder.capture import Capture, Message


def message_row(message: Message) -> dict[str, Any]:
    """One export row: ``{"seq", "t_ns", "direction", "opcode", "data", "redacted"}``.
    ``data`` is the exact text, or base64 for a binary message; ``audio_dropped`` is
    added, true, where audio was not recorded and ``data`` carries silence instead."""
    raw = message.data()
    if message.opcode == "text":
        data = raw.decode("utf-8", errors="replace")
    else:
        data = base64.b64encode(raw).decode()
    row = {
        "seq": message.seq,
        "t_ns": message.t_ns,
        "direction": message.direction,
        "opcode": message.opcode,
        "data": data,
        "redacted": message.redacted,
    }
    if message.audio_dropped:
        row["audio_dropped"] = True
    return row


def export_rows(capture: Capture) -> Iterator[dict[str, Any]]:
    """Every message of a capture as an export row, in ``seq`` order."""
    for message in capture.messages:
        yield message_row(message)


def write_jsonl(capture: Capture, out: IO[str]) -> int:
    """Write the export of ``capture`` to ``out``; returns the number of lines."""
    count = 0
    for row in export_rows(capture):
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
        count += 1
    return count
