"""One simulated realtime session, as plain code: client events in, server steps out.

:class:`SimSession` answers each client event with a list of steps (events to send, or a
response to start), and a response is a generator of steps with their pacing delays, so
the server loop (:mod:`analyzer.sim.simulator`) is only a clock and a socket, and a test or
:mod:`analyzer.sim.traffic` can run a session with no socket at all. Both dialects are
spoken: GA by default, beta (``OpenAI-Beta: realtime=v1``) on request.

The session is made of parts, one concern each: its configuration
(:mod:`~analyzer.sim.config`), the conversation and input audio buffer
(:mod:`~analyzer.sim.conversation`), the responses (:mod:`~analyzer.sim.responses`,
speaking with :mod:`~analyzer.sim.voice`), all making ids and events through one
:class:`~analyzer.sim.steps.Emitter`.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable, Iterator
from typing import Any

from recorder import events

from .config import SessionConfig
from .conversation import Conversation
from .faults import ClientEvent, Rule
from .responses import Responder
from .steps import Close, Drop, Emitter, Response, Send, SimError, Stall, StartResponse, Step, unique_id
from .voice import MS_PER_CHAR

__all__ = [
    "MS_PER_CHAR",
    "Close",
    "Drop",
    "Response",
    "Send",
    "SimError",
    "SimSession",
    "Stall",
    "StartResponse",
    "Step",
]

Handler = Callable[[dict[str, Any], float], list[Step]]


class SimSession:
    """The server's side of one realtime session."""

    def __init__(
        self,
        *,
        dialect: str,
        model: str,
        rng: random.Random,
        faults: list[Rule],
        now: float,
        max_session_s: float = 1800,
        expires_at: int | None = None,
        session_id: str | None = None,
    ) -> None:
        self.dialect = dialect
        self.model = model
        self.rng = rng
        self.max_session_s = max_session_s
        self.emit = Emitter(rng)
        # A seeded id would come back in every run with the seed, and a sess_ id names one
        # session (SESSION arguments look it up). The seeded draw is still made, and thrown
        # away, so every other id and draw of the session stays what the seed made it.
        self.emit.id("sess")
        self.session_id = session_id or unique_id("sess")
        """The server's id for the session: ``session_id``, else one unique to this run."""
        self.conversation_id = self.emit.id("conv")
        self.config = SessionConfig(dialect, session_id=self.session_id, model=model, expires_at=expires_at)
        self.conversation = Conversation(self.emit, self.config)
        self.responder = Responder(
            self.emit, self.config, self.conversation, faults=faults, opened=now, conversation_id=self.conversation_id
        )
        conversation, responder = self.conversation, self.responder
        self._handlers: dict[str, Handler] = {
            "session.update": self._session_update,
            "transcription_session.update": self._session_update,
            events.AUDIO_APPEND: self._append,
            "input_audio_buffer.commit": lambda event, now: conversation.commit(event),
            "input_audio_buffer.clear": lambda event, now: conversation.clear(event),
            "conversation.item.create": lambda event, now: conversation.create_item(event),
            "conversation.item.retrieve": lambda event, now: conversation.retrieve_item(event),
            "conversation.item.delete": lambda event, now: conversation.delete_item(event),
            "conversation.item.truncate": lambda event, now: conversation.truncate_item(event),
            "response.create": responder.create,
            "response.cancel": responder.cancel,
            "output_audio_buffer.clear": responder.clear_output_audio,
        }

    @property
    def items(self) -> list[dict[str, Any]]:
        """The conversation's items, in order."""
        return self.conversation.items

    def input_tokens(self, instructions: str = "") -> int:
        """The prompt size a response would have now."""
        return self.responder.input_tokens(instructions)

    def opening(self) -> list[Step]:
        """What the server sends as the connection opens."""
        steps: list[Step] = [Send(self.emit.event("session.created", session=self.config.view()))]
        if self.config.beta:
            conversation = {"id": self.conversation_id, "object": "realtime.conversation"}
            steps.append(Send(self.emit.event("conversation.created", conversation=conversation)))
        return steps

    def receive(self, message: str | bytes, now: float) -> list[Step]:
        """Answer one client message, which arrived at ``now`` (seconds, any clock the
        session's ``now`` was on)."""
        if isinstance(message, bytes):
            return [self.emit.error(SimError("invalid_value", "Binary messages are not supported. Send JSON text."))]
        try:
            event = json.loads(message)
        except ValueError:
            return [self.emit.error(SimError("invalid_json", "The server could not parse the message as JSON."))]
        if not isinstance(event, dict):
            return [self.emit.error(SimError("invalid_json", "Expected a JSON object."))]
        kind = event.get("type")
        audio_ms = 0.0
        if kind == events.AUDIO_APPEND and isinstance(event.get("audio"), str):
            # From the base64 length: a rule sees a chunk's size even when it does not decode.
            audio_ms = len(event["audio"]) * 3 / 4 / events.BYTES_PER_MS.get(self.config.input_format, 48)
        self.responder.window.append(ClientEvent(now, kind if isinstance(kind, str) else None, event, audio_ms))
        handler = self._handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:
            supported = ", ".join(sorted(self._handlers))
            error = SimError("invalid_value", f"Invalid value: '{kind}'. Supported values are: {supported}.", "type")
            return [self.emit.error(error, event.get("event_id"))]
        try:
            return handler(event, now)
        except SimError as e:
            return [self.emit.error(e, event.get("event_id"))]

    def stream(self, response: Response) -> Iterator[Step]:
        """The steps of a response, in order, with their pacing delays."""
        return self.responder.stream(response)

    def expire(self) -> list[Step]:
        """The session reached its maximum duration."""
        minutes = round(self.max_session_s / 60)
        error = SimError("session_expired", f"Your session hit the maximum duration of {minutes} minutes.")
        return [self.emit.error(error), Close(1000, "")]

    def _session_update(self, event: dict[str, Any], now: float) -> list[Step]:
        if self.config.beta and event.get("type") == "transcription_session.update":
            raise SimError("invalid_value", "This session is not a transcription session.")
        update = event.get("session")
        if not isinstance(update, dict):
            raise SimError("missing_required_parameter", "Missing required parameter: 'session'.", "session")
        self.config.merge(copy.deepcopy(update))
        return [Send(self.emit.event("session.updated", session=self.config.view()))]

    def _append(self, event: dict[str, Any], now: float) -> list[Step]:
        steps, speech = self.conversation.append(event)
        vad = self.config.turn_detection or {}
        active = self.responder.active
        if speech == "started" and active is not None and vad.get("interrupt_response", True):
            active.cancelled = "turn_detected"
        elif speech == "stopped" and vad.get("create_response", True):
            steps += self.responder.begin({}, now)
        return steps
