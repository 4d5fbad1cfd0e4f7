"""UDP over AF_XDP: a whole batch's headers parsed into arrays, and UDP
datagrams sent with their headers and checksums built in C.

Where a frame goes: ``parse(batch)`` reads the Ethernet, 802.1Q, IPv4/IPv6
and UDP headers of every entry in place (csrc/xdp/frames.c) into the arrays
of a ``UdpFrames``: payload offsets (in ``batch.buffer``, like
``batch.offsets``) and lengths, families, 16-byte addresses, ports, VLAN,
a status per frame (UDP_OK, or why not: truncated, malformed, not IP, not
UDP, a fragment, IPv6 extension headers) and flags. ``UdpSender.send``
copies each entry's payload into a free UMEM frame behind Ethernet, IP and
UDP headers (csrc/xdp/build.c) and transmits it; the destination MAC comes
from the kernel's neighbour table (pyroute2), looked up once per next hop.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import socket
import struct
import time
from typing import Any

from .. import _native
from .._checks import check_int, check_timeout
from ._xsk import XskSocket, ifindex_of

__all__ = [
    "UdpFrames", "UdpSender", "parse", "address", "mac_of", "address_of", "neighbour_mac", "frame",
    "UDP_OK", "UDP_TRUNCATED", "UDP_MALFORMED", "UDP_NOT_IP", "UDP_NOT_UDP", "UDP_FRAGMENT", "UDP_IPV6_EXT",
    "UDP_F_VLAN", "UDP_F_IP_OPTIONS", "UDP_F_PADDED", "UDP_F_CSUM_ZERO", "STATUS_NAMES",
]

UdpFrames = _native.UdpFrames
UDP_OK: int = _native.UDP_OK
UDP_TRUNCATED: int = _native.UDP_TRUNCATED
UDP_MALFORMED: int = _native.UDP_MALFORMED
UDP_NOT_IP: int = _native.UDP_NOT_IP
UDP_NOT_UDP: int = _native.UDP_NOT_UDP
UDP_FRAGMENT: int = _native.UDP_FRAGMENT
UDP_IPV6_EXT: int = _native.UDP_IPV6_EXT
UDP_F_VLAN: int = _native.UDP_F_VLAN
UDP_F_IP_OPTIONS: int = _native.UDP_F_IP_OPTIONS
UDP_F_PADDED: int = _native.UDP_F_PADDED
UDP_F_CSUM_ZERO: int = _native.UDP_F_CSUM_ZERO
#: status value -> name
STATUS_NAMES = {UDP_OK: "ok", UDP_TRUNCATED: "truncated", UDP_MALFORMED: "malformed", UDP_NOT_IP: "not IP",
                UDP_NOT_UDP: "not UDP", UDP_FRAGMENT: "fragment", UDP_IPV6_EXT: "IPv6 extension headers"}

SIOCGIFHWADDR = 0x8927
_NUD_USABLE = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80  # reachable, stale, delay, probe, noarp, permanent


def parse(batch: _native.PacketBatch, frames: UdpFrames | None = None) -> UdpFrames:
    """Parse every entry of ``batch`` (Ethernet frames) into ``frames`` (a
    new UdpFrames of the batch's capacity when None); row i is entry i."""
    if frames is None:
        frames = UdpFrames(batch.capacity)
    frames.parse(batch)
    return frames


def address(frames: UdpFrames, i: int, which: str = "src") -> tuple[str, int]:
    """Row i's source (or ``which="dst"`` destination) as (host, port)."""
    if which not in ("src", "dst"):
        raise ValueError(f"which must be 'src' or 'dst', got {which!r}")
    if not 0 <= i < frames.count:
        raise IndexError(f"row {i} is out of range (the last parse wrote {frames.count} rows)")
    fam = frames.families[i]
    raw = bytes((frames.src if which == "src" else frames.dst).cast("B")[16 * i:16 * i + 16])
    port = (frames.src_ports if which == "src" else frames.dst_ports)[i]
    host = socket.inet_ntop(socket.AF_INET6, raw) if fam == 6 else socket.inet_ntop(socket.AF_INET, raw[:4])
    return host, int(port)


def frame(dst_mac: bytes, src_mac: bytes, src: tuple[str, int], dst: tuple[str, int], payload: bytes = b"",
          *, vlan: int = 0, ttl: int = 64) -> bytes:
    """One Ethernet/IP/UDP frame as bytes, checksums computed (built in C)."""
    return bytes(_native.udp_frame(_header(dst_mac, src_mac, src, dst, vlan, ttl), payload))


def _header(dst_mac: bytes, src_mac: bytes, src: tuple[str, int], dst: tuple[str, int], vlan: int,
            ttl: int) -> tuple[bytes, bytes, bytes, bytes, int, int, int, int, int]:
    s, d = ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0])
    if s.version != d.version:
        raise ValueError(f"source {src[0]} and destination {dst[0]} are of different IP versions")
    check_int("vlan", vlan, 0, 0xFFFF)
    check_int("ttl", ttl, 1, 255)
    return (bytes(dst_mac), bytes(src_mac), s.packed.ljust(16, b"\0"), d.packed.ljust(16, b"\0"), s.version,
            check_int("source port", src[1], 0, 65535), check_int("destination port", dst[1], 0, 65535), vlan, ttl)


