"""Fuzz targets in the C extension: what another process or the kernel writes.

- ``region-header``: a port region's header as a hostile peer may leave it,
  through ``burstio.ports._fuzz_region_header(data)``. Documented:
  ValueError (not a region this build can use), RuntimeError (a stale
  claim), OSError (EBADMSG, EPIPE, ECONNRESET).
- ``udp-parse``: a receive's cmsgs and GRO splitting, through
  ``burstio._native.udp_parse_for_fuzz(control, length, slot_size, gro)``,
  which returns (offset, length, flags, segment_size) per datagram. Input:
  byte 0 bit 0 is gro, bytes 1-2 the slot size (1 to 65535), bytes 3-6 the
  received length, the rest the control buffer. Oracle: every datagram lies
  inside what was received and inside the slot, in order, without overlap.
  Documented: ValueError.
- ``frame-parse``: an Ethernet frame as AF_XDP delivers it, through
  ``burstio.xdp.udp.parse`` (csrc/xdp/frames.c). Input: the frame. Oracle:
  one row; a status the module names; for a UDP datagram, its payload lies
  inside the frame right after a UDP header whose ports the row repeats
  and whose length covers the payload. Documented: none (every frame gets
  a status).

Each runs where its entry point is in this build and says so otherwise (the
entry points come with the ports and UDP hardening).
"""
from __future__ import annotations

import struct
from typing import Any

from .. import _native
from . import Target

__all__ = ["REGION_HEADER", "UDP_PARSE", "FRAME_PARSE"]


# ---- region-header ------------------------------------------------------------------


def _region_entry() -> Any:
    from .. import ports

    return getattr(ports, "_fuzz_region_header", None)


def _region_missing() -> str | None:
    if _region_entry() is None:
        return "burstio.ports._fuzz_region_header is not in this build (the ports hardening adds it)"
    return None


def run_region_header(data: bytes) -> str:
    result = _region_entry()(data)
    return "accepted" if result is None else type(result).__name__


def _region_seeds() -> list[bytes]:
    """Inputs as ``_fuzz_region_header`` reads them: byte 0 picks the mode
    (0 raw over the header, 1 raw after its magic, 2 patches over the
    header, 3 patches over the control blocks and slot arrays), the rest is
    the payload. Seeds: a real header in each raw mode (the header is 192
    bytes; the rings' control blocks follow), and a few (u16 offset, u32
    value) patches in each patch mode."""
    import struct as st

    from .. import ports

    a, b = ports.pipe(slots=8)
    with a, b:
        header = bytes(a.memory[:192])
    patches = b"".join(st.pack("<HI", off, value) for off, value in ((0, 0), (5, 1 << 31), (40, 0xFFFFFFFF)))
    return [bytes([0]) + header, bytes([1]) + header[8:], bytes([0]) + header[:64],
            bytes([2]) + patches, bytes([3]) + patches, bytes([3]) + st.pack("<HI", 7, 12345)]


REGION_HEADER = Target("region-header", run_region_header, (ValueError, RuntimeError, OSError), _region_seeds,
                       _region_missing, max_len=8192)


# ---- udp-parse ----------------------------------------------------------------------------

_ARGS = struct.Struct("<BHI")


def _udp_missing() -> str | None:
    if not hasattr(_native, "udp_parse_for_fuzz"):
        return "burstio._native.udp_parse_for_fuzz is not in this build (the UDP hardening adds it)"
    return None


def run_udp_parse(data: bytes) -> str:
    head = data[:_ARGS.size].ljust(_ARGS.size, b"\x00")
    flags, slot_size, length = _ARGS.unpack(head)
    slot_size = max(slot_size, 1)
    gro = bool(flags & 1)
    entries = _native.udp_parse_for_fuzz(data[_ARGS.size:], length, slot_size, gro)
    limit, end = min(length, slot_size), 0
    for offset, size, _flags, _segment in entries:
        where = f"datagram [{offset}, {offset + size}) outside [{end}, {limit}) of {length} received, slot {slot_size}"
        assert end <= offset, where
        assert offset + size <= limit, where
        end = offset + size
    return f"{min(len(entries), 3)}{'+' if len(entries) > 3 else ''} datagrams"


