"""burstio: batched, offloaded, zero-copy UDP I/O for Python on Linux.

    batch = burstio.PacketBatch(64)            # one arena, reused
    with burstio.BurstSocket.bind(("127.0.0.1", 9000)) as s:
        n = s.recv_batch(batch, timeout=1.0)   # recvmmsg, GIL released
        for i in range(n):
            print(batch.addr(i), bytes(batch[i]))
        s.send_batch(batch)                    # echo back: sendmmsg + GSO

Public submodules, imported on first use: ``burstio.aio`` (asyncio and
uvloop), ``burstio.ports`` (netmap-style ports between processes: pipes and a
switch), ``burstio.napi`` (busy polling, NAPI steering, the lab, the doctor),
``burstio.xdp`` (XDP programs and AF_XDP sockets),
``burstio.apps`` (DNS, HTTP/3 and sockperf servers), ``burstio.bench`` and
``burstio.testing`` (a pytest plugin). docs/ARCHITECTURE.md is the map;
``burstio caps`` shows what this kernel offers.
"""
from ._caps import Capabilities, Capability, capabilities
from ._errors import PacedError, SendError, Unsent
from ._native import (
    FLAG_COALESCED,
    FLAG_GRO,
    FLAG_SEND_ERROR,
    FLAG_TRUNCATED,
    GRO_SLOT_MIN,
    MAX_UDP_PAYLOAD,
    PacketBatch,
)
from ._socketset import RedundantResult, SocketSet
from ._udp import BurstSocket
from ._zerocopy import Completion, ZeroCopyBuffer, ZeroCopyPool, ZeroCopySender

__version__ = "0.1.0"

__all__ = [
    "PacketBatch",
    "BurstSocket",
    "SocketSet",
    "RedundantResult",
    "SendError",
    "PacedError",
    "Unsent",
    "capabilities",
    "Capabilities",
    "Capability",
    "FLAG_TRUNCATED",
    "FLAG_GRO",
    "FLAG_COALESCED",
    "FLAG_SEND_ERROR",
    "GRO_SLOT_MIN",
    "MAX_UDP_PAYLOAD",
    "ZeroCopySender",
    "ZeroCopyPool",
    "ZeroCopyBuffer",
    "Completion",
]

#: The public submodules (imported on first use: ``import burstio.aio``).
SUBMODULES = ("aio", "ports", "napi", "xdp", "apps", "bench", "testing")



def __getattr__(name: str) -> object:
    # PEP 562: ``burstio.ports`` and friends work after a plain ``import burstio``
    if name in SUBMODULES:
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
