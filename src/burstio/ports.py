"""Packet rings between processes, netmap style: pipes and a switch.

Where a packet goes: the producer writes it into a free slot of its port's
TX ring (``tx.put``, ``tx.put_batch``, ``tx.claim``, or ``tx.recv_from`` a
socket) and advances ``head``; ``tx.sync()`` publishes the batch with one
release store (csrc/ports/ring.c). The consumer's ``rx.wait()`` / ``rx.sync()``
sees the new ``tail`` and owns packets ``head..tail`` in shared memory
(``rx[i]``, ``rx.peek(batch)``, numpy over the region); ``advance`` hands the
slots back. Through a ``pipe()`` both ends map the same buffers, so nothing is
copied; through a ``Switch`` each client has a region of its own and the
switch copies every packet into the destination's ring (isolation).

Notifications are suppressed: a side that waits spins ``linger`` seconds on
the other side's position, then raises its "sleeping" flag (with the position
it waits for) and sleeps on its wake socket; the other side kicks it only
when the flag is up and the position reached. Under sustained load nobody
sleeps and nothing is kicked; a consumer-bound producer is woken once per
batch (``wait(n)`` waits for n free slots).

Each port records the pid of the process holding it; a waiting side watches
the peer with a pidfd, so the peer's death raises ``ConnectionResetError``
instead of hanging, and ``close()`` raises ``BrokenPipeError`` on the other
side (once everything sent has been read). A ``close()`` in this process ends
every call waiting on the port in other threads at once (``ValueError``).

Wake-ups travel over two Unix datagram socketpairs per region (one for "data
published", one for "room released"); each party holds only its own ends, so
a peer can neither block our sends and receives (they never wait) nor read
the wake-ups meant for us. The switch trusts nothing in a client's region:
a client that writes something impossible there, or kicks it for nothing, is
isolated (counted, logged once, its port closed) and the others go on.

This module is policy: sizes and defaults, creating and passing the
descriptors (inheritance, pickling for multiprocessing, SCM_RIGHTS, a name),
the switch's thread, wording of argument errors. The C side does the shared
memory, the atomics and the syscalls.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias

from . import _native
from ._checks import check_int, check_seconds, check_socket, check_timeout
from ._native import PacketBatch

if TYPE_CHECKING:
    from ._udp import BurstSocket

    class _FdDup(Protocol):
        """multiprocessing.reduction.DupFd(fd) as the receiving process sees it."""

        def detach(self) -> int: ...

__all__ = [
    "Port", "PortTx", "PortRx", "Switch", "NicPort", "pipe", "nic_port", "send_port", "recv_port", "publish",
    "attach", "BROADCAST", "LINGER", "SLOTS", "SLOT_SIZE",
]

log = logging.getLogger("burstio")

#: destination key that a switch delivers to every other port
BROADCAST = _native.PORT_BROADCAST
#: default time a waiting side spins before it sleeps (seconds)
LINGER = 50e-6
SLOTS = 1024
SLOT_SIZE = 2048
_SLOTS_MAX = _native.PORT_SLOTS_MAX
_SLOT_SIZE_MAX = _native.PORT_SLOT_SIZE_MAX
_EFD_FLAGS = os.EFD_CLOEXEC | os.EFD_NONBLOCK
_NAME_PREFIX = "burstio-rings:"  # abstract Unix socket namespace
_WIRE_VERSION = 3  # of send_port's message: a memfd, the party's 2 wake sockets, the pool's memfd
_HANDOVER = 5.0  # seconds publish() waits for an attaching process to take the port
_KIND = {0: "pipe", 1: "switch port", 2: "NIC port"}
_ARRAYS = ("idx", "len", "flags", "dst", "src")
_ArrayKey: TypeAlias = Literal["idx", "len", "flags", "dst", "src"]


# ---- argument policy ----------------------------------------------------------

def _linger_ns(linger: object) -> int:
    return int(check_seconds("linger", linger, 0, 1) * 1e9)


def _wake_sockets() -> list[int]:
    """The wake sockets of a new region: (party 0 data, party 0 room, party 1
    data, party 1 room), the two ends of a data and a room socketpair."""
    fds: list[int] = []
    try:
        for _ in range(2):
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            fds += [a.detach(), b.detach()]
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return [fds[0], fds[2], fds[1], fds[3]]


def _new_region(slots: int, slot_size: int, kind: int) -> _native.PortRegion:
    """A fresh sealed memfd region and its wake sockets (owned by the region)."""
    slots = check_int("slots", slots, 2, _SLOTS_MAX, power_of_two=True)
    slot_size = check_int("slot_size", slot_size, 1, _SLOT_SIZE_MAX)
    fds = [os.memfd_create(f"burstio-{_KIND[kind].replace(' ', '-')}",
                           os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)]
    try:
        fds += _wake_sockets()
        return _native.PortRegion(fds[0], fds[1:], slots, slot_size, kind)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _attach_region(memfd: int, party: int, wakes: Sequence[int], pool_fd: int = -1) -> _native.PortRegion:
    """Map a region received from elsewhere for port ``party`` (and the frame
    pool its buffers are in, if it has one); on success it owns the fds (the
    C side checks the memfds and that the wakes are Unix datagram sockets)."""
    other = [-1, -1]
    return _native.PortRegion(memfd, [*wakes, *other] if party == 0 else [*other, *wakes], pool_fd=pool_fd)


# ---- rings ----------------------------------------------------------------------

class _Arrays:
    """Memoryviews (uint32) over a ring's slot arrays, indexed by ring index."""

    if TYPE_CHECKING:  # what the ring types it is mixed into provide
        @property
        def port(self) -> _native.PortClaim: ...
        @property
        def ring(self) -> int: ...

    def _array(self, key: _ArrayKey) -> memoryview:
        cache: dict[str, memoryview] = self.__dict__.setdefault("_views", {})
        if key not in cache:
            reg = self.port.region
            lay = reg.layout()
            off = lay[key][self.ring]
            cache[key] = reg.memory[off:off + 4 * lay["slots"]].cast("I")
        return cache[key]

    @property
    def indices(self) -> memoryview:
        """Buffer index of every slot (``memory[bufs + index * stride]``)."""
        return self._array("idx")

    @property
    def lengths(self) -> memoryview:
        """Payload length of every slot, in bytes."""
        return self._array("len")

    @property
    def flag_bits(self) -> memoryview:
        """Flags of every slot (``FLAG_TRUNCATED`` ...; ``flags(i)`` reads one)."""
        return self._array("flags")

    @property
    def dsts(self) -> memoryview:
        """Destination key of every slot (what a switch forwards by; 0: none)."""
        return self._array("dst")

    @property
    def srcs(self) -> memoryview:
        """Source key of every slot (what a learning switch learns; 0: none)."""
        return self._array("src")


