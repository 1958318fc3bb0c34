"""A simulated session's conversation: its items, and the input audio buffer with server VAD.

Items are kept in order, each with how much audio it holds (``_audio_ms``, which a
truncate shortens and the prompt size counts). Audio the client appends goes into the
buffer; a commit, the client's or the server VAD's, turns the buffer into a user item.
Server VAD hears speech in the audio's energy, so a test can speak with a loud tone and go
quiet with zeros.

:class:`Conversation` answers the client events about items and the buffer; what follows
from the user speaking (interrupting a response, starting the next one) is the session's
call, so :meth:`Conversation.append` only says that it happened.
"""

from __future__ import annotations

import base64
import binascii
import copy
from typing import Any, Literal

import numpy as np

from recorder import events

from ..g711 import pcm16_samples
from .config import SessionConfig
from .steps import Emitter, Send, SimError, Step

QUESTIONS = [
    "What's the weather like in Lisbon?",
    "Where is my order?",
    "Can you book a table for two tonight?",
    "When does the store open?",
]
"""What input transcription says the user asked."""

MAX_APPEND_BYTES = 15 * 1024 * 1024
MIN_COMMIT_MS = 100
ITEM_TYPES = ("message", "function_call", "function_call_output")

Speech = Literal["started", "stopped"]
"""What server VAD heard in an append: the user started speaking, or stopped."""


def public(item: dict[str, Any]) -> dict[str, Any]:
    """An item as the server shows it (without the simulator's own ``_`` fields)."""
    return {k: v for k, v in item.items() if not k.startswith("_")}


