"""Exceptions burstio raises beyond the builtin ones."""
from __future__ import annotations

import os

__all__ = ["SendError"]


class SendError(OSError):
    """A datagram of a batch could not be sent.

    ``errno``/``strerror`` are the kernel's; ``index`` is the failing datagram's
    index in the batch (or the segment's index for ``send_segments``); ``sent``
    is how many datagrams of this call went out before it. Datagrams after
    ``index`` were not attempted: resume from ``index + 1``.
    """

    def __init__(self, err: int, index: int, sent: int, detail: str | None = None):
        what = detail or f"datagram {index}"
        super().__init__(err, f"{os.strerror(err)} ({what})")
        self.index = index
        self.sent = sent