# ---- the device and its neighbours ---------------------------------------------

def mac_of(dev: str | int) -> bytes:
    """The hardware address of ``dev`` (this thread's namespace)."""
    name = dev if isinstance(dev, str) else socket.if_indextoname(ifindex_of(dev))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            raw = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, struct.pack("256s", name.encode()))
        except OSError as e:
            raise OSError(e.errno, f"no hardware address for device {name!r}: {e.strerror}") from None
    return raw[18:24]


def _ipr() -> Any:
    try:
        from pyroute2 import IPRoute
    except ImportError:
        raise ImportError("looking up neighbours and addresses needs pyroute2: pip install 'burstio[napi]'") from None
    return IPRoute()


def address_of(dev: str | int, family: int = 4) -> str:
    """The first address of ``family`` (4 or 6; IPv6: a global one, else any)
    configured on ``dev``."""
    ifindex = ifindex_of(dev)
    with _ipr() as ipr:
        addrs = [(a.get_attr("IFA_ADDRESS"), a["scope"])
                 for a in ipr.get_addr(index=ifindex, family=socket.AF_INET if family == 4 else socket.AF_INET6)]
    addrs.sort(key=lambda a: a[1])  # scope 0 (global) first
    if not addrs:
        raise OSError(errno.EADDRNOTAVAIL, f"device {dev} has no IPv{family} address")
    return str(addrs[0][0])


def _next_hop(ipr: Any, ip: str, ifindex: int) -> str:
    """The neighbour a datagram to ip goes to: ip itself, or its gateway."""
    with contextlib.suppress(Exception):  # no route: the error names the IP below
        routes = ipr.route("get", dst=ip, oif=ifindex)
        gateway = routes[0].get_attr("RTA_GATEWAY") if routes else None
        if gateway:
            return str(gateway)
    return ip


def _lookup(ipr: Any, hop: str, ifindex: int) -> bytes | None:
    family = socket.AF_INET6 if ":" in hop else socket.AF_INET
    for n in ipr.get_neighbours(family=family, ifindex=ifindex, dst=hop):
        mac = n.get_attr("NDA_LLADDR")
        if mac and n["state"] & _NUD_USABLE:
            return bytes.fromhex(mac.replace(":", ""))
    return None


def _solicit(hop: str, dev: str) -> None:
    """Make the kernel resolve hop: one empty datagram to its discard port."""
    family = socket.AF_INET6 if ":" in hop else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s, contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
        s.sendto(b"", (hop, 9))


