"""A simulated session's configuration, in the dialect it speaks.

GA and beta hold the same settings in different shapes: beta keeps them flat
(``input_audio_format``, ``turn_detection``, ``modalities``), GA nests the audio ones under
``audio.input`` and ``audio.output``, with format objects (``{"type": "audio/pcm"}``), and
says ``output_modalities``. :class:`SessionConfig` holds the shape ``session.created``
shows, merges ``session.update`` into it, and answers the rest of the session's questions
(which format, which turn detection) the same way in both. Event names that differ between
the dialects come from :data:`recorder.events.BETA_NAMES`.
"""

from __future__ import annotations

import copy
from typing import Any

from recorder import events

from .steps import SimError

SAMPLE_RATE = 24_000
GA_DEFAULT_VAD = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "create_response": True,
    "interrupt_response": True,
    "idle_timeout_ms": None,
}
"""Server VAD as a GA session starts with it (beta's has no ``idle_timeout_ms``)."""


class SessionConfig:
    """The session object of one simulated session, in its dialect."""

    def __init__(self, dialect: str, *, session_id: str, model: str, expires_at: int | None) -> None:
        self.dialect = dialect
        self.expires_at = expires_at
        self.values = _initial_beta(session_id, model) if self.beta else _initial_ga(session_id, model, expires_at)

    @property
    def beta(self) -> bool:
        """Whether the session speaks the beta dialect (``OpenAI-Beta: realtime=v1``)."""
        return self.dialect == "beta"

    def name(self, ga: str) -> str:
        """An event name in this session's dialect, from its GA name."""
        return events.BETA_NAMES.get(ga, ga) if self.beta else ga

    def view(self) -> dict[str, Any]:
        """The session object as ``session.created`` and ``session.updated`` show it."""
        view = copy.deepcopy(self.values)
        if self.beta:
            view["expires_at"] = self.expires_at
        return view

    def merge(self, update: dict[str, Any]) -> None:
        """Apply the ``session`` of a ``session.update`` (the caller's copy: it is changed)."""
        if not self.beta and update.get("type") not in (None, "realtime"):
            raise SimError(
                "invalid_value",
                f"Invalid value: '{update.get('type')}'. This endpoint speaks realtime sessions.",
                "session.type",
            )
        for key in ("id", "object", "expires_at", "type"):
            update.pop(key, None)
        _deep_merge(self.values, update)
        fmt = self.input_format
        if fmt not in events.BYTES_PER_MS:
            raise SimError("invalid_value", f"Invalid audio format: '{fmt}'.", "session.audio.input.format")

    @property
    def input_format(self) -> str:
        """The client's audio format, by its beta name (``pcm16``, ``g711_ulaw``, ...)."""
        if self.beta:
            return self.values["input_audio_format"]
        return _ga_format(self.values["audio"]["input"])

    @property
    def output_format(self) -> str:
        """The server's audio format, by its beta name."""
        if self.beta:
            return self.values["output_audio_format"]
        return _ga_format(self.values["audio"]["output"])

    @property
    def ga_output_format(self) -> Any:
        """GA's output format object, which a GA response echoes."""
        return self.values["audio"]["output"]["format"]

    @property
    def turn_detection(self) -> dict[str, Any] | None:
        """The turn detection settings; ``None`` when the client commits turns itself."""
        if self.beta:
            return self.values["turn_detection"]
        return self.values["audio"]["input"]["turn_detection"]

    @property
    def transcription(self) -> Any:
        """The input transcription settings, if the session asked for transcripts."""
        if self.beta:
            return self.values.get("input_audio_transcription")
        return self.values["audio"]["input"].get("transcription")

    @property
    def modalities(self) -> list[str]:
        """What responses produce by default: ``audio`` or ``text``."""
        return self.values["modalities" if self.beta else "output_modalities"]

    @property
    def instructions(self) -> str:
        """The session's instructions (``""`` when none)."""
        return self.values.get("instructions") or ""

    @property
    def tools(self) -> Any:
        """The session's tools, as the client declared them."""
        return self.values.get("tools")

    @property
    def tool_choice(self) -> Any:
        """The session's ``tool_choice`` (``auto`` unless set)."""
        return self.values.get("tool_choice", "auto")


def _ga_format(side: dict[str, Any]) -> str:
    return events.GA_FORMATS.get(side["format"].get("type"), events.DEFAULT_FORMAT)


def _initial_beta(session_id: str, model: str) -> dict[str, Any]:
    return {
        "id": session_id,
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


def _initial_ga(session_id: str, model: str, expires_at: int | None) -> dict[str, Any]:
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "prompt": None,
        "expires_at": expires_at,
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


def _deep_merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value
