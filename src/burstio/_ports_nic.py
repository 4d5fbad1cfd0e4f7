"""NIC ports (``burstio.ports.nic_port``): an AF_XDP socket's device queue
behind the rings of a port, so that code written against a port runs on a
NIC queue unchanged, and pipes that share the queue's frames with worker
processes.

Where a frame goes: the XDP program (``burstio.xdp.Steer``) redirects it to
the AF_XDP socket; the kernel receives it into a frame of the pool (a sealed
memfd that is the socket's UMEM and the buffers of the port's region); the
pump (csrc/ports/nic.c), run inside ``rx.sync()`` / ``rx.wait()``, makes
that frame the buffer of the next RX slot. ``rx[i]``, ``peek``, ``packets``
read it in place; ``rx.forward(pipe.tx)`` to a pipe from ``NicPort.pipe()``
swaps frame indices (zero copy, each index checked against the frame table,
csrc/ports/frames.c); releasing the slot gives the frame back to the fill
ring. Out, ``tx.put``/``claim``/``forward`` fill TX slots and ``tx.sync()``
makes the pump queue their frames on the socket's tx ring and transmit.

This module is policy: sizes and defaults, the pool's memfd, the socket's
set-up (``burstio.xdp.XskSocket``), the pipes, closing. The C side moves
the frames and checks every index.
"""
from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _native
from ._checks import check_int
from .ports import LINGER, SLOTS, Port, PortRx, PortTx, _linger_ns, _wake_sockets

if TYPE_CHECKING:
    from .xdp import Steer, Umem, XskSocket

#: where a slot's data starts in its frame: the kernel's XDP headroom
OFFSET = _native.XDP_HEADROOM
#: frame pools made by nic_port() have room for this many pipes of the port's slots
PIPES = 4


class NicRx(PortRx):
    """The RX ring of a NIC port: a PortRx whose ``sync``/``wait`` run the
    pump (received frames into the free slots, released slots' frames back
    to the fill ring) instead of reading a peer's position."""

    _core: _native.NicCore

    def sync(self) -> int:
        """Release what was advanced past, move the frames the socket received
        into the ring, and return the packets owned."""
        return int(self._core.sync_rx())

    def wait(self, n: int = 1, timeout: float | None = None) -> int:
        """Wait until n packets lie beyond ``cur`` (or the timeout): the pump,
        then linger and sleep on the AF_XDP socket; once some packets are
        there but fewer than n, it looks again every 100 us instead of at each
        burst the kernel delivers (n > 1 gathers bursts). Returns the packets
        owned. A ``close()`` of the port in another thread ends it
        (ValueError)."""
        return int(self._core.wait(False, n, timeout))


class NicTx(PortTx):
    """The TX ring of a NIC port: a PortTx whose ``sync``/``wait`` run the
    pump (published slots' frames onto the socket's tx ring, transmitted;
    the slots come back with fresh frames)."""

    _core: _native.NicCore

    def sync(self) -> int:
        """Transmit what was published and return the free slots owned."""
        return int(self._core.sync_tx())

    def wait(self, n: int = 1, timeout: float | None = None) -> int:
        """Wait until n free slots lie beyond ``cur`` (or the timeout),
        transmitting and taking completions back meanwhile."""
        return int(self._core.wait(True, n, timeout))


