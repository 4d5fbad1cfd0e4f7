"""Capability probe: which fast paths this kernel offers, decided by trying.

Each probe *uses* the feature once (sends a GSO datagram to itself, sets up
an io_uring, ...) instead of reading version numbers. The result is cached;
``capabilities(refresh=True)`` probes again.

Set ``BURSTIO_DISABLE`` to a comma-separated list of capability names to
force them off (``BURSTIO_DISABLE=udp_segment,recvmmsg``); every fast path then
takes its fallback, which is how the tests exercise each fallback.
"""
from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypedDict

from . import _native, _txtime
from ._kernel import (
    AF_XDP,
    EPIOCGPARAMS,
    EPIOCSPARAMS,
    IP_PKTINFO,
    IP_RECVTOS,
    IP_TOS,
    IPV6_PKTINFO,
    IPV6_RECVPKTINFO,
    IPV6_RECVTCLASS,
    IPV6_TCLASS,
    SO_BUSY_POLL,
    SO_BUSY_POLL_BUDGET,
    SO_INCOMING_NAPI_ID,
    SO_MEMINFO,
    SO_PREFER_BUSY_POLL,
    SO_RXQ_OVFL,
    SO_TIMESTAMPNS,
    SO_ZEROCOPY,
    SOL_UDP,
    UDP_GRO,
    UDP_SEGMENT,
)
from ._types import Address

__all__ = ["Capability", "Capabilities", "capabilities", "ENV_DISABLE", "CAPABILITY_NAMES", "LATE_CAPABILITIES"]

ENV_DISABLE = "BURSTIO_DISABLE"



@dataclass(frozen=True)
class Capability:
    """One probed feature: whether it works here and what the probe saw."""

    name: str
    available: bool
    detail: str
    forced_off: bool = False

    def __bool__(self) -> bool:
        return self.available


Probe = Callable[[], tuple[bool, str]]


def _udp_pair(family: int = socket.AF_INET) -> tuple[socket.socket, socket.socket]:
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    rx = socket.socket(family, socket.SOCK_DGRAM)
    tx = socket.socket(family, socket.SOCK_DGRAM)
    rx.bind((host, 0))
    rx.settimeout(1.0)
    return rx, tx


def _gso_send(tx: socket.socket, dest: Address, seg: int, total: int) -> None:
    tx.sendmsg([b"x" * total], [(SOL_UDP, UDP_SEGMENT, struct.pack("H", seg))], 0, dest)


def _probe_udp_segment() -> tuple[bool, str]:
    rx, tx = _udp_pair()
    try:
        _gso_send(tx, rx.getsockname(), 2, 4)
        sizes = [len(rx.recv(16)), len(rx.recv(16))]
        if sizes != [2, 2]:
            return False, f"GSO send of 2 x 2 bytes arrived as {sizes}"
        _FOUND["gso_max_segments"] = n = _gso_max_segments(tx, rx)
        return True, f"GSO send arrived as 2 datagrams; kernel takes {n} segments per send"
    except OSError as e:
        return False, f"GSO send failed: {e}"
    finally:
        rx.close()
        tx.close()


def _gso_max_segments(tx: socket.socket, rx: socket.socket) -> int:
    """Largest segment count the kernel accepts in one GSO send (64 or 128)."""
    best = 1
    for n in (64, 128):
        try:
            _gso_send(tx, rx.getsockname(), 1, n)
            best = n
        except OSError:
            break
    return best


def _probe_udp_gro() -> tuple[bool, str]:
    rx, tx = _udp_pair()
    try:
        rx.setsockopt(SOL_UDP, UDP_GRO, 1)
        try:
            _gso_send(tx, rx.getsockname(), 2, 6)
        except OSError:
            return True, "UDP_GRO accepted (not exercised: GSO send failed)"
        data, anc, _flags, _addr = rx.recvmsg(64, socket.CMSG_SPACE(4))
        segs = [struct.unpack("i", d[:4])[0] for lvl, typ, d in anc if (lvl, typ) == (SOL_UDP, UDP_GRO)]
        if len(data) == 6 and segs == [2]:
            return True, "a 3-segment GSO send arrived coalesced with segment size 2"
        return True, f"UDP_GRO accepted; loopback delivered {len(data)} bytes, cmsg {segs}"
    except OSError as e:
        return False, f"UDP_GRO: {e}"
    finally:
        rx.close()
        tx.close()