def neighbour_mac(ip: str, dev: str | int, timeout: float = 1.0) -> bytes:
    """The MAC that datagrams to ``ip`` out of ``dev`` go to, from the
    kernel's neighbour table (of the next hop: ip or its gateway). An
    unresolved entry is solicited (one datagram through the kernel) and
    waited for up to ``timeout`` seconds; then LookupError names the IP and
    the device."""
    ifindex = ifindex_of(dev)
    name = dev if isinstance(dev, str) else socket.if_indextoname(ifindex)
    wait = check_timeout(timeout)
    deadline = None if wait is None else time.monotonic() + wait
    with _ipr() as ipr:
        hop = _next_hop(ipr, ip, ifindex)
        asked = False
        while True:
            mac = _lookup(ipr, hop, ifindex)
            if mac is not None:
                return mac
            if deadline is None or time.monotonic() >= deadline:
                via = f" (next hop {hop})" if hop != ip else ""
                raise LookupError(f"no neighbour entry for {ip}{via} on {name}: the kernel could not resolve "
                                  "its MAC address (is it reachable on that device?)")
            if not asked:
                _solicit(hop, name)
                asked = True
            time.sleep(0.01)


# ---- sending -----------------------------------------------------------------

class UdpSender:
    """UDP datagrams out of an XskSocket, headers and checksums built in C.

    ``UdpSender(xsk, src, *, src_mac=None, vlan=0, ttl=64, resolve_timeout=1.0)``:
    ``src`` is the (host, port) the datagrams come from; ``src_mac`` defaults
    to the device's. ``send(batch)`` sends each entry's payload to its
    address (``batch.append(payload, (host, port))``).
    """

    def __init__(self, xsk: XskSocket, src: tuple[str, int], *, src_mac: bytes | None = None, vlan: int = 0,
                 ttl: int = 64, resolve_timeout: float = 1.0):
        if not isinstance(xsk, XskSocket):
            raise TypeError(f"xsk must be an XskSocket, got {type(xsk).__name__}")
        ip = ipaddress.ip_address(src[0])
        self.xsk, self.src = xsk, (str(ip), check_int("source port", src[1], 0, 65535))
        self.family = ip.version
        mac = mac_of(xsk.dev) if src_mac is None else bytes(src_mac)
        if len(mac) != 6:
            raise ValueError(f"src_mac must be 6 bytes, got {len(mac)}")
        self._source = (mac, ip.packed.ljust(16, b"\0"), ip.version, self.src[1], check_int("vlan", vlan, 0, 0xFFFF),
                        check_int("ttl", ttl, 1, 255))
        self.resolve_timeout = resolve_timeout
        self.neighbours: dict[bytes, bytes] = {}  # 16-byte address -> MAC
        self._table = b""

    def resolve(self, ip: str) -> bytes:
        """Look ip's MAC up (and remember it for later sends)."""
        mac = neighbour_mac(ip, self.xsk.dev, self.resolve_timeout)
        self.neighbours[ipaddress.ip_address(ip).packed.ljust(16, b"\0")] = mac
        self._table = b"".join(a + m for a, m in self.neighbours.items())
        return mac

    def send(self, batch: _native.PacketBatch, start: int = 0, count: int | None = None, *,
             timeout: float | None = None) -> int:
        """Send entries ``[start, start + count)`` as UDP datagrams to their
        addresses; returns how many were sent (all of them, or TimeoutError
        with ``.sent`` when the tx ring stayed full for ``timeout`` s)."""
        timeout = check_timeout(timeout)
        total = len(batch) - start if count is None else count
        deadline = None if timeout is None else time.monotonic() + timeout
        sent = 0
        x = self.xsk._x
        while sent < total:
            try:
                n = x.send_udp(batch, self._source, self._table, start + sent, total - sent)
            except LookupError as e:
                i = getattr(e, "index", None)
                if i is None:
                    raise
                dest = batch.addr(i)
                if dest is None:
                    raise
                self.resolve(dest[0])
                continue
            sent += n
            if sent < total:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not x.wait_tx(left):
                    err = TimeoutError(errno.ETIMEDOUT, f"sent {sent} of {total} datagrams: the tx ring or the free "
                                                        f"frames stayed full for {timeout} s")
                    err.sent = sent  # type: ignore[attr-defined]  # as BurstSocket's SendError carries it
                    raise err
        return sent
