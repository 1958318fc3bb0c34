"""What a simulated session answers with, and where its ids and events come from.

A session answers each client event with :data:`Step` values that the server loop carries
out: send an event after a delay, stall, close, drop, or start streaming a response. Ids
and events come from one :class:`Emitter` per session, which draws every id from the
session's seeded generator: the same seed and the same client events give the same bytes,
but for the session's own ``sess_`` id, which :func:`unique_id` makes unique to the run.
"""

from __future__ import annotations

import dataclasses
import random
import secrets
import string
from typing import Any

from .faults import Rule


@dataclasses.dataclass
class Send:
    """Send ``event`` after ``delay`` seconds (at speed 1)."""

    event: dict[str, Any]
    delay: float = 0.0


@dataclasses.dataclass
class Close:
    """Close the connection with a code and reason."""

    code: int
    reason: str = ""


@dataclasses.dataclass
class Drop:
    """Cut the connection without a close frame."""


@dataclasses.dataclass
class Stall:
    """Send nothing for ``seconds`` (at speed 1)."""

    seconds: float


@dataclasses.dataclass
class StartResponse:
    """Begin streaming ``response`` (the server loop runs :meth:`SimSession.stream`)."""

    response: Response


Step = Send | Close | Drop | Stall | StartResponse


@dataclasses.dataclass
class Response:
    """A response in progress."""

    id: str
    options: dict[str, Any]
    nth: int
    fault: Rule | None
    input_tokens: int
    cancelled: str | None = None
    done: bool = False


class SimError(Exception):
    """A client event the server rejects; becomes an ``error`` event."""

    def __init__(self, code: str | None, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.code, self.message, self.param, self.kind = code, message, param, kind


ID_ALPHABET = string.ascii_letters + string.digits


def unique_id(prefix: str) -> str:
    """An id such as ``sess_`` and 21 letters and digits, drawn from the system's
    randomness, not a seed: no other run, seeded alike or not, hands it out again."""
    return f"{prefix}_" + "".join(secrets.choice(ID_ALPHABET) for _ in range(21))


class Emitter:
    """Makes a session's ids and server events. Every id is drawn from the session's
    generator, so the order in which events are made is part of what a seed reproduces."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def id(self, prefix: str) -> str:
        """A new id such as ``item_`` and 21 letters and digits: the id that 21 calls of
        ``rng.choice(ID_ALPHABET)`` make, with the generator left where they leave it. It
        draws as ``choice`` does (6 bits at a time, again when they name no letter) without
        its two calls a letter: every event has an id, and this was a quarter of the time
        seeded corpora took to make."""
        bits = self.rng.getrandbits
        letters: list[str] = []
        while len(letters) < 21:
            drawn = bits(6)
            if drawn < len(ID_ALPHABET):
                letters.append(ID_ALPHABET[drawn])
        return f"{prefix}_" + "".join(letters)

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        """A server event of type ``kind`` with a new ``event_id``."""
        return {"type": kind, "event_id": self.id("event"), **fields}

    def error(self, error: SimError, client_event_id: Any = None) -> Send:
        """The ``error`` event for a rejected client event."""
        body = {
            "type": error.kind,
            "code": error.code,
            "message": error.message,
            "param": error.param,
            "event_id": client_event_id,
        }
        return Send(self.event("error", error=body))