def _udp_seeds() -> list[bytes]:
    def cmsg(level: int, kind: int, payload: bytes) -> bytes:
        body = struct.pack("=Qii", 16 + len(payload), level, kind) + payload
        return body + bytes(-len(body) % 8)

    gro = cmsg(17, 104, struct.pack("=i", 1400))  # SOL_UDP, UDP_GRO: segment size
    ovfl = cmsg(1, 40, struct.pack("=I", 3))  # SOL_SOCKET, SO_RXQ_OVFL: drops
    ts = cmsg(1, 35, struct.pack("=qq", 1, 2))  # SCM_TIMESTAMPNS
    # the metadata a dual-stack socket with pktinfo and ECN gets for an IPv4 datagram
    pktinfo6 = cmsg(41, 50, bytes(10) + b"\xff\xff" + bytes([127, 0, 0, 1]) + struct.pack("=I", 1))
    pktinfo4 = cmsg(0, 8, struct.pack("=i", 1) + bytes([127, 0, 0, 1]) * 2)  # IP_PKTINFO
    tos, tclass = cmsg(0, 1, b"\x03"), cmsg(41, 67, struct.pack("=i", 2))  # IP_TOS, IPV6_TCLASS
    return [_ARGS.pack(1, 65535, 4200) + gro, _ARGS.pack(0, 2048, 100) + ovfl + ts,
            _ARGS.pack(1, 65535, 64 * 1400) + gro + ovfl, _ARGS.pack(0, 2048, 3000), _ARGS.pack(1, 1500, 1500) + gro,
            _ARGS.pack(1, 65535, 4200) + gro + ovfl + ts + pktinfo6 + pktinfo4 + tos + tclass]


UDP_PARSE = Target("udp-parse", run_udp_parse, (ValueError,), _udp_seeds, _udp_missing, max_len=512)


# ---- frame-parse ----------------------------------------------------------------------------

_FRAME_SLOT = 4096


class _FrameParser:
    """One batch and one UdpFrames, reused for every input."""

    def __init__(self) -> None:
        from ..xdp import udp

        self.udp = udp
        self.batch = _native.PacketBatch(1, _FRAME_SLOT)
        self.frames = udp.UdpFrames(1)


_frame_parser: list[_FrameParser] = []


def run_frame_parse(data: bytes) -> str:
    if not _frame_parser:
        _frame_parser.append(_FrameParser())
    p = _frame_parser[0]
    data = data[:_FRAME_SLOT]
    p.batch.clear()
    p.batch.append(data)
    n = p.udp.parse(p.batch, p.frames).count
    assert n == 1, f"{n} rows for one frame"
    status = int(p.frames.statuses[0])
    assert status in p.udp.STATUS_NAMES, f"status {status} has no name"
    if status != p.udp.UDP_OK:
        return str(p.udp.STATUS_NAMES[status])
    start = int(p.batch.offsets[0])
    at = int(p.frames.payload_offsets[0]) - start  # where the payload starts in the frame
    size = int(p.frames.payload_lengths[0])
    where = f"payload [{at}, {at + size}) of a {len(data)}-byte frame"
    assert at >= 8, where
    assert at + size <= len(data), where
    sport, dport, length = struct.unpack_from("!HHH", data, at - 8)
    assert (sport, dport) == (int(p.frames.src_ports[0]), int(p.frames.dst_ports[0])), where
    assert size == length - 8, f"{where}, UDP length {length}"
    assert int(p.frames.families[0]) in (4, 6), where
    return f"ok IPv{int(p.frames.families[0])}"


def _frame_seeds() -> list[bytes]:
    from ..xdp import udp

    a, b = bytes([2, 0, 0, 0, 0, 1]), bytes([2, 0, 0, 0, 0, 2])
    v4 = udp.frame(a, b, ("10.0.0.1", 1000), ("10.0.0.2", 53), b"query")
    v6 = udp.frame(a, b, ("fd00::1", 1000), ("fd00::2", 53), b"query" * 20)
    tagged = udp.frame(a, b, ("10.0.0.1", 1000), ("10.0.0.2", 53), b"x", vlan=7)
    return [v4, v6, tagged, v4[:30], v4 + bytes(20), udp.frame(a, b, ("10.0.0.1", 1), ("10.0.0.2", 2))]


def _frame_missing() -> str | None:
    if not hasattr(_native, "UdpFrames"):
        return "burstio._native.UdpFrames is not in this build"
    return None


FRAME_PARSE = Target("frame-parse", run_frame_parse, (), _frame_seeds, _frame_missing, max_len=2048)
