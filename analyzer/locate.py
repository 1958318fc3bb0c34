"""Finding captures: the session files under a capture root, and what a ``SESSION``
argument names (an id, a unique prefix of one, a file path, or the server's ``sess_`` id)."""

from __future__ import annotations

from pathlib import Path

from recorder import events
from recorder.capture import Capture, CaptureError, read_capture

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
        if message.direction == events.RECEIVED and b"session.created" in message.payload:
            event = events.parse(message.data())
            session_id = events.dig(event, ("session", "id")) if event else None
            if events.event_type(event) == "session.created" and isinstance(session_id, str):
                return session_id
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


def load_session(captures: Path, ref: str, max_messages: int | None = None) -> Capture:
    """The capture ``ref`` names, read (only its first ``max_messages`` if given).
    Raises :class:`SessionNotFound` or :class:`~recorder.capture.CaptureError`."""
    return read_capture(find_session(captures, ref), max_messages=max_messages)
