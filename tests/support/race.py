"""Hostile threads for the tests: one that rewrites a PacketBatch's writable
arrays (numpy views, as a buggy or malicious caller would) while another
thread's call uses the batch, so that a test can show the kernel only ever
sees entries that were checked.

Nothing here measures time: the racer runs until it is stopped, and the
tests bound their work by a fixed number of attempts (``attempts()``):
small by default, so that the group takes seconds; set
``BURSTIO_RACE_ATTEMPTS=N`` for a stronger run (N attempts each, e.g.
``BURSTIO_RACE_ATTEMPTS=2000 pytest -k arrays_rewritten`` before a release).
"""
from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator

import numpy as np

import burstio

#: segment of a payload buffer the race tests send (bytes)
SEGMENT = 16
#: the environment variable that sets every race test's number of attempts
ENV_ATTEMPTS = "BURSTIO_RACE_ATTEMPTS"


def attempts(default: int) -> int:
    """How many times a race test tries: ``$BURSTIO_RACE_ATTEMPTS`` when set
    (a stronger run), else ``default``."""
    value = os.environ.get(ENV_ATTEMPTS, "")
    return int(value) if value.strip() else default


def payload_buffer(entries: int) -> bytes:
    """``entries`` segments of random bytes: any datagram that is not a
    slice of this buffer came from memory the sender was never given."""
    return os.urandom(entries * SEGMENT)


class ArrayRacer(threading.Thread):
    """Rewrites ``batch``'s offsets, lengths, names and (optionally) sockets
    in a loop, flipping every entry between its own values and hostile ones:
    offsets past the end of the data, lengths that run past it, a garbage
    address family, socket indices far out of range. Stop with ``stop()``."""

    def __init__(self, batch: burstio.PacketBatch, count: int, data_len: int, *, sockets: bool = False,
                 hostile_sockets: int = 1 << 20):
        super().__init__(daemon=True)
        self.count = count
        self.offsets = np.asarray(batch.offsets)[:count]
        self.lengths = np.asarray(batch.lengths)[:count]
        self.names = np.asarray(batch.names)[:count]
        self.sockets = np.asarray(batch.sockets)[:count] if sockets else None
        self.good = (self.offsets.copy(), self.lengths.copy(), self.names.copy(),
                     None if self.sockets is None else self.sockets.copy())
        self.bad_offsets = self.good[0] + np.uint64(data_len + 4096)
        self.bad_lengths = np.full(count, 1400, dtype=np.uint32)
        self.bad_names = self.good[2].copy()
        self.bad_names[:, 0] = 0xEE  # no such address family
        self.bad_sockets = np.full(count, hostile_sockets, dtype=np.int32)
        self.flips = 0
        self._halt = threading.Event()
        self._pause = threading.Event()   # asked to stop writing for a while
        self._paused = threading.Event()  # it has stopped
        self._resume = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            if self._pause.is_set():
                self._paused.set()
                self._resume.wait()
                continue
            # each assignment copies `count` items: numpy drops the GIL for
            # large copies, so this also writes while the sender holds it
            self.offsets[:] = self.bad_offsets
            self.lengths[:] = self.bad_lengths
            self.names[:] = self.bad_names
            if self.sockets is not None:
                self.sockets[:] = self.bad_sockets
            self.offsets[:] = self.good[0]
            self.lengths[:] = self.good[1]
            self.names[:] = self.good[2]
            if self.sockets is not None:
                self.sockets[:] = self.good[3]
            self.flips += 1

    def stop(self) -> None:
        self._halt.set()
        self._resume.set()
        self.join(10)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The racer writes nothing inside the block (where the test reads
        what arrived: a racer fighting for the GIL there would make each of
        a thousand receive calls wait for it, and show nothing)."""
        self._resume.clear()
        self._paused.clear()
        self._pause.set()
        self._paused.wait(10)
        try:
            yield
        finally:
            self._pause.clear()
            self._resume.set()

    def restore(self) -> None:
        """Put every entry back (after stop())."""
        self.offsets[:], self.lengths[:], self.names[:] = self.good[0], self.good[1], self.good[2]
        if self.sockets is not None:
            self.sockets[:] = self.good[3]


def foreign(datagrams: list[bytes], data: bytes) -> list[bytes]:
    """The datagrams that are not a slice of ``data``: memory the sender was
    never given reached the wire."""
    return [d for d in datagrams if d not in data]


def drained(sock) -> list[bytes]:
    """Every datagram queued on the plain non-blocking socket ``sock`` now."""
    out: list[bytes] = []
    drain(sock, out)
    return out


def drain(sock, into: list[bytes], recv: Callable[[object], bytes] | None = None) -> None:
    """Take every datagram queued on the plain socket ``sock`` into ``into``."""
    while True:
        try:
            into.append(sock.recv(65536) if recv is None else recv(sock))
        except BlockingIOError:
            return


class FlagsRacer(threading.Thread):
    """Writes every entry's ``flags`` over and over, all set (FLAG_SEND_ERROR
    and the rest) then all clear, while another thread's send runs: what a
    send counts must not depend on what it finds there. Stop with ``stop()``."""

    def __init__(self, batch: burstio.PacketBatch, count: int):
        super().__init__(daemon=True)
        self.flags = np.asarray(batch.flags)[:count]
        self.flips = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.flags[:] = 0xFFFFFFFF
            self.flags[:] = 0
            self.flips += 1

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