class PortTx(_native.PortTx, _Arrays):
    """The producing side of a port: ``len(tx)`` free slots from ``head``.

    ``put``/``claim``/``put_batch``/``recv_from`` fill slots at ``head`` and
    advance it; ``sync()`` publishes them (one release store; a kick only if
    the consumer sleeps); ``wait(n)`` waits for n free slots. See the C
    docstrings for each method.
    """

    def recv_from(  # type: ignore[override]  # takes a socket object and returns the datagram count
            self, sock: socket.socket | BurstSocket, timeout: float | None = None, *, dst: int = 0,
            src: int = 0) -> int:
        """Receive datagrams from a UDP socket (BurstSocket or socket.socket)
        straight into the free slots, with recvmmsg: no copy through Python.
        Waits up to ``timeout`` for the first; returns how many arrived (0 on
        timeout). Each keeps its sender's address (``rx.addr(i)``, and
        ``rx.send_to`` replies to it); ``dst``/``src`` tag them all. Publish
        with ``sync()``. A BurstSocket's counters count them. A stream
        socket is refused (ValueError): its bytes have no packet boundaries.
        A ``close()`` of the port in another thread ends the wait (ValueError)."""
        check_socket(sock, "PortTx.recv_from", burst_socket=True)
        io = getattr(sock, "_io", None)
        if getattr(io, "gro", 0):
            raise ValueError("recv_from() does not split UDP GRO receives; use a socket with gro=False")
        n, nbytes, truncated, calls = _native.PortTx.recv_from(self, sock.fileno(), timeout, dst, src)
        if io is not None and hasattr(io, "count"):
            for name, v in (("rx_datagrams", n), ("rx_bytes", nbytes), ("rx_syscalls", calls),
                            ("rx_truncated", truncated), ("rx_batches", 1 if n else 0)):
                if v:
                    io.count(name, v)
        return n


