"""CRC-32 (zlib's) of any slice of a buffer, without reading the slice again; and
:func:`crc32` itself, from ISA-L (``isal``) when it is installed: about six times zlib's
speed on a capture's records, with the same results.

A reader that meets a frame whose checksum fails looks for the next frame marker and tries
again. When many candidate frames overlap (a crafted file can announce lengths that all run
to its end), checking each one with ``zlib.crc32`` costs its whole length, and the total is
quadratic in the file's size. :class:`SliceCRC` makes each check cost a few table lookups
and at most two short CRCs instead, after one pass over the buffer.

It rests on CRC-32 being affine in its starting value: ``crc32(m, v) == crc32(m, 0) ^
shift(v, len(m))``, where ``shift(v, n)`` is the linear map the CRC register undergoes over
``n`` bytes (whatever they are). With ``P(x) = crc32(data[base:x])``, kept for every block
boundary and finished from the nearest one, ``crc32(data[s:e]) == P(e) ^ shift(P(s), e - s)``.
"""

from __future__ import annotations

import mmap
import zlib
from array import array

try:
    from isal.isal_zlib import crc32
except ImportError:  # the shim can land in an interpreter without it
    from zlib import crc32

__all__ = ["SliceCRC", "crc32", "shift"]

_Tables = tuple[list[int], list[int], list[int], list[int]]

_DIGITS: dict[tuple[int, int], _Tables] = {}
"""``_DIGITS[j, d]``: the map of ``d * 16**j`` bytes, as four tables (one per byte of the
register), made when first needed: a length is carried over one hexadecimal digit at a time."""


def _apply(tables: _Tables, value: int) -> int:
    t0, t1, t2, t3 = tables
    return t0[value & 255] ^ t1[(value >> 8) & 255] ^ t2[(value >> 16) & 255] ^ t3[value >> 24]


def _digit(j: int, d: int) -> _Tables:
    found = _DIGITS.get((j, d))
    if found is not None:
        return found
    if (j, d) == (0, 1):  # one byte, from zlib itself: the map is crc32(b"\0", v) ^ crc32(b"\0", 0)
        columns = [zlib.crc32(b"\0", 1 << bit) ^ zlib.crc32(b"\0") for bit in range(32)]
    else:  # one step less, then one step more
        less, step = (_digit(j, d - 1), _digit(j, 1)) if d > 1 else (_digit(j - 1, 15), _digit(j - 1, 1))
        columns = [_apply(step, _apply(less, 1 << bit)) for bit in range(32)]
    tables = []
    for byte in range(4):
        table = [0] * 256
        for value in range(1, 256):
            low = value & -value
            table[value] = table[value ^ low] ^ columns[8 * byte + low.bit_length() - 1]
        tables.append(table)
    _DIGITS[j, d] = made = (tables[0], tables[1], tables[2], tables[3])
    return made


def shift(value: int, length: int) -> int:
    """The CRC register ``value`` carried over ``length`` bytes: ``crc32(m, value) ^
    crc32(m, 0)`` for any ``m`` of that length."""
    j = 0
    while length:
        if length & 15:
            t0, t1, t2, t3 = _DIGITS.get((j, length & 15)) or _digit(j, length & 15)
            value = t0[value & 255] ^ t1[(value >> 8) & 255] ^ t2[(value >> 16) & 255] ^ t3[value >> 24]
        length >>= 4
        j += 1
    return value


class SliceCRC:
    """The CRC-32 of any slice ``data[start:end]`` (``start >= base``), at the cost of at
    most two blocks of :data:`BLOCK` bytes and a shift, after one pass over ``data`` from
    ``base``. It keeps four bytes per block."""

    BLOCK = 64

    def __init__(self, data: bytes | mmap.mmap, base: int = 0) -> None:
        self.data, self.base = data, base
        self.blocks = array("I", [0])  # the CRC of data[base:base + k * BLOCK], for each k
        crc = 0
        with memoryview(data) as view:  # slices of a view are not copies
            for block in range(base, len(data), self.BLOCK):
                crc = crc32(view[block : block + self.BLOCK], crc)
                self.blocks.append(crc)

    def _prefix(self, offset: int) -> int:
        """The CRC of ``data[base:offset]``."""
        k = (offset - self.base) // self.BLOCK
        return crc32(self.data[self.base + k * self.BLOCK : offset], self.blocks[k])

    def crc(self, start: int, end: int) -> int:
        """``zlib.crc32(data[start:end])``."""
        return self._prefix(end) ^ shift(self._prefix(start), end - start)