class Conversation:
    """The items of one session's conversation and its input audio buffer."""

    def __init__(self, emit: Emitter, config: SessionConfig) -> None:
        self.emit = emit
        self.config = config
        self.items: list[dict[str, Any]] = []
        self.buffer = bytearray()
        self.total_input_ms = 0
        self.speech: dict[str, Any] | None = None  # VAD state while the user speaks
        self.silence_ms = 0
        self.tool_turn = False
        """Whether the latest thing the conversation got is a tool's output (so the next
        response answers it rather than calling the tool again)."""

    @property
    def last_id(self) -> str | None:
        """The id of the conversation's last item."""
        return self.items[-1]["id"] if self.items else None

    # -- the input audio buffer --------------------------------------------------------

    def append(self, event: dict[str, Any]) -> tuple[list[Step], Speech | None]:
        """``input_audio_buffer.append``: the steps, and what server VAD heard, if anything."""
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise SimError("missing_required_parameter", "Missing required parameter: 'audio'.", "audio")
        try:
            chunk = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise SimError("invalid_value", "Invalid 'audio'. Expected base64-encoded audio bytes.", "audio") from None
        fmt = self.config.input_format
        if fmt == "pcm16" and len(chunk) % 2:
            raise SimError("invalid_value", "Invalid 'audio'. PCM16 audio must have an even number of bytes.", "audio")
        if len(chunk) > MAX_APPEND_BYTES:
            raise SimError("invalid_value", "Audio chunk exceeds the maximum of 15 MiB.", "audio")
        self.buffer += chunk
        ms = len(chunk) // events.BYTES_PER_MS[fmt]
        start_ms = self.total_input_ms
        self.total_input_ms += ms
        vad = self.config.turn_detection
        if not vad:
            return [], None
        return self._detect(chunk, fmt, start_ms, ms, vad)

    def _detect(
        self, chunk: bytes, fmt: str, start_ms: int, ms: int, vad: dict[str, Any]
    ) -> tuple[list[Step], Speech | None]:
        """Server VAD: speech is audio whose energy passes the threshold; enough silence
        after it ends the turn and commits the buffer."""
        samples = pcm16_samples(chunk, fmt).astype(np.float64)
        rms = float(np.sqrt(np.mean(samples**2))) / 32768 if samples.size else 0.0
        threshold = 0.02 * float(vad.get("threshold") or 0.5) / 0.5
        if rms > threshold:
            self.silence_ms = 0
            if self.speech is not None:
                return [], None
            item_id = self.emit.id("item")
            self.speech = {"item_id": item_id, "start": max(0, start_ms - int(vad.get("prefix_padding_ms") or 0))}
            started = self.emit.event(
                "input_audio_buffer.speech_started", audio_start_ms=self.speech["start"], item_id=item_id
            )
            return [Send(started)], "started"
        if self.speech is None:
            return [], None
        self.silence_ms += ms
        if self.silence_ms < int(vad.get("silence_duration_ms") or 500):
            return [], None
        item_id = self.speech["item_id"]
        end_ms = start_ms + ms - self.silence_ms + 1
        stopped = self.emit.event(
            "input_audio_buffer.speech_stopped", audio_end_ms=max(end_ms, self.speech["start"]), item_id=item_id
        )
        self.speech = None
        self.silence_ms = 0
        return [Send(stopped), *self._commit_buffer(item_id)], "stopped"

    def commit(self, event: dict[str, Any]) -> list[Step]:
        """``input_audio_buffer.commit``: the buffer becomes a user item."""
        buffered_ms = len(self.buffer) // events.BYTES_PER_MS[self.config.input_format]
        if buffered_ms < MIN_COMMIT_MS:
            raise SimError(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, "
                f"but buffer only has {buffered_ms:.2f}ms of audio.",
            )
        return self._commit_buffer(self.emit.id("item"))

    def _commit_buffer(self, item_id: str) -> list[Step]:
        previous = self.last_id
        ms = len(self.buffer) // events.BYTES_PER_MS[self.config.input_format]
        self.buffer.clear()
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        self.items.append({**item, "_audio_ms": ms})
        steps: list[Step] = [
            Send(self.emit.event("input_audio_buffer.committed", item_id=item_id, previous_item_id=previous))
        ]
        steps += self._item_added(item, previous)
        if self.config.transcription:
            # What the user said is not understood here; the transcript only has to exist.
            completed = self.emit.event(
                "conversation.item.input_audio_transcription.completed",
                item_id=item_id,
                content_index=0,
                transcript=self.emit.rng.choice(QUESTIONS),
                usage={"type": "duration", "seconds": ms / 1000},
            )
            steps.append(Send(completed, delay=0.2))
        self.tool_turn = False
        return steps

    def clear(self, event: dict[str, Any]) -> list[Step]:
        """``input_audio_buffer.clear``: the buffered audio, and any speech in it, is gone."""
        self.buffer.clear()
        self.speech = None
        return [Send(self.emit.event("input_audio_buffer.cleared"))]

    # -- items -----------------------------------------------------------------------------

    def _item_added(self, item: dict[str, Any], previous: str | None) -> list[Step]:
        """The events saying an item joined: GA's ``added`` and ``done``, beta's ``created``."""
        steps: list[Step] = [
            Send(self.emit.event(self.config.name("conversation.item.added"), item=item, previous_item_id=previous))
        ]
        if not self.config.beta:
            steps.append(Send(self.emit.event("conversation.item.done", item=item, previous_item_id=previous)))
        return steps

    def create_item(self, event: dict[str, Any]) -> list[Step]:
        """``conversation.item.create``, after ``previous_item_id`` (``root``: first) or last."""
        item = event.get("item")
        if not isinstance(item, dict) or item.get("type") not in ITEM_TYPES:
            raise SimError(
                "invalid_value",
                "Invalid 'item.type'. Supported values are: message, function_call, function_call_output.",
                "item.type",
            )
        item = copy.deepcopy(item)
        # Drawn even when the client chose the id: later ids then do not depend on that choice.
        new_id = self.emit.id("item")
        item.setdefault("id", new_id)
        if any(existing["id"] == item["id"] for existing in self.items):
            raise SimError("duplicate_item_id", f"Item with item_id '{item['id']}' already exists.", "item.id")
        item.setdefault("object", "realtime.item")
        item.setdefault("status", "completed")
        previous = event.get("previous_item_id")
        position = len(self.items)
        if previous is not None and previous != "root":
            position = self.index(previous, "previous_item_id") + 1
        elif previous == "root":
            position = 0
        audio = 0
        for part in item.get("content") or []:
            if isinstance(part, dict) and isinstance(part.get("audio"), str):
                audio += len(base64.b64decode(part["audio"])) // events.BYTES_PER_MS[self.config.input_format]
        after = self.items[position - 1]["id"] if position > 0 else None
        self.items.insert(position, {**item, "_audio_ms": audio})
        if item["type"] == "function_call_output":
            self.tool_turn = True
        return self._item_added(item, after)

    def index(self, item_id: Any, param: str) -> int:
        """Where the item ``item_id`` is; an ``item_not_found`` error (naming ``param``) if nowhere."""
        for index, item in enumerate(self.items):
            if item["id"] == item_id:
                return index
        raise SimError("item_not_found", f"Item with item_id '{item_id}' not found.", param)

    def retrieve_item(self, event: dict[str, Any]) -> list[Step]:
        """``conversation.item.retrieve``."""
        item = self.items[self.index(event.get("item_id"), "item_id")]
        return [Send(self.emit.event("conversation.item.retrieved", item=public(item)))]

    def delete_item(self, event: dict[str, Any]) -> list[Step]:
        """``conversation.item.delete``."""
        deleted = self.items.pop(self.index(event.get("item_id"), "item_id"))
        return [Send(self.emit.event("conversation.item.deleted", item_id=deleted["id"]))]

    def truncate_item(self, event: dict[str, Any]) -> list[Step]:
        """``conversation.item.truncate``: an assistant item's audio ends at ``audio_end_ms``."""
        item = self.items[self.index(event.get("item_id"), "item_id")]
        if item.get("role") != "assistant":
            raise SimError("invalid_value", "Only assistant messages can be truncated.", "item_id")
        if event.get("content_index") != 0:
            raise SimError("invalid_value", "Invalid 'content_index': the item has one content part.", "content_index")
        end = event.get("audio_end_ms")
        if not isinstance(end, int) or end < 0:
            raise SimError("invalid_value", "Invalid 'audio_end_ms'.", "audio_end_ms")
        if end > item["_audio_ms"]:
            raise SimError(
                "invalid_value",
                f"Audio content of {item['_audio_ms']}ms is already shorter than {end}ms",
                "audio_end_ms",
            )
        item["_audio_ms"] = end
        truncated = {"item_id": item["id"], "content_index": 0, "audio_end_ms": end}
        return [Send(self.emit.event("conversation.item.truncated", **truncated))]