class PortRx(_native.PortRx, _Arrays):
    """The consuming side of a port: ``len(rx)`` packets from ``head``.

    ``rx[i]`` is packet i (a memoryview into shared memory, no copy),
    ``rx.dst(i)``/``src(i)``/``addr(i)`` its metadata; ``peek(batch)`` makes
    a PacketBatch point at them; ``advance(n)`` frees them at the next sync
    or wait; ``forward(tx)`` moves them to a TX ring of the same region by
    swapping buffer indices.
    """

    def send_to(self, sock: BurstSocket, batch: PacketBatch | None = None, count: int | None = None) -> int:
        """Send owned packets to their addresses through a BurstSocket,
        straight from the ring (the batch's entries point into it: sendmmsg,
        UDP GSO for equal runs, no copy), and advance past those sent.
        Returns how many went. On a SendError the packets before the failing
        one are advanced past; the failing one stays at head."""
        if batch is None:
            batch = self.__dict__.get("_send_batch")
            if batch is None:
                batch = self.__dict__["_send_batch"] = PacketBatch(min(self.capacity, 1024), 1)
        if not self.peek(batch, count):
            return 0
        try:
            sent = sock.send_batch(batch)
        except OSError as e:
            self.advance(getattr(e, "sent", 0) or 0)
            raise
        finally:
            batch.clear()
        self.advance(sent)
        return sent

    def packets(self, timeout: float | None = None) -> Iterator[memoryview]:
        """Yield every packet (a memoryview, valid until the next one is
        asked for) until the peer closes its port; the slots are freed as
        the loop goes. TimeoutError if nothing comes for ``timeout`` seconds;
        ConnectionResetError if the peer's process dies; ValueError if the
        port is closed in this process meanwhile."""
        while True:
            try:
                n = self.wait(1, timeout)
            except BrokenPipeError:
                return
            if n == 0:
                raise TimeoutError(f"no packet for {timeout} s on port {self.port.party}")
            for i in range(n):
                yield self[i]
            self.advance(n)


# ---- ports ----------------------------------------------------------------------

