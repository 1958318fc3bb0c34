"""The session page: one self-contained HTML file (``rtcap show --html``, the report
bundle, ``rtcap ui``) showing a session on a time axis.

Everything drawn is computed here, server-side: the timeline's lines (from
:func:`analyzer.explore.session_timeline`) as lanes for the client and the server,
responses as bars by status, failures and the connection's end, doctor's findings
pinned at the seqs they name, transcripts, and the audio as peaks per pixel. The page's
script (``analyzer/ui/static``) only draws that data and reacts to the mouse; it loads
nothing, so the file works from disk with the network off.
"""

from __future__ import annotations

import base64
import importlib.resources
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from recorder import events
from recorder.capture import Capture

from .audio import session_audio, wav
from .db import in_list
from .doctor import diagnose
from .explore import session_timeline
from .render import private_file
from .render import rows as plain_rows
from .views import Captures, batched

PEAKS = 4000
"""Peaks per side in a page: one per pixel of a wide screen with the whole session in view."""

SIDES = {events.SENT: "input", events.RECEIVED: "output"}

EMBEDDED = "data:audio/wav;base64,"

_SEQS = re.compile(r"\bseq ((?:\d+)(?:, \d+)*)")


def asset(name: str) -> str:
    """A file of ``analyzer/ui/static`` (the page's script and style), as text."""
    return (importlib.resources.files("analyzer.ui") / "static" / name).read_text(encoding="utf-8")


def pinned_seqs(evidence: str) -> list[int]:
    """The seqs a doctor finding names in its evidence (``seq 2, 164``, ``at seq 342``)."""
    return [int(n) for found in _SEQS.findall(evidence) for n in found.split(", ")]


def peaks(
    chunks: list[tuple[int, np.ndarray]], rate: int, duration: float, width: int = PEAKS
) -> tuple[list[float], list[list[float]]]:
    """Audio as the session's time axis shows it: ``width`` peaks (0-1) over
    ``[0, duration]``, and the segments ``[session_t, audio_t, seconds]`` that map the
    audio played back to session time.

    A chunk plays from when its message was sent, or when the chunk before it ends if
    that is later: the server sends audio faster than real time, and a client queues it."""
    out = np.zeros(width, dtype=np.float32)
    segments: list[list[float]] = []
    if not chunks or duration <= 0:
        return out.tolist(), segments
    played = 0.0  # where the audio played so far ends, in session time
    heard = 0.0  # how much audio came before, in audio time
    for t_ns, samples in chunks:
        if not len(samples):
            continue
        start = max(t_ns / 1e9, played)
        seconds = len(samples) / rate
        if segments and abs(segments[-1][0] + segments[-1][2] - start) < 1e-9:
            segments[-1][2] += seconds
        else:
            segments.append([start, heard, seconds])
        first = int(start / duration * width)
        last = int((start + seconds) / duration * width)
        level = np.abs(samples.astype(np.int32))
        if last <= first or first >= width:
            if first < width:
                out[first] = max(out[first], level.max() / 32768)
        else:
            edges = np.linspace(0, len(samples), last - first + 1).astype(np.int64)[:-1]
            values = np.maximum.reduceat(level, edges) / 32768
            stop = min(last, width)
            out[first:stop] = np.maximum(out[first:stop], values[: stop - first])
        played, heard = start + seconds, heard + seconds
    return np.round(out, 3).tolist(), [[round(v, 6) for v in s] for s in segments]


