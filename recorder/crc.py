"""CRC-32 (zlib's) of any slice of a buffer, without reading the slice again.

A reader that meets a frame whose checksum fails looks for the next frame marker and tries
again. When many candidate frames overlap (a crafted file can announce lengths that all run
to its end), checking each one with ``zlib.crc32`` costs its whole length, and the total is
quadratic in the file's size. :class:`SliceCRC` makes each check cost a few table lookups
instead, after one pass over the buffer.

It rests on CRC-32 being affine in its starting value: ``crc32(m, v) == crc32(m, 0) ^
shift(v, len(m))``, where ``shift(v, n)`` is the linear map the CRC register undergoes over
``n`` bytes (whatever they are). With ``P(x) = crc32(data[base:x])`` for the offsets
needed, ``crc32(data[s:e]) == P(e) ^ shift(P(s), e - s)``.
"""

from __future__ import annotations

import bisect
import mmap
import zlib
from array import array
from collections.abc import Iterable

_Tables = tuple[list[int], list[int], list[int], list[int]]

_POWERS: list[_Tables] = []
"""``_POWERS[k]``: the map of ``2**k`` bytes, as four tables (one per byte of the register)."""


def _apply(tables: _Tables, value: int) -> int:
    t0, t1, t2, t3 = tables
    return t0[value & 255] ^ t1[(value >> 8) & 255] ^ t2[(value >> 16) & 255] ^ t3[value >> 24]


def _power(k: int) -> _Tables:
    while len(_POWERS) <= k:
        if not _POWERS:  # one byte, from zlib itself: the map is crc32(b"\0", v) ^ crc32(b"\0", 0)
            columns = [zlib.crc32(b"\0", 1 << bit) ^ zlib.crc32(b"\0") for bit in range(32)]
        else:  # twice the previous length: the previous map applied twice
            previous = _POWERS[-1]
            columns = [_apply(previous, _apply(previous, 1 << bit)) for bit in range(32)]
        tables = []
        for byte in range(4):
            table = [0] * 256
            for value in range(1, 256):
                low = value & -value
                table[value] = table[value ^ low] ^ columns[8 * byte + low.bit_length() - 1]
            tables.append(table)
        _POWERS.append((tables[0], tables[1], tables[2], tables[3]))
    return _POWERS[k]


def shift(value: int, length: int) -> int:
    """The CRC register ``value`` carried over ``length`` bytes: ``crc32(m, value) ^
    crc32(m, 0)`` for any ``m`` of that length."""
    k = 0
    while length:
        if length & 1:
            value = _apply(_power(k), value)
        length >>= 1
        k += 1
    return value


class SliceCRC:
    """The CRC-32 of ``data[start:end]`` for any two of the given offsets, in time
    logarithmic in the slice's length. Building it reads ``data`` once, from ``base`` to
    the largest offset; it keeps 12 bytes per offset."""

    def __init__(self, data: bytes | mmap.mmap, base: int, offsets: Iterable[int]) -> None:
        self.offsets = array("q", sorted(set(offsets)))
        self.crcs = array("I")
        crc, previous = 0, base
        with memoryview(data) as view:  # slices of a view are not copies
            for offset in self.offsets:
                crc = zlib.crc32(view[previous:offset], crc)
                self.crcs.append(crc)
                previous = offset

    def _prefix(self, offset: int) -> int:
        return self.crcs[bisect.bisect_left(self.offsets, offset)]

    def crc(self, start: int, end: int) -> int:
        """``zlib.crc32(data[start:end])``; ``start`` and ``end`` must be given offsets."""
        return self._prefix(end) ^ shift(self._prefix(start), end - start)