def _probe_sockopt(label: str, level: int, opt: int, value: int,
                   kinds: tuple[tuple[socket.AddressFamily, socket.SocketKind], ...] = (
                       (socket.AF_INET, socket.SOCK_DGRAM),)) -> Probe:
    def probe() -> tuple[bool, str]:
        for family, kind in kinds:
            with socket.socket(family, kind) as s:
                try:
                    s.setsockopt(level, opt, value)
                except OSError as e:
                    return False, f"setsockopt({label}) on {kind.name}: {e}"
        names = "/".join("UDP" if k == socket.SOCK_DGRAM else "TCP" for _f, k in kinds)
        return True, f"setsockopt({label}, {value}) accepted on {names}"
    return probe


def _probe_meminfo() -> tuple[bool, str]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            raw = s.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 36)
        except OSError as e:
            return False, f"getsockopt(SO_MEMINFO): {e}"
    return len(raw) >= 36, f"getsockopt(SO_MEMINFO) gives {len(raw) // 4} counters (drops is the 9th)"


def _probe_napi_id() -> tuple[bool, str]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            v = s.getsockopt(socket.SOL_SOCKET, SO_INCOMING_NAPI_ID)
        except OSError as e:
            return False, f"getsockopt(SO_INCOMING_NAPI_ID): {e}"
    return True, f"getsockopt(SO_INCOMING_NAPI_ID) works (unbound socket: {v})"


def _probe_epoll_params() -> tuple[bool, str]:
    ep = select.epoll()
    try:
        buf = bytearray(8)
        fcntl.ioctl(ep.fileno(), EPIOCGPARAMS, buf)
        fcntl.ioctl(ep.fileno(), EPIOCSPARAMS, bytes(buf))
        return True, "EPIOCGPARAMS/EPIOCSPARAMS accepted (Linux >= 6.9)"
    except OSError as e:
        why = "kernel older than 6.9" if e.errno in (errno.ENOTTY, errno.EINVAL) else str(e)
        return False, f"EPIOCGPARAMS: {e.strerror} ({why})"
    finally:
        ep.close()


def _probe_af_xdp() -> tuple[bool, str]:
    try:
        s = socket.socket(AF_XDP, socket.SOCK_RAW, 0)
    except OSError as e:
        return False, f"socket(AF_XDP): {e}"
    s.close()
    return True, "socket(AF_XDP, SOCK_RAW) created"


def _cmsgs(rx: socket.socket) -> dict[tuple[int, int], bytes]:
    _data, anc, _flags, _addr = rx.recvmsg(16, 512)
    return {(level, kind): data for level, kind, data in anc}


def _probe_pktinfo(family: int) -> Probe:
    """A datagram sent from a chosen source address (an IP_PKTINFO /
    IPV6_PKTINFO cmsg) arrives with its destination and interface (the same
    cmsg on receive)."""
    v6 = family == socket.AF_INET6
    name, level = ("IPV6_PKTINFO", socket.IPPROTO_IPV6) if v6 else ("IP_PKTINFO", socket.IPPROTO_IP)

    def probe() -> tuple[bool, str]:
        if v6 and not _probe_ipv6()[0]:
            return False, f"no IPv6: {_probe_ipv6()[1]}"
        host = "::1" if v6 else "127.0.0.1"
        rx, tx = _udp_pair(family)
        try:
            rx.setsockopt(level, IPV6_RECVPKTINFO if v6 else IP_PKTINFO, 1)
            raw = socket.inet_pton(family, host)
            src = raw + struct.pack("I", 0) if v6 else struct.pack("I", 0) + raw + bytes(4)
            tx.sendmsg([b"p"], [(level, IPV6_PKTINFO if v6 else IP_PKTINFO, src)], 0, rx.getsockname())
            info = _cmsgs(rx).get((level, IPV6_PKTINFO if v6 else IP_PKTINFO))
        except OSError as e:
            return False, f"{name}: {e}"
        finally:
            rx.close()
            tx.close()
        if info is None:
            return False, f"a datagram to {host} arrived without an {name} cmsg"
        dest = socket.inet_ntop(family, info[:16] if v6 else info[8:12])
        return True, f"a datagram sent from {host} by {name} arrived with destination {dest} in {name}"
    return probe