@batched
def page_data(
    captures: Captures,
    capture: Capture,
    *,
    audio: str | None = "embed",
    focus: int | None = None,
    checks: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """What the page draws, for ``capture`` (indexed in ``captures``). ``audio`` is
    ``"embed"`` (WAVs as data URLs), ``None`` (no playback) or a URL prefix to which
    ``input.wav``/``output.wav`` is added. ``focus`` is the seq the page opens at
    without a ``#seq=`` of its own. ``checks``: the session's doctor rows, when the caller
    has them already (else they are found here)."""
    sid = capture.session_id
    [session] = plain_rows(captures.sql("SELECT * FROM sessions WHERE session_id = ?", [sid])) or [{}]
    messages = captures.sql(
        "SELECT seq, t_s, direction, type, response_id, payload::VARCHAR AS payload "
        "FROM events WHERE session_id = ? ORDER BY seq",
        [sid],
    ).to_pydict()
    t_of = dict(zip(messages["seq"], messages["t_s"], strict=True))
    lines = []
    for line in session_timeline(captures, sid).to_pylist():
        end_t = t_of.get(line["last_seq"], line["t_s"]) if line["seq"] is not None else line["t_s"]
        lines.append({**line, "end_t": end_t})
    responses = plain_rows(
        captures.sql(
            "SELECT response_id, created_seq, done_seq, created_t_s, done_t_s, status, error_type "
            "FROM responses WHERE session_id = ? ORDER BY coalesce(created_seq, done_seq)",
            [sid],
        )
    )
    failures = plain_rows(
        captures.sql(
            "SELECT seq, t_s, class, source, error_type, code, message, response_id FROM failures "
            "WHERE session_id = ? ORDER BY t_s, seq",
            [sid],
        )
    )
    findings = []
    for check in diagnose(captures, sid).to_pylist() if checks is None else checks:
        if check["status"] != "pass":
            seqs = [s for s in pinned_seqs(check["evidence"]) if s in t_of]
            findings.append({**check, "seqs": seqs, "t_s": [t_of[s] for s in seqs]})
    duration = max([session.get("duration_s") or 0.0, *messages["t_s"], 0.0])
    sides: dict[str, Any] = {}
    for side, (chunks, rate) in session_audio(capture).items():
        name = SIDES[side]
        levels, segments = peaks(chunks, rate, duration)
        seconds = sum(len(c) for _, c in chunks) / rate
        src = None
        if chunks and audio == "embed":
            buffer = io.BytesIO()
            wav(np.concatenate([c for _, c in chunks]), rate, buffer)
            src = EMBEDDED + base64.b64encode(buffer.getvalue()).decode()
        elif chunks and audio:
            src = f"{audio}{name}.wav"
        sides[name] = {"peaks": levels, "segments": segments, "seconds": seconds, "src": src}
    return {
        "session": session,
        "duration": duration,
        "messages": messages,
        "lines": lines,
        "responses": responses,
        "failures": failures,
        "findings": findings,
        "transcripts": _transcripts(messages),
        "audio": sides,
        "focus": focus,
    }


def _transcripts(messages: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """What was said: each finished transcript (an event's ``transcript`` outside a run of
    deltas), the assistant's when it belongs to a response, else the user's."""
    said = []
    for seq, t_s, kind, response_id, payload in zip(
        messages["seq"], messages["t_s"], messages["type"], messages["response_id"], messages["payload"], strict=True
    ):
        if kind is None or events.is_delta(kind) or payload is None or '"transcript"' not in payload:
            continue
        event = events.parse(payload)
        text = event.get("transcript") if event is not None else None
        if isinstance(text, str) and text:
            said.append({"seq": seq, "t_s": t_s, "who": "assistant" if response_id else "user", "text": text})
    return said


def _script_json(value: Any) -> str:
    """JSON that cannot end the ``<script>`` element holding it."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def render(data: dict[str, Any], *, nav: str = "") -> str:
    """The page's HTML: its style, its data and its script inline. ``nav`` is HTML put
    above the page (``rtcap ui``'s links)."""
    session = data["session"]
    title = f"rtcap: {session.get('session_id') or 'session'}"
    # Embedded audio (megabytes of base64 for a long call) goes after the script, which
    # draws first; the last script hands it to the players.
    sides = data["audio"]
    embedded = {n: a["src"] for n, a in sides.items() if a["src"] and a["src"].startswith(EMBEDDED)}
    data = {**data, "audio": {n: {**a, "src": "embedded" if n in embedded else a["src"]} for n, a in sides.items()}}
    tail = "".join(f"<script id=rtcap-audio-{n} type=text/plain>{src}</script>" for n, src in embedded.items())
    if embedded:
        tail += "<script>window.rtcap.attachAudio()</script>"
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        "<meta http-equiv=Content-Security-Policy content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; media-src data: 'self'; img-src data:\">"
        "<meta name=viewport content='width=device-width, initial-scale=1'><link rel=icon href='data:,'>"
        f"<title>{_escape(title)}</title>"
        f"<style>{asset('timeline.css')}</style></head><body>{nav}"
        f"<script id=rtcap-data type=application/json>{_script_json(data)}</script>"
        f"<script>{asset('timeline.js')}</script>{tail}</body></html>\n"
    )


@batched
def focus_seq(captures: Captures, session_id: str) -> int | None:
    """Where a page opens: the session's first server or connection failure (its message,
    or the last message when the failure is the connection's end), else nothing."""
    rows = captures.sql(
        f"SELECT seq FROM failures WHERE session_id = ? AND class IN {in_list(events.COUNTED_CLASSES)} "
        "ORDER BY t_s, seq LIMIT 1",
        [session_id],
    ).to_pylist()
    if not rows:
        return None
    if rows[0]["seq"] is not None:
        return int(rows[0]["seq"])
    [last] = captures.sql("SELECT max(seq) AS seq FROM events WHERE session_id = ?", [session_id]).to_pylist()
    return last["seq"]


@batched
def write_page(
    captures: Captures, capture: Capture, path: Path, *, audio: bool = True, at_failure: bool = False
) -> int:
    """Write ``capture``'s page to ``path`` (0600); returns its size in bytes."""
    focus = focus_seq(captures, capture.session_id) if at_failure else None
    text = render(page_data(captures, capture, audio="embed" if audio else None, focus=focus))
    data = text.encode()
    with private_file(path, binary=True) as f:
        f.write(data)
    return len(data)