class Port:
    """One end of a ring region: ``tx`` (PortTx), ``rx`` (PortRx) and the
    region's buffer pool.

    Made by ``pipe()`` or ``Switch.add_port()``. A port belongs to one process
    at a time: the first use in a process claims it (a forked child or a
    process that received it takes it over, and an older handle then raises
    RuntimeError). Hand it to another process by inheritance (fork), as an
    argument or message of ``multiprocessing`` (it pickles its descriptors),
    over a Unix socket (``send_port``/``recv_port``) or by name
    (``publish``/``attach``). ``close()`` (or ``with port:``) tells the peer.
    """

    #: the index of a port that Switch.add_port made, in its switch (set there)
    switch_index: int
    #: the ring types of this kind of port
    _tx_type: type[PortTx] = PortTx
    _rx_type: type[PortRx] = PortRx

    def __init__(self, region: _native.PortRegion, party: int, *, linger: float = LINGER):
        self._port = _native.PortClaim(region, party)
        self.tx = self._tx_type(self._port)
        self.rx = self._rx_type(self._port)
        self.linger = linger
        self.key: int | None = None  # the switch's static route to this port, if any
        self._offers: set[_Offer] = set()  # publish() calls waiting to hand it over

    @property
    def linger(self) -> float:
        """Seconds a wait spins on the peer's position before sleeping."""
        return self.tx.linger_ns / 1e9

    @linger.setter
    def linger(self, seconds: float) -> None:
        self.tx.linger_ns = self.rx.linger_ns = _linger_ns(seconds)

    @property
    def region(self) -> _native.PortRegion:
        """The shared-memory region this port's rings live in (``layout()``,
        ``slots``, ``slot_size``)."""
        return self._port.region

    @property
    def party(self) -> int:
        """0 or 1: which port of its region this is (a switch is party 0)."""
        return self._port.party

    @property
    def slots(self) -> int:
        """Slots per ring (a power of two; ``slots - 1`` can be in flight)."""
        return self._port.region.slots

    @property
    def slot_size(self) -> int:
        """Bytes a slot's buffer holds: the longest payload."""
        return self._port.region.slot_size

    @property
    def memory(self) -> memoryview:
        """The whole region, writable: its header, control blocks and slot
        arrays (``region.layout()`` says where), and the buffers too unless
        they are frames of a pool (``buffers``)."""
        return self._port.region.memory

    @property
    def buffers(self) -> memoryview:
        """The memory the buffers are in, writable: ``memory`` itself, or the
        frame pool of a NIC port and its pipes. ``rx.peek`` offsets and
        ``indices`` (``bufs + index * stride``, see ``region.layout()``)
        point into it."""
        return self._port.region.buffers_memory

    @property
    def peer_pid(self) -> int:
        """Pid of the process holding the other port (0: none yet)."""
        return self.rx.peer_pid

    @property
    def counters(self) -> dict[str, dict[str, int]]:
        """This port's side of both rings: {"tx": {...}, "rx": {...}} with
        syncs, kicks (sent), sleeps, wakeups, linger_hits, timeouts."""
        return {"tx": self.tx.counters(), "rx": self.rx.counters()}

    @property
    def closed(self) -> bool:
        """Whether this port was closed in this process (``close()``, or the
        end of its ``with`` block)."""
        return bool(self._port.closed)

    def claim(self) -> Port:
        """Hold the port in this process now (any use does it too). Do it
        first thing in a process that takes a port over: from then on the
        peer watches this process, and a peer that never holds its port
        cannot be told apart from a slow one (only a timeout ends a wait
        for it)."""
        self._port.claim()
        return self

    @property
    def held(self) -> bool:
        """Whether this handle holds the port now."""
        return bool(self._port.holds)

    def close(self) -> None:
        """Give the port up. If this handle holds it, the peer sees it
        closed: its waits raise BrokenPipeError (an RX ring once it has read
        everything sent). A handle that never held it just lets go (as a
        parent closing its copy of a child's end should). Calls waiting on
        this port in other threads (``wait``, ``packets``, ``recv_from``)
        end at once with ValueError, and a ``publish()`` of it is withdrawn."""
        self._port.close()
        for offer in list(self._offers):
            offer.withdraw()

    def __enter__(self) -> Port:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __reduce__(self) -> tuple[Callable[..., Port], tuple[Any, ...]]:
        # multiprocessing duplicates the descriptors for the receiving process
        # (while spawning, or through its resource sharer for a Queue/Pipe)
        from multiprocessing.reduction import DupFd
        memfd, wakes, pool_fd = self._port.region.fds(self.party)
        if memfd < 0:
            raise ValueError("cannot send a port whose region is closed")
        pool = DupFd(pool_fd) if pool_fd >= 0 else None
        return (_rebuild_port, (DupFd(memfd), tuple(DupFd(e) for e in wakes), self.party,
                                self.tx.linger_ns, self.key, pool))

    def __repr__(self) -> str:
        reg = self._port.region
        state = "closed" if self.closed else ("held" if self._port.holds else "not held here")
        return (f"<Port {self.party} of a {_KIND.get(reg.kind, '?')}: {reg.slots} slots x "
                f"{reg.slot_size} B, {state}, peer pid {self.peer_pid or '-'}>")


def _rebuild_port(memfd_dup: _FdDup, wake_dups: tuple[_FdDup, ...], party: int, linger_ns: int,
                  key: int | None, pool_dup: _FdDup | None = None) -> Port:
    fds = [memfd_dup.detach()] + [d.detach() for d in wake_dups]
    if pool_dup is not None:
        fds.append(pool_dup.detach())
    return _port_from_fds(fds, party, linger_ns / 1e9, key)


def _port_from_fds(fds: list[int], party: int, linger: float, key: int | None = None) -> Port:
    """Port ``party`` of the region in ``fds`` (memfd, data and room wake
    sockets, and the frame pool's memfd if there is a fourth), which it owns
    from here on (closed here if it cannot be made)."""
    try:
        region = _attach_region(fds[0], party, fds[1:3], fds[3] if len(fds) > 3 else -1)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    port = Port(region, party, linger=linger)
    port.key = key
    return port