def _probe_ecn() -> tuple[bool, str]:
    """ECT(0) sent in an IP_TOS cmsg is read back from IP_RECVTOS (and the
    same over IPv6 with IPV6_TCLASS, where there is IPv6)."""
    seen = []
    for family, send, recv, level in ((socket.AF_INET, IP_TOS, IP_RECVTOS, socket.IPPROTO_IP),
                                      (socket.AF_INET6, IPV6_TCLASS, IPV6_RECVTCLASS, socket.IPPROTO_IPV6)):
        if family == socket.AF_INET6 and not _probe_ipv6()[0]:
            continue
        rx, tx = _udp_pair(family)
        try:
            rx.setsockopt(level, recv, 1)
            tx.sendmsg([b"e"], [(level, send, struct.pack("i", 2))], 0, rx.getsockname())
            got = _cmsgs(rx).get((level, send))
        except OSError as e:
            return False, f"{'IPV6_TCLASS' if family == socket.AF_INET6 else 'IP_TOS'}: {e}"
        finally:
            rx.close()
            tx.close()
        if got is None or got[0] & 3 != 2:
            return False, f"ECT(0) sent over {family.name} arrived as {got!r}"
        seen.append("IPV6_TCLASS" if family == socket.AF_INET6 else "IP_TOS")
    return True, f"ECT(0) sent and read back ({', '.join(seen)})"


def _probe_ipv6() -> tuple[bool, str]:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError as e:
        return False, f"bind to [::1]: {e}"
    return True, "UDP socket bound to [::1]"


def _uring_disabled() -> str | None:
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            v = f.read().strip()
    except OSError:
        return None
    return None if v == "0" else f"kernel.io_uring_disabled = {v}"


_MMSG: dict[str, tuple[bool, str]] = {}
_XDP: dict[str, tuple[bool, str]] = {}
_FOUND: dict[str, int] = {}  # values a probe measured on the way
_URING: dict[str, tuple[bool, str]] = {}


def _from(table: dict[str, tuple[bool, str]], fill: Callable[[], dict[str, tuple[bool, str]]],
          name: str) -> Probe:
    def probe() -> tuple[bool, str]:
        if not table:
            table.update(fill())
        return table.get(name, (False, "not probed"))
    return probe


def _xdp_fill() -> dict[str, tuple[bool, str]]:
    from .xdp._probe import probe_xdp

    return probe_xdp(_probe_af_xdp()[0])


def _uring_fill() -> dict[str, tuple[bool, str]]:
    why = _uring_disabled()
    if why:
        return {"io_uring": (False, why)}
    return _native.probe_uring()


_UDP_TCP = ((socket.AF_INET, socket.SOCK_DGRAM), (socket.AF_INET, socket.SOCK_STREAM))

