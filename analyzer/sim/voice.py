"""The simulated voice: a tone in the session's output format, cut into streaming chunks.

What the assistant says is text. Saying it takes ``MS_PER_CHAR`` per character, streamed
as ``CHUNK_MS`` chunks of audio faster than real time (as servers do), and each word of the
transcript follows as soon as the audio has reached it. The audio is a quiet voiced-sounding
tone: nobody has to understand it, but its length, format and pacing are a real voice's.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..g711 import DECODE, sample_rate

MS_PER_CHAR = 70  # speaking rate of the simulated voice: about 14 characters a second
CHUNK_MS = 100  # audio per output delta
REALTIME_FACTOR = 4  # servers stream audio faster than real time
FIRST_AUDIO_S = 0.3  # the model "thinking" before the first chunk


def tone(ms: int, fmt: str, seed: int) -> bytes:
    """``ms`` milliseconds of a quiet voiced-sounding tone in ``fmt``; ``seed`` picks the pitch."""
    rate = sample_rate(fmt)
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


class Voice:
    """One session's voice: chunks of tone, made once per format and length."""

    def __init__(self) -> None:
        self._chunks: dict[tuple[str, int], bytes] = {}

    def chunk(self, fmt: str, ms: int) -> bytes:
        """``ms`` milliseconds of this voice in ``fmt``."""
        key = (fmt, ms)
        if key not in self._chunks:
            self._chunks[key] = tone(ms, fmt, len(self._chunks))
        return self._chunks[key]


def words(text: str) -> list[str]:
    """The words of ``text`` as transcript deltas: each but the last keeps its space."""
    out = [w + " " for w in text.split(" ")]
    out[-1] = out[-1].rstrip()
    return out


@dataclasses.dataclass(frozen=True)
class Piece:
    """One delta of spoken text: a word of its transcript (sent at once), or, when
    ``word`` is ``None``, ``ms`` of audio sent ``delay`` seconds after the previous delta."""

    ms: int = 0
    delay: float = 0.0
    word: str | None = None


def speak(text: str) -> list[Piece]:
    """Saying ``text``: its audio chunks, each followed by the words it has reached."""
    said_words = words(text)
    total_ms = len(text) * MS_PER_CHAR
    chunks = [CHUNK_MS] * (total_ms // CHUNK_MS) + ([total_ms % CHUNK_MS] if total_ms % CHUNK_MS else [])
    pieces: list[Piece] = []
    said = 0
    elapsed = 0
    for n, ms in enumerate(chunks):
        pieces.append(Piece(ms=ms, delay=ms / 1000 / REALTIME_FACTOR + (FIRST_AUDIO_S if n == 0 else 0)))
        elapsed += ms
        while (
            said < len(said_words) and sum(len(w) for w in said_words[: said + 1]) * MS_PER_CHAR <= elapsed + CHUNK_MS
        ):
            pieces.append(Piece(word=said_words[said]))
            said += 1
    pieces += [Piece(word=word) for word in said_words[said:]]
    return pieces
