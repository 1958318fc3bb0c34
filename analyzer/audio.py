"""``rtcap export --audio``: a session's audio as WAV files to listen to."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from recorder.capture import Capture

from .index import follow_formats
from .simsession import DECODE

SAMPLE_RATE = 24_000
_G711 = {"g711_ulaw": "g711_ulaw", "audio/pcmu": "g711_ulaw", "g711_alaw": "g711_alaw", "audio/pcma": "g711_alaw"}


def write_wavs(capture: Capture, directory: Path) -> dict[str, float]:
    """Write ``input.wav`` (what the client sent) and ``output.wav`` (what the server sent),
    24 kHz 16-bit mono, G.711 decoded. Returns each file's duration in seconds."""
    directory.mkdir(parents=True, exist_ok=True)
    formats = ["pcm16", "pcm16"]
    chunks: list[list[np.ndarray]] = [[], []]
    for message in capture.messages:
        side = 0 if message.direction == "sent" else 1
        if message.opcode == "text" and b'"session.' in message.payload[:64]:
            follow_formats(message.payload.decode(errors="replace"), side, formats)
        for audio in message.audio():
            chunks[side].append(_pcm16(audio, formats[side]))
    durations = {}
    for side, name in ((0, "input.wav"), (1, "output.wav")):
        samples = np.concatenate(chunks[side]) if chunks[side] else np.zeros(0, dtype="<i2")
        with wave.open(str(directory / name), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(SAMPLE_RATE if formats[side] not in _G711 else 8_000)
            out.writeframes(samples.astype("<i2").tobytes())
        durations[name] = len(samples) / (SAMPLE_RATE if formats[side] not in _G711 else 8_000)
    return durations


def _pcm16(audio: bytes, fmt: str) -> np.ndarray:
    if fmt in _G711:
        return DECODE[_G711[fmt]][np.frombuffer(audio, dtype=np.uint8)]
    return np.frombuffer(audio[: len(audio) - len(audio) % 2], dtype="<i2")
