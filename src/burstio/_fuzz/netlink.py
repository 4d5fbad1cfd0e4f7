"""Fuzz target of netlink: the netdev family's replies (burstio.napi.netdev).

``netdev``: input byte 0 picks the message kind (napi, queue, qstats, dev),
the rest is what a netdev request reads from its socket: pyroute2's Marshal
with our message classes decodes it, then netdev's conversion makes Napi,
Queue, qstats entries or Device objects (``netdev._decode_replies``, the path
``netdev._request`` takes after the read). Documented: NetdevError (a
malformed reply is EBADMSG; an error message carries the kernel's errno).
"""
from __future__ import annotations

from typing import Any

from ..napi import netdev
from . import Target

__all__ = ["NETDEV"]

_KINDS = ("napi", "queue", "qstats", "dev")


def run_netdev(data: bytes) -> str:
    kind = data[0] % len(_KINDS) if data else 0
    replies = netdev._decode_replies(data[1:], kind)
    for r in replies:
        assert isinstance(r, (netdev.Napi, netdev.Queue, netdev.Device, tuple)), type(r)
    return f"{_KINDS[kind]}: {min(len(replies), 2)}{'+' if len(replies) > 2 else ''} replies"


def _missing() -> str | None:
    try:
        import pyroute2  # noqa: F401  # only whether it is there
    except ImportError:
        return "pyroute2 is not installed (pip install 'burstio[napi]')"
    return None


def _encode(kind: int, attrs: list[tuple[str, Any]], msg_type: int = netdev.FUZZ_FAMILY_ID) -> bytes:
    msg = netdev._classes()[kind]()
    msg["cmd"], msg["version"], msg["attrs"] = 1, 1, attrs
    msg["header"]["type"] = msg_type
    msg.encode()
    return bytes(msg.data)


def _netdev_seeds() -> list[bytes]:
    u64 = netdev._encode_uint
    napi = [("NETDEV_A_NAPI_IFINDEX", 1), ("NETDEV_A_NAPI_ID", 8193), ("NETDEV_A_NAPI_IRQ", 24),
            ("NETDEV_A_NAPI_DEFER_HARD_IRQS", 2), ("NETDEV_A_NAPI_GRO_FLUSH_TIMEOUT", u64(200000)),
            ("NETDEV_A_NAPI_IRQ_SUSPEND_TIMEOUT", (20000000).to_bytes(4, "little"))]
    queue = [("NETDEV_A_QUEUE_ID", 0), ("NETDEV_A_QUEUE_IFINDEX", 1), ("NETDEV_A_QUEUE_TYPE", 0),
             ("NETDEV_A_QUEUE_NAPI_ID", 8193)]
    qstats = [("NETDEV_A_QSTATS_IFINDEX", 1), ("NETDEV_A_QSTATS_QUEUE_TYPE", 1), ("NETDEV_A_QSTATS_QUEUE_ID", 0),
              ("NETDEV_A_QSTATS_RX_PACKETS", u64(12)), ("NETDEV_A_QSTATS_TX_BYTES", u64(3000))]
    dev = [("NETDEV_A_DEV_IFINDEX", 1), ("NETDEV_A_DEV_XDP_FEATURES", 0x13), ("NETDEV_A_DEV_XDP_ZC_MAX_SEGS", 1)]
    done = (20).to_bytes(4, "little") + (3).to_bytes(2, "little") + bytes(14)  # NLMSG_DONE
    kinds: tuple[list[tuple[str, Any]], ...] = (napi, queue, qstats, dev)
    seeds = [bytes([k]) + _encode(k, a) for k, a in enumerate(kinds)]
    seeds += [b"\x00" + _encode(0, napi) * 2 + done, b"\x03" + _encode(3, dev) + done,
              b"\x01" + _encode(1, queue[:2]), b"\x00" + done]
    return seeds


NETDEV = Target("netdev", run_netdev, (netdev.NetdevError,), _netdev_seeds, _missing, max_len=1024)