class NicPort(Port):
    """One queue of a network device as a port: ``rx`` (NicRx) and ``tx``
    (NicTx) with the interface of any port's rings, over an AF_XDP socket.

    Made by ``nic_port()``. It lives in the process that opened the queue
    (it cannot be pickled or sent); give worker processes a ``pipe()`` of
    it instead, which shares its frames: ``nic.rx.forward(near.tx)`` then
    moves a frame to a worker by swapping indices, without a copy.
    """

    _tx_type = NicTx
    _rx_type = NicRx
    tx: NicTx
    rx: NicRx

    def __init__(self, region: _native.PortRegion, xsk: XskSocket, pool_fd: int, *, linger: float = LINGER,
                 steer: Steer | None = None, reserve: int = 0, mac: bytes | None = None):
        super().__init__(region, 1, linger=linger)
        self._pump = Port(region, 0, linger=0)
        self.xsk = xsk
        self.steer = steer
        #: the device's hardware address (a switch never learns it on a port), or None
        self.mac = mac
        self._pool_fd = pool_fd
        self._reserve = reserve  # free frames its own rings need: its RX ring's slots and its tx ring
        self._core = _native.NicCore(xsk._x, self._pump.tx, self._pump.rx, self.rx, self.tx)
        self.rx._core = self.tx._core = self._core
        # the pipes' near ends, weakly: a pipe's frames go back to the pool when its ports are gone
        self._pipes: list[weakref.ref[Port]] = []
        self._switch: Any = None  # the Switch that drives it (Switch.add_nic)

    @property
    def umem(self) -> Umem:
        """The frame pool as the AF_XDP socket's Umem (``frame_states()`` says
        where every frame is)."""
        return self.xsk.umem

    @property
    def counters(self) -> dict[str, dict[str, int]]:
        """Both rings' counters (as any port's), the pump's ("nic":
        rx_frames rx_moved returned_bad tx_frames tx_bad tx_ring_full
        tx_no_frame) and the socket's ("xsk", with the kernel's drops in
        ``xsk.statistics()``)."""
        return {"tx": self.tx.counters(), "rx": self.rx.counters(), "nic": dict(self._core.counters()),
                "xsk": self.xsk.counters}

    def pipe(self, *, slots: int | None = None, linger: float = LINGER) -> tuple[Port, Port]:
        """Two ports joined by rings whose buffers are this NIC port's frames:
        keep the first (``near``) in this process and give the second
        (``far``) to a worker (fork, multiprocessing, ``send_port``).
        ``self.rx.forward(near.tx)`` and ``near.rx.forward(self.tx)`` swap
        frames without a copy, checking every frame index the worker could
        have written (``OSError(EBADMSG)`` for one it does not hold). The
        worker maps the whole frame pool: it must be trusted with the bytes
        of every frame, as a pipe's peer is. A pipe holds 2 x ``slots``
        frames until its ports in this process are closed and gone (a
        worker's copy of ``far`` does not count). ValueError when the pool
        has too few free frames besides those the NIC port's own rings need
        (``nic_port(frames=...)``); RuntimeError for a NIC port attached to a
        switch (the switch's frames are its own)."""
        if self.closed:
            raise ValueError("pipe() on a closed NIC port")
        if self._switch is not None:
            raise RuntimeError("pipe(): this NIC port belongs to a switch: its frames are the switch's")
        slots = self.slots if slots is None else check_int("slots", slots, 2, _native.PORT_SLOTS_MAX,
                                                          power_of_two=True)
        free = self.umem.free_frames
        if free - 2 * slots < self._reserve:
            raise ValueError(f"pipe(): a pipe of {slots} slots needs {2 * slots} frames and the pool has {free} "
                             f"free, of which the NIC port keeps {self._reserve} for its own rings: make the pool "
                             "bigger (nic_port(frames=...)) or close and drop pipes no longer used")
        linger_ns = _linger_ns(linger)
        region = _pool_region(slots, self.slot_size, 0, self._pool_fd, self.umem)
        region.use_frames(self.umem._umem, True, True)
        near, far = Port(region, 0, linger=linger_ns / 1e9), Port(region, 1, linger=linger_ns / 1e9)
        self._pipes = [ref for ref in self._pipes if ref() is not None] + [weakref.ref(near)]
        return near, far

    def describe(self) -> dict[str, Any]:
        """The socket's set-up (``XskSocket.describe()``) and the port's."""
        live = [near for ref in self._pipes if (near := ref()) is not None and not near.closed]
        return {**self.xsk.describe(), "slots": self.slots, "slot_size": self.slot_size,
                "frames": self.umem.frames, "pipes": len(live)}

    def close(self) -> None:
        """Close the port and its AF_XDP socket (the kernel takes it out of
        the Steer program's map); a wait in another thread ends
        (ValueError). Pipes made from it keep their frames until they go.
        A NIC port attached to a switch closes with the switch."""
        if self.closed:
            return
        if self._switch is not None:
            raise RuntimeError("this NIC port belongs to a switch: close the switch")
        super().close()
        self._core.close()
        self.xsk.close()
        self._pump.close()
        if self._pool_fd >= 0:
            os.close(self._pool_fd)
            self._pool_fd = -1

    def __reduce__(self) -> tuple[Callable[..., Port], tuple[Any, ...]]:
        raise TypeError("a NIC port works in the process that opened its queue: give other processes a "
                        "pipe from NicPort.pipe() or a switch port")

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.slots} slots, {self.umem.frames} frames"
        return f"<NicPort {self.xsk.dev} queue {self.xsk.queue}: {state}>"


