"""Fuzz inputs: random bytes, and mutations of a target's seeds.

Input i of a run is a function of (seed, target name, i) alone, so a run
can resume after its process died at input i (runner) and any input can be
made again from its index. About one input in ten is random bytes; the rest
take a seed and stack one to four mutations: bit flips, random bytes,
interesting integers (limits of 8, 16, 32 and 64-bit fields, both byte
orders, and lengths around 63/64, 255/256), truncation, extension, a chunk
deleted or repeated, or a splice of two seeds.
"""
from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable, Sequence

__all__ = ["Mutator", "INTERESTING"]

INTERESTING = (0, 1, 2, 7, 8, 12, 13, 14, 15, 16, 31, 32, 63, 64, 127, 128, 255, 256, 511, 512, 1023, 1024,
               4095, 4096, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
               0x7FFFFFFFFFFFFFFF, 0x8000000000000000, 0xFFFFFFFFFFFFFFFF)
_FIELDS = (("B", 1), ("<H", 2), (">H", 2), ("<I", 4), (">I", 4), ("<Q", 8), (">Q", 8))


class Mutator:
    """Makes input ``i`` for one target and seed: ``mutator.input(i)``."""

    def __init__(self, name: str, seed: int, seeds: Sequence[bytes], max_len: int):
        self._key = (seed & 0xFFFFFFFFFFFF) << 96 | zlib.crc32(name.encode()) << 64
        self._seeds = [bytes(s) for s in seeds] or [b""]
        self._max_len = max_len
        self._rng = random.Random()
        self._ops: tuple[Callable[[random.Random, bytearray], None], ...] = (
            self._flip, self._flip, self._set_byte, self._interesting, self._interesting, self._truncate,
            self._extend, self._delete, self._repeat, self._splice)

    def input(self, i: int) -> bytes:
        rng = self._rng
        rng.seed(self._key | i)
        if rng.random() < 0.1:
            return rng.randbytes(rng.randrange(min(self._max_len, 512) + 1))
        data = bytearray(rng.choice(self._seeds))
        for _ in range(rng.randint(1, 4)):
            rng.choice(self._ops)(rng, data)
        return bytes(data[:self._max_len])

    # ---- mutations (each changes data in place) -------------------------------------

    @staticmethod
    def _flip(rng: random.Random, data: bytearray) -> None:
        if data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)

    @staticmethod
    def _set_byte(rng: random.Random, data: bytearray) -> None:
        if data:
            data[rng.randrange(len(data))] = rng.randrange(256)

    @staticmethod
    def _interesting(rng: random.Random, data: bytearray) -> None:
        fmt, size = rng.choice(_FIELDS)
        if len(data) < size:
            return
        value = rng.choice(INTERESTING) & ((1 << (8 * size)) - 1)
        if rng.random() < 0.3:
            value = (value + rng.choice((-1, 1))) & ((1 << (8 * size)) - 1)
        struct.pack_into(fmt, data, rng.randrange(len(data) - size + 1), value)

    @staticmethod
    def _truncate(rng: random.Random, data: bytearray) -> None:
        del data[rng.randrange(len(data) + 1):]

    def _extend(self, rng: random.Random, data: bytearray) -> None:
        data += rng.randbytes(rng.randrange(1, 65))

    @staticmethod
    def _delete(rng: random.Random, data: bytearray) -> None:
        if data:
            start = rng.randrange(len(data))
            del data[start:start + rng.randrange(1, 17)]

    def _repeat(self, rng: random.Random, data: bytearray) -> None:
        if data:
            start = rng.randrange(len(data))
            chunk = data[start:start + rng.randrange(1, 65)]
            data[start:start] = chunk * rng.randrange(1, 5)

    def _splice(self, rng: random.Random, data: bytearray) -> None:
        other = rng.choice(self._seeds)
        cut = rng.randrange(len(data) + 1)
        data[cut:] = other[rng.randrange(len(other) + 1):]