# name -> probe; order is the order `burstio caps` prints.
_PROBES: dict[str, Probe] = {
    "recvmmsg": _from(_MMSG, _native.probe_mmsg, "recvmmsg"),
    "sendmmsg": _from(_MMSG, _native.probe_mmsg, "sendmmsg"),
    "udp_segment": _probe_udp_segment,
    "udp_gro": _probe_udp_gro,
    "so_timestampns": _probe_sockopt("SO_TIMESTAMPNS", socket.SOL_SOCKET, SO_TIMESTAMPNS, 1),
    "so_rxq_ovfl": _probe_sockopt("SO_RXQ_OVFL", socket.SOL_SOCKET, SO_RXQ_OVFL, 1),
    "so_meminfo": _probe_meminfo,
    "ipv6": _probe_ipv6,
    "io_uring": _from(_URING, _uring_fill, "io_uring"),
    "io_uring_recvmsg": _from(_URING, _uring_fill, "io_uring_recvmsg"),
    "io_uring_sendmsg": _from(_URING, _uring_fill, "io_uring_sendmsg"),
    "io_uring_send_zc": _from(_URING, _uring_fill, "io_uring_send_zc"),
    "io_uring_sendmsg_zc": _from(_URING, _uring_fill, "io_uring_sendmsg_zc"),
    "io_uring_poll_add": _from(_URING, _uring_fill, "io_uring_poll_add"),
    "io_uring_buf_ring": _from(_URING, _uring_fill, "io_uring_buf_ring"),
    "io_uring_defer_taskrun": _from(_URING, _uring_fill, "io_uring_defer_taskrun"),
    "io_uring_sqpoll": _from(_URING, _uring_fill, "io_uring_sqpoll"),
    "io_uring_napi": _from(_URING, _uring_fill, "io_uring_napi"),
    "so_zerocopy": _probe_sockopt("SO_ZEROCOPY", socket.SOL_SOCKET, SO_ZEROCOPY, 1, _UDP_TCP),
    "epoll_busy_poll": _probe_epoll_params,
    "so_incoming_napi_id": _probe_napi_id,
    "so_busy_poll": _probe_sockopt("SO_BUSY_POLL", socket.SOL_SOCKET, SO_BUSY_POLL, 50),
    "so_prefer_busy_poll": _probe_sockopt("SO_PREFER_BUSY_POLL", socket.SOL_SOCKET, SO_PREFER_BUSY_POLL, 1),
    "so_busy_poll_budget": _probe_sockopt("SO_BUSY_POLL_BUDGET", socket.SOL_SOCKET, SO_BUSY_POLL_BUDGET, 8),
    "af_xdp": _probe_af_xdp,
    # XDP and AF_XDP: probed together on a veth in a private namespace (burstio.xdp._probe)
    "bpf": _from(_XDP, _xdp_fill, "bpf"),
    "xdp_link": _from(_XDP, _xdp_fill, "xdp_link"),
    "xdp_generic": _from(_XDP, _xdp_fill, "xdp_generic"),
    "xdp_native": _from(_XDP, _xdp_fill, "xdp_native"),
    "bpf_prog_run_live_frames": _from(_XDP, _xdp_fill, "bpf_prog_run_live_frames"),
    "xsk_need_wakeup": _from(_XDP, _xdp_fill, "xsk_need_wakeup"),
    "xsk_zerocopy": _from(_XDP, _xdp_fill, "xsk_zerocopy"),
    "xsk_multi_buffer": _from(_XDP, _xdp_fill, "xsk_multi_buffer"),
    "ip_pktinfo": _probe_pktinfo(socket.AF_INET),
    "ipv6_pktinfo": _probe_pktinfo(socket.AF_INET6),
    "ecn": _probe_ecn,
    "so_txtime": _txtime.probe_so_txtime,
    "txtime_qdisc": _txtime.probe_qdisc,
}

CAPABILITY_NAMES: tuple[str, ...] = tuple(_PROBES)
#: capabilities probed where they are used, not here (their probe needs a
#: netlink library): BURSTIO_DISABLE may name them too
LATE_CAPABILITIES: dict[str, str] = {
    "netdev_napi_set": "per-NAPI settings over netdev netlink, Linux >= 6.13 (burstio.napi.netdev.configure_napi)",
}

# A capability is off when the one it rests on is off.
_REQUIRES = {name: "io_uring" for name in CAPABILITY_NAMES if name.startswith("io_uring_")}
_REQUIRES.update(dict.fromkeys(("xdp_link", "xdp_generic", "xdp_native", "bpf_prog_run_live_frames"), "bpf"))
_REQUIRES.update(dict.fromkeys(("xsk_need_wakeup", "xsk_zerocopy", "xsk_multi_buffer"), "af_xdp"))
#: probed on first use, not with the rest: the XDP probe makes a namespace
#: and a veth, which a program that never uses XDP should not pay for
_ON_FIRST_USE = frozenset({"bpf", "xdp_link", "xdp_generic", "xdp_native", "bpf_prog_run_live_frames",
                           "xsk_need_wakeup", "xsk_zerocopy", "xsk_multi_buffer"})
_REQUIRES.update(ipv6_pktinfo="ipv6", txtime_qdisc="so_txtime")


class CapabilityInfo(TypedDict):
    """One capability in ``Capabilities.as_dict()``."""

    available: bool
    detail: str
    forced_off: bool


