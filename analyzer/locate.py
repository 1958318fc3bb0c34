"""Finding captures: the session files under a capture root, and what a ``SESSION``
argument names (an id, a unique prefix of one, a file path, or the server's ``sess_`` id)."""

from __future__ import annotations

import json
from pathlib import Path

from recorder.capture import CaptureError, read_capture

SESSION_GLOB = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]/*.msgpack"


class SessionNotFound(Exception):
    """A ``SESSION`` argument matched no capture, or several (then ``candidates`` lists them)."""

    def __init__(self, message: str, candidates: list[str] | None = None) -> None:
        super().__init__(message)
        self.candidates = candidates or []


def capture_files(captures: Path) -> list[Path]:
    """The capture root's sessions: ``<root>/<YYYY-MM-DD>/<id>.msgpack``, oldest first."""
    return sorted(captures.glob(SESSION_GLOB), key=lambda p: p.stem)


def server_session_id(path: Path) -> str | None:
    """The ``sess_`` id from a capture's ``session.created``, if it has one early on."""
    try:
        capture = read_capture(path, max_messages=8)
    except CaptureError:
        return None
    for message in capture.messages:
        if message.direction == "received" and b"session.created" in message.payload:
            try:
                event = json.loads(message.data())
            except ValueError:
                continue
            session = event.get("session") if isinstance(event, dict) else None
            if isinstance(session, dict) and isinstance(session.get("id"), str):
                return session["id"]
    return None


def find_session(captures: Path, ref: str) -> Path:
    """The capture file ``ref`` names; raises :class:`SessionNotFound`."""
    as_path = Path(ref)
    if ref.endswith(".msgpack") or as_path.is_file():
        if as_path.is_file():
            return as_path
        raise SessionNotFound(f"no capture file {ref}")
    files = capture_files(captures)
    if ref.startswith("sess_"):
        matches = [p for p in files if server_session_id(p) == ref]
    else:
        matches = [p for p in files if p.stem == ref] or [p for p in files if p.stem.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise SessionNotFound(f"no session {ref!r} under {captures}")
    names = [p.stem for p in matches]
    raise SessionNotFound(f"{ref!r} matches {len(names)} sessions: {', '.join(names[:10])}", names)
