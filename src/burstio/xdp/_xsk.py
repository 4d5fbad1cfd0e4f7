"""Umem and XskSocket: AF_XDP sockets with burstio's batch model.

Where a frame goes: an XDP program (``burstio.xdp.Steer``) redirects it to
the socket of its receive queue; the kernel copies it into a UMEM frame (or
the NIC writes it there, zero copy); ``recv_batch`` -> ``_native.XskSocket``
(csrc/xdp/rx.c) lends the frame to a ``PacketBatch``: ``batch[i]`` is a
memoryview into the UMEM, no copy. The frame returns to the free list, and
from there to the fill ring, when the batch is refilled, cleared or dropped
and no memoryview of it remains. ``send_batch`` queues entries on the tx
ring (a received frame as it is, anything else copied into a free frame).

This module is policy: the bind mode (zero copy where the driver has it,
copy otherwise, and why), need_wakeup, multi-buffer, sizes, busy polling,
retries, waiting for room, and the wording of every error (privileges
included). The C side does the syscalls and owns the frames.
"""
from __future__ import annotations

import errno
import resource
import socket
import time
import weakref
from typing import Any

from .. import _native
from .._caps import Capabilities, capabilities
from .._checks import check_choice, check_int, check_timeout
from .._kernel import (
    SO_BUSY_POLL,
    SO_BUSY_POLL_BUDGET,
    SO_INCOMING_NAPI_ID,
    SO_PREFER_BUSY_POLL,
    SOL_XDP,
    XDP_COPY,
    XDP_MAX_TX_SKB_BUDGET,
    XDP_USE_NEED_WAKEUP,
    XDP_USE_SG,
    XDP_ZEROCOPY,
)

__all__ = ["Umem", "XskSocket", "MODES", "FRAME_SIZES", "ifindex_of"]

MODES = ("auto", "zerocopy", "copy")
FRAME_SIZES = (2048, 4096)
#: how long bind() retries EBUSY: the kernel lets a queue go a little after
#: the socket that held it closed
BIND_BUSY_SECONDS = 2.0


def ifindex_of(dev: str | int) -> int:
    """The index of device ``dev`` (a name or an index) in this thread's namespace."""
    if isinstance(dev, bool) or not isinstance(dev, (str, int)):
        raise TypeError(f"dev must be a device name or index, got {type(dev).__name__}")
    if isinstance(dev, int):
        return check_int("dev", dev, 1, 2**31 - 1)
    try:
        return socket.if_nametoindex(dev)
    except OSError:
        raise OSError(errno.ENODEV, f"no network device named {dev!r} in this network namespace") from None


def _memlock() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return soft


def _umem_error(e: OSError, size: int) -> OSError:
    """An error of making or registering a UMEM, worded with what is missing."""
    if e.errno == errno.EPERM:
        return PermissionError(e.errno, f"AF_XDP sockets need CAP_NET_RAW: {e.strerror}")
    if e.errno in (errno.ENOBUFS, errno.ENOMEM) and size > _memlock():
        return OSError(e.errno, f"a UMEM of {size} bytes is over RLIMIT_MEMLOCK ({_memlock()} bytes): it needs "
                                f"CAP_IPC_LOCK or a higher limit (ulimit -l), or fewer frames ({e.strerror})")
    if e.errno == errno.EAFNOSUPPORT:
        return OSError(e.errno, "this kernel has no AF_XDP sockets (CONFIG_XDP_SOCKETS)")
    return e


