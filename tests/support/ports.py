"""Ports for the tests: forked children that are always killed, payloads,
sending and receiving through a switch, exact error texts.

Nothing here measures time: LIMIT only bounds how long a broken library can
make a test wait.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import re
import struct
import time

FORK = multiprocessing.get_context("fork")
LIMIT = 10.0  # seconds a correct wait never needs; a broken one fails after it


@contextlib.contextmanager
def child(target, *args):
    """Run target(*args) in a forked process; kill it on the way out."""
    p = FORK.Process(target=target, args=args, daemon=True)
    p.start()
    try:
        yield p
    finally:
        if p.is_alive():
            p.kill()
        p.join(LIMIT)


def finished(p) -> int:
    p.join(LIMIT)
    return p.exitcode


def message(seq: int) -> bytes:
    """Distinguishable payloads of varying length (8 to 40 bytes)."""
    return struct.pack("<Q", seq) + bytes((seq * 7 + i) & 0xFF for i in range(seq % 33))


def full(pattern: str) -> str:
    return "^" + re.escape(pattern) + "$"


def oserror(err: int, text: str) -> str:
    """The whole str() of OSError(err, text)."""
    return full(f"[Errno {err}] {text}")


def hold(port, go=None):
    """Child body: claim the port, say so, then wait to be killed."""
    port.rx.sync()
    if go is not None:
        go.set()
    time.sleep(60)


def receive(port, n: int) -> list[bytes]:
    """n packets from port (fails instead of hanging if they do not come)."""
    out = []
    while len(out) < n:
        k = port.rx.wait(1, timeout=LIMIT)
        assert k, f"only {len(out)} of {n} packets arrived"
        out += [bytes(port.rx[i]) for i in range(k)]
        port.rx.advance(k)
    port.rx.sync()
    return out


def send(port, payload: bytes, dst: int, src: int = 0) -> None:
    port.tx.put(payload, dst=dst, src=src)
    port.tx.sync()
