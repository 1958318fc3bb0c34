"""One simulated realtime session, as plain code: client events in, server steps out.

:class:`SimSession` keeps the conversation, the input audio buffer, voice activity
detection and the session config, and answers each client event with a list of steps
(events to send, or a response to start). A response is a generator of steps with their
pacing delays, so the server loop (``analyzer.sim.simulator``) is only a clock and a socket.
Both dialects are spoken: GA by default, beta (``OpenAI-Beta: realtime=v1``) on request.
"""

from __future__ import annotations

import base64
import binascii
import copy
import dataclasses
import json
import math
import random
import string
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..g711 import BYTES_PER_MS, DECODE, pcm16_samples
from .faults import ClientEvent, Context, Rule

SAMPLE_RATE = 24_000
GA_FORMATS = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}
MS_PER_CHAR = 70  # speaking rate of the simulated voice: about 14 characters a second
CHUNK_MS = 100  # audio per output delta
REALTIME_FACTOR = 4  # servers stream audio faster than real time
TOKENS_PER_AUDIO_S = 10
ANSWERS = [
    "Sure, I can help with that.",
    "The weather in Lisbon is sunny today, with a light breeze from the west.",
    "Your order shipped yesterday and should arrive on Thursday.",
    "I have booked a table for two at seven thirty tonight.",
    "Let me check that for you. It looks like the meeting moved to three o'clock.",
    "Yes. The store opens at nine and closes at six on weekdays.",
]
QUESTIONS = [
    "What's the weather like in Lisbon?",
    "Where is my order?",
    "Can you book a table for two tonight?",
    "When does the store open?",
]
GA_DEFAULT_VAD = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "create_response": True,
    "interrupt_response": True,
    "idle_timeout_ms": None,
}


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