class Umem:
    """``frames`` x ``frame_size`` bytes of packet memory shared by one or
    more XskSockets (one per device queue), registered with the kernel.

    ``Umem(frames=4096, frame_size=2048, *, headroom=0, memfd=None)``:
    ``frame_size`` 2048 or 4096; ``headroom`` bytes the kernel leaves free
    in front of each received frame; ``memfd`` a memfd of frames x
    frame_size bytes sealed against shrinking to map shared as the frames
    (so that other processes mapping it see them: the frame pool of
    ``burstio.ports.nic_port``), else the frames are private memory. The
    region counts against RLIMIT_MEMLOCK unless the process has CAP_IPC_LOCK.
    """

    def __init__(self, frames: int = 4096, frame_size: int = 2048, *, headroom: int = 0,
                 memfd: int | None = None):
        check_int("frames", frames, 16, 1 << 22)
        if frame_size not in FRAME_SIZES:
            check_int("frame_size", frame_size, 2048, 4096)
            raise ValueError(f"frame_size must be 2048 or 4096, got {frame_size}")
        check_int("headroom", headroom, 0, frame_size - 512)
        if memfd is not None:
            check_int("memfd", memfd, 0, 2**31 - 1)
        try:
            self._umem = _native.Umem(frames, frame_size, headroom, -1 if memfd is None else memfd)
        except OSError as e:
            raise _umem_error(e, frames * frame_size) from None
        self._sockets: list[weakref.ref[XskSocket]] = []

    @property
    def sockets(self) -> list[XskSocket]:
        """The open sockets on this UMEM, the first one bound first (a socket
        dropped without close() no longer counts once collected)."""
        live = [s for ref in self._sockets if (s := ref()) is not None and not s.closed]
        self._sockets = [weakref.ref(s) for s in live]
        return live

    frames = property(lambda self: self._umem.frames, doc="frames in the UMEM")
    frame_size = property(lambda self: self._umem.frame_size, doc="bytes per frame")
    headroom = property(lambda self: self._umem.headroom, doc="bytes left free in front of each received frame")
    size = property(lambda self: self._umem.size, doc="bytes of frames")

    @property
    def free_frames(self) -> int:
        """Frames on the free list now."""
        return int(self._umem.free_frames)

    def frame_states(self) -> dict[str, int]:
        """How many frames are free, in fill rings, lent to batches, on tx rings."""
        return dict(self._umem.frame_states())

    @property
    def counters(self) -> dict[str, int]:
        """fill_starved, frames_lent, frames_returned."""
        return dict(self._umem.counters())

    def close(self) -> None:
        """Close every socket on this UMEM (its memory goes when the last
        batch holding its frames lets go)."""
        for s in list(self.sockets):
            s.close()

    def __enter__(self) -> Umem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Umem {self.frames} x {self.frame_size} B, {self.free_frames} free>"


