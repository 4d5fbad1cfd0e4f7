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
from ._checks import check_choice, check_int, check_seconds, check_socket, check_timeout
from ._native import PacketBatch

if TYPE_CHECKING:
    from ._udp import BurstSocket

    class _FdDup(Protocol):
        """multiprocessing.reduction.DupFd(fd) as the receiving process sees it."""

        def detach(self) -> int: ...

__all__ = [
    "Port", "PortTx", "PortRx", "Switch", "pipe", "send_port", "recv_port", "publish", "attach",
    "BROADCAST", "LINGER", "SLOTS", "SLOT_SIZE",
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
_WIRE_VERSION = 2  # of send_port's message: a memfd and the party's 2 wake sockets
_HANDOVER = 5.0  # seconds publish() waits for an attaching process to take the port
_KIND = {0: "pipe", 1: "switch port"}
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


def _attach_region(memfd: int, party: int, wakes: Sequence[int]) -> _native.PortRegion:
    """Map a region received from elsewhere for port ``party``; on success it
    owns the fds (the C side checks the memfd and that the wakes are Unix
    datagram sockets)."""
    other = [-1, -1]
    return _native.PortRegion(memfd, [*wakes, *other] if party == 0 else [*other, *wakes])


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
        return self._array("len")

    @property
    def flag_bits(self) -> memoryview:
        return self._array("flags")

    @property
    def dsts(self) -> memoryview:
        return self._array("dst")

    @property
    def srcs(self) -> memoryview:
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

    def __init__(self, region: _native.PortRegion, party: int, *, linger: float = LINGER):
        self._port = _native.PortClaim(region, party)
        self.tx = PortTx(self._port)
        self.rx = PortRx(self._port)
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
        return self._port.region

    @property
    def party(self) -> int:
        """0 or 1: which port of its region this is (a switch is party 0)."""
        return self._port.party

    @property
    def slots(self) -> int:
        return self._port.region.slots

    @property
    def slot_size(self) -> int:
        return self._port.region.slot_size

    @property
    def memory(self) -> memoryview:
        """The whole region, writable: ``rx.peek`` offsets and ``indices``
        (``bufs + index * stride``, see ``region.layout()``) point into it."""
        return self._port.region.memory

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
        memfd, wakes = self._port.region.fds(self.party)
        if memfd < 0:
            raise ValueError("cannot send a port whose region is closed")
        return (_rebuild_port, (DupFd(memfd), tuple(DupFd(e) for e in wakes), self.party,
                                self.tx.linger_ns, self.key))

    def __repr__(self) -> str:
        reg = self._port.region
        state = "closed" if self.closed else ("held" if self._port.holds else "not held here")
        return (f"<Port {self.party} of a {_KIND.get(reg.kind, '?')}: {reg.slots} slots x "
                f"{reg.slot_size} B, {state}, peer pid {self.peer_pid or '-'}>")


def _rebuild_port(memfd_dup: _FdDup, wake_dups: tuple[_FdDup, ...], party: int, linger_ns: int,
                  key: int | None) -> Port:
    fds = [memfd_dup.detach()] + [d.detach() for d in wake_dups]
    return _port_from_fds(fds, party, linger_ns / 1e9, key)


def _port_from_fds(fds: list[int], party: int, linger: float, key: int | None = None) -> Port:
    """Port ``party`` of the region in ``fds`` (memfd, data and room wake
    sockets), which it owns from here on (closed here if it cannot be made)."""
    try:
        region = _attach_region(fds[0], party, fds[1:])
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
    memfd and the port's 2 wake sockets). The receiver calls ``recv_port``."""
    memfd, wakes = port.region.fds(port.party)
    if memfd < 0:
        raise ValueError("cannot send a port whose region is closed")
    meta = json.dumps({"burstio_port": _WIRE_VERSION, "party": port.party,
                       "linger_ns": port.tx.linger_ns, "key": port.key}).encode()
    socket.send_fds(sock, [meta], [memfd, *wakes])


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
    if nfds != 3:
        raise ValueError(f"a port comes with 3 descriptors (memfd and 2 wake sockets), got {nfds}")
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
    msg, fds, _flags, _addr = socket.recv_fds(sock, 4096, 5)
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


# ---- the switch -----------------------------------------------------------------

_UNKNOWN = ("flood", "drop")
_ON_FULL = ("wait", "drop")
_GONE = {0: "live", -errno.EPIPE: "closed", -errno.ECONNRESET: "exited", -errno.EPROTO: "isolated"}


class Switch:
    """Joins N ports by copying: each client gets a region of its own (it
    shares no memory with the other clients) and the switch copies every
    packet into the RX ring of the port its ``dst`` key names.

    ``Switch(*, slots=1024, slot_size=2048, max_ports=64, learning=True,
    unknown="flood", on_full="wait", linger=LINGER, table_size=4096)``

    Routing: ``add_port(key=K)`` installs a static route K -> that port;
    with ``learning`` the switch also learns every packet's ``src`` key
    (0 means none). ``dst=BROADCAST`` goes to every other port; an unknown
    ``dst`` is flooded (``unknown="flood"``) or dropped and counted
    (``"drop"``). A full destination ring makes the packet wait
    (``on_full="wait"``: lossless; a stuck receiver holds up its senders) or
    drops it (``"drop"``: a slow receiver cannot hold anyone up). Packets to
    a port whose client closed or exited are dropped (``gone_drops``).

    Clients are untrusted: nothing a client writes into its region makes the
    switch raise, block or read outside it. A client that writes something
    impossible there (a position beyond its ring or moving back, a slot
    naming a buffer outside its pool, the switch's claim record) or keeps
    waking the switch for nothing is isolated: its port is closed (its waits
    raise BrokenPipeError), what it had published is dropped
    (``isolated_drops``), packets for it are dropped (``gone_drops``),
    ``port_state`` says ``"isolated"`` and ``isolation_reason`` why, and a
    warning is logged once (logger ``burstio``). The other ports go on.

    The switch runs ``run()`` wherever you call it: ``start()`` runs it on a
    thread of this process (forwarding releases the GIL), or call ``run()``
    in a process of its own (e.g. a ``multiprocessing.Process`` forked after
    the ports are added) for the best throughput. Isolation holds against a
    client that holds only its own port's descriptors (received through
    ``send_port``, ``attach`` or pickling into a spawned process): a forked
    child inherits every descriptor of its parent.
    """

    def __init__(self, *, slots: int = SLOTS, slot_size: int = SLOT_SIZE, max_ports: int = 64,
                 learning: bool = True, unknown: str = "flood", on_full: str = "wait",
                 linger: float = LINGER, table_size: int = 4096):
        check_choice("unknown", unknown, _UNKNOWN)
        check_choice("on_full", on_full, _ON_FULL)
        self._slots = check_int("slots", slots, 2, _SLOTS_MAX, power_of_two=True)
        self._slot_size = check_int("slot_size", slot_size, 1, _SLOT_SIZE_MAX)
        check_int("max_ports", max_ports, 1, 4096)
        check_int("table_size", table_size, 16, 1 << 24, power_of_two=True)
        linger_ns = _linger_ns(linger)
        self._linger = linger
        efd = os.eventfd(0, _EFD_FLAGS)  # the switch's own doorbell: stop() and add_port()
        try:
            self._native = _native.SwitchCore(efd, max_ports, table_size)
        except BaseException:
            os.close(efd)
            raise
        self._native.learning = int(bool(learning))
        self._native.flood_unknown = int(unknown == "flood")
        self._native.wait_full = int(on_full == "wait")
        self._native.linger_ns = linger_ns
        self._sides: list[Port] = []  # the switch's own side of every region
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False

    def add_port(self, key: int | None = None, *, linger: float | None = None) -> Port:
        """A new port for a client (hand it to the client's process). With
        ``key``, packets whose ``dst`` is key are routed to it."""
        if key is not None:
            check_int("key", key, 1, BROADCAST - 1)
        if self._closed:
            raise ValueError("add_port() on a closed switch")
        region = _new_region(self._slots, self._slot_size, 1)
        side = Port(region, 0, linger=0)
        index = self._native.add(side.rx, side.tx)
        self._sides.append(side)
        client = Port(region, 1, linger=self._linger if linger is None else linger)
        if key is not None:
            self._native.route(key, index)
            client.key = key
        client.switch_index = index
        return client

    def _index(self, port: Port | int) -> int:
        if isinstance(port, Port):
            index: int | None = getattr(port, "switch_index", None)
            if index is None or index >= len(self._sides) or self._sides[index].region is not port.region:
                raise ValueError("that port does not belong to this switch")
            return index
        return check_int("port", port, 0, len(self._sides) - 1)

    def route(self, key: int, port: Port | int | None) -> None:
        """Static route: ``dst == key`` goes to ``port`` (a Port from
        ``add_port`` or its index); None removes the key."""
        check_int("key", key, 1, BROADCAST - 1)
        self._native.route(key, None if port is None else self._index(port))

    @property
    def routes(self) -> dict[int, tuple[int, bool]]:
        """{key: (port index, static)} for every known destination."""
        return self._native.routes()

    @property
    def counters(self) -> dict[str, int]:
        """forwarded flooded unknown_drops full_drops gone_drops filtered
        bad_slots learned table_full passes sleeps wakeups ports_gone
        ports_isolated isolated_drops idle_kicks. Counted in the process
        that runs the switch."""
        return self._native.counters()

    def port_state(self, port: Port | int) -> str:
        """'live', or why the switch stopped serving it: 'closed', 'exited',
        'isolated' (it misbehaved: ``isolation_reason`` says how)."""
        return _GONE.get(self._native.port_state(self._index(port)), "gone")

    def isolation_reason(self, port: Port | int) -> str | None:
        """Why the switch isolated ``port`` (None if it did not)."""
        return self._native.isolation_reason(self._index(port))

    def _report(self) -> bool:
        """Log each newly isolated port once; whether there was one."""
        news = self._native.take_isolations()
        for index, reason in news:
            log.warning("switch: port %d isolated, its client misbehaved: %s", index, reason)
        return bool(news)

    def forward(self, timeout: float | None = 0) -> int:
        """Forward for up to ``timeout`` seconds (0: what is there now;
        None: until ``stop()``). Returns the packets taken from clients.
        ``stop()`` from another thread makes it return at once, ``close()``
        makes it raise ValueError."""
        if self._closed:
            raise ValueError("forward() on a closed switch")
        timeout = check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        moved = 0
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            moved += self._native.forward(left)
            news = self._report()  # the native call returns at once after an isolation
            if self._closed:
                raise ValueError("the switch was closed while forward() ran")
            if not news or self._native.stopping:
                return moved

    def run(self) -> None:
        """Forward until ``stop()`` or ``close()`` (from another thread) or a
        signal."""
        while not self._stopping and not self._closed:
            self._native.forward(None)
            self._report()
            if self._native.stopping:
                break

    def start(self) -> Switch:
        """Run the switch on a daemon thread of this process."""
        if self._closed:
            raise ValueError("start() on a closed switch")
        if self._thread is not None:
            raise RuntimeError("the switch is already running")
        self._stopping = False
        self._native.stopping = 0
        self._thread = threading.Thread(target=self.run, name="burstio-switch", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        """Make ``run()`` and ``forward()`` return (and join the thread
        ``start()`` made)."""
        self._stopping = True
        self._native.stop()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def close(self) -> None:
        """Stop, and close the switch's side of every port: clients' waits
        raise BrokenPipeError; a ``forward()`` running in another thread
        raises ValueError."""
        self._closed = True
        self.stop()
        for side in self._sides:
            side.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Switch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Switch {len(self._sides)} ports, {self._slots} slots x {self._slot_size} B>"


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
