"""Control messages for the portable backends, with the socket module alone:
the same cmsgs csrc/batch/cmsg.c reads and writes, and the same checks of a
batch entry's metadata as csrc/batch/msgs.c, in the same words.

Where a datagram goes through it: a receive of ``_portable.PortableIo``
hands its ancillary data to ``parse``; a send of it (or of
``_pacing.PortablePacer``) takes its metadata with ``entry_meta`` and its
ancillary data from ``build``.
"""
from __future__ import annotations

import socket
import struct
from typing import NamedTuple

from ._kernel import (
    IP_PKTINFO,
    IP_TOS,
    IPV6_PKTINFO,
    IPV6_TCLASS,
    SCM_TIMESTAMPNS,
    SCM_TXTIME,
    SOL_UDP,
    UDP_GRO,
    UDP_SEGMENT,
)
from ._native import PacketBatch
from ._types import Address

__all__ = ["Meta", "NO_META", "Received", "parse", "build", "entry_meta", "check_meta", "is_v4"]

Ancillary = list[tuple[int, int, bytes]]


class Meta(NamedTuple):
    """A datagram's metadata: local address (None: none), interface, ECN
    codepoint, transmit time (CLOCK_MONOTONIC ns, 0: now)."""

    local: str | None
    ifindex: int
    ecn: int
    txtime: int


NO_META = Meta(None, 0, 0, 0)


class Received(NamedTuple):
    """What a received datagram's cmsgs said."""

    segment: int
    timestamp: int
    meta: Meta


def is_v4(host: str) -> bool:
    """Whether a numeric host is IPv4 (dotted, or ::ffff:a.b.c.d)."""
    return ":" not in host or (host.lower().startswith("::ffff:") and "." in host)


def parse(anc: Ancillary) -> Received:
    seg = ts = ifindex = ecn = 0
    local: str | None = None
    for level, kind, data in anc:
        if (level, kind) == (SOL_UDP, UDP_GRO) and len(data) >= 4:
            seg = max(0, struct.unpack("i", data[:4])[0])
        elif (level, kind) == (socket.SOL_SOCKET, SCM_TIMESTAMPNS) and len(data) >= 16:
            sec, nsec = struct.unpack("qq", data[:16])
            ts = sec * 1_000_000_000 + nsec
        elif (level, kind) == (socket.IPPROTO_IP, IP_PKTINFO) and len(data) >= 12:
            ifindex = struct.unpack("i", data[:4])[0]
            local = socket.inet_ntop(socket.AF_INET, data[8:12])
        elif (level, kind) == (socket.IPPROTO_IPV6, IPV6_PKTINFO) and len(data) >= 20:
            raw = data[:16]
            local = (socket.inet_ntop(socket.AF_INET, raw[12:]) if raw[:12] == b"\0" * 10 + b"\xff\xff"
                     else socket.inet_ntop(socket.AF_INET6, raw))
            ifindex = struct.unpack("I", data[16:20])[0]
        elif (level, kind) == (socket.IPPROTO_IP, IP_TOS) and len(data) >= 1:
            ecn = data[0] & 3
        elif (level, kind) == (socket.IPPROTO_IPV6, IPV6_TCLASS) and len(data) >= 4:
            ecn = struct.unpack("i", data[:4])[0] & 3
    if local in ("0.0.0.0", "::"):
        local = None
    return Received(seg, ts, Meta(local, max(0, ifindex), ecn, 0))


def build(segment: int, meta: Meta, *, ecn_mode: int = 1, dscp: int = 0, txtime: bool = False,
          txtime_offset: int = 0) -> Ancillary:
    """The ancillary data of a message: UDP_SEGMENT (segment > 0), the source
    address, the codepoint (as IP_TOS and IPV6_TCLASS: each stack reads its
    own; ecn_mode 2 is the tests' out-of-range TOS), SCM_TXTIME."""
    anc: Ancillary = []
    if segment:
        anc.append((SOL_UDP, UDP_SEGMENT, struct.pack("H", segment)))
    if meta.local is not None:
        if is_v4(meta.local):
            v4 = meta.local.rsplit(":", 1)[-1]
            anc.append((socket.IPPROTO_IP, IP_PKTINFO,
                        struct.pack("i", meta.ifindex) + socket.inet_aton(v4) + bytes(4)))
        else:
            anc.append((socket.IPPROTO_IPV6, IPV6_PKTINFO,
                        socket.inet_pton(socket.AF_INET6, meta.local) + struct.pack("I", meta.ifindex)))
    if meta.ecn and ecn_mode:
        tos = (dscp & 0xFC) | meta.ecn | (256 if ecn_mode == 2 else 0)
        anc += [(socket.IPPROTO_IP, IP_TOS, struct.pack("i", tos)),
                (socket.IPPROTO_IPV6, IPV6_TCLASS, struct.pack("i", tos))]
    if meta.txtime and txtime:
        anc.append((socket.SOL_SOCKET, SCM_TXTIME, struct.pack("Q", meta.txtime + txtime_offset)))
    return anc


def entry_meta(batch: PacketBatch, j: int) -> Meta:
    """Entry j's metadata (NO_META when the batch has none)."""
    if not batch.has_metadata:
        return NO_META
    return Meta(batch.local_addr(j), batch.ifindexes[j], batch.ecn[j], batch.txtimes[j])


def check_meta(j: int, meta: Meta, addr: Address | None, family: int, txtime_ok: bool) -> None:
    """ValueError, worded as csrc/batch/msgs.c, unless entry j's metadata can be sent."""
    why = None
    if meta.ecn > 3:
        why = f"its ECN codepoint (batch.ecn) is {meta.ecn}; codepoints are 0 to 3"
    elif meta.txtime < 0:
        why = "its transmit time (batch.txtimes) is negative"
    elif meta.txtime and not txtime_ok:
        why = "it has a transmit time (batch.txtimes) but this socket does not pace (paced=True does)"
    elif meta.local is not None and not is_v4(meta.local) and family == socket.AF_INET:
        why = "its local address is IPv6 but the socket is IPv4"
    elif meta.local is not None and addr is not None and is_v4(meta.local) != is_v4(addr[0]):
        why = "its local address and its destination are of different families"
    if why:
        raise ValueError(f"datagram {j}: {why}")
