"""BurstSocket's per-datagram options: the local address of each datagram
(pktinfo), its ECN codepoint, don't-fragment and the path MTU, and paced
sends (burstio's pacer thread, or SO_TXTIME where a qdisc can).

Where a datagram goes through it: nowhere; this is the policy part
``BurstSocket`` (src/burstio/_udp.py) inherits: which socket options to set,
whether the kernel or the pacer thread (``_native.Pacer``, or the portable
``_pacing.PortablePacer``) paces, what a paced send reports. The metadata
travels in the batch's arrays (csrc/batch/meta.c) and as cmsgs
(csrc/batch/cmsg.c).
"""
from __future__ import annotations

import errno
import logging
import socket
from typing import TYPE_CHECKING

from . import _native, _txtime
from ._caps import Capabilities
from ._errors import PacedError, Unsent
from ._kernel import (
    IP_MTU,
    IP_MTU_DISCOVER,
    IP_PKTINFO,
    IP_PMTUDISC_DO,
    IP_RECVTOS,
    IP_TOS,
    IPV6_MTU,
    IPV6_MTU_DISCOVER,
    IPV6_PMTUDISC_DO,
    IPV6_RECVPKTINFO,
    IPV6_RECVTCLASS,
    IPV6_TCLASS,
)
from ._pacing import PortablePacer
from ._types import Address, OnError

if TYPE_CHECKING:
    from ._portable import PortableIo

__all__ = ["MetadataOptions"]

log = logging.getLogger("burstio")


