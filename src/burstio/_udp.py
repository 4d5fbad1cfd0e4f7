"""BurstSocket: a UDP socket that moves datagrams a batch at a time.

Where a datagram goes: ``recv_batch`` -> ``_native.UdpIo.recv_batch``
(recvmmsg, GRO split, in C with the GIL released) -> the caller's
``PacketBatch``. ``send_batch`` -> ``_native.UdpIo.send_batch`` (runs of equal
datagrams to one destination become one UDP_SEGMENT send, the rest go
through sendmmsg); only when a send stops early does it come back here
(``_send_recover``) for a decision.

This module is policy: which mechanism to use (from the capability probe),
timeouts, what to do when the kernel refuses GSO, and error wording. The C
side does the syscalls and the memory.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import weakref
from typing import TYPE_CHECKING, Any

from . import _native
from ._busy_policy import (
    BUDGET_DEFAULT,
    SOCKET_MECHANISMS,
    BusyPollChoice,
    check_busy_poll,
    choose_for_socket,
    reasons,
    set_socket_options,
)
from ._caps import Capabilities, capabilities
from ._checks import check_int, check_optional_int, check_seconds, check_socket, closed_socket_error
from ._errors import SendError, Unsent
from ._kernel import (
    SK_MEMINFO_DROPS,
    SK_MEMINFO_VARS,
    SO_BUSY_POLL,
    SO_MEMINFO,
    SO_RCVBUFFORCE,
    SO_SNDBUFFORCE,
    SO_TIMESTAMPNS,
    SOL_UDP,
    UDP_GRO,
)
from ._pacing import COUNTER_NAMES as PACER_COUNTERS
from ._portable import PortableIo
from ._types import Address, OnError, RecoverPolicy
from ._udp_meta import MetadataOptions, _require_pktinfo

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

    from .napi.busypoll import BusyPollEpoll

__all__ = ["BurstSocket", "BACKENDS"]

log = logging.getLogger("burstio")

BACKENDS = ("auto", "mmsg", "msg", "portable")
#: one-datagram receives in a row after which recv asks for one at a time
SINGLE_AFTER = 16
#: at most this many datagrams go in one GSO send (the kernel may take more)
GSO_SEGMENTS = 64
_GSO_REFUSALS = (errno.EIO, errno.EINVAL)
#: datagrams a paced socket's queue holds by default
PACER_QUEUE = 4096
#: seconds: a release of the pacer thread sends every datagram due within
#: this of it, so it wakes at most about once per this (see BurstSocket).
#: 1 ms as QUIC's pacers: Chromium's kAlarmGranularity (a packet due within
#: 1 ms goes now) and quic-go's MinPacingDelay; asyncio's timers, the
#: loop's epoll_wait, have 1 ms resolution too
PACER_SLACK = 0.001
#: what pacing names: "off", burstio's pacer thread, or the kernel (SO_TXTIME)
PACING = ("off", "pacer", "so_txtime")


class BurstSocket(MetadataOptions):
    """A UDP socket (IPv4 or IPv6) with batched receive and send.

    ``BurstSocket(sock=None, *, family=AF_INET, gso=True, gro=False,
    timestamps=False, backend="auto", rcvbuf=None, sndbuf=None,
    pktinfo=False, ecn=False, dont_fragment=False, paced=False,
    pacer_queue=4096, pacer_slack=0.001)``

    Wraps ``sock`` (and takes ownership: closing the BurstSocket closes it)
    or makes a new UDP socket. ``gso``/``gro`` ask for UDP segmentation
    offload on send / receive coalescing; each is used only where the
    capability probe found it works, and GSO is switched off for this socket
    if the kernel later refuses it. ``backend`` picks the syscalls: "auto"
    (recvmmsg/sendmmsg where available), "mmsg" (require them), "msg" (one
    recvmsg/sendmsg per datagram) or "portable" (pure Python, the oracle).

    Per-datagram metadata (the batch's ``local_addrs``/``ifindexes``,
    ``ecn`` and ``txtimes`` arrays; made on first use): ``pktinfo`` fills
    each received datagram's local address (the destination it arrived at)
    and interface, so that a wildcard-bound server answers from it
    (OSError where the kernel lacks IP_PKTINFO/IPV6_PKTINFO); ``ecn`` reads
    each received datagram's ECN codepoint (off where the probe found no
    ECN). Sends always honour the arrays: an entry's local address is its
    source, its codepoint is marked (unless the kernel refuses the cmsg:
    then ECN is dropped for this socket, counted and logged once), and its
    transmit time is honoured on a ``paced`` socket: by the kernel
    (SO_TXTIME) where the device's qdisc can, else by burstio's pacer thread
    (``pacer_queue`` datagrams wait at most). Each wake-up of the pacer
    thread releases every datagram due within half of ``pacer_slack``
    seconds (default 1 ms, QUIC's pacers' granularity) of it; a flow's
    first release goes at its first datagram's time, later ones centred on
    the datagrams they carry: one wake-up per ``pacer_slack`` while
    datagrams follow each other closely (a wake-up costs CPU: 15-30 us in
    the KVM guest we measured, where arming and taking a timer are VM
    exits), and each datagram within half of ``pacer_slack`` of its time,
    early or late (plus the wake-up latency); in a dense flow (32 datagrams
    due within half the slack) a release spans half the slack: a wake-up
    per half slack, each datagram within a quarter of it; 0 wakes for every
    transmit time. ``dont_fragment`` sets the don't-fragment bit
    (IP_MTU_DISCOVER=IP_PMTUDISC_DO, and IPv6's): a
    datagram larger than the path MTU fails with EMSGSIZE, and
    ``SendError.mtu`` / ``path_mtu()`` give the MTU.
    """

    def __init__(self, sock: socket.socket | None = None, *, family: int = socket.AF_INET,
                 gso: bool = True, gro: bool = False, timestamps: bool = False,
                 backend: str = "auto", rcvbuf: int | None = None, sndbuf: int | None = None,
                 pktinfo: bool = False, ecn: bool = False, dont_fragment: bool = False,
                 paced: bool = False, pacer_queue: int = PACER_QUEUE, pacer_slack: float = PACER_SLACK):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
        check_optional_int("rcvbuf", rcvbuf, 1, 2**31 - 1)
        check_optional_int("sndbuf", sndbuf, 1, 2**31 - 1)
        check_int("pacer_queue", pacer_queue, 1, 1 << 20)
        check_seconds("pacer_slack", pacer_slack, 0.0, 1.0)
        if sock is None:
            if family not in (socket.AF_INET, socket.AF_INET6):
                raise ValueError(f"family must be AF_INET or AF_INET6, got {family!r}")
            sock = socket.socket(family, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        else:
            check_socket(sock, "BurstSocket")
        self._sock = sock
        caps = capabilities()
        if pktinfo:
            _require_pktinfo(caps, sock.family)  # before anything is made
        self._io = self._make_io(sock, backend, caps)
        self._backend = "portable" if backend == "portable" else ("mmsg" if self._io.recv_mmsg else "msg")
        self._io.gso = int(bool(gso) and caps.udp_segment)
        self._io.gso_max_segments = max(1, min(GSO_SEGMENTS, caps.gso_max_segments))
        self._io.gro_max_segments = max(64, caps.gso_max_segments)
        if gro and caps.udp_gro:
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
            self._io.gro = 1
        self._io.single_after = SINGLE_AFTER
        self._drops_base = self._kernel_drops()
        self._timestamps = bool(timestamps) and caps.so_timestampns
        if self._timestamps:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        if rcvbuf is not None:
            set_buffer_size(sock, socket.SO_RCVBUF, rcvbuf)
        if sndbuf is not None:
            set_buffer_size(sock, socket.SO_SNDBUF, sndbuf)
        self._gso_warned = False
        self._setup_metadata(caps, pktinfo, ecn, dont_fragment)
        # while busy polling: what busy_poll() chose, and its epoll instance ("epoll")
        self._busy_poll: tuple[BusyPollChoice, BusyPollEpoll | None] | None = None
        self._busy_params: tuple[int, int, bool, str] = (0, BUDGET_DEFAULT, False, "auto")  # what it was last asked
        # The hot paths are bound straight to the backend: no Python frame
        # between the caller and the C calls (see recv_batch/send_batch
        # below). The backend calls _send_recover only when a send stops early.
        self.recv_batch = self._io.recv_batch  # type: ignore[method-assign]  # the C method, no Python frame
        self.send_batch = self._io.send_batch  # type: ignore[method-assign]  # the C method, no Python frame
        self._send = self._io.send_raw
        self._io.recover = _recover_hook(weakref.ref(self))
        if paced:
            self._start_pacing(caps, pacer_queue, pacer_slack)
            if self._pacer is not None:
                self.send_batch = self._send_paced  # type: ignore[method-assign]  # a paced socket queues

    @staticmethod
    def _make_io(sock: socket.socket, backend: str, caps: Capabilities) -> _native.UdpIo | PortableIo:
        if backend == "portable":
            pio = PortableIo(sock)
            pio.block_rx = True  # as the C backends below
            return pio
        if backend == "mmsg" and not (caps.recvmmsg and caps.sendmmsg):
            why = caps["recvmmsg"].detail if not caps.recvmmsg else caps["sendmmsg"].detail
            raise OSError(errno.EOPNOTSUPP, f"backend 'mmsg' needs recvmmsg and sendmmsg: {why}")
        io = _native.UdpIo(sock.fileno())
        io.recv_mmsg = int(backend != "msg" and caps.recvmmsg)
        io.send_mmsg = int(backend != "msg" and caps.sendmmsg)
        # a receive without a deadline blocks in the kernel's receive itself:
        # one system call per wake-up, as a blocking recvfrom() makes (close()
        # from another thread ends it by shutting the receive side down)
        io.block_rx = True
        return io

    @classmethod
    def bind(cls, addr: Address, **kwargs: Any) -> BurstSocket:
        """Make a socket of the address's family, bound to ``addr``."""
        family = socket.AF_INET6 if ":" in str(addr[0]) else socket.AF_INET
        self = cls(family=kwargs.pop("family", family), **kwargs)
        try:
            self._sock.bind(addr)
        except BaseException:
            self.close()
            raise
        return self

    # ---- the batch paths ------------------------------------------------

    def recv_batch(self, batch: _native.PacketBatch, timeout: float | None = None) -> int:
        """Fill ``batch`` with the datagrams ready now; return how many.

        Waits up to ``timeout`` seconds (None: forever, 0: not at all) for the
        first datagram, then takes what else is queued without waiting
        (MSG_WAITFORONE). Returns 0 on timeout. The batch's previous contents
        are replaced. Without a timeout, on a blocking socket, the wait is the
        kernel's receive itself (one system call per wake-up, as a blocking
        ``recvfrom`` makes; see close() for how another thread ends it); with
        one, ``poll()`` on the socket and a wake-up eventfd, then the receive.
        With GRO on, coalesced datagrams come back as separate entries
        pointing into their slot.

        (Each instance binds this name to its backend's ``recv_batch``,
        which has exactly this contract; this method documents it.)
        """
        return self._io.recv_batch(batch, timeout)

    def send_batch(self, batch: _native.PacketBatch, start: int = 0, count: int | None = None,
                   *, on_error: OnError = "raise") -> int:
        """Send entries ``[start, start + count)`` of ``batch``; return how many went.

        Each entry goes to its own address (None: the connected peer). Runs
        of equal-size datagrams to one destination are sent with UDP GSO.
        A datagram the kernel refuses raises ``SendError`` (with ``index`` and
        ``sent``; nothing after it was attempted) or, with
        ``on_error="skip"``, is flagged in the batch (``batch.send_errors()``)
        and the rest are sent. A non-blocking socket with a full buffer
        returns the count sent so far, or raises BlockingIOError if none.

        (Each instance binds this name to its backend's ``send_batch``, which
        calls ``_send_recover`` below when a send stops early.)
        """
        return self._io.send_batch(batch, start, count, on_error=on_error)

    def _send_recover(self, batch: _native.PacketBatch, start: int, done: int, end: int,
                      skip: int, err: int, index: int, gso: int) -> int:
        """The send stopped at entry ``done`` with ``err`` (entry ``index``;
        ``gso``: in a GSO send): sort out a GSO or ECN refusal or a GSO run
        too big for the path, or report. What it reads is this call's own, and
        what it resends without GSO or codepoints goes so for its own call
        only: another thread sending on the socket meanwhile has its own
        results and the socket's settings."""
        while True:
            if not err:
                return done - start
            if gso and err == errno.EMSGSIZE and skip:
                # a GSO run too big for the path: send the rest one datagram
                # at a time, so that each too big is flagged and no other
                n, err, index, gso = self._send(batch, done, end - done, on_error="skip", gso=False)
                done += n
                continue
            gso_refused = bool(gso) and err in _GSO_REFUSALS
            if not (gso_refused or self._ecn_maybe_refused(batch, done, err)):
                return self._send_stopped(batch, err, start, done, index)
            # EIO/EINVAL on a GSO send (GSO refused here, or a bad datagram?),
            # or EINVAL on one carrying a codepoint (the cmsg refused?): send
            # the datagram alone, then without its codepoint, to tell which
            went, err_alone, index_alone = self._send_alone(batch, done)
            if went:
                if gso_refused and went == "as is":
                    self._gso_refused(err)  # GSO stays off for this socket
                done += 1
                n, err, index, gso = self._send(batch, done, end - done, on_error="skip" if skip else "raise")
                done += n
                continue
            err, index = err_alone, index_alone
            if not skip or err in (errno.EAGAIN, errno.EWOULDBLOCK):
                return self._send_stopped(batch, err, start, done, index)
            # a bad datagram, and more may follow: flag them all in one walk
            # without GSO for the rest of this call
            batch._mark_error(done, err)
            self._io.count("tx_errors", 1)
            done += 1
            n, err, index, gso = self._send(batch, done, end - done, on_error="skip", gso=False)
            done += n

    def _ecn_maybe_refused(self, batch: _native.PacketBatch, i: int, err: int) -> bool:
        """EINVAL on a datagram sent with its ECN codepoint: the kernel may
        refuse the cmsg (quinn-udp meets this on old kernels)."""
        return err == errno.EINVAL and bool(self._io.ecn_cmsg) and batch.has_metadata and bool(batch.ecn[i])

    def _send_alone(self, batch: _native.PacketBatch, i: int) -> tuple[str, int, int]:
        """Send entry i by itself, without GSO: ("as is", 0, -1); or, if the
        kernel refuses its codepoint, ("without ECN", 0, -1), and ECN stays off
        for this socket; ("", errno, index) if it fails anyway."""
        n, err, index, _gso = self._send(batch, i, 1, gso=False)
        if n == 1:
            return "as is", 0, -1
        if not self._ecn_maybe_refused(batch, i, err):
            return "", err, index
        n, err, index, _gso = self._send(batch, i, 1, gso=False, ecn=False)
        if n == 1:
            self._ecn_refused(errno.EINVAL)
            return "without ECN", 0, -1
        return "", err, index

    def _ecn_refused(self, err: int) -> None:
        """The kernel refused a codepoint cmsg and took the datagram without
        it: send without codepoints from now on (counted in tx_ecn_unmarked)."""
        self._io.ecn_cmsg = 0
        self._io.count("ecn_downgrades", 1)
        if not self._ecn_warned:
            self._ecn_warned = True
            log.warning("the kernel refused the ECN codepoint cmsg on fd %d (%s); sending without ECN "
                        "from now on", self.fileno(), errno.errorcode.get(err, err))

    def send_segments(self, buffer: ReadableBuffer, segment_size: int, addr: Address | None = None) -> int:
        """Send ``buffer`` cut into datagrams of ``segment_size`` bytes (the
        last may be shorter) to ``addr``; return the datagram count.

        Uses UDP GSO (one syscall per up to 64 segments) where available.
        """
        if isinstance(segment_size, bool) or not isinstance(segment_size, int):
            check_int("segment_size", segment_size, 1, _native.MAX_UDP_PAYLOAD)  # raises the TypeError
        if self._pacer is not None:
            raise ValueError("send_segments does not pace: on a paced socket, send a batch (send_batch) "
                             "with transmit times")
        io = self._io
        sent = 0
        while True:
            n, err, gso = io.send_segments(buffer, segment_size, addr, sent)
            sent += n
            if not err:
                return sent
            if gso and err in _GSO_REFUSALS:
                # GSO refused, or a destination the kernel refuses anyway?
                one = memoryview(buffer).cast("B")[sent * segment_size:(sent + 1) * segment_size]
                n, err1, _gso = io.send_segments(one, segment_size, addr, 0, False)
                if n == 1:
                    self._gso_refused(err)
                    sent += 1
                    continue
                err = err1
            if err in (errno.EAGAIN, errno.EWOULDBLOCK):
                if sent:
                    return sent
                raise BlockingIOError(err, "socket send buffer is full; nothing was sent")
            mtu = self._mtu_or_none(addr) if err == errno.EMSGSIZE else None
            raise SendError(err, sent, sent, f"segment {sent}", mtu)

    def _gso_refused(self, err: int) -> None:
        """The kernel refused a GSO send that it takes without GSO: stop
        using GSO on this socket."""
        self._io.gso = 0
        self._io.count("gso_downgrades", 1)
        if not self._gso_warned:
            self._gso_warned = True
            log.warning("UDP GSO refused on fd %d (%s); sending without it from now on",
                        self.fileno(), errno.errorcode.get(err, err))

    def _send_stopped(self, batch: _native.PacketBatch, err: int, start: int, done: int, index: int) -> int:
        if err in (errno.EAGAIN, errno.EWOULDBLOCK):
            if done > start:
                return done - start
            raise BlockingIOError(err, "socket send buffer is full; nothing was sent")
        mtu = self._mtu_or_none(batch.addr(index)) if err == errno.EMSGSIZE else None
        raise SendError(err, index, done - start, self._describe_failure(batch, err, index), mtu)

    def _describe_failure(self, batch: _native.PacketBatch, err: int, index: int) -> str:
        addr = batch.addr(index)
        what = f"datagram {index}"
        if addr is None:
            return f"{what}, to the connected peer"
        v6 = len(addr) == 4
        if err == errno.EAFNOSUPPORT or (v6 and self.family == socket.AF_INET):
            fam = "an IPv6" if v6 else "an IPv4"
            return f"{what} is addressed to {addr}, {fam} address, but the socket is {self.family.name}"
        return f"{what}, to {addr}"

    # ---- plain socket business ------------------------------------------

    @property
    def sock(self) -> socket.socket:
        """The wrapped socket.socket (owned by this BurstSocket)."""
        return self._sock

    @property
    def family(self) -> socket.AddressFamily:
        """The wrapped socket's address family (AF_INET or AF_INET6)."""
        return self._sock.family

    @property
    def backend(self) -> str:
        """'mmsg', 'msg' or 'portable': which syscalls move the datagrams."""
        return self._backend

    @property
    def gso(self) -> bool:
        """Whether sends use UDP GSO now (False after a downgrade)."""
        return bool(self._io.gso)

    @property
    def gro(self) -> bool:
        """Whether UDP GRO is on for receives."""
        return bool(self._io.gro)

    @property
    def timestamps(self) -> bool:
        """Whether kernel receive timestamps fill batch.timestamps."""
        return self._timestamps

    @property
    def counters(self) -> dict[str, int]:
        """Snapshot of this socket's counters (docs/burstsocket.md, Counters, names each);
        a paced socket's pacer thread adds to the tx_* ones and counts
        paced_*."""
        c = self._io.counters()
        c["kernel_drops"] = max(0, self._kernel_drops() - self._drops_base)
        paced = self._pacer.counters() if self._pacer is not None else dict.fromkeys(PACER_COUNTERS, 0)
        for name, n in paced.items():
            c[name] = c.get(name, 0) + n
        return c

    def reset_counters(self) -> None:
        """Set every counter (and the pacer thread's, if paced) back to 0."""
        self._io.reset_counters()
        if self._pacer is not None:
            self._pacer.reset_counters()
        self._drops_base = self._kernel_drops()

    def _kernel_drops(self) -> int:
        """Datagrams the kernel dropped for this socket, ever (SO_MEMINFO):
        exact at the moment of asking, unlike SO_RXQ_OVFL, which reports
        drops only with the next datagram that does get queued."""
        try:
            if self._sock.fileno() != -1:
                raw = self._sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * SK_MEMINFO_VARS)
            elif self._io.fd >= 0:  # the caller closed bs.sock: ask through our own descriptor
                with socket.fromfd(self._io.fd, self._sock.family, socket.SOCK_DGRAM) as own:
                    raw = own.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * SK_MEMINFO_VARS)
            else:
                return self._drops_base if hasattr(self, "_drops_base") else 0
        except OSError:
            return 0
        drops: int = struct.unpack(f"{len(raw) // 4}I", raw)[SK_MEMINFO_DROPS]
        return drops

    def describe(self) -> str:
        """One line saying which mechanisms this socket uses."""
        io = self._io
        rx = "recvmmsg" if io.recv_mmsg else "recvmsg"
        tx = "sendmmsg" if io.send_mmsg else "sendmsg"
        if self._backend == "portable":
            rx, tx = "socket.recvmsg_into", "socket.sendmsg"
        gso = f"GSO on ({io.gso_max_segments} segments)" if io.gso else "GSO off"
        line = f"{rx} + {tx}, {gso}, GRO {'on' if io.gro else 'off'}"
        options = [name for name, on in (("pktinfo", self._pktinfo), ("ECN", self._ecn),
                                         ("don't fragment", self._dont_fragment)) if on]
        if options:
            line += ", " + ", ".join(options)
        if self._pacing == "so_txtime":
            line += f", paced by the kernel (SO_TXTIME: {self._pacing_why})"
        elif self._pacing == "pacer":
            slack_ms = self._pacer.slack_ns / 1e6 if self._pacer is not None else 0.0
            line += (f", paced by burstio's pacer thread, pacer_slack {slack_ms:g} ms "
                     f"(SO_TXTIME not used: {self._pacing_why})")
        if self._busy_poll is not None:
            line += ", " + self._busy_poll[0].describe()
        return line

    # ---- busy polling --------------------------------------------------

    def busy_poll(self, usecs: int, budget: int = BUDGET_DEFAULT, prefer: bool = False, *,
                  mechanism: str = "auto") -> str:
        """Make receives busy poll the device for up to ``usecs`` before they
        sleep (0: stop), ``budget`` packets per poll, ``prefer``: prefer busy
        polling to the device's interrupts (SO_PREFER_BUSY_POLL,
        prefer_busy_poll). Returns the mechanism used:

        - "socket": SO_BUSY_POLL (SO_PREFER_BUSY_POLL, SO_BUSY_POLL_BUDGET)
          on the socket; each receive polls the device, and one that finds
          nothing tries again for ``usecs`` (each try polls once); then one
          without a deadline (``timeout=None``) blocks in the receive
          itself, where the kernel polls the device for up to ``usecs`` more
          and then sleeps (close() from another thread wakes it by shutting
          the socket's receive side down, see close()), and one with a
          deadline sleeps in poll(). Either way the datagram is taken by the
          receive that polled it, with no epoll_wait first;
        - "epoll": recv_batch waits in an epoll instance of this socket's own
          with busy-poll parameters (EPIOCSPARAMS, Linux >= 6.9): epoll_wait,
          then the receive;
        - "off": after busy_poll(0).

        ``mechanism="auto"`` takes "socket" (one socket: one system call fewer
        per wake-up),
        or "epoll" where the socket cannot have what was asked
        (SO_PREFER_BUSY_POLL, and SO_BUSY_POLL_BUDGET other than the kernel's
        default 8, need CAP_NET_ADMIN; a kernel without them), and
        ``describe()`` says which and why. An explicit "socket" or "epoll"
        the kernel cannot give raises OSError (PermissionError) naming what
        is missing.

        Busy polling only has a device to poll once the socket's traffic
        came through NAPI (see burstio.napi.busypoll.napi_id); over loopback it
        costs CPU and changes nothing else. A budget over 64 needs
        CAP_NET_ADMIN.
        """
        from .napi.busypoll import set_busy_poll

        check_busy_poll(usecs, budget, prefer, mechanism, SOCKET_MECHANISMS, "BurstSocket",
                        "its receive call (or an epoll instance of its own)")
        if self._io.fd == -1 or self._sock.fileno() == -1:
            raise closed_socket_error()
        caps = capabilities()
        self._stop_busy_poll()
        if usecs == 0:
            return "off"
        self._busy_params = (usecs, budget, prefer, mechanism)
        refused = None
        if caps.so_busy_poll and mechanism != "epoll":
            refused = set_socket_options(self._sock, caps, budget, prefer)
        try:
            mech, why = choose_for_socket(caps, mechanism, refused)
            ep = self._busy_poll_epoll(usecs, budget, prefer) if mech == "epoll" else None
        except OSError as e:
            if mechanism != "auto" or refused is None or not isinstance(e, PermissionError):
                self._reset_socket_options(caps)
                raise
            # the epoll instance refused too (a budget over 64 without CAP_NET_ADMIN)
            mech, why, ep = "socket", f"{reasons(refused)}; {e.strerror}: the socket without it", None
        if ep is None:
            budget = BUDGET_DEFAULT if refused and "budget" in refused else budget
            prefer = prefer and not (refused and "prefer" in refused)
            set_busy_poll(self._sock, usecs)
            self._io.spin_us = usecs  # a receive with a deadline retries this long
        else:
            self._reset_socket_options(caps)
            _BUSY_POLLING.add(self)
        self._busy_poll = (BusyPollChoice(mech, usecs, budget, prefer, mechanism, why), ep)
        if mechanism == "auto" and refused:
            log.info("BurstSocket fd %d: %s", self.fileno(), self._busy_poll[0].describe())
        return mech

    def _busy_poll_epoll(self, usecs: int, budget: int, prefer: bool) -> BusyPollEpoll:
        """An epoll instance of this socket's own with busy-poll parameters,
        for the receive path to wait in."""
        from .napi.busypoll import BusyPollEpoll

        ep = BusyPollEpoll(usecs, budget, prefer)
        try:
            ep.register(self._io.fd)  # the BurstSocket's own descriptor
            self._io.set_wait_fd(ep.fileno())  # C waits in its own dup, with the wake eventfd
        except BaseException:
            ep.close()
            raise
        return ep

    def _reset_socket_options(self, caps: Capabilities) -> None:
        """SO_BUSY_POLL_BUDGET and SO_PREFER_BUSY_POLL back to the kernel's
        defaults (lowering needs no privilege)."""
        set_socket_options(self._sock, caps, BUDGET_DEFAULT, False)

    @property
    def busy_polling(self) -> str:
        """How receives busy poll: "epoll", "socket" or "off" (see busy_poll)."""
        return self._busy_poll[0].mechanism if self._busy_poll else "off"

    def _stop_busy_poll(self, closing: bool = False) -> None:
        state, self._busy_poll = getattr(self, "_busy_poll", None), None
        if state is None:
            return
        choice, ep = state
        _BUSY_POLLING.discard(self)
        if choice.mechanism == "epoll":
            assert ep is not None
            if not closing:  # (a closing backend lets go of its own dup)
                self._io.set_wait_fd(-1)
            ep.close()  # the receive path waits in its own dup: safe under a waiter
        else:
            self._io.spin_us = 0
            if self._sock.fileno() != -1 and not closing:
                self._sock.setsockopt(socket.SOL_SOCKET, SO_BUSY_POLL, 0)
                self._reset_socket_options(capabilities())

    def fileno(self) -> int:
        """The wrapped socket's descriptor (burstio receives and sends on a
        dup of its own, so closing this number leaves burstio unaffected)."""
        return self._sock.fileno()

    def getsockname(self) -> Address:
        """The socket's local address, as socket.getsockname()."""
        addr: Address = self._sock.getsockname()
        return addr

    def getpeername(self) -> Address:
        """The connected peer's address, as socket.getpeername() (OSError ENOTCONN if none)."""
        addr: Address = self._sock.getpeername()
        return addr

    def connect(self, addr: Address) -> None:
        """Connect the socket to addr, as socket.connect(): entries without an
        address then go there, and only its datagrams are received."""
        self._sock.connect(addr)

    def setblocking(self, flag: bool) -> None:
        """Set the socket's blocking mode, as socket.setblocking(); burstio's
        own descriptor shares it (one open file): a send on a blocking socket
        waits for room (close() ends that wait), receives wait as their
        timeout says either way."""
        self._sock.setblocking(flag)

    def close(self) -> list[Unsent]:
        """Close the BurstSocket's own descriptor and the wrapped socket.
        A call blocked in another thread, in recv_batch, in a send waiting for
        room on a blocking socket or waiting for room in the pacer, wakes at
        once with ``OSError(EBADF, "... closed while waiting")`` (a send's
        ``sent`` says how far it got). A receive blocked in the kernel's
        receive itself (``recv_batch`` with ``timeout=None`` on a blocking
        socket, see recv_batch) is woken by ``shutdown(SHUT_RD)`` on the
        socket (busy polling through the socket, after at most ``usecs`` of
        it): that shuts the receive side down for
        every descriptor of the socket, a dup the caller holds or a fork()ed
        child's copy included, so close a socket that others still receive
        on only while none of this process's threads waits in recv_batch
        (a close with no receive waiting shuts nothing down). On a paced
        socket the pacer stops (after the send under way): returns the
        datagrams still waiting, by sequence number (also in ``unsent``,
        counted in paced_unsent, logged); else []."""
        if self._pacer is not None:
            unsent = [Unsent(seq, addr, length) for seq, addr, length in self._pacer.close()]
            if unsent:
                self._unsent += unsent
                log.warning("BurstSocket closed with %d paced datagrams unsent (sequences %d to %d)",
                            len(unsent), unsent[0].sequence, unsent[-1].sequence)
        self._io.close()  # wakes every waiter; the descriptor goes when the last leaves
        self._stop_busy_poll(closing=True)
        self._sock.close()
        return self.unsent

    def _after_fork_in_child(self) -> None:
        """In a child after fork(): the busy-polling epoll instance is the
        parent's (shared parameters, the parent's wake eventfd); make one of
        our own with the same parameters."""
        state, self._busy_poll = self._busy_poll, None
        if state is None or state[0].mechanism != "epoll" or self._io.fd < 0:
            self._busy_poll = state
            return
        _BUSY_POLLING.discard(self)
        ep = state[1]
        assert ep is not None
        ep.close()  # our copy of the parent's descriptor
        usecs, budget, prefer, mechanism = self._busy_params
        try:
            self.busy_poll(usecs, budget, prefer, mechanism=mechanism)
        except OSError as e:
            log.warning("busy polling could not be set up again after fork(): %s", e)

    def __enter__(self) -> BurstSocket:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        try:
            name = self._sock.getsockname() if self._sock.fileno() != -1 else "closed"
        except OSError:
            name = "?"
        return f"<BurstSocket {name} {self.describe()}>"


