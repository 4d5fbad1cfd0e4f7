"""burstio: batched, offloaded, zero-copy UDP I/O for Python on Linux.

    batch = burstio.PacketBatch(64)            # one arena, reused
    with burstio.BurstSocket.bind(("127.0.0.1", 9000)) as s:
        n = s.recv_batch(batch, timeout=1.0)   # recvmmsg, GIL released
        for i in range(n):
            print(batch.addr(i), bytes(batch[i]))
        s.send_batch(batch)                    # echo back: sendmmsg + GSO

See README.md; ``burstio caps`` shows what this kernel offers.
"""
from ._native import (
    FLAG_COALESCED,
    FLAG_GRO,
    FLAG_SEND_ERROR,
    FLAG_TRUNCATED,
    GRO_SLOT_MIN,
    MAX_UDP_PAYLOAD,
    PacketBatch,
)
from ._errors import SendError
from .caps import Capabilities, Capability, capabilities
from .udp import BurstSocket
from .zerocopy import ZeroCopyBuffer, ZeroCopyPool, ZeroCopySender  # zero-copy send
from .ring import RedundantResult, Ring
from . import rings  # packet rings between processes: pipes, switch (rings.py)

__version__ = "0.1.0"

__all__ = [
    "PacketBatch",
    "BurstSocket",
    "Ring",
    "RedundantResult",
    "SendError",
    "capabilities",
    "Capabilities",
    "Capability",
    "FLAG_TRUNCATED",
    "FLAG_GRO",
    "FLAG_COALESCED",
    "FLAG_SEND_ERROR",
    "GRO_SLOT_MIN",
    "MAX_UDP_PAYLOAD",
    # zero-copy send (zerocopy.py)
    "ZeroCopySender",
    "ZeroCopyPool",
    "ZeroCopyBuffer",
    # packet rings between processes (rings.py)
    "rings",
]