class MetadataOptions:
    """The per-datagram options of ``BurstSocket`` (see its docstring)."""

    # BurstSocket's, used here
    _sock: socket.socket
    _io: _native.UdpIo | PortableIo
    _backend: str
    _gso_warned: bool
    # this part's
    _ecn_warned: bool
    _pacer: _native.Pacer | PortablePacer | None
    _pacing: str
    _pacing_why: str
    _unsent: list[Unsent]
    _pktinfo: bool
    _ecn: bool
    _dont_fragment: bool
    _pacer_downgrades: tuple[int, int]

    @property
    def family(self) -> socket.AddressFamily:
        return self._sock.family

    def fileno(self) -> int:
        return self._sock.fileno()

    def getpeername(self) -> Address:
        addr: Address = self._sock.getpeername()
        return addr

    # ---- the options ----------------------------------------------------------

    def _setup_metadata(self, caps: Capabilities, pktinfo: bool, ecn: bool, dont_fragment: bool) -> None:
        """What the constructor asked of pktinfo, ECN and don't-fragment."""
        self._ecn_warned = False
        self._pacer = None
        self._pacing, self._pacing_why = "off", ""
        self._unsent = []
        self._pktinfo = bool(pktinfo) and self._enable_pktinfo(caps)
        self._ecn = bool(ecn) and self._enable_ecn(caps)
        self._io.meta = int(self._pktinfo or self._ecn)
        self._io.ecn_cmsg = int(caps.ecn)  # without ECN, codepoints are counted as unmarked
        self._io.dscp = self._socket_dscp()
        self._dont_fragment = bool(dont_fragment) and self._enable_dont_fragment()

    def _enable_pktinfo(self, caps: Capabilities) -> bool:
        """Receives learn each datagram's destination and interface."""
        if self.family == socket.AF_INET6:  # IPv4 datagrams of a dual-stack socket come as ::ffff:a.b.c.d
            self._sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        else:
            self._sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        return True

    def _enable_ecn(self, caps: Capabilities) -> bool:
        """Receives read each datagram's ECN codepoint, where the probe found ECN."""
        if not caps.ecn:
            return False
        self._sock.setsockopt(socket.IPPROTO_IP, IP_RECVTOS, 1)  # an IPv6 socket's IPv4 datagrams too
        if self.family == socket.AF_INET6:
            self._sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVTCLASS, 1)
        return True

    def _socket_dscp(self) -> int:
        """The DSCP bits the socket sends with (kept when a codepoint is marked)."""
        try:
            if self.family == socket.AF_INET6:
                return max(0, self._sock.getsockopt(socket.IPPROTO_IPV6, IPV6_TCLASS)) & 0xFC
            return self._sock.getsockopt(socket.IPPROTO_IP, IP_TOS) & 0xFC
        except OSError:
            return 0

    def _enable_dont_fragment(self) -> bool:
        """Set DF: IP_PMTUDISC_DO (and IPv6's, where the socket is IPv6: its
        IPv4 destinations take the IPv4 option)."""
        self._sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        if self.family == socket.AF_INET6:
            self._sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO)
        return True

    def _start_pacing(self, caps: Capabilities, queue: int, slack: float) -> None:
        """Honour transmit times: SO_TXTIME where the device's qdisc paces, else our pacer."""
        self._pacing, self._pacing_why = _choose_pacing(self._sock, caps)
        if self._pacing == "so_txtime":
            clock = _txtime.CLOCK_TAI if "etf" in self._pacing_why else _txtime.CLOCK_MONOTONIC
            _txtime.enable(self._sock, clock)
            self._io.txtime, self._io.txtime_offset = 1, _txtime.clock_offset(clock)
            return
        pacer: _native.Pacer | PortablePacer
        pacer = PortablePacer(self._sock, queue) if self._backend == "portable" else _native.Pacer(self._io.fd, queue)
        pacer.gso, pacer.gso_max_segments = self._io.gso, self._io.gso_max_segments
        pacer.ecn_cmsg, pacer.dscp = self._io.ecn_cmsg, self._io.dscp
        pacer.slack_ns = round(slack * 1e9)
        self._pacer = pacer
        self._pacer_downgrades = (0, 0)

    # ---- paced sends -------------------------------------------------------

    def _send_paced(self, batch: _native.PacketBatch, start: int = 0, count: int | None = None,
                    *, on_error: OnError = "raise") -> int:
        """send_batch on a paced socket: queue for the pacer (see ``paced``)."""
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        pacer = self._pacer
        assert pacer is not None  # bound only when pacing
        n = pacer.queue(batch, start, count)
        self._note_pacer_downgrades(pacer)
        return n

    def _note_pacer_downgrades(self, pacer: _native.Pacer | PortablePacer) -> None:
        """Log once what the pacer thread dropped (it cannot call Python)."""
        c = pacer.counters()
        now = (c["gso_downgrades"], c["ecn_downgrades"])
        if now == self._pacer_downgrades:
            return
        if now[0] > self._pacer_downgrades[0] and not self._gso_warned:
            self._gso_warned = True
            log.warning("UDP GSO refused on fd %d by paced sends; pacing without it from now on", self.fileno())
        if now[1] > self._pacer_downgrades[1] and not self._ecn_warned:
            self._ecn_warned = True
            log.warning("the kernel refused the ECN codepoint cmsg on fd %d; pacing without ECN from now on",
                        self.fileno())
        self._pacer_downgrades = now

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every paced datagram has been sent (or refused: see
        ``paced_errors``); False if ``timeout`` seconds passed first. True at
        once on a socket that does not pace with the pacer thread."""
        if self._pacer is None:
            return True
        done = self._pacer.flush(timeout)
        self._note_pacer_downgrades(self._pacer)
        return done

    def paced_errors(self) -> list[PacedError]:
        """The paced datagrams the kernel refused since the last call, in
        order: sequence number, errno, destination, and for EMSGSIZE the path
        MTU (see ``path_mtu``)."""
        if self._pacer is None:
            return []
        return [PacedError(seq, err, addr, self._mtu_or_none(addr) if err == errno.EMSGSIZE else None)
                for seq, err, addr in self._pacer.take_errors()]

    @property
    def next_sequence(self) -> int:
        """The sequence number the next paced datagram gets: datagram k of a
        paced ``send_batch(batch, start)`` is ``next_sequence`` (before the
        call) + k - start. 0 when not paced by the pacer thread."""
        return self._pacer.next_sequence if self._pacer is not None else 0

    @property
    def pacing(self) -> str:
        """"off", "pacer" (burstio's sender thread) or "so_txtime" (the kernel's qdisc)."""
        return self._pacing

    @property
    def pacer_fd(self) -> int | None:
        """For an event loop: an eventfd of the pacer thread's, readable
        when it recorded a refusal (``paced_errors``) or, while
        ``pacer_want_room(True)``, after every round of sends (room freed).
        Read it (8 bytes) to re-arm. None when not paced by the pacer thread."""
        return self._pacer.note_fd if self._pacer is not None else None

    def pacer_want_room(self, on: bool) -> None:
        """Make ``pacer_fd`` readable after every round of sends (an event
        loop waits for room in a full pacer), or stop."""
        if self._pacer is not None:
            self._pacer.want_room = int(bool(on))

    @property
    def pacer_pending(self) -> int:
        """Paced datagrams queued and not yet sent (0 when not paced)."""
        return self._pacer.pending if self._pacer is not None else 0

    @property
    def unsent(self) -> list[Unsent]:
        """What ``close()`` found still waiting in the pacer (see ``close``)."""
        return list(self._unsent)

    # ---- path MTU ----------------------------------------------------------

    def path_mtu(self, addr: Address | None = None) -> int:
        """The path MTU the kernel knows towards ``addr`` (None: the
        connected peer), from IP_MTU/IPV6_MTU: on the socket itself when it
        is connected, else on a throw-away socket connected to ``addr`` (an
        unconnected socket has no IP_MTU: ENOTCONN). OSError if neither."""
        if addr is None:
            v6 = self.family == socket.AF_INET6 and not _is_v4(self.getpeername()[0])
            return int(self._sock.getsockopt(*((socket.IPPROTO_IPV6, IPV6_MTU) if v6 else (socket.IPPROTO_IP, IP_MTU))))
        v4 = _is_v4(addr[0])
        host = addr[0].rsplit(":", 1)[-1] if v4 else addr[0]
        # in the socket's own network namespace: its routes are the ones that count
        with _txtime.netns_socket(self._sock, socket.AF_INET if v4 else socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.connect((host, addr[1]) if v4 else (host, *addr[1:]))
            return int(probe.getsockopt(*((socket.IPPROTO_IP, IP_MTU) if v4 else (socket.IPPROTO_IPV6, IPV6_MTU))))

    def _mtu_or_none(self, addr: Address | None) -> int | None:
        try:
            return self.path_mtu(addr)
        except OSError:
            return None

    @property
    def pktinfo(self) -> bool:
        """Whether receives fill each datagram's local address and interface."""
        return self._pktinfo

    @property
    def ecn(self) -> bool:
        """Whether receives read each datagram's ECN codepoint."""
        return self._ecn

    @property
    def ecn_marking(self) -> bool:
        """Whether sends mark the codepoints of batch.ecn (False where the
        probe found no ECN, or after the kernel refused the cmsg)."""
        return bool((self._pacer or self._io).ecn_cmsg)

    @property
    def dont_fragment(self) -> bool:
        """Whether datagrams go with the don't-fragment bit (EMSGSIZE past the path MTU)."""
        return self._dont_fragment


def _require_pktinfo(caps: Capabilities, family: int) -> None:
    name = "ipv6_pktinfo" if family == socket.AF_INET6 else "ip_pktinfo"
    if not caps[name].available:
        raise OSError(errno.EOPNOTSUPP, f"pktinfo needs {name}: {caps[name].detail}")


def _is_v4(host: str) -> bool:
    return ":" not in host or (host.lower().startswith("::ffff:") and "." in host)


def _choose_pacing(sock: socket.socket, caps: Capabilities) -> tuple[str, str]:
    """"so_txtime" where the kernel can pace this socket (SO_TXTIME works,
    and the device its route leaves by has an fq or etf qdisc), else
    "pacer"; and why."""
    if not caps.so_txtime:
        return "pacer", caps["so_txtime"].detail
    if not caps.txtime_qdisc:
        return "pacer", caps["txtime_qdisc"].detail
    clock, why = _txtime.device_pacing(sock)
    return ("pacer" if clock is None else "so_txtime"), why
