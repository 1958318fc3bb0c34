"""``rtcap export --audio``: a session's audio as WAV files to listen to."""

from __future__ import annotations

import wave
from pathlib import Path
from typing import IO

import numpy as np

from recorder import events
from recorder.capture import Capture

from .g711 import pcm16_samples, sample_rate
from .render import private_dir, private_file


def session_audio(capture: Capture) -> dict[str, tuple[list[tuple[int, np.ndarray]], int]]:
    """A session's audio by side (``sent``, ``received``): each message's audio as 16-bit
    samples with the message's ``t_ns``, and the side's sample rate (its last format's:
    24 kHz PCM16, 8 kHz G.711 decoded)."""
    formats = events.AudioFormats()
    chunks: dict[str, list[tuple[int, np.ndarray]]] = {events.SENT: [], events.RECEIVED: []}
    for message in capture.messages:
        if message.opcode == "text" and events.mentions_session(message.payload):
            event = events.parse(message.payload)
            if event is not None:
                formats.follow(event)
        for audio in message.audio():
            chunks[message.direction].append((message.t_ns, pcm16_samples(audio, formats.of(message.direction))))
    return {side: (chunks[side], sample_rate(formats.of(side))) for side in (events.SENT, events.RECEIVED)}


def wav(samples: np.ndarray, rate: int, out: IO[bytes]) -> None:
    """Write 16-bit mono ``samples`` at ``rate`` as a WAV file."""
    with wave.open(out, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(samples.astype("<i2").tobytes())


def write_wavs(capture: Capture, directory: Path) -> dict[str, float]:
    """Write ``input.wav`` (what the client sent) and ``output.wav`` (what the server sent),
    16-bit mono at the session's rate (24 kHz PCM16; G.711 decoded, 8 kHz). Returns each
    file's duration in seconds."""
    private_dir(directory)
    audio = session_audio(capture)
    durations = {}
    for side, name in ((events.SENT, "input.wav"), (events.RECEIVED, "output.wav")):
        chunks, rate = audio[side]
        samples = np.concatenate([c for _, c in chunks]) if chunks else np.zeros(0, dtype="<i2")
        with private_file(directory / name, binary=True) as f:
            wav(samples, rate, f)
        durations[name] = len(samples) / rate
    return durations
