"""Type aliases shared by burstio's modules (for annotations)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeAlias

from ._native import PacketBatch

__all__ = ["Address", "OnError", "RecoverPolicy"]

#: A socket address as the socket module spells it: (host, port) for IPv4,
#: (host, port, flowinfo, scope_id) for IPv6.
Address: TypeAlias = tuple[str, int] | tuple[str, int, int, int]
#: What a batch send does with a datagram the kernel refuses.
OnError: TypeAlias = Literal["raise", "skip"]
#: ``UdpIo.recover``: called as (batch, start, done, end, skip, errno, index,
#: gso) when a send stops early, with what stopped that call; its result is
#: the send's.
RecoverPolicy: TypeAlias = Callable[[PacketBatch, int, int, int, int, int, int, int], int]
