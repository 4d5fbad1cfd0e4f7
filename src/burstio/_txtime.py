"""SO_TXTIME: whether the kernel can pace a socket's datagrams itself.

With SO_TXTIME set on a socket, each datagram may carry its transmit time
(an SCM_TXTIME cmsg), and a queueing discipline that honours it -- ``fq``
(CLOCK_MONOTONIC) or ``etf`` (its own clock, usually CLOCK_TAI) -- releases
it then, with no wake-up of the sender. Any other qdisc ignores the time and
sends at once. So burstio uses SO_TXTIME only for a connected socket whose
route leaves through a device with fq or etf, and its own pacer thread
(``_native.Pacer``) everywhere else.

Where a datagram goes through it: nowhere; this reads the qdiscs and routes
(rtnetlink, no privileges needed) and sets the option. The cmsg itself is
written by csrc/batch/cmsg.c.
"""
from __future__ import annotations

import contextlib
import fcntl
import gzip
import os
import socket
import struct
import time

from . import _native
from ._kernel import CLONE_NEWNET, SIOCGSKNS, SO_TXTIME

__all__ = ["qdisc_kinds", "egress_ifindex", "device_pacing", "probe_qdisc", "probe_so_txtime",
           "enable", "netns_socket", "TXTIME_QDISCS", "CLOCK_MONOTONIC", "CLOCK_TAI"]

#: qdiscs that release a datagram at its SCM_TXTIME
TXTIME_QDISCS = ("fq", "etf")
CLOCK_MONOTONIC = 1
CLOCK_TAI = 11
_SOCK_TXTIME = struct.Struct("iI")  # struct sock_txtime: clockid, flags
# rtnetlink (linux/rtnetlink.h, linux/netlink.h, linux/pkt_sched.h)
_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_TCMSG = struct.Struct("=BxxxiIII")  # family, ifindex, handle, parent, info
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTA = struct.Struct("=HH")
_NLMSG_ERROR, _NLMSG_DONE, _RTM_NEWROUTE, _RTM_GETROUTE, _RTM_NEWQDISC, _RTM_GETQDISC = 2, 3, 24, 26, 36, 38
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_TCA_KIND, _TCA_OPTIONS, _TCA_ETF_PARMS, _RTA_DST, _RTA_OIF = 1, 2, 1, 1, 4


