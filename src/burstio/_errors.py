"""Exceptions burstio raises beyond the builtin ones, and what paced sends report."""
from __future__ import annotations

import os
from typing import NamedTuple

from ._types import Address

__all__ = ["SendError", "PacedError", "Unsent"]


class SendError(OSError):
    """A datagram of a batch could not be sent.

    ``errno``/``strerror`` are the kernel's; ``index`` is the failing datagram's
    index in the batch (or the segment's index for ``send_segments``); ``sent``
    is how many datagrams of this call went out before it. Datagrams after
    ``index`` were not attempted: resume from ``index + 1``. ``mtu`` is the
    path MTU the kernel knows for the datagram's destination when the error
    is EMSGSIZE (don't-fragment on, or a datagram larger than the MTU), else
    None.
    """

    def __init__(self, err: int, index: int, sent: int, detail: str | None = None, mtu: int | None = None):
        what = detail or f"datagram {index}"
        if mtu is not None:
            what += f", path MTU {mtu}"
        super().__init__(err, f"{os.strerror(err)} ({what})")
        self.index = index
        self.sent = sent
        self.mtu = mtu


class PacedError(NamedTuple):
    """A paced datagram the kernel refused (``BurstSocket.paced_errors()``):
    its sequence number (the count of datagrams the socket paced before it),
    the errno, its destination, and for EMSGSIZE the path MTU the kernel
    knows for it (else None)."""

    sequence: int
    errno: int
    addr: Address | None
    mtu: int | None


class Unsent(NamedTuple):
    """A paced datagram still waiting when the socket was closed: its
    sequence number, destination and length (``BurstSocket.close()``)."""

    sequence: int
    addr: Address | None
    length: int
