"""``rtcap export --audio``: a session's audio as WAV files to listen to."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from recorder.capture import Capture

from .g711 import pcm16_samples, sample_rate
from .index import follow_formats


def write_wavs(capture: Capture, directory: Path) -> dict[str, float]:
    """Write ``input.wav`` (what the client sent) and ``output.wav`` (what the server sent),
    16-bit mono at the session's rate (24 kHz PCM16; G.711 decoded, 8 kHz). Returns each
    file's duration in seconds."""
    directory.mkdir(parents=True, exist_ok=True)
    formats = ["pcm16", "pcm16"]
    chunks: list[list[np.ndarray]] = [[], []]
    for message in capture.messages:
        side = 0 if message.direction == "sent" else 1
        if message.opcode == "text" and b'"session.' in message.payload[:64]:
            follow_formats(message.payload.decode(errors="replace"), formats)
        for audio in message.audio():
            chunks[side].append(pcm16_samples(audio, formats[side]))
    durations = {}
    for side, name in ((0, "input.wav"), (1, "output.wav")):
        samples = np.concatenate(chunks[side]) if chunks[side] else np.zeros(0, dtype="<i2")
        rate = sample_rate(formats[side])
        with wave.open(str(directory / name), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(rate)
            out.writeframes(samples.astype("<i2").tobytes())
        durations[name] = len(samples) / rate
    return durations
