"""A simulated session's responses: starting one, streaming it, and failing it on purpose.

A response begins when the client asks (``response.create``) or server VAD ends a turn.
Which fault rule, if any, strikes it is decided then, from what the client sent since the
previous response began (the *window*, :class:`~analyzer.sim.faults.Context`). Streaming is
a generator of steps: ``response.created``, ``rate_limits.updated``, the output item (a
spoken or written message, or a function call when the session has a tool to call), its
deltas, and ``response.done`` with usage. A fault strikes after ``at=K`` of the deltas
(half of them by default); a cancel, by the client or by the user speaking, ends the
response ``cancelled`` at the next delta.
"""

from __future__ import annotations

import base64
import copy
import json
import random
from collections.abc import Iterator
from typing import Any

from .config import SessionConfig
from .conversation import Conversation, public
from .faults import ClientEvent, Context, Rule
from .steps import Close, Drop, Emitter, Response, Send, SimError, Stall, StartResponse, Step
from .voice import Voice, speak, words

ANSWERS = [
    "Sure, I can help with that.",
    "The weather in Lisbon is sunny today, with a light breeze from the west.",
    "Your order shipped yesterday and should arrive on Thursday.",
    "I have booked a table for two at seven thirty tonight.",
    "Let me check that for you. It looks like the meeting moved to three o'clock.",
    "Yes. The store opens at nine and closes at six on weekdays.",
]
"""What the assistant says, one answer per message response."""

TOKENS_PER_AUDIO_S = 10
TOKEN_LIMIT = 20_000  # the token budget rate_limits.updated reports, less each prompt
DEFAULT_ERROR_MESSAGE = "The server had an error while processing your request. Sorry about that!"

# The parts of a message or function call response, before it streams:
# (item, text said, prologue steps, (delta step, audio ms) pairs, epilogue steps).
Parts = tuple[dict[str, Any], str, list[Step], list[tuple[Step, int]], list[Step]]