def pipe(*, slots: int = SLOTS, slot_size: int = SLOT_SIZE, linger: float = LINGER) -> tuple[Port, Port]:
    """Two ports joined by a pair of rings in one shared region: what one
    puts on its ``tx`` arrives on the other's ``rx``, zero copy (both map
    the same buffers; for trusted peers). ``slots`` per ring (a power of
    two; ``slots - 1`` can be in flight), ``slot_size`` bytes each."""
    linger_ns = _linger_ns(linger)
    region = _new_region(slots, slot_size, 0)
    return Port(region, 0, linger=linger_ns / 1e9), Port(region, 1, linger=linger_ns / 1e9)


# ---- passing ports between processes --------------------------------------------

def send_port(sock: socket.socket, port: Port) -> None:
    """Send a port over a connected Unix socket (SCM_RIGHTS: the region's
    memfd, the port's 2 wake sockets, and the frame pool's memfd for a pipe
    made by ``NicPort.pipe``). The receiver calls ``recv_port``. A NIC
    port cannot be sent (TypeError): it works in the process that opened its
    queue."""
    if port.region.kind == 2:
        raise TypeError("a NIC port works in the process that opened its queue: give other processes a "
                        "pipe from NicPort.pipe() or a switch port")
    memfd, wakes, pool_fd = port.region.fds(port.party)
    if memfd < 0:
        raise ValueError("cannot send a port whose region is closed")
    meta = json.dumps({"burstio_port": _WIRE_VERSION, "party": port.party,
                       "linger_ns": port.tx.linger_ns, "key": port.key, "pool": pool_fd >= 0}).encode()
    socket.send_fds(sock, [meta], [memfd, *wakes, *([pool_fd] if pool_fd >= 0 else [])])


def _port_meta(msg: bytes, nfds: int) -> tuple[int, float, int | None]:
    """(party, linger, key) from a send_port message, or ValueError/EOFError
    saying what is wrong with it."""
    if not msg:
        raise EOFError("the sender closed the socket before sending a port")
    try:
        meta = json.loads(msg)
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or "burstio_port" not in meta:
        raise ValueError(f"not a burstio port message: {msg[:60]!r}")
    if meta["burstio_port"] != _WIRE_VERSION:
        raise ValueError(f"port message version {meta['burstio_port']!r}; this burstio reads "
                         f"version {_WIRE_VERSION}")
    pool = meta.get("pool", False)
    if not isinstance(pool, bool):
        raise ValueError(f"port message has pool {pool!r}; it must be true or false")
    if nfds != 3 + pool:
        what = "memfd, 2 wake sockets and the frame pool" if pool else "memfd and 2 wake sockets"
        raise ValueError(f"a port comes with {3 + pool} descriptors ({what}), got {nfds}")
    party, linger_ns, key = meta.get("party"), meta.get("linger_ns"), meta.get("key")
    if party not in (0, 1) or isinstance(party, bool):
        raise ValueError(f"port message names party {party!r}; a region has ports 0 and 1")
    if isinstance(linger_ns, bool) or not isinstance(linger_ns, int) or not 0 <= linger_ns <= 10**9:
        raise ValueError(f"port message has linger_ns {linger_ns!r}; it must be an int from 0 to 10**9")
    if key is not None and (isinstance(key, bool) or not isinstance(key, int) or not 0 < key < BROADCAST):
        raise ValueError(f"port message has key {key!r}; it must be None or an int from 1 to {BROADCAST - 1}")
    return party, linger_ns / 1e9, key


def recv_port(sock: socket.socket) -> Port:
    """Receive a port sent with ``send_port`` (validated: the message, then
    the region's magic, version, size and seals and the wake sockets' kind;
    ValueError saying what is wrong otherwise)."""
    msg, fds, _flags, _addr = socket.recv_fds(sock, 4096, 6)
    try:
        party, linger, key = _port_meta(msg, len(fds))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return _port_from_fds(list(fds), party, linger, key)


def _address(name: str) -> str:
    if not isinstance(name, str) or not name or "\0" in name or len(name) > 90:
        raise ValueError(f"name must be a non-empty string of at most 90 characters, got {name!r}")
    return "\0" + _NAME_PREFIX + name


