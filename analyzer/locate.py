"""Finding captures: the session files under a capture root, and what a ``SESSION``
argument names (an id, a unique prefix of one, a file path, or the server's ``sess_`` id)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from recorder import events, telemetry, turns
from recorder.capture import Capture, CaptureError, make_private_dirs, read_capture
from recorder.session import capture_path

SESSION_GLOB = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]/*.msgpack"
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")
SESSION_ID = re.compile(r"\d{8}T\d{12}Z-[a-z2-7]{8}")
"""What ``recorder.session.new_session_id`` makes."""


class SessionNotFound(Exception):
    """A ``SESSION`` argument matched no capture, or several (then ``candidates`` lists them)."""

    def __init__(self, message: str, candidates: list[str] | None = None) -> None:
        super().__init__(message)
        self.candidates = candidates or []


def capture_files(captures: Path) -> list[Path]:
    """The capture root's sessions: ``<root>/<YYYY-MM-DD>/<id>.msgpack``, oldest first.

    A day directory that is a symbolic link is not entered: what it points to is not part
    of the root. The entries found are whatever has such a name, which is not always a
    regular file: open them as the readers do (:func:`recorder.capture.open_capture`),
    which refuses links, FIFOs and devices, and never blocks."""
    found: list[Path] = []
    with contextlib.suppress(OSError), os.scandir(captures) as days:
        for day in days:
            if _DAY.match(day.name) and day.is_dir(follow_symlinks=False):
                with contextlib.suppress(OSError), os.scandir(day.path) as entries:
                    found += [Path(entry.path) for entry in entries if entry.name.endswith(".msgpack")]
    return sorted(found, key=lambda p: p.stem)


def server_session_id(path: Path) -> str | None:
    """The ``sess_`` id from a capture's ``session.created``, if it has one early on."""
    try:
        capture = read_capture(path, max_messages=8)
    except CaptureError:
        return None
    for message in capture.messages:
        if message.direction == events.RECEIVED and turns.SESSION_CREATED.encode() in message.payload:
            event = events.parse(message.data())
            session_id = events.dig(event, telemetry.SESSION_ID_PATH) if event else None
            if events.event_type(event) == turns.SESSION_CREATED and isinstance(session_id, str):
                return session_id
    return None


def find_session(captures: Path, ref: str) -> Path:
    """The capture file ``ref`` names; raises :class:`SessionNotFound`."""
    as_path = Path(ref)
    if ref.endswith(".msgpack") or as_path.is_file():
        if as_path.is_file():
            # A path given is followed if it is a link (readers open none); links under the root are not.
            return as_path.resolve() if as_path.is_symlink() else as_path
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


def root_holding(captures: Path, capture: Capture) -> tuple[Path, tempfile.TemporaryDirectory[str] | None]:
    """A capture root whose index holds ``capture``: ``captures`` when the file is one of
    its sessions, else a temporary root holding a copy of it (a capture from elsewhere,
    such as the one inside a report bundle). Keep the returned directory object alive
    for as long as the root is used."""
    path = capture.path.absolute()
    if captures.is_dir() and path.parent.parent == captures.absolute() and path in capture_files(captures.absolute()):
        return captures, None
    holder = tempfile.TemporaryDirectory(prefix="rtcap-")
    root = Path(holder.name)
    session_id = capture.session_id
    copy = capture_path(root, session_id) if SESSION_ID.fullmatch(session_id) else root / "1970-01-01" / path.name
    make_private_dirs(copy.parent)
    shutil.copyfile(path, copy)
    return root, holder