def netns_socket(of: socket.socket | None, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A new socket in the network namespace of socket ``of`` (SIOCGSKNS;
    None: this thread's), for asking the kernel about that namespace's
    routes, MTUs and qdiscs. Without the privilege to enter it, OSError."""
    if of is None:
        return socket.socket(family, kind, proto)
    try:
        ns = fcntl.ioctl(of.fileno(), SIOCGSKNS)
    except OSError:  # a kernel without SIOCGSKNS: this thread's namespace
        return socket.socket(family, kind, proto)
    try:
        if os.fstat(ns).st_ino == os.stat("/proc/thread-self/ns/net").st_ino:
            return socket.socket(family, kind, proto)
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            _native.setns(ns, CLONE_NEWNET)
            try:
                return socket.socket(family, kind, proto)
            finally:
                _native.setns(home, CLONE_NEWNET)
        finally:
            os.close(home)
    finally:
        os.close(ns)


def _attrs(data: bytes, off: int) -> dict[int, bytes]:
    out = {}
    while off + _RTA.size <= len(data):
        length, kind = _RTA.unpack_from(data, off)
        if length < _RTA.size or off + length > len(data):
            break
        out[kind & 0x3FFF] = data[off + _RTA.size:off + length]
        off += (length + 3) & ~3
    return out


def _netlink(request_type: int, flags: int, body: bytes,
             netns_of: socket.socket | None = None) -> list[tuple[int, bytes]]:
    """One rtnetlink request (in the namespace of socket ``netns_of``); its
    replies as (type, payload). OSError on an error reply."""
    with netns_socket(netns_of, socket.AF_NETLINK, socket.SOCK_RAW, 0) as s:
        s.settimeout(2.0)
        s.send(_NLMSG.pack(_NLMSG.size + len(body), request_type, _NLM_F_REQUEST | flags, 1, 0) + body)
        out: list[tuple[int, bytes]] = []
        while True:
            data = s.recv(1 << 16)
            off = 0
            while off + _NLMSG.size <= len(data):
                length, kind, _f, _seq, _pid = _NLMSG.unpack_from(data, off)
                if length < _NLMSG.size:
                    return out
                payload = data[off + _NLMSG.size:off + length]
                off += (length + 3) & ~3
                if kind == _NLMSG_DONE:
                    return out
                if kind == _NLMSG_ERROR:
                    err = -struct.unpack_from("=i", payload)[0]
                    if err:
                        raise OSError(err, os.strerror(err))
                    return out
                out.append((kind, payload))
            if not flags & _NLM_F_DUMP:
                return out


def qdisc_kinds(netns_of: socket.socket | None = None) -> dict[str, list[tuple[str, int | None]]]:
    """Every device's qdiscs: {device: [(kind, clockid or None), ...]}
    (clockid: an etf qdisc's clock), in the namespace of socket ``netns_of``."""
    out: dict[str, list[tuple[str, int | None]]] = {}
    body = _TCMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    for kind, payload in _netlink(_RTM_GETQDISC, _NLM_F_DUMP, body, netns_of):
        if kind != _RTM_NEWQDISC or len(payload) < _TCMSG.size:
            continue
        ifindex = _TCMSG.unpack_from(payload)[1]
        attrs = _attrs(payload, _TCMSG.size)
        name = attrs.get(_TCA_KIND, b"").rstrip(b"\0").decode(errors="replace")
        clock = None
        if name == "etf":
            parms = _attrs(attrs.get(_TCA_OPTIONS, b""), 0).get(_TCA_ETF_PARMS, b"")
            clock = struct.unpack_from("=ii", parms)[1] if len(parms) >= 8 else None
        out.setdefault(f"#{ifindex}", []).append((name, clock))
    names = _device_names(netns_of)
    return {names.get(int(k[1:]), k): v for k, v in out.items()}


def _device_names(netns_of: socket.socket | None) -> dict[int, str]:
    """ifindex -> name in that namespace (RTM_GETLINK)."""
    out = {}
    for kind, payload in _netlink(18, _NLM_F_DUMP, struct.pack("=BxHiII", 0, 0, 0, 0, 0), netns_of):
        if kind == 16 and len(payload) >= 16:  # RTM_NEWLINK: struct ifinfomsg, IFLA_IFNAME = 3
            name = _attrs(payload, 16).get(3, b"").rstrip(b"\0").decode(errors="replace")
            out[struct.unpack_from("=i", payload, 4)[0]] = name
    return out


def egress_ifindex(peer: tuple[str, int] | tuple[str, int, int, int],
                   netns_of: socket.socket | None = None) -> int | None:
    """The interface the route to ``peer`` leaves by (RTM_GETROUTE), or None."""
    host = peer[0]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    raw = socket.inet_pton(family, host)
    if family == socket.AF_INET6 and raw[:12] == b"\0" * 10 + b"\xff\xff":
        family, raw = socket.AF_INET, raw[12:]
    rta = _RTA.pack(_RTA.size + len(raw), _RTA_DST) + raw
    body = _RTMSG.pack(family, len(raw) * 8, 0, 0, 0, 0, 0, 0, 0) + rta
    for kind, payload in _netlink(_RTM_GETROUTE, 0, body, netns_of):
        if kind == _RTM_NEWROUTE:
            oif = _attrs(payload, _RTMSG.size).get(_RTA_OIF)
            return struct.unpack("=I", oif[:4])[0] if oif and len(oif) >= 4 else None
    return None


def _kernel_lacks() -> str:
    """What the kernel's configuration says about fq and etf, if readable."""
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            config = f.read()
    except OSError:
        return ""
    missing = [opt for opt in ("CONFIG_NET_SCH_FQ", "CONFIG_NET_SCH_ETF")
               if f"{opt}=y" not in config and f"{opt}=m" not in config]
    return f"; this kernel is built without them ({' and '.join(missing)} unset)" if len(missing) == 2 else ""


def probe_qdisc() -> tuple[bool, str]:
    """The txtime_qdisc capability: a device here has an fq or etf qdisc."""
    try:
        kinds = qdisc_kinds()
    except OSError as e:
        return False, f"rtnetlink qdisc dump: {e}"
    pacing = sorted(dev for dev, qs in kinds.items() if any(k in TXTIME_QDISCS for k, _c in qs))
    if pacing:
        return True, f"fq or etf qdisc on {', '.join(pacing)}"
    seen = ", ".join(f"{dev}: {'/'.join(k for k, _c in qs)}" for dev, qs in sorted(kinds.items()))
    return False, f"no fq or etf qdisc on any device ({seen}){_kernel_lacks()}"


def probe_so_txtime() -> tuple[bool, str]:
    """The so_txtime capability: the option is accepted and a datagram
    carrying an SCM_TXTIME cmsg is sent."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        try:
            enable(tx, CLOCK_MONOTONIC)
            tx.sendmsg([b"t"], [(socket.SOL_SOCKET, SO_TXTIME, struct.pack("=Q", time.monotonic_ns()))], 0,
                       rx.getsockname())
        except OSError as e:
            return False, f"SO_TXTIME: {e}"
    return True, "setsockopt(SO_TXTIME) accepted and an SCM_TXTIME send went out"


def enable(sock: socket.socket, clockid: int = CLOCK_MONOTONIC) -> None:
    """Set SO_TXTIME on ``sock`` with ``clockid`` (fq: CLOCK_MONOTONIC; etf:
    its own clock)."""
    sock.setsockopt(socket.SOL_SOCKET, SO_TXTIME, _SOCK_TXTIME.pack(clockid, 0))


def device_pacing(sock: socket.socket) -> tuple[int | None, str]:
    """For a connected socket: the clock to give SO_TXTIME if the device its
    route leaves by has an fq or etf qdisc, else None; and why."""
    try:
        peer = sock.getpeername()
    except OSError:
        return None, "the socket is not connected (its datagrams may leave by any device)"
    with contextlib.suppress(OSError):
        ifindex = egress_ifindex(peer, sock)
        if ifindex is None:
            return None, f"no route to {peer[0]}"
        dev = _device_names(sock).get(ifindex, f"#{ifindex}")
        qdiscs = qdisc_kinds(sock).get(dev, [])
        for kind, clock in qdiscs:
            if kind in TXTIME_QDISCS:
                return (CLOCK_MONOTONIC if kind == "fq" else clock or CLOCK_TAI), f"{kind} qdisc on {dev}"
        return None, f"no fq or etf qdisc on {dev} ({'/'.join(k for k, _c in qdiscs) or 'none'})"
    return None, "rtnetlink unavailable"


def clock_offset(clockid: int) -> int:
    """ns to add to a CLOCK_MONOTONIC time for ``clockid``."""
    if clockid == CLOCK_MONOTONIC:
        return 0
    return time.clock_gettime_ns(clockid) - time.monotonic_ns()