def _pool_memfd(frames: int, frame_size: int) -> int:
    """A sealed memfd of frames x frame_size bytes: the frame pool."""
    fd = os.memfd_create("burstio-frames", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, frames * frame_size)
        import fcntl
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _pool_region(slots: int, slot_size: int, kind: int, pool_fd: int, umem: Umem) -> _native.PortRegion:
    """A fresh region whose buffers are the frames of the pool ``pool_fd``."""
    slots = check_int("slots", slots, 2, _native.PORT_SLOTS_MAX, power_of_two=True)
    fds = [os.memfd_create("burstio-nic" if kind == 2 else "burstio-pipe", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)]
    try:
        fds += _wake_sockets()
        fds.append(os.dup(pool_fd))
        return _native.PortRegion(fds[0], fds[1:5], slots, slot_size, kind, pool_fd=fds[5],
                                  pool_frames=umem.frames, pool_stride=umem.frame_size,
                                  pool_offset=umem.headroom + OFFSET)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def nic_port(dev: str | int, queue: int = 0, *, slots: int = SLOTS, frames: int | None = None,
             frame_size: int = 2048, fill_size: int = 2048, tx_size: int = 2048, mode: str = "auto",
             steer: Steer | None = None, linger: float = LINGER, fill_frames: int | None = None) -> NicPort:
    """Queue ``queue`` of device ``dev`` (in the calling thread's network
    namespace) as a port: an AF_XDP socket whose frames are the port's
    buffers. ``slots`` per ring (a power of two); ``frames`` in the pool
    (default: the socket's fill and tx rings, both port rings and ``PIPES``
    pipes of ``slots``; the port keeps its RX ring's slots and its tx ring's
    worth free for its own use, the rest is for pipes); ``frame_size`` 2048 or 4096 (a slot holds
    frame_size - 256 bytes: the kernel keeps XDP's headroom in front);
    ``mode`` the socket's (``XskSocket``); ``fill_frames`` how many frames
    the pump keeps in the fill ring (default: half of ``fill_size``; at most
    ``fill_size``): the kernel takes the oldest, so every frame there is one
    more in the cycle the CPU's cache must hold, and a shallower fill ring
    keeps the frames it receives into warm (the port bench delivers more
    with half the ring than with all of it); a burst
    longer than that before the pump runs again is dropped by the kernel and
    counted (``xsk.statistics()["rx_fill_ring_empty_descs"]``). Frames arrive only where an XDP
    program steers them: pass an attached ``Steer`` as ``steer`` (the
    socket is added to it) or add ``port.xsk`` yourself. Needs what
    ``XskSocket`` needs (root, or CAP_NET_RAW and CAP_IPC_LOCK)."""
    from .xdp import Umem, XskSocket
    from .xdp.udp import mac_of

    slots = check_int("slots", slots, 2, _native.PORT_SLOTS_MAX, power_of_two=True)
    for name, size in (("fill_size", fill_size), ("tx_size", tx_size)):
        check_int(name, size, 1, 1 << 16, power_of_two=True)
    fill_frames = max(1, fill_size // 2) if fill_frames is None else check_int("fill_frames", fill_frames, 1,
                                                                               fill_size)
    if frames is None:
        frames = fill_size + tx_size + 2 * slots * (1 + PIPES)
    check_int("frames", frames, fill_size + tx_size + slots, _native.PORT_FRAMES_MAX)
    if frame_size not in (2048, 4096):
        check_int("frame_size", frame_size, 2048, 4096)
        raise ValueError(f"frame_size must be 2048 or 4096, got {frame_size}")
    linger_ns = _linger_ns(linger)
    pool_fd = _pool_memfd(frames, frame_size)
    xsk: XskSocket | None = None
    try:
        umem = Umem(frames, frame_size, memfd=pool_fd)
        xsk = XskSocket(dev, queue, umem=umem, rx_size=fill_size, fill_size=fill_size, tx_size=tx_size,
                        comp_size=tx_size, mode=mode, _fill_target=fill_frames)
        region = _pool_region(slots, frame_size - OFFSET, 2, pool_fd, umem)
        region.use_frames(umem._umem, False, True)
        try:
            mac: bytes | None = mac_of(dev)
        except OSError:
            mac = None  # a device without one
        port = NicPort(region, xsk, pool_fd, linger=linger_ns / 1e9, steer=steer, reserve=slots + tx_size,
                       mac=mac)
    except BaseException:
        if xsk is not None:
            xsk.close()
        os.close(pool_fd)
        raise
    if steer is not None:
        steer.add(xsk)
    return port