class XskSocket:
    """An AF_XDP socket on one receive/transmit queue of a device.

    ``XskSocket(dev, queue=0, *, umem=None, rx_size=2048, tx_size=2048,
    fill_size=2048, comp_size=2048, mode="auto", need_wakeup=None,
    multi_buffer=False)``

    ``dev`` is a device name (or index) in the calling thread's network
    namespace. Without ``umem`` the socket gets a Umem of its own (4096
    frames of 2048 bytes); sockets on other queues may share one (each has
    its own fill and completion rings). ``mode``: "zerocopy" needs the
    driver's zero copy, "copy" never uses it, "auto" tries zero copy and
    falls back to copy (``describe()`` says why). ``need_wakeup`` (None:
    where the kernel has it) lets a zero-copy driver sleep until woken;
    ``multi_buffer=True`` receives and sends packets larger than a frame as
    several entries (FLAG_CONTINUES on all but the last part).

    Frames arrive only when an XDP program redirects them here: add the
    socket to a ``Steer`` program attached to the device (``steer.add(xsk)``).
    """

    def __init__(self, dev: str | int, queue: int = 0, *, umem: Umem | None = None, rx_size: int = 2048,
                 tx_size: int = 2048, fill_size: int = 2048, comp_size: int = 2048, mode: str = "auto",
                 need_wakeup: bool | None = None, multi_buffer: bool = False, _fill_target: int = 0):
        # _fill_target (burstio.ports.nic_port's fill_frames): frames the fill ring is topped up to, bind's first
        # fill included; 0 fills it whole
        check_choice("mode", mode, MODES)
        check_int("queue", queue, 0, 65535)
        for name, size in (("rx_size", rx_size), ("tx_size", tx_size), ("fill_size", fill_size),
                           ("comp_size", comp_size)):
            check_int(name, size, 0 if name in ("rx_size", "tx_size") else 1, 1 << 16, power_of_two=size != 0)
        if not rx_size and not tx_size:
            raise ValueError("an XskSocket needs an rx ring or a tx ring: rx_size and tx_size are both 0")
        ifindex = ifindex_of(dev)
        self.dev = dev if isinstance(dev, str) else socket.if_indextoname(ifindex)
        self.ifindex: int = ifindex
        self.queue: int = queue
        self.mode, self.mode_reason = "copy", ""
        caps = capabilities()
        if not caps.af_xdp:
            raise OSError(errno.EOPNOTSUPP, f"AF_XDP sockets are not available: {caps['af_xdp'].detail}")
        self.umem = umem if umem is not None else Umem()
        self.shared = bool(self.umem.sockets)
        if self.shared and (mode != "auto" or need_wakeup or multi_buffer):
            raise ValueError("a socket that shares a Umem takes its mode, need_wakeup and multi_buffer from the "
                             "Umem's first socket: leave them at their defaults")
        if any(s.queue == queue and s.ifindex == ifindex for s in self.umem.sockets):
            raise ValueError(f"the Umem already has a socket on queue {queue} of {self.dev}: one socket per "
                             "device queue")
        try:
            self._x = _native.XskSocket(self.umem._umem, ifindex, queue, fill_size, comp_size, rx_size, tx_size)
        except OSError as e:
            raise _umem_error(e, 0) from None
        self._x.fill_target = _fill_target
        try:
            self._bind(caps, mode, need_wakeup, multi_buffer)
        except BaseException:
            self._x.close()
            raise
        self.umem._sockets.append(weakref.ref(self))
        self._busy_poll: dict[str, Any] = {}
        self.tx_budget = self._raise_tx_budget(tx_size)
        # the hot path: the C method itself, no Python frame in between
        self.recv_batch = self._x.recv_batch  # type: ignore[method-assign]  # the C method, no Python frame

    # ---- bind ------------------------------------------------------------

    def _bind(self, caps: Capabilities, mode: str, need_wakeup: bool | None, multi_buffer: bool) -> None:
        base = 0
        self.need_wakeup = False
        self.multi_buffer = False
        if not self.shared:
            if need_wakeup is None:
                need_wakeup = caps.xsk_need_wakeup
            if need_wakeup:
                base |= XDP_USE_NEED_WAKEUP
                self.need_wakeup = True
            if multi_buffer:
                if not caps.xsk_multi_buffer:
                    raise OSError(errno.EOPNOTSUPP, "multi-buffer AF_XDP (XDP_USE_SG) is not available: "
                                                    f"{caps['xsk_multi_buffer'].detail}")
                base |= XDP_USE_SG
                self.multi_buffer = True
        if self.shared:
            first = self.umem.sockets[0]
            self._bind_retry(0)
            self.mode, self.mode_reason = first.mode, f"shares the Umem of {first.dev} queue {first.queue}"
            self.need_wakeup, self.multi_buffer = first.need_wakeup, first.multi_buffer
            return
        zc_off = caps["xsk_zerocopy"].forced_off
        if mode == "copy" or (mode == "auto" and zc_off):
            self._bind_retry(base | XDP_COPY)
            self.mode = "copy"
            self.mode_reason = "mode='copy'" if mode == "copy" else "xsk_zerocopy disabled by BURSTIO_DISABLE"
            return
        refused = self._bind_retry(base | XDP_ZEROCOPY, fallback=mode == "auto")
        if refused is None:
            self.mode, self.mode_reason = "zerocopy", "the driver bound the queue zero copy"
            return
        self._bind_retry(base | XDP_COPY)
        self.mode = "copy"
        name = "EOPNOTSUPP" if refused.errno == errno.EOPNOTSUPP else errno.errorcode.get(refused.errno or 0, "?")
        self.mode_reason = f"the driver of {self.dev} refused a zero-copy bind ({name}: {refused.strerror}); copy mode"

    def _bind_retry(self, flags: int, fallback: bool = False) -> OSError | None:
        """bind(flags), retrying EBUSY for a while. With ``fallback``, an
        error a copy-mode bind may cure is returned instead of raised."""
        deadline = time.monotonic() + BIND_BUSY_SECONDS
        while True:
            try:
                self._x.bind(flags)
                return None
            except OSError as e:
                if fallback and e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.EPROTONOSUPPORT):
                    return e
                if e.errno != errno.EBUSY or time.monotonic() >= deadline:
                    raise self._bind_error(e) from None
            time.sleep(0.02)

    def _bind_error(self, e: OSError) -> OSError:
        where = f"queue {self.queue} of {self.dev}"
        if e.errno == errno.EBUSY:
            return OSError(e.errno, f"{where} is taken by another AF_XDP socket or XDP user (EBUSY)")
        if e.errno == errno.EINVAL and self.queue > 0:
            return OSError(e.errno, f"binding to {where} failed: {e.strerror} (does the device have that many "
                                    "queues?)")
        if e.errno == errno.EOPNOTSUPP:
            return OSError(e.errno, f"{where}: the driver refused a zero-copy bind ({e.strerror})")
        if e.errno == errno.ENODEV:
            return OSError(e.errno, f"binding to {where} failed: the device is not in the network namespace the "
                                    "socket's Umem was made in (make the Umem there)")
        return OSError(e.errno, f"binding to {where} failed: {e.strerror}")

    def _raise_tx_budget(self, tx_size: int) -> int | None:
        """In copy mode the kernel sends at most its budget (32 frames) per
        sendto(); raise it to the tx ring (XDP_MAX_TX_SKB_BUDGET, Linux 6.17)."""
        if not tx_size or self.mode != "copy":
            return None
        try:
            self._x.setsockopt(SOL_XDP, XDP_MAX_TX_SKB_BUDGET, tx_size)
        except OSError:
            return 32  # the kernel's fixed budget
        return tx_size

    # ---- the batch paths -------------------------------------------------

    def recv_batch(self, batch: _native.PacketBatch, timeout: float | None = None) -> int:
        """Lend the frames received to ``batch``; return how many.

        Waits up to ``timeout`` seconds (None: forever, 0: not at all) for
        the first. Entries point into the UMEM (``batch.buffer`` is the
        UMEM; ``batch.offsets`` are offsets in it), without a copy. The
        frames the batch held before go back to the free list once no
        memoryview of them remains, so a frame is never reused under your
        code. (Each instance binds this name to the C method.)
        """
        return int(self._x.recv_batch(batch, timeout))

    def send_batch(self, batch: _native.PacketBatch, start: int = 0, count: int | None = None, *,
                   timeout: float | None = None) -> int:
        """Transmit entries ``[start, start + count)`` as raw Ethernet frames.

        Entries that are this UMEM's frames received into this batch go out
        as they are (zero copy: forwarding); others are copied into free
        frames. Waits up to ``timeout`` seconds (None: forever) for room in
        the tx ring or a free frame; on timeout raises TimeoutError with
        ``.sent``. Returns the number sent.
        """
        timeout = check_timeout(timeout)
        total = len(batch) - start if count is None else count
        sent = self._x.send_batch(batch, start, count)
        deadline = None if timeout is None else time.monotonic() + timeout
        while sent < total:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._x.wait_tx(left):
                err = TimeoutError(errno.ETIMEDOUT, f"sent {sent} of {total} frames: the tx ring or the free "
                                                    f"frames stayed full for {timeout} s")
                err.sent = sent  # type: ignore[attr-defined]  # as BurstSocket's SendError carries it
                raise err
            sent += self._x.send_batch(batch, start + sent, total - sent)
        return int(sent)

    # ---- options, state --------------------------------------------------

    def busy_poll(self, usecs: int, budget: int = 64, prefer: bool = True) -> str:
        """Busy poll the queue's NAPI instance from this socket's receives
        (SO_PREFER_BUSY_POLL, SO_BUSY_POLL, SO_BUSY_POLL_BUDGET). Returns
        "on", or "no effect" where the queue has no NAPI instance the
        socket can poll (a veth: describe() says so); "off" after usecs=0."""
        check_int("usecs", usecs, 0, 2**31 - 1)
        check_int("budget", budget, 0, 65535)
        self._x.setsockopt(socket.SOL_SOCKET, SO_PREFER_BUSY_POLL, int(bool(prefer) and usecs > 0))
        self._x.setsockopt(socket.SOL_SOCKET, SO_BUSY_POLL, usecs)
        if usecs:
            self._x.setsockopt(socket.SOL_SOCKET, SO_BUSY_POLL_BUDGET, budget)
        napi = self.napi_id()
        state = "off" if not usecs else ("on" if napi else "no effect")
        self._busy_poll = {"usecs": usecs, "budget": budget, "prefer": bool(prefer), "state": state}
        if state == "no effect":
            self._busy_poll["why"] = (f"queue {self.queue} of {self.dev} has no NAPI instance this socket can "
                                      "poll (SO_INCOMING_NAPI_ID is 0, as on a veth): receives wait in poll()")
        return state

    def napi_id(self) -> int:
        """The NAPI instance of the socket's queue (0: none it can poll)."""
        return int(self._x.getsockopt(socket.SOL_SOCKET, SO_INCOMING_NAPI_ID))

    def statistics(self) -> dict[str, int]:
        """The kernel's XDP_STATISTICS for this socket: rx_dropped,
        rx_invalid_descs, tx_invalid_descs, rx_ring_full,
        rx_fill_ring_empty_descs, tx_ring_empty_descs."""
        return dict(self._x.statistics())

    @property
    def counters(self) -> dict[str, int]:
        """burstio's own counts: rx_frames, rx_bytes, rx_batches, rx_waits,
        rx_bad_descs, fill_frames, fill_starved, tx_frames, tx_bytes,
        tx_batches, tx_copied, tx_zerocopy, tx_kicks, tx_dropped (frames the
        device dropped while sending them: copy mode reports each), tx_ring_full,
        tx_no_frame, completions, bad_completions."""
        return dict(self._x.counters())

    def reset_counters(self) -> None:
        """Set burstio's counters of this socket to 0 (the kernel's
        ``statistics()`` cannot be reset)."""
        self._x.reset_counters()

    def rings(self) -> dict[str, dict[str, int]]:
        """Each ring's size, producer and consumer positions and need_wakeup flag."""
        return dict(self._x.rings())

    def fileno(self) -> int:
        """The AF_XDP socket's descriptor (-1 once closed), for a loop's
        readiness wait."""
        return int(self._x.fd)

    @property
    def closed(self) -> bool:
        """Whether close() has run."""
        return bool(self._x.fd < 0)

    def describe(self) -> dict[str, Any]:
        """What this socket uses, and why."""
        d: dict[str, Any] = {
            "dev": self.dev, "ifindex": self.ifindex, "queue": self.queue,
            "mode": self.mode, "mode_reason": self.mode_reason,
            "need_wakeup": self.need_wakeup, "multi_buffer": self.multi_buffer,
            "umem": {"frames": self.umem.frames, "frame_size": self.umem.frame_size,
                     "headroom": self.umem.headroom, "sockets": len(self.umem.sockets), "shared": self.shared},
            "rings": {k: v["size"] for k, v in self.rings().items()} if not self.closed else {},
            "tx_budget": self.tx_budget,
            "busy_poll": self._busy_poll or "off",
        }
        if self.need_wakeup and self.mode == "copy":
            d["need_wakeup_note"] = "copy mode never sets the flag: receives block in poll()"
        return d

    def close(self) -> None:
        """Close the socket; a receive waiting in another thread wakes with
        OSError(EBADF). The kernel removes it from every XSKMAP."""
        self._x.close()

    def __enter__(self) -> XskSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.mode
        return f"<XskSocket {self.dev} queue {self.queue} {state}>"