def _tone(ms: int, fmt: str, seed: int) -> bytes:
    """A chunk of a quiet voiced-sounding tone in ``fmt``."""
    rate = SAMPLE_RATE if fmt == "pcm16" else 8_000  # G.711 is 8 kHz: 8 bytes per ms
    t = np.arange(rate * ms // 1000) / rate
    freq = 180 + 40 * (seed % 5)
    wave = 0.2 * np.sin(2 * math.pi * freq * t) + 0.05 * np.sin(2 * math.pi * 3 * freq * t)
    samples = (wave * 32767).astype("<i2")
    if fmt == "pcm16":
        return samples.tobytes()
    table = DECODE[fmt].astype(np.int32)
    # Nearest code for each sample: good enough for audio nobody has to like.
    order = np.argsort(table)
    index = np.clip(np.searchsorted(table[order], samples.astype(np.int32)), 0, 255)
    return order[index].astype(np.uint8).tobytes()


class SimError(Exception):
    """A client event the server rejects; becomes an ``error`` event."""

    def __init__(self, code: str | None, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.code, self.message, self.param, self.kind = code, message, param, kind


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
    ) -> None:
        self.dialect = dialect
        self.rng = rng
        self.faults = faults
        self.opened = now
        self.max_session_s = max_session_s
        self.session_id = self._id("sess")
        self.conversation_id = self._id("conv")
        self.items: list[dict[str, Any]] = []
        self.audio_ms: dict[str, int] = {}  # assistant item id -> audio length
        self.buffer = bytearray()
        self.buffer_start_ms = 0
        self.total_input_ms = 0
        self.speech: dict[str, Any] | None = None  # VAD state while the user speaks
        self.silence_ms = 0
        self.active: Response | None = None
        self.responses = 0
        self.window: list[ClientEvent] = []
        self.tool_turn = False
        self.expires_at = expires_at
        self.config = self._initial_config(model)
        self._chunks: dict[tuple[str, int], bytes] = {}

    # -- ids and events ---------------------------------------------------------------

    def _id(self, prefix: str) -> str:
        return f"{prefix}_" + "".join(self.rng.choice(string.ascii_letters + string.digits) for _ in range(21))

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "event_id": self._id("event"), **fields}

    def _error(self, error: SimError, client_event_id: Any = None) -> Send:
        body = {
            "type": error.kind,
            "code": error.code,
            "message": error.message,
            "param": error.param,
            "event_id": client_event_id,
        }
        return Send(self._event("error", error=body))

    @property
    def beta(self) -> bool:
        return self.dialect == "beta"

    def _name(self, ga: str) -> str:
        """An event name in this session's dialect."""
        if not self.beta:
            return ga
        return {
            "response.output_audio.delta": "response.audio.delta",
            "response.output_audio.done": "response.audio.done",
            "response.output_audio_transcript.delta": "response.audio_transcript.delta",
            "response.output_audio_transcript.done": "response.audio_transcript.done",
            "response.output_text.delta": "response.text.delta",
            "response.output_text.done": "response.text.done",
            "conversation.item.added": "conversation.item.created",
        }.get(ga, ga)

    # -- session config ---------------------------------------------------------------

    def _initial_config(self, model: str) -> dict[str, Any]:
        if self.beta:
            return {
                "id": self.session_id,
                "object": "realtime.session",
                "model": model,
                "modalities": ["audio", "text"],
                "instructions": "",
                "voice": "alloy",
                "input_audio_format": "pcm16",
                "output_audio_format": "pcm16",
                "input_audio_transcription": None,
                "turn_detection": {k: v for k, v in GA_DEFAULT_VAD.items() if k != "idle_timeout_ms"},
                "tools": [],
                "tool_choice": "auto",
                "temperature": 0.8,
                "max_response_output_tokens": "inf",
            }
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": self.session_id,
            "model": model,
            "output_modalities": ["audio"],
            "instructions": "",
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
            "tracing": None,
            "prompt": None,
            "expires_at": self.expires_at,
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": SAMPLE_RATE},
                    "transcription": None,
                    "noise_reduction": None,
                    "turn_detection": dict(GA_DEFAULT_VAD),
                },
                "output": {"format": {"type": "audio/pcm", "rate": SAMPLE_RATE}, "voice": "alloy", "speed": 1.0},
            },
            "include": None,
        }

    def _session_view(self) -> dict[str, Any]:
        view = copy.deepcopy(self.config)
        if self.beta:
            view["expires_at"] = self.expires_at
        return view

    @property
    def input_format(self) -> str:
        if self.beta:
            return self.config["input_audio_format"]
        return GA_FORMATS.get(self.config["audio"]["input"]["format"].get("type"), "pcm16")

    @property
    def output_format(self) -> str:
        if self.beta:
            return self.config["output_audio_format"]
        return GA_FORMATS.get(self.config["audio"]["output"]["format"].get("type"), "pcm16")

    @property
    def turn_detection(self) -> dict[str, Any] | None:
        if self.beta:
            return self.config["turn_detection"]
        return self.config["audio"]["input"]["turn_detection"]

    @property
    def modalities(self) -> list[str]:
        return self.config["modalities" if self.beta else "output_modalities"]

    def _merge(self, update: dict[str, Any]) -> None:
        if not self.beta and update.get("type") not in (None, "realtime"):
            raise SimError(
                "invalid_value",
                f"Invalid value: '{update.get('type')}'. This endpoint speaks realtime sessions.",
                "session.type",
            )
        for key in ("id", "object", "expires_at", "type"):
            update.pop(key, None)
        _deep_merge(self.config, update)
        fmt = self.input_format
        if fmt not in BYTES_PER_MS:
            raise SimError("invalid_value", f"Invalid audio format: '{fmt}'.", "session.audio.input.format")

    # -- client events ----------------------------------------------------------------

    def opening(self) -> list[Step]:
        """What the server sends as the connection opens."""
        steps: list[Step] = [Send(self._event("session.created", session=self._session_view()))]
        if self.beta:
            steps.append(
                Send(
                    self._event(
                        "conversation.created",
                        conversation={"id": self.conversation_id, "object": "realtime.conversation"},
                    )
                )
            )
        return steps

    def receive(self, message: str | bytes, now: float) -> list[Step]:
        """Answer one client message."""
        if isinstance(message, bytes):
            return [self._error(SimError("invalid_value", "Binary messages are not supported. Send JSON text."))]
        try:
            event = json.loads(message)
        except ValueError:
            return [self._error(SimError("invalid_json", "The server could not parse the message as JSON."))]
        if not isinstance(event, dict):
            return [self._error(SimError("invalid_json", "Expected a JSON object."))]
        kind = event.get("type")
        audio_ms = 0.0
        if kind == "input_audio_buffer.append" and isinstance(event.get("audio"), str):
            audio_ms = len(event["audio"]) * 3 / 4 / BYTES_PER_MS.get(self.input_format, 48)
        self.window.append(ClientEvent(now, kind if isinstance(kind, str) else None, event, audio_ms))
        handler = _HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is None:
            return [
                self._error(
                    SimError(
                        "invalid_value",
                        f"Invalid value: '{kind}'. Supported values are: {', '.join(sorted(_HANDLERS))}.",
                        "type",
                    ),
                    event.get("event_id"),
                )
            ]
        try:
            return handler(self, event, now)
        except SimError as e:
            return [self._error(e, event.get("event_id"))]

    def _session_update(self, event: dict[str, Any], now: float) -> list[Step]:
        if self.beta and event.get("type") == "transcription_session.update":
            raise SimError("invalid_value", "This session is not a transcription session.")
        update = event.get("session")
        if not isinstance(update, dict):
            raise SimError("missing_required_parameter", "Missing required parameter: 'session'.", "session")
        self._merge(copy.deepcopy(update))
        return [Send(self._event("session.updated", session=self._session_view()))]

    def _append(self, event: dict[str, Any], now: float) -> list[Step]:
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise SimError("missing_required_parameter", "Missing required parameter: 'audio'.", "audio")
        try:
            chunk = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise SimError("invalid_value", "Invalid 'audio'. Expected base64-encoded audio bytes.", "audio") from None
        fmt = self.input_format
        if fmt == "pcm16" and len(chunk) % 2:
            raise SimError("invalid_value", "Invalid 'audio'. PCM16 audio must have an even number of bytes.", "audio")
        if len(chunk) > 15 * 1024 * 1024:
            raise SimError("invalid_value", "Audio chunk exceeds the maximum of 15 MiB.", "audio")
        self.buffer += chunk
        ms = len(chunk) // BYTES_PER_MS[fmt]
        start_ms = self.total_input_ms
        self.total_input_ms += ms
        vad = self.turn_detection
        if not vad:
            return []
        return self._detect(chunk, fmt, start_ms, ms, vad, now)

    def _detect(self, chunk: bytes, fmt: str, start_ms: int, ms: int, vad: dict[str, Any], now: float) -> list[Step]:
        """Server VAD: speech is audio whose energy passes the threshold."""
        samples = pcm16_samples(chunk, fmt).astype(np.float64)
        rms = float(np.sqrt(np.mean(samples**2))) / 32768 if samples.size else 0.0
        threshold = 0.02 * float(vad.get("threshold") or 0.5) / 0.5
        steps: list[Step] = []
        if rms > threshold:
            self.silence_ms = 0
            if self.speech is None:
                item_id = self._id("item")
                self.speech = {"item_id": item_id, "start": max(0, start_ms - int(vad.get("prefix_padding_ms") or 0))}
                steps.append(
                    Send(
                        self._event(
                            "input_audio_buffer.speech_started", audio_start_ms=self.speech["start"], item_id=item_id
                        )
                    )
                )
                if self.active is not None and vad.get("interrupt_response", True):
                    self.active.cancelled = "turn_detected"
            return steps
        if self.speech is None:
            return steps
        self.silence_ms += ms
        if self.silence_ms < int(vad.get("silence_duration_ms") or 500):
            return steps
        item_id = self.speech["item_id"]
        end_ms = start_ms + ms - self.silence_ms + 1
        steps.append(
            Send(
                self._event(
                    "input_audio_buffer.speech_stopped", audio_end_ms=max(end_ms, self.speech["start"]), item_id=item_id
                )
            )
        )
        self.speech = None
        self.silence_ms = 0
        steps += self._commit_buffer(item_id, now)
        if vad.get("create_response", True):
            steps += self._begin_response({}, now)
        return steps

    def _commit(self, event: dict[str, Any], now: float) -> list[Step]:
        fmt = self.input_format
        buffered_ms = len(self.buffer) // BYTES_PER_MS[fmt]
        if buffered_ms < 100:
            raise SimError(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, "
                f"but buffer only has {buffered_ms:.2f}ms of audio.",
            )
        return self._commit_buffer(self._id("item"), now)

    def _commit_buffer(self, item_id: str, now: float) -> list[Step]:
        previous = self.items[-1]["id"] if self.items else None
        ms = len(self.buffer) // BYTES_PER_MS[self.input_format]
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
            Send(self._event("input_audio_buffer.committed", item_id=item_id, previous_item_id=previous))
        ]
        steps.append(self._item_added(item, previous))
        if not self.beta:
            steps.append(Send(self._event("conversation.item.done", item=item, previous_item_id=previous)))
        if self._transcription():
            # What the user said is not understood here; the transcript only has to exist.
            completed = self._event(
                "conversation.item.input_audio_transcription.completed",
                item_id=item_id,
                content_index=0,
                transcript=self.rng.choice(QUESTIONS),
                usage={"type": "duration", "seconds": ms / 1000},
            )
            steps.append(Send(completed, delay=0.2))
        self.tool_turn = False
        return steps

    def _transcription(self) -> Any:
        """The input transcription settings, if the session asked for transcripts."""
        if self.beta:
            return self.config.get("input_audio_transcription")
        return self.config["audio"]["input"].get("transcription")

    def _item_added(self, item: dict[str, Any], previous: str | None) -> Send:
        return Send(self._event(self._name("conversation.item.added"), item=item, previous_item_id=previous))

    def _clear(self, event: dict[str, Any], now: float) -> list[Step]:
        self.buffer.clear()
        self.speech = None
        return [Send(self._event("input_audio_buffer.cleared"))]

    def _item_create(self, event: dict[str, Any], now: float) -> list[Step]:
        item = event.get("item")
        if not isinstance(item, dict) or item.get("type") not in ("message", "function_call", "function_call_output"):
            raise SimError(
                "invalid_value",
                "Invalid 'item.type'. Supported values are: message, function_call, function_call_output.",
                "item.type",
            )
        item = copy.deepcopy(item)
        item.setdefault("id", self._id("item"))
        if any(existing["id"] == item["id"] for existing in self.items):
            raise SimError("duplicate_item_id", f"Item with item_id '{item['id']}' already exists.", "item.id")
        item.setdefault("object", "realtime.item")
        item.setdefault("status", "completed")
        previous = event.get("previous_item_id")
        position = len(self.items)
        if previous is not None and previous != "root":
            position = self._index(previous, "previous_item_id") + 1
        elif previous == "root":
            position = 0
        audio = 0
        for part in item.get("content") or []:
            if isinstance(part, dict) and isinstance(part.get("audio"), str):
                audio += len(base64.b64decode(part["audio"])) // BYTES_PER_MS[self.input_format]
        after = self.items[position - 1]["id"] if position > 0 else None
        self.items.insert(position, {**item, "_audio_ms": audio})
        if item["type"] == "function_call_output":
            self.tool_turn = True
        steps: list[Step] = [self._item_added(item, after)]
        if not self.beta:
            steps.append(Send(self._event("conversation.item.done", item=item, previous_item_id=after)))
        return steps

    def _index(self, item_id: Any, param: str) -> int:
        for index, item in enumerate(self.items):
            if item["id"] == item_id:
                return index
        raise SimError("item_not_found", f"Item with item_id '{item_id}' not found.", param)

    def _public(self, item: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in item.items() if not k.startswith("_")}

    def _item_retrieve(self, event: dict[str, Any], now: float) -> list[Step]:
        item = self.items[self._index(event.get("item_id"), "item_id")]
        return [Send(self._event("conversation.item.retrieved", item=self._public(item)))]

    def _item_delete(self, event: dict[str, Any], now: float) -> list[Step]:
        index = self._index(event.get("item_id"), "item_id")
        deleted = self.items.pop(index)
        return [Send(self._event("conversation.item.deleted", item_id=deleted["id"]))]

    def _item_truncate(self, event: dict[str, Any], now: float) -> list[Step]:
        item = self.items[self._index(event.get("item_id"), "item_id")]
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
        return [Send(self._event("conversation.item.truncated", item_id=item["id"], content_index=0, audio_end_ms=end))]

    def _response_create(self, event: dict[str, Any], now: float) -> list[Step]:
        if self.active is not None:
            raise SimError(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self.active.id}. "
                "Wait until the response is finished before creating a new one.",
            )
        options = event.get("response") or {}
        if not isinstance(options, dict):
            raise SimError("invalid_type", "Invalid type for 'response'.", "response")
        return self._begin_response(options, now)

    def _response_cancel(self, event: dict[str, Any], now: float) -> list[Step]:
        wanted = event.get("response_id")
        if self.active is None or (wanted is not None and wanted != self.active.id):
            raise SimError("response_cancel_not_active", "Cancellation failed: no active response found.")
        self.active.cancelled = "client_cancelled"
        return []

    def _output_audio_clear(self, event: dict[str, Any], now: float) -> list[Step]:
        return [Send(self._event("output_audio_buffer.cleared", response_id=self.active.id if self.active else None))]

    # -- responses ----------------------------------------------------------------------

    def input_tokens(self, instructions: str = "") -> int:
        """The prompt size of a response: instructions, tools and the whole conversation."""
        tokens = len(instructions or self.config.get("instructions") or "") // 4 + 4
        tokens += len(json.dumps(self.config.get("tools") or [])) // 4
        for item in self.items:
            tokens += 4 + item.get("_audio_ms", 0) * TOKENS_PER_AUDIO_S // 1000
            tokens += len(json.dumps(item.get("content") or item.get("output") or item.get("arguments") or "")) // 4
        return tokens

    def _begin_response(self, options: dict[str, Any], now: float) -> list[Step]:
        self.responses += 1
        tokens = self.input_tokens(options.get("instructions", ""))
        context = Context(nth=self.responses, age=now - self.opened, input_tokens=tokens, window=tuple(self.window))
        self.window = []
        fault = next((rule for rule in self.faults if rule.fires(context, self.rng)), None)
        response = Response(self._id("resp"), options, self.responses, fault, tokens)
        self.active = response
        return [StartResponse(response)]

    def expire(self) -> list[Step]:
        """The session reached its maximum duration."""
        minutes = round(self.max_session_s / 60)
        error = SimError("session_expired", f"Your session hit the maximum duration of {minutes} minutes.")
        return [self._error(error), Close(1000, "")]

    def _chunk(self, ms: int) -> bytes:
        key = (self.output_format, ms)
        if key not in self._chunks:
            self._chunks[key] = _tone(ms, self.output_format, len(self._chunks))
        return self._chunks[key]

    def _wants_tool(self, response: Response) -> dict[str, Any] | None:
        tools = response.options.get("tools", self.config.get("tools")) or []
        choice = response.options.get("tool_choice", self.config.get("tool_choice", "auto"))
        functions = [t for t in tools if isinstance(t, dict) and t.get("type") == "function" and t.get("name")]
        if not functions or choice == "none" or self.tool_turn:
            return None
        if isinstance(choice, dict) and choice.get("name"):
            named = [t for t in functions if t["name"] == choice["name"]]
            return named[0] if named else None
        return functions[0]

    def stream(self, response: Response) -> Iterator[Step]:
        """The steps of a response, in order, with their pacing delays."""
        shape = {
            "id": response.id,
            "object": "realtime.response",
            "status": "in_progress",
            "status_details": None,
            "output": [],
            "usage": None,
        }
        if not self.beta:
            shape |= {
                "conversation_id": self.conversation_id,
                "output_modalities": self.modalities,
                "audio": {"output": {"format": self.config["audio"]["output"]["format"], "voice": "alloy"}},
                "max_output_tokens": "inf",
                "metadata": None,
            }
        else:
            shape |= {
                "modalities": self.modalities,
                "voice": "alloy",
                "output_audio_format": self.output_format,
                "max_output_tokens": "inf",
                "metadata": None,
                "temperature": 0.8,
            }
        yield Send(self._event("response.created", response=copy.deepcopy(shape)), delay=0.05)
        fault = response.fault
        remaining = 0 if fault is not None and fault.effect == "ratelimit" else 20_000 - response.input_tokens
        yield Send(
            self._event(
                "rate_limits.updated",
                rate_limits=[
                    {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
                    {"name": "tokens", "limit": 20_000, "remaining": max(0, remaining), "reset_seconds": 0.3},
                ],
            )
        )
        if fault is not None and fault.effect == "ratelimit":
            error = {
                "type": "invalid_request_error",
                "code": "inference_rate_limit_exceeded",
                "message": "Rate limit reached for tokens. Please try again in 1.2s.",
            }
            yield from self._finish(response, shape, "failed", {"type": "failed", "error": error}, [], 0)
            return
        tool = self._wants_tool(response)
        item_id = self._id("item")
        previous = self.items[-1]["id"] if self.items else None
        item, text, prologue, body, epilogue = (
            self._tool_steps(response, item_id, tool) if tool else self._message_steps(response, item_id)
        )
        started = {
            **item,
            "status": "in_progress",
            **({"content": []} if item["type"] == "message" else {"arguments": ""}),
        }
        yield Send(self._event("response.output_item.added", response_id=response.id, output_index=0, item=started))
        entry = {**item, "status": "in_progress", "_audio_ms": 0}
        self.items.append(entry)
        yield Send(self._event(self._name("conversation.item.added"), item=started, previous_item_id=previous))
        yield from prologue
        # Where a fault strikes: after `at` deltas (half of them by default), and at the
        # latest just before the response would end.
        strike = len(body) + 1
        if fault is not None:
            strike = min(int(float(fault.options.get("at", max(1, len(body) // 2)))), len(body))
        for n, (step, ms) in enumerate([*body, (None, 0)]):
            if response.cancelled:
                break
            if n == strike and fault is not None:
                if fault.effect == "stall":
                    yield Stall(float(fault.options.get("seconds", 5)))
                else:
                    entry["status"] = "incomplete"
                    yield from self._strike(response, shape, fault)
                    return
            if step is not None:
                yield step
                entry["_audio_ms"] += ms
        if response.cancelled:
            entry["status"] = "incomplete"
            details = {"type": "cancelled", "reason": response.cancelled}
            yield from self._finish(response, shape, "cancelled", details, [self._public(entry)], entry["_audio_ms"])
            return
        yield from epilogue
        entry["status"] = "completed"
        self.tool_turn = False
        output = [self._public(entry)]
        yield from self._finish(response, shape, "completed", None, output, entry["_audio_ms"], text=text)

    def _strike(self, response: Response, shape: dict[str, Any], fault: Rule) -> Iterator[Step]:
        """What a fault does in the middle of a response (all but ``stall``)."""
        effect, options = fault.effect, fault.options
        code = None if options.get("code", "none") == "none" else options["code"]
        message = options.get("message", "The server had an error while processing your request. Sorry about that!")
        message = message.replace("_", " ")
        if effect == "fail":
            error: dict[str, Any] = {"type": options.get("error_type", "server_error"), "code": code}
            if message != "none":
                error["message"] = message
            yield from self._finish(response, shape, "failed", {"type": "failed", "error": error}, [], 0)
            return
        response.done = True
        self.active = None
        if effect == "error":
            body = {
                "type": options.get("error_type", "server_error"),
                "code": code,
                "message": message,
                "param": None,
                "event_id": None,
            }
            yield Send(self._event("error", error=body))
            yield Close(1000, "")
        elif effect == "drop":
            yield Drop()
        else:
            yield Close(int(options["code"]), options.get("reason", "").replace("_", " "))

    def _message_steps(self, response: Response, item_id: str) -> tuple[Any, ...]:
        text = self.rng.choice(ANSWERS)
        audio = "audio" in (
            response.options.get("output_modalities") or response.options.get("modalities") or self.modalities
        )
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [],
        }
        # A content part is "audio" or "text" in both dialects; the item's content says
        # "output_audio" / "output_text" in GA.
        part = {"type": "audio", "transcript": ""} if audio else {"type": "text", "text": ""}
        content_type = part["type"] if self.beta else f"output_{part['type']}"
        common = {"response_id": response.id, "item_id": item_id, "output_index": 0, "content_index": 0}
        prologue = [Send(self._event("response.content_part.added", part=dict(part), **common))]
        words = [w + " " for w in text.split(" ")]
        words[-1] = words[-1].rstrip()
        body: list[tuple[Step, int]] = []
        if audio:
            total_ms = len(text) * MS_PER_CHAR
            chunks = [CHUNK_MS] * (total_ms // CHUNK_MS) + ([total_ms % CHUNK_MS] if total_ms % CHUNK_MS else [])
            said = 0
            elapsed = 0
            for n, ms in enumerate(chunks):
                delta = base64.b64encode(self._chunk(ms)).decode()
                delay = ms / 1000 / REALTIME_FACTOR + (0.3 if n == 0 else 0)
                body.append(
                    (Send(self._event(self._name("response.output_audio.delta"), delta=delta, **common), delay), ms)
                )
                elapsed += ms
                while said < len(words) and sum(len(w) for w in words[: said + 1]) * MS_PER_CHAR <= elapsed + CHUNK_MS:
                    body.append(
                        (
                            Send(
                                self._event(
                                    self._name("response.output_audio_transcript.delta"), delta=words[said], **common
                                )
                            ),
                            0,
                        )
                    )
                    said += 1
            for word in words[said:]:
                body.append(
                    (Send(self._event(self._name("response.output_audio_transcript.delta"), delta=word, **common)), 0)
                )
            done_part = {**part, "transcript": text}
            epilogue = [
                Send(self._event(self._name("response.output_audio.done"), **common)),
                Send(self._event(self._name("response.output_audio_transcript.done"), transcript=text, **common)),
            ]
            item["content"] = [{"type": content_type, "transcript": text}]
        else:
            for n, word in enumerate(words):
                body.append(
                    (
                        Send(
                            self._event(self._name("response.output_text.delta"), delta=word, **common),
                            0.02 + (0.2 if n == 0 else 0),
                        ),
                        0,
                    )
                )
            done_part = {**part, "text": text}
            epilogue = [Send(self._event(self._name("response.output_text.done"), text=text, **common))]
            item["content"] = [{"type": content_type, "text": text}]
        epilogue.append(Send(self._event("response.content_part.done", part=done_part, **common)))
        epilogue.append(
            Send(self._event("response.output_item.done", response_id=response.id, output_index=0, item=dict(item)))
        )
        if not self.beta:
            epilogue.append(Send(self._event("conversation.item.done", item=dict(item), previous_item_id=None)))
        return item, text, prologue, body, epilogue

    def _tool_steps(self, response: Response, item_id: str, tool: dict[str, Any]) -> tuple[Any, ...]:
        call_id = self._id("call")
        arguments = json.dumps(_arguments(tool, self.rng))
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "function_call",
            "status": "completed",
            "name": tool["name"],
            "call_id": call_id,
            "arguments": arguments,
        }
        common = {"response_id": response.id, "item_id": item_id, "output_index": 0, "call_id": call_id}
        pieces = [arguments[i : i + 8] for i in range(0, len(arguments), 8)]
        body = [
            (Send(self._event("response.function_call_arguments.delta", delta=piece, **common), 0.01), 0)
            for piece in pieces
        ]
        epilogue = [
            Send(
                self._event("response.function_call_arguments.done", arguments=arguments, name=tool["name"], **common)
            ),
            Send(self._event("response.output_item.done", response_id=response.id, output_index=0, item=dict(item))),
        ]
        if not self.beta:
            epilogue.append(Send(self._event("conversation.item.done", item=dict(item), previous_item_id=None)))
        return item, "", [], body, epilogue

    def _finish(
        self,
        response: Response,
        shape: dict[str, Any],
        status: str,
        details: Any,
        output: list[Any],
        audio_ms: int,
        text: str = "",
    ) -> Iterator[Step]:
        response.done = True
        if self.active is response:
            self.active = None
        out_tokens = len(text) // 4 + audio_ms * 20 // 1000
        usage = {
            "total_tokens": response.input_tokens + out_tokens,
            "input_tokens": response.input_tokens,
            "output_tokens": out_tokens,
            "input_token_details": {"cached_tokens": 0, "text_tokens": response.input_tokens, "audio_tokens": 0},
            "output_token_details": {"text_tokens": len(text) // 4, "audio_tokens": audio_ms * 20 // 1000},
        }
        if status == "failed":
            usage = {
                **usage,
                "output_tokens": 0,
                "total_tokens": response.input_tokens,
                "output_token_details": {"text_tokens": 0, "audio_tokens": 0},
            }
        final = {**shape, "status": status, "status_details": details, "output": output, "usage": usage}
        yield Send(self._event("response.done", response=final))


def _arguments(tool: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Plausible arguments for a function tool, from its JSON schema's required fields."""
    schema = tool.get("parameters") or {}
    properties = schema.get("properties") or {}
    out: dict[str, Any] = {}
    for name in schema.get("required") or list(properties)[:2]:
        kind = (properties.get(name) or {}).get("type", "string")
        out[name] = {"integer": rng.randint(1, 9), "number": round(rng.random() * 10, 2), "boolean": True}.get(
            kind, rng.choice(["Lisbon", "Paris", "tomorrow", "two"])
        )
    return out


def _deep_merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


_HANDLERS: dict[str, Any] = {
    "session.update": SimSession._session_update,
    "transcription_session.update": SimSession._session_update,
    "input_audio_buffer.append": SimSession._append,
    "input_audio_buffer.commit": SimSession._commit,
    "input_audio_buffer.clear": SimSession._clear,
    "conversation.item.create": SimSession._item_create,
    "conversation.item.retrieve": SimSession._item_retrieve,
    "conversation.item.delete": SimSession._item_delete,
    "conversation.item.truncate": SimSession._item_truncate,
    "response.create": SimSession._response_create,
    "response.cancel": SimSession._response_cancel,
    "output_audio_buffer.clear": SimSession._output_audio_clear,
}
