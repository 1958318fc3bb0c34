"""``rtcap export --audio``: a session's audio as WAV files to listen to."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from recorder import events
from recorder.capture import Capture

from .g711 import pcm16_samples, sample_rate
from .render import private_dir, private_file


def write_wavs(capture: Capture, directory: Path) -> dict[str, float]:
    """Write ``input.wav`` (what the client sent) and ``output.wav`` (what the server sent),
    16-bit mono at the session's rate (24 kHz PCM16; G.711 decoded, 8 kHz). Returns each
    file's duration in seconds."""
    private_dir(directory)
    formats = events.AudioFormats()
    chunks: dict[str, list[np.ndarray]] = {events.SENT: [], events.RECEIVED: []}
    for message in capture.messages:
        if message.opcode == "text" and events.mentions_session(message.payload):
            event = events.parse(message.payload)
            if event is not None:
                formats.follow(event)
        for audio in message.audio():
            chunks[message.direction].append(pcm16_samples(audio, formats.of(message.direction)))
    durations = {}
    for side, name in ((events.SENT, "input.wav"), (events.RECEIVED, "output.wav")):
        samples = np.concatenate(chunks[side]) if chunks[side] else np.zeros(0, dtype="<i2")
        rate = sample_rate(formats.of(side))
        with private_file(directory / name, binary=True) as f, wave.open(f, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(rate)
            out.writeframes(samples.astype("<i2").tobytes())
        durations[name] = len(samples) / rate
    return durations
