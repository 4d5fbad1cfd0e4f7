"""Many-socket scenarios: one call across hundreds of connected UDP sockets.

rx-many-sockets: 512 connected UDP socket pairs; each round every sender
puts 1-4 datagrams in its peer's queue, then each variant drains its own
512 receivers. Each variant has its own sockets, so that an io_uring ring
(whose multishot receives take datagrams as they arrive) cannot take
another variant's traffic; the rings use DEFER_TASKRUN, so the receive work
happens inside the timed call, not while the queues are filled.

tx-redundant: the redundant scheduler of multipath UDP: N payloads, every
one sent on each of 4 paths (connected sockets). The fair peer is
``stdlib-gso``: per path, one sendmsg with UDP_SEGMENT and the 64 payloads
as iovecs, which is what burstio-uring submits per path too (one io_uring
submission for all paths instead of one call per path); ``stdlib`` (a send
per payload and path) is shown for information.
"""
from __future__ import annotations

import functools
import os
import random
import resource
import select
import socket
import struct
from collections.abc import Callable
from contextlib import ExitStack
from typing import Protocol, cast

from ... import _native
from ..._caps import capabilities
from ..._kernel import SO_RCVBUFFORCE, SOL_UDP, UDP_SEGMENT
from ..._socketset import SocketSet
from ..._udp import BurstSocket
from ..common import OWN_COUNTER, Options, count_syscalls, measure_sends, pinned, rounds, syscall_source, timed
from ..report import Progress, ScenarioResult, Target, Variant

PAIRS = 512
PATHS = 4


class _Drain(Protocol):
    def drain(self, expect: int) -> int: ...


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))


def _pairs(stack: ExitStack, n: int) -> tuple[list[socket.socket], list[socket.socket]]:
    """n connected (receiver, sender) UDP pairs on loopback."""
    rx: list[socket.socket] = []
    tx: list[socket.socket] = []
    for _ in range(n):
        r = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        r.bind(("127.0.0.1", 0))
        s.bind(("127.0.0.1", 0))
        r.connect(s.getsockname())
        s.connect(r.getsockname())
        r.setblocking(False)
        rx.append(r)
        tx.append(s)
    return rx, tx


class _Stdlib:
    """select.epoll + recvfrom_into per datagram: the leanest stdlib drain
    (selectors would add a key object per event)."""

    def __init__(self, rx: list[socket.socket], stack: ExitStack):
        self.ep = stack.enter_context(select.epoll())
        self.by_fd: dict[int, socket.socket] = {}
        for r in rx:
            self.ep.register(r.fileno(), select.EPOLLIN)
            self.by_fd[r.fileno()] = r
        self.buf = bytearray(2048)

    def drain(self, expect: int) -> int:
        n, buf, poll, by_fd = 0, self.buf, self.ep.poll, self.by_fd
        while n < expect:
            events = poll(0)
            if not events:
                break
            for fd, _ in events:
                recv = by_fd[fd].recvfrom_into
                try:
                    while True:
                        recv(buf)
                        n += 1
                except BlockingIOError:
                    pass
        return n


class _EpollRecvmmsg:
    """select.epoll + BurstSocket.recv_batch (one recvmmsg) per ready socket,
    from Python."""

    def __init__(self, rx: list[socket.socket], stack: ExitStack):
        self.ep = stack.enter_context(select.epoll())
        self.by_fd: dict[int, BurstSocket] = {}
        for r in rx:
            self.ep.register(r.fileno(), select.EPOLLIN)
            self.by_fd[r.fileno()] = BurstSocket(r, gso=False)
        self.batch = _native.PacketBatch(64, 2048)

    def drain(self, expect: int) -> int:
        n, poll, batch, by_fd = 0, self.ep.poll, self.batch, self.by_fd
        while n < expect:
            events = poll(0)
            if not events:
                break
            for fd, _ in events:
                n += by_fd[fd].recv_batch(batch, 0)
        return n


class _RingDrain:
    """burstio.SocketSet.recv_batch: one C call for every socket."""

    def __init__(self, rx: list[socket.socket], backend: str):
        self.ring = SocketSet(backend=backend, max_sockets=len(rx))
        for r in rx:
            self.ring.add(r)
        self.batch = _native.PacketBatch(4096, 2048)
        self.ring.recv_batch(self.batch, 0)  # arm the receives before any traffic

    def drain(self, expect: int) -> int:
        n, recv, batch = 0, self.ring.recv_batch, self.batch
        while n < expect:
            k = recv(batch, 0)
            if not k:
                break
            n += k
        return n


def _fill(senders: list[socket.socket], counts: list[int], payload: bytes) -> int:
    for s, k in zip(senders, counts, strict=False):
        for _ in range(k):
            s.send(payload)
    return sum(counts)