class Responder:
    """Starts and streams the responses of one session."""

    def __init__(
        self,
        emit: Emitter,
        config: SessionConfig,
        conversation: Conversation,
        *,
        faults: list[Rule],
        opened: float,
        conversation_id: str,
    ) -> None:
        self.emit = emit
        self.rng = emit.rng
        self.config = config
        self.conversation = conversation
        self.faults = faults
        self.opened = opened
        self.conversation_id = conversation_id
        self.voice = Voice()
        self.active: Response | None = None
        self.count = 0
        self.failed = 0
        """How many of this session's responses failed (what ``failed>N`` looks at)."""
        self.window: list[ClientEvent] = []
        """The client events since the previous response began: what fault rules look at."""

    # -- client events ---------------------------------------------------------------

    def create(self, event: dict[str, Any], now: float) -> list[Step]:
        """``response.create``: one response at a time."""
        if self.active is not None:
            raise SimError(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self.active.id}. "
                "Wait until the response is finished before creating a new one.",
            )
        options = event.get("response") or {}
        if not isinstance(options, dict):
            raise SimError("invalid_type", "Invalid type for 'response'.", "response")
        return self.begin(options, now)

    def cancel(self, event: dict[str, Any], now: float) -> list[Step]:
        """``response.cancel``: the active response (or the one named) ends cancelled."""
        wanted = event.get("response_id")
        if self.active is None or (wanted is not None and wanted != self.active.id):
            raise SimError("response_cancel_not_active", "Cancellation failed: no active response found.")
        self.active.cancelled = "client_cancelled"
        return []

    def clear_output_audio(self, event: dict[str, Any], now: float) -> list[Step]:
        """``output_audio_buffer.clear`` (WebRTC's; acknowledged, nothing is buffered here)."""
        return [
            Send(self.emit.event("output_audio_buffer.cleared", response_id=self.active.id if self.active else None))
        ]

    # -- starting --------------------------------------------------------------------

    def input_tokens(self, instructions: str = "") -> int:
        """The prompt size of a response: instructions, tools and the whole conversation."""
        tokens = len(instructions or self.config.instructions) // 4 + 4
        tokens += len(json.dumps(self.config.tools or [])) // 4
        for item in self.conversation.items:
            tokens += 4 + item.get("_audio_ms", 0) * TOKENS_PER_AUDIO_S // 1000
            tokens += len(json.dumps(item.get("content") or item.get("output") or item.get("arguments") or "")) // 4
        return tokens

    def begin(self, options: dict[str, Any], now: float) -> list[Step]:
        """Start a response with ``options`` (``response.create``'s ``response``); the
        first fault rule that fires for it is the one that will strike it."""
        self.count += 1
        tokens = self.input_tokens(options.get("instructions", ""))
        context = Context(
            nth=self.count, age=now - self.opened, input_tokens=tokens, window=tuple(self.window), failed=self.failed
        )
        self.window = []
        fault = next((rule for rule in self.faults if rule.fires(context, self.rng)), None)
        response = Response(self.emit.id("resp"), options, self.count, fault, tokens)
        self.active = response
        return [StartResponse(response)]

    def _wants_tool(self, response: Response) -> dict[str, Any] | None:
        """The function tool this response calls, if any: the one ``tool_choice`` names,
        else the first; none when ``tool_choice`` is ``none`` or a tool just answered."""
        tools = response.options.get("tools", self.config.tools) or []
        choice = response.options.get("tool_choice", self.config.tool_choice)
        functions = [t for t in tools if isinstance(t, dict) and t.get("type") == "function" and t.get("name")]
        if not functions or choice == "none" or self.conversation.tool_turn:
            return None
        if isinstance(choice, dict) and choice.get("name"):
            named = [t for t in functions if t["name"] == choice["name"]]
            return named[0] if named else None
        return functions[0]

    # -- streaming -------------------------------------------------------------------

    def _shape(self, response: Response) -> dict[str, Any]:
        """The response object as ``response.created`` shows it, in the session's dialect."""
        shape: dict[str, Any] = {
            "id": response.id,
            "object": "realtime.response",
            "status": "in_progress",
            "status_details": None,
            "output": [],
            "usage": None,
        }
        if not self.config.beta:
            shape |= {
                "conversation_id": self.conversation_id,
                "output_modalities": self.config.modalities,
                "audio": {"output": {"format": self.config.ga_output_format, "voice": "alloy"}},
                "max_output_tokens": "inf",
                "metadata": response.options.get("metadata"),
            }
        else:
            shape |= {
                "modalities": self.config.modalities,
                "voice": "alloy",
                "output_audio_format": self.config.output_format,
                "max_output_tokens": "inf",
                "metadata": response.options.get("metadata"),
                "temperature": 0.8,
            }
        return shape

    def stream(self, response: Response) -> Iterator[Step]:
        """The steps of a response, in order, with their pacing delays."""
        shape = self._shape(response)
        yield Send(self.emit.event("response.created", response=copy.deepcopy(shape)), delay=0.05)
        fault = response.fault
        limited = fault is not None and fault.effect == "ratelimit"
        remaining = 0 if limited else TOKEN_LIMIT - response.input_tokens
        yield Send(
            self.emit.event(
                "rate_limits.updated",
                rate_limits=[
                    {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
                    {"name": "tokens", "limit": TOKEN_LIMIT, "remaining": max(0, remaining), "reset_seconds": 0.3},
                ],
            )
        )
        if limited:
            error = {
                "type": "invalid_request_error",
                "code": "inference_rate_limit_exceeded",
                "message": "Rate limit reached for tokens. Please try again in 1.2s.",
            }
            yield from self._finish(response, shape, "failed", {"type": "failed", "error": error}, [], 0)
            return
        tool = self._wants_tool(response)
        item_id = self.emit.id("item")
        previous = self.conversation.last_id
        item, text, prologue, body, epilogue = (
            self._tool_parts(response, item_id, tool) if tool else self._message_parts(response, item_id)
        )
        started: dict[str, Any] = {
            **item,
            "status": "in_progress",
            **({"content": []} if item["type"] == "message" else {"arguments": ""}),
        }
        yield Send(self.emit.event("response.output_item.added", response_id=response.id, output_index=0, item=started))
        entry = {**item, "status": "in_progress", "_audio_ms": 0}
        self.conversation.items.append(entry)
        added = self.config.name("conversation.item.added")
        yield Send(self.emit.event(added, item=started, previous_item_id=previous))
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
            yield from self._finish(response, shape, "cancelled", details, [public(entry)], entry["_audio_ms"])
            return
        yield from epilogue
        entry["status"] = "completed"
        self.conversation.tool_turn = False
        output = [public(entry)]
        yield from self._finish(response, shape, "completed", None, output, entry["_audio_ms"], text=text)

    def _strike(self, response: Response, shape: dict[str, Any], fault: Rule) -> Iterator[Step]:
        """What a fault does in the middle of a response (all but ``stall``)."""
        effect, options = fault.effect, fault.options
        code = None if options.get("code", "none") == "none" else options["code"]
        message = options.get("message", DEFAULT_ERROR_MESSAGE).replace("_", " ")
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
            yield Send(self.emit.event("error", error=body))
            yield Close(1000, "")
        elif effect == "drop":
            yield Drop()
        else:
            yield Close(int(options["code"]), options.get("reason", "").replace("_", " "))

    def _message_parts(self, response: Response, item_id: str) -> Parts:
        """An assistant message: spoken (audio deltas with the transcript's words among
        them) when the response's modalities include audio, else written."""
        text = self.rng.choice(ANSWERS)
        audio = "audio" in (
            response.options.get("output_modalities") or response.options.get("modalities") or self.config.modalities
        )
        item: dict[str, Any] = {
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
        content_type = part["type"] if self.config.beta else f"output_{part['type']}"
        common = {"response_id": response.id, "item_id": item_id, "output_index": 0, "content_index": 0}
        name = self.config.name
        prologue: list[Step] = [Send(self.emit.event("response.content_part.added", part=dict(part), **common))]
        body: list[tuple[Step, int]] = []
        if audio:
            fmt = self.config.output_format
            for piece in speak(text):
                if piece.word is None:
                    delta = base64.b64encode(self.voice.chunk(fmt, piece.ms)).decode()
                    event = self.emit.event(name("response.output_audio.delta"), delta=delta, **common)
                    body.append((Send(event, piece.delay), piece.ms))
                else:
                    event = self.emit.event(name("response.output_audio_transcript.delta"), delta=piece.word, **common)
                    body.append((Send(event), 0))
            done_part = {**part, "transcript": text}
            epilogue: list[Step] = [
                Send(self.emit.event(name("response.output_audio.done"), **common)),
                Send(self.emit.event(name("response.output_audio_transcript.done"), transcript=text, **common)),
            ]
            item["content"] = [{"type": content_type, "transcript": text}]
        else:
            for n, word in enumerate(words(text)):
                event = self.emit.event(name("response.output_text.delta"), delta=word, **common)
                body.append((Send(event, 0.02 + (0.2 if n == 0 else 0)), 0))
            done_part = {**part, "text": text}
            epilogue = [Send(self.emit.event(name("response.output_text.done"), text=text, **common))]
            item["content"] = [{"type": content_type, "text": text}]
        epilogue.append(Send(self.emit.event("response.content_part.done", part=done_part, **common)))
        epilogue += self._item_done(response, item)
        return item, text, prologue, body, epilogue

    def _tool_parts(self, response: Response, item_id: str, tool: dict[str, Any]) -> Parts:
        """A function call of ``tool``, its arguments streamed 8 characters at a time."""
        call_id = self.emit.id("call")
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
        body: list[tuple[Step, int]] = [
            (Send(self.emit.event("response.function_call_arguments.delta", delta=piece, **common), 0.01), 0)
            for piece in pieces
        ]
        done = {"arguments": arguments, "name": tool["name"], **common}
        epilogue: list[Step] = [
            Send(self.emit.event("response.function_call_arguments.done", **done)),
            *self._item_done(response, item),
        ]
        return item, "", [], body, epilogue

    def _item_done(self, response: Response, item: dict[str, Any]) -> list[Step]:
        """The output item is complete (and, in GA, so is the conversation's copy)."""
        done = self.emit.event("response.output_item.done", response_id=response.id, output_index=0, item=dict(item))
        steps: list[Step] = [Send(done)]
        if not self.config.beta:
            steps.append(Send(self.emit.event("conversation.item.done", item=dict(item), previous_item_id=None)))
        return steps

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
        """``response.done`` with ``status`` and usage (a failed response produced nothing)."""
        response.done = True
        if self.active is response:
            self.active = None
        if status == "failed":
            self.failed += 1
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
        yield Send(self.emit.event("response.done", response=final))


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