#: BurstSockets busy polling in an epoll instance of their own: a child
#: after fork() gives each its own instance (see _after_fork_in_child)
_BUSY_POLLING: weakref.WeakSet[BurstSocket] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for sock in list(_BUSY_POLLING):
        sock._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _recover_hook(ref: weakref.ref[BurstSocket]) -> RecoverPolicy:
    """The send policy as the backend calls it, holding the BurstSocket only
    weakly (the socket owns the backend: no reference cycle)."""
    def recover(batch: _native.PacketBatch, start: int, done: int, end: int, skip: int, err: int,
                index: int, gso: int) -> int:
        sock = ref()
        if sock is None:
            raise OSError(errno.EBADF, "Bad file descriptor (the BurstSocket is gone)")
        return sock._send_recover(batch, start, done, end, skip, err, index, gso)
    return recover


def set_buffer_size(sock: socket.socket, option: int, size: int) -> int:
    """Set SO_RCVBUF/SO_SNDBUF to ``size`` bytes; past the sysctl limit use
    the *FORCE variant when privileged. Returns what the kernel granted."""
    check_int("buffer size", size, 1, 2**31 - 1)
    sock.setsockopt(socket.SOL_SOCKET, option, size)
    granted = sock.getsockopt(socket.SOL_SOCKET, option)
    if granted < size:  # the kernel doubles what it grants; below size means capped
        force = {socket.SO_RCVBUF: SO_RCVBUFFORCE, socket.SO_SNDBUF: SO_SNDBUFFORCE}[option]
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
            granted = sock.getsockopt(socket.SOL_SOCKET, option)
        except PermissionError:
            pass
    return granted
