"""Fuzz targets that misbehave on purpose, for the runner's own tests
(tests/test_fuzz.py): which inputs misbehave is a function of the input
alone, so a test can tell which inputs of a run must be reported."""
from __future__ import annotations

import ctypes
import time
import zlib

from burstio._fuzz import Target

__all__ = ["RAISES", "SEGFAULTS", "HANGS", "raises_on", "dies_on", "hangs_on"]


def raises_on(data: bytes) -> bool:
    return zlib.crc32(data, 0x5EED) % 97 == 0


def dies_on(data: bytes) -> bool:
    return zlib.crc32(data, 0x5EED) % 1499 == 0


def hangs_on(data: bytes) -> bool:
    return zlib.crc32(data, 0x5EED) % 997 == 0


def _raises(data: bytes) -> str:
    if raises_on(data):
        raise KeyError("not in the documented set")
    if len(data) % 2:
        raise ValueError("documented")
    return "even"


def _segfaults(data: bytes) -> str:
    if dies_on(data):
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    return "fine"


def _hangs(data: bytes) -> str:
    if hangs_on(data):
        time.sleep(3600)
    return "fine"


def _seeds() -> list[bytes]:
    return [b"seed one", b"another seed", b""]


RAISES = Target("raises", _raises, (ValueError,), _seeds, max_len=64)
SEGFAULTS = Target("segfaults", _segfaults, (), _seeds, max_len=64)
HANGS = Target("hangs", _hangs, (), _seeds, max_len=64)