class CapabilitiesInfo(TypedDict):
    """``Capabilities.as_dict()``: what ``burstio caps --json`` prints."""

    capabilities: dict[str, CapabilityInfo]
    gso_max_segments: int


class Capabilities(Mapping[str, Capability]):
    """Read-only mapping name -> Capability; ``caps.udp_gro`` is a bool.
    The XDP capabilities are probed when one of them is first asked for."""

    def __init__(self, items: dict[str, Capability | None], gso_max_segments: int,
                 off: frozenset[str] = frozenset()):
        self._items = items
        self._off = off
        #: segments per UDP GSO send this kernel accepts (UDP_MAX_SEGMENTS)
        self.gso_max_segments = gso_max_segments

    def __getitem__(self, name: str) -> Capability:
        cap = self._items[name]
        if cap is None:
            with _lock:
                _probe_names(self._items, self._off, [n for n in CAPABILITY_NAMES if n in _ON_FIRST_USE])
            cap = self._items[name]
        assert cap is not None  # _probe_names filled it
        return cap

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getattr__(self, name: str) -> bool:
        if name.startswith("_") or name not in self._items:
            raise AttributeError(f"no capability named {name!r}")
        return self[name].available

    def as_dict(self) -> CapabilitiesInfo:
        """Every capability as JSON-ready data (what ``burstio caps --json`` prints)."""
        out: dict[str, CapabilityInfo] = {
            n: {"available": c.available, "detail": c.detail, "forced_off": c.forced_off}
            for n, c in self.items()}
        return {"capabilities": out, "gso_max_segments": self.gso_max_segments}

    def __repr__(self) -> str:
        on = [n for n, c in self.items() if c.available]
        return f"<Capabilities {len(on)}/{len(self)} available>"


def disabled_by_env(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """Names listed in BURSTIO_DISABLE; ValueError names an unknown one."""
    raw = (os.environ if environ is None else environ).get(ENV_DISABLE, "")
    names = {n.strip() for n in raw.split(",") if n.strip()}
    unknown = sorted(names - set(CAPABILITY_NAMES) - set(LATE_CAPABILITIES))
    if unknown:
        raise ValueError(
            f"{ENV_DISABLE} names unknown capabilities {unknown}; known: "
            f"{', '.join((*CAPABILITY_NAMES, *LATE_CAPABILITIES))}"
        )
    return frozenset(names)


def _run_probe(name: str, probe: Probe) -> Capability:
    try:
        ok, detail = probe()
    except OSError as e:  # a probe that cannot even set up says so
        ok, detail = False, f"probe failed: {e}"
    return Capability(name, ok, detail)


def _probe_names(items: dict[str, Capability | None], off: frozenset[str], names: list[str]) -> None:
    """Probe ``names`` (in order) into items."""
    for name in names:
        if items.get(name) is not None:
            continue
        if name in off:
            items[name] = Capability(name, False, f"disabled by {ENV_DISABLE}", forced_off=True)
            continue
        base = _REQUIRES.get(name)
        dep = items.get(base) if base else None
        if dep is not None and not dep.available:
            items[name] = Capability(name, False, f"needs {base}: {dep.detail}", forced_off=dep.forced_off)
            continue
        items[name] = _run_probe(name, _PROBES[name])


def _probe_all(off: frozenset[str]) -> Capabilities:
    _MMSG.clear()
    _URING.clear()
    _XDP.clear()
    _FOUND.clear()
    items: dict[str, Capability | None] = dict.fromkeys(CAPABILITY_NAMES)
    _probe_names(items, off, [n for n in CAPABILITY_NAMES if n not in _ON_FIRST_USE])
    udp_segment = items["udp_segment"]
    gso_max = _FOUND.get("gso_max_segments", 1) if udp_segment is not None and udp_segment.available else 1
    return Capabilities(items, gso_max, off)


_lock = threading.RLock()
_cache: dict[frozenset[str], Capabilities] = {}


def capabilities(refresh: bool = False) -> Capabilities:
    """Probe (once per BURSTIO_DISABLE setting) and return what works here."""
    off = disabled_by_env()
    with _lock:
        if refresh or off not in _cache:
            _cache[off] = _probe_all(off)
        return _cache[off]
