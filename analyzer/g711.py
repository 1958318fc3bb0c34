"""G.711 (u-law and A-law) decoding tables, and audio bytes as PCM16 samples."""

from __future__ import annotations

import numpy as np


def _ulaw_table() -> np.ndarray:
    codes = ~np.arange(256, dtype=np.uint8)
    exponent = (codes >> 4) & 7
    mantissa = codes.astype(np.int32) & 15
    magnitude = ((mantissa << 3) + 0x84) << exponent
    return np.where(codes & 0x80, 0x84 - magnitude, magnitude - 0x84).astype(np.int16)


def _alaw_table() -> np.ndarray:
    codes = np.arange(256, dtype=np.uint8) ^ 0x55
    exponent = (codes >> 4) & 7
    mantissa = codes.astype(np.int32) & 15
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(codes & 0x80, magnitude, -magnitude).astype(np.int16)


ULAW, ALAW = _ulaw_table(), _alaw_table()
DECODE = {"g711_ulaw": ULAW, "audio/pcmu": ULAW, "g711_alaw": ALAW, "audio/pcma": ALAW}
"""The 16-bit sample of each G.711 byte, by format name (beta and GA spellings)."""


def sample_rate(fmt: str) -> int:
    """Samples per second of a realtime audio format: G.711 is 8 kHz, PCM16 24 kHz."""
    return 8_000 if fmt in DECODE else 24_000


def pcm16_samples(audio: bytes, fmt: str) -> np.ndarray:
    """Audio bytes as int16 samples, whatever the format (PCM16 unless G.711)."""
    if fmt in DECODE:
        return DECODE[fmt][np.frombuffer(audio, dtype=np.uint8)]
    return np.frombuffer(audio[: len(audio) - len(audio) % 2], dtype="<i2")