class _Offer:
    """A publish() in progress: its thread waits for an attacher or for
    ``withdraw()`` (the port's close()), whichever comes first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # no descriptor is used after it is closed
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.conn: socket.socket | None = None
        self.withdrawn = False

    def withdraw(self) -> None:
        with self._lock:
            self.withdrawn = True
            if self._wake_w.fileno() >= 0:
                with contextlib.suppress(OSError):
                    self._wake_w.send(b"!")
            if self.conn is not None and self.conn.fileno() >= 0:
                with contextlib.suppress(OSError):
                    self.conn.shutdown(socket.SHUT_RDWR)  # ends a handover in progress

    def accept(self, listener: socket.socket, timeout: float | None) -> socket.socket | None:
        """The attacher's connection, or None (withdrawn, or timed out)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        poller = select.poll()
        poller.register(listener, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self.withdrawn:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not poller.poll(None if left is None else int(left * 1000) + 1) and left == 0:
                return None
            with contextlib.suppress(BlockingIOError, InterruptedError):
                conn, _ = listener.accept()
                with self._lock:
                    if self.withdrawn:
                        conn.close()
                        return None
                    self.conn = conn
                return conn
        return None

    def close(self) -> None:
        with self._lock:
            self._wake_r.close()
            self._wake_w.close()


def publish(port: Port, name: str, *, timeout: float | None = None) -> threading.Thread:
    """Offer ``port`` under ``name`` (an abstract Unix socket of this network
    namespace) to the first process that calls ``attach(name)``; a daemon
    thread hands it over once, then the name is free again. The returned
    thread ends after the handover (or ``timeout``, or when ``port`` is
    closed: the offer is withdrawn at once)."""
    timeout = check_timeout(timeout)
    if port.closed:
        raise ValueError("cannot publish a closed port")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(_address(name))
    except OSError as e:
        listener.close()
        if e.errno == errno.EADDRINUSE:
            raise OSError(errno.EADDRINUSE, f"a ring port is already published as {name!r}") from None
        raise
    listener.listen(1)
    listener.setblocking(False)
    offer = _Offer()
    port._offers.add(offer)

    def serve() -> None:
        try:
            with listener:
                conn = offer.accept(listener, timeout)
            if conn is None:
                return
            with conn:
                conn.settimeout(_HANDOVER)  # an attacher that never reads cannot hold us
                send_port(conn, port)
                conn.recv(1)  # the receiver closes once it holds the fds
        except (OSError, ValueError):
            return  # withdrawn by close() meanwhile, or the attacher went away
        finally:
            port._offers.discard(offer)
            offer.close()

    t = threading.Thread(target=serve, name=f"burstio-publish-{name}", daemon=True)
    t.start()
    return t


def attach(name: str, *, timeout: float = 5.0) -> Port:
    """The port published under ``name``, waiting up to ``timeout`` seconds
    for it to appear (FileNotFoundError after that)."""
    addr = _address(name)
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(max(0.05, deadline - time.monotonic()))
            s.connect(addr)
            return recv_port(s)
        except ConnectionRefusedError:
            if time.monotonic() >= deadline:
                raise FileNotFoundError(errno.ENOENT, f"no ring port published as {name!r}") from None
            time.sleep(0.01)
        finally:
            s.close()


# ---- fuzzing ----------------------------------------------------------------------

def _fuzz_region_header(data: bytes) -> None:
    """Fuzz target (private; ``burstio fuzz`` calls it by name): write
    ``data`` into port regions as a hostile peer could, then use them.

    ``data[0] & 3`` picks where the rest goes: 0 raw over the header (magic
    included), 1 raw over the header after its magic, 2 as (u16 offset, u32
    value) patches over the header and claim records, 3 as such patches over
    the control blocks (positions, sleeping flags, counters) and slot arrays.
    The same bytes go into a switch client's region (the switch then
    forwards: it must not raise, and its honest port must stay live) and
    into a pipe region, which a fresh process-local handle attaches to as
    port 1 and syncs, reads, puts and waits on with timeout 0.

    Raises only ValueError (not a valid region; a closed claim), RuntimeError
    (a stale claim), OSError with errno EBADMSG (impossible positions or
    indices), BrokenPipeError or ConnectionResetError. Anything else, an
    AssertionError included, is a bug; so is a crash or a call that does not
    return. Each call takes tens of microseconds (one template region per
    process is reused).
    """
    from ._ports_fuzz import fuzz_region_header
    fuzz_region_header(data)


# the switch and NIC ports use what is above: imported last
from ._ports_nic import NicPort, nic_port  # noqa: E402
from ._ports_switch import Switch  # noqa: E402