def rx_many_sockets(opts: Options, progress: Progress) -> ScenarioResult:
    names = ["stdlib", "epoll-recvmmsg", "burstio-epoll", "burstio-uring"]
    caps = capabilities()
    res = ScenarioResult(
        "rx-many-sockets", {"sockets": PAIRS, "datagrams_per_socket": "1-4", "size": opts.size},
        {n: Variant(n) for n in names},
        targets=[Target("burstio-uring", "syscalls_per_datagram", "epoll-recvmmsg", 1 / 8, False),
                 Target("burstio-uring", "datagrams_per_s", "stdlib", 1.5, True)],
        baselines=("stdlib", "epoll-recvmmsg"),
        syscall_source=syscall_source())
    if not caps.io_uring:
        names.remove("burstio-uring")
        del res.variants["burstio-uring"]
        res.notes.append(f"io_uring unavailable ({caps['io_uring'].detail}): no burstio-uring variant")
    _raise_fd_limit(2 * PAIRS * len(names) + 256)
    rng = random.Random(1234)
    payload = bytes(opts.size)
    with ExitStack() as stack, pinned(opts.cpu):
        sets = {n: _pairs(stack, PAIRS) for n in names}
        drains: dict[str, _Drain] = {"stdlib": _Stdlib(sets["stdlib"][0], stack),
                  "epoll-recvmmsg": _EpollRecvmmsg(sets["epoll-recvmmsg"][0], stack),
                  "burstio-epoll": _RingDrain(sets["burstio-epoll"][0], "epoll")}
        if "burstio-uring" in names:
            drains["burstio-uring"] = _RingDrain(sets["burstio-uring"][0], "uring")
            res.params["ring"] = cast(_RingDrain, drains["burstio-uring"]).ring.describe().split(",")[0]
        for rd in ("burstio-epoll", "burstio-uring"):
            if rd in drains:
                stack.callback(cast(_RingDrain, drains[rd]).ring.close)

        def fill(name: str) -> int:
            return _fill(sets[name][1], [rng.randint(1, 4) for _ in range(PAIRS)], payload)

        for _r, order in rounds(opts, names, progress):
            for name in order:
                progress.show(name)
                expect = fill(name)
                got, wall, cpu = timed(lambda: drains[name].drain(expect))  # noqa: B023 - called right here
                res.variants[name].add(got, wall, cpu)
                if got != expect and not res.variants[name].extra.get("short"):
                    res.variants[name].extra["short"] = True
                    res.notes.append(f"{name}: a round drained {got} of {expect} datagrams")
        progress.show("counting syscalls")
        for name in names:
            expect = fill(name)
            box: list[int] = []

            def work() -> int:
                box.append(drains[name].drain(expect))  # noqa: B023 - called right here, in this iteration
                return 0

            d = drains[name]
            ring = d.ring if isinstance(d, _RingDrain) else None
            before = ring.counters["syscalls"] if ring else 0
            calls = count_syscalls(os.getpid(), work)
            if calls is None and ring is not None:  # no perf: the set's own count
                calls, res.variants[name].syscalls_by = ring.counters["syscalls"] - before, OWN_COUNTER
            res.variants[name].syscalls, res.variants[name].syscall_datagrams = calls, box[0]
    return res


def _set_syscalls(ring: SocketSet) -> int:
    return ring.counters["syscalls"]


def tx_redundant(opts: Options, progress: Progress) -> ScenarioResult:
    n_payloads = 64
    caps = capabilities()
    names = ["stdlib", "stdlib-gso", "burstio-uring", "burstio-uring-nogso", "burstio-epoll"]
    if not caps.io_uring:
        names = ["stdlib", "stdlib-gso", "burstio-epoll"]
    res = ScenarioResult(
        "tx-redundant", {"paths": PATHS, "payloads": n_payloads, "size": opts.size, "receiver": "no GRO"},
        {n: Variant(n) for n in names},
        targets=[Target("burstio-uring", "datagrams_per_s", "stdlib-gso", 1.0, True)],
        baselines=("stdlib", "stdlib-gso"),
        syscall_source=syscall_source())
    reps = 64  # calls per round: 64 x 64 payloads x 4 paths = 16384 datagram-sends
    with ExitStack() as stack, pinned(opts.cpu):
        rx, paths = _pairs(stack, PATHS)
        for r in rx:
            r.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)  # room for a round
        batch = _native.PacketBatch(n_payloads, max(1, opts.size))
        for i in range(n_payloads):
            batch.append(bytes([i % 256]) * opts.size)  # no address: each path's connected peer
        rings: dict[str, tuple[SocketSet, list[int]]] = {}
        for name, backend, gso in (("burstio-uring", "uring", True), ("burstio-uring-nogso", "uring", False),
                                   ("burstio-epoll", "epoll", True)):
            if name in names:
                ring = SocketSet(backend=backend, gso=gso)
                stack.callback(ring.close)
                group = [ring.add(p) for p in paths]
                rings[name] = (ring, group)
        payloads = [bytes(batch[i]) for i in range(n_payloads)]
        sinks = [BurstSocket(r, gso=False) for r in rx]
        sink_batch = _native.PacketBatch(1024, 2048)

        def stdlib() -> int:
            sends = [p.send for p in paths]
            for _ in range(reps):
                for payload in payloads:
                    for send in sends:
                        send(payload)
            return reps * n_payloads * PATHS

        def ring_run(name: str) -> Callable[[], int]:
            ring, group = rings[name]

            def run() -> int:
                sent = 0
                for _ in range(reps):
                    sent += ring.send_redundant(batch, group).sent
                return sent
            return run

        anc = [(SOL_UDP, UDP_SEGMENT, struct.pack("H", max(1, opts.size)))]
        iov = [memoryview(p) for p in payloads]

        def stdlib_gso() -> int:
            sendmsgs = [p.sendmsg for p in paths]
            for _ in range(reps):
                for sendmsg in sendmsgs:
                    sendmsg(iov, anc)
            return reps * n_payloads * PATHS

        runs = {"stdlib": stdlib, "stdlib-gso": stdlib_gso, **{n: ring_run(n) for n in rings}}
        own: dict[str, Callable[[], int]] = {n: functools.partial(_set_syscalls, ring)
                                             for n, (ring, _) in rings.items()}

        def settle() -> int:
            total = 0
            for s in sinks:
                while k := s.recv_batch(sink_batch, 0):
                    total += k
            return total

        measure_sends(res, opts, progress, runs, settle, own)
    return res
