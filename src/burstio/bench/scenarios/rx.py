"""Receive scenarios: drain a pre-filled socket queue.

Filling first and draining after means the sender is never the bottleneck:
the figure is what the receiving side costs per datagram, syscall and
kernel work included, which is what a busy server pays.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Callable
from contextlib import ExitStack
from typing import IO, TypedDict, cast

from ... import _native
from ..._caps import capabilities
from ..._kernel import SOL_UDP, UDP_GRO
from ..._udp import BurstSocket
from .. import cref
from ..common import OWN_COUNTER, Options, count_syscalls, pinned, rounds, syscall_source, timed
from ..procs import finish
from ..report import Progress, ScenarioResult, Target, Variant

FLOWS = 64  # distinct source ports in rx-many-flow
RCVBUF_PER_DATAGRAM = 4096  # generous: a 64-byte datagram's skb truesize is ~1 KiB
GRO_CMSG_SPACE = socket.CMSG_SPACE(4)  # the UDP_GRO cmsg carries the segment size as an int
WARMUP_ROUNDS = 1  # untimed rounds of every variant before the timed ones


def drain_stdlib(sock: socket.socket, buf: bytearray) -> int:
    """The stdlib way: recvfrom_into until the queue is empty."""
    recv = sock.recvfrom_into
    n = 0
    try:
        while True:
            recv(buf)
            n += 1
    except BlockingIOError:
        return n


def drain_stdlib_gro(sock: socket.socket, buf: bytearray) -> int:
    """The stdlib way with UDP_GRO on: recvmsg_into, the segment size from
    the UDP_GRO cmsg, each coalesced message split into one memoryview per
    datagram (what burstio's batch gives as entries)."""
    recv, view = sock.recvmsg_into, memoryview(buf)
    iov, anc = [view], GRO_CMSG_SPACE
    n = 0
    try:
        while True:
            size, ancdata, _flags, _addr = recv(iov, anc)
            seg = size
            for level, kind, data in ancdata:
                if level == SOL_UDP and kind == UDP_GRO:
                    seg = int.from_bytes(data[:4], "little")
            datagrams = [view[o:o + seg] for o in range(0, size, seg)] if seg else [view[:0]]
            n += len(datagrams)
    except BlockingIOError:
        return n


def drain_burstio(sock: BurstSocket, batch: _native.PacketBatch) -> int:
    """recv_batch until the queue is empty."""
    recv = sock.recv_batch
    n = 0
    while True:
        k = recv(batch, 0)
        if not k:
            return n
        n += k
    return n


def _check(variant: Variant, got: int, want: int, notes: list[str]) -> None:
    if got != want and not variant.extra.get("short_fill"):
        variant.extra["short_fill"] = True
        notes.append(f"{variant.name}: a round drained {got} of {want} datagrams sent "
                     "(the receive buffer overflowed during the fill); rates use what was drained")


class _DrainResult(TypedDict):
    """What bench/c/rx_recvmmsg.c prints per drain (one JSON object)."""

    datagrams: int
    bytes: int
    ns: int
    cpu_ns: int
    calls: int


C_OWN_COUNT = "the C reference's own count of its recvmmsg calls (perf unavailable)"


class _CReference:
    """bench/c/rx_recvmmsg.c on the receiving socket's inherited fd: one
    long-lived process (started once, its buffers pre-faulted), one drain
    per command over a pipe, as warm as the Python variants."""

    def __init__(self, sock: socket.socket, batch: int, slot: int):
        exe = cref.build("rx_recvmmsg")
        fd = sock.fileno()
        self.proc = subprocess.Popen([str(exe), str(fd), str(batch), str(slot)], pass_fds=(fd,),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def drain(self) -> _DrainResult:
        stdin, stdout = cast(IO[str], self.proc.stdin), cast(IO[str], self.proc.stdout)  # both PIPEs
        stdin.write("drain\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"the C reference exited with {self.proc.wait()}")
        result: _DrainResult = json.loads(line)
        return result

    def counted(self) -> tuple[int | None, int, str | None]:
        """(syscalls, datagrams, counted by) of one drain: perf attached to
        the process (its drain, plus the command's read and the answer's
        write), or the program's own count of recvmmsg calls without perf."""
        box: list[_DrainResult] = []

        def work() -> int:
            box.append(self.drain())
            return 0

        calls = count_syscalls(self.proc.pid, work)
        if calls is None:
            return box[0]["calls"], box[0]["datagrams"], C_OWN_COUNT
        return calls, box[0]["datagrams"], None

    def close(self) -> None:
        """End the process (end of its input; killed after 10 s)."""
        finish(self.proc)


def _count_python(res: ScenarioResult, name: str, drain: Callable[[], int],
                  own: Callable[[], int] | None) -> None:
    """Count one drain's syscalls with perf; without perf, a burstio socket's
    own counter (``own``) stands in, and a stdlib variant stays n/a."""
    got_box: list[int] = []
    before = own() if own else 0

    def work() -> int:
        got_box.append(drain())
        return 0

    calls = count_syscalls(os.getpid(), work)
    v = res.variants[name]
    if calls is None and own is not None:
        calls, v.syscalls_by = own() - before, OWN_COUNTER
    v.syscalls, v.syscall_datagrams = calls, got_box[0]


def rx_many_flow(opts: Options, progress: Progress) -> ScenarioResult:
    """Drain a queue of 64-byte datagrams from 64 source ports. The fair
    baseline is the C reference (recvmmsg from C, long-lived and warm):
    burstio's target is to come close to it. The stdlib ratio is shown for
    information: it is mostly the kernel's per-datagram cost against
    Python's per-call cost on this host, not something burstio adds."""
    names = ["stdlib", "burstio", "c-reference"]
    res = ScenarioResult(
        "rx-many-flow",
        {"size": opts.size, "batch": opts.batch, "flows": FLOWS, "queue": opts.queue},
        {n: Variant(n) for n in names},
        targets=[Target("burstio", "datagrams_per_s", "c-reference", 0.9, True),
                 Target("burstio", "syscalls_per_datagram", None, 1 / 32, False)],
        baselines=("stdlib", "c-reference"),
        syscall_source=syscall_source())
    with ExitStack() as stack, pinned(opts.cpu):
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx = stack.enter_context(BurstSocket(raw, rcvbuf=opts.queue * RCVBUF_PER_DATAGRAM))
        raw.bind(("127.0.0.1", 0))
        raw.setblocking(False)
        dest = raw.getsockname()
        senders = [stack.enter_context(BurstSocket.bind(("127.0.0.1", 0), gso=False)) for _ in range(FLOWS)]
        bursts = []
        for _ in senders:
            b = _native.PacketBatch(64, max(opts.size, 1))
            for _ in range(64):
                b.append(bytes(opts.size), dest)
            bursts.append(b)

        def fill() -> None:
            sent, i = 0, 0
            while sent < opts.queue:
                k = min(64, opts.queue - sent)
                sent += senders[i % FLOWS].send_batch(bursts[i % FLOWS], 0, k)
                i += 1

        batch = _native.PacketBatch(opts.batch, 2048)
        buf = bytearray(2048)
        ref = _CReference(raw, opts.batch, 2048)
        stack.callback(ref.close)
        python = {"stdlib": lambda: drain_stdlib(raw, buf), "burstio": lambda: drain_burstio(rx, batch)}

        def one(name: str) -> tuple[int, float, float]:
            fill()
            if name == "c-reference":
                d = ref.drain()
                return d["datagrams"], d["ns"] / 1e9, d["cpu_ns"] / 1e9
            return timed(python[name])

        for name in names * WARMUP_ROUNDS:
            progress.show(f"warming up {name}")
            one(name)
        for _r, order in rounds(opts, names, progress):
            for name in order:
                progress.show(name)
                got, wall, cpu = one(name)
                res.variants[name].add(got, wall, cpu)
                _check(res.variants[name], got, opts.queue, res.notes)

        progress.show("counting syscalls")
        for name in names:
            fill()
            v = res.variants[name]
            if name == "c-reference":
                v.syscalls, v.syscall_datagrams, v.syscalls_by = ref.counted()
            else:
                _count_python(res, name, python[name],
                              (lambda: rx.counters["rx_syscalls"]) if name == "burstio" else None)
        res.variants["burstio"].extra["mechanism"] = rx.describe()
    return res


def rx_gro(opts: Options, progress: Progress) -> ScenarioResult:
    """Drain one bulk flow sent with GSO (64 x 64 B per send). The fair pair
    is ``stdlib-gro`` (recvmsg_into with UDP_GRO on, each coalesced message
    split into per-datagram memoryviews in Python, by the segment size from
    the cmsg) against ``burstio-gro`` (recv_batch, the split done in C);
    ``stdlib`` (recvfrom_into, no GRO) is shown for information."""
    names = ["stdlib", "stdlib-gro", "burstio-gro"]
    caps = capabilities()
    res = ScenarioResult(
        "rx-gro",
        {"size": opts.size, "segments_per_send": 64, "queue": opts.queue},
        {n: Variant(n) for n in names},
        targets=[Target("burstio-gro", "datagrams_per_s", "stdlib-gro", 1.5, True)],
        baselines=("stdlib", "stdlib-gro"),
        syscall_source=syscall_source())
    if not caps.udp_gro:
        res.notes.append(f"UDP GRO unavailable ({caps['udp_gro'].detail}): the GRO variants receive without it")
    if not caps.udp_segment:
        res.notes.append(f"UDP GSO unavailable ({caps['udp_segment'].detail}): the flow is sent datagram by datagram")
    with ExitStack() as stack, pinned(opts.cpu):
        tx = stack.enter_context(BurstSocket.bind(("127.0.0.1", 0)))
        rcvbuf = opts.queue * RCVBUF_PER_DATAGRAM
        plain = stack.enter_context(BurstSocket.bind(("127.0.0.1", 0), rcvbuf=rcvbuf))
        std_gro = stack.enter_context(BurstSocket.bind(("127.0.0.1", 0), rcvbuf=rcvbuf))
        gro = stack.enter_context(BurstSocket.bind(("127.0.0.1", 0), gro=True, rcvbuf=rcvbuf))
        for s in (plain, std_gro, gro):
            s.setblocking(False)
        if caps.udp_gro:
            std_gro.sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        payload = bytes(64 * opts.size)

        def fill(dest: BurstSocket) -> None:
            addr = dest.getsockname()
            for _ in range(opts.queue // 64):
                tx.send_segments(payload, opts.size, addr)

        want = opts.queue // 64 * 64
        batch = _native.PacketBatch(4096, _native.GRO_SLOT_MIN, slots=32)
        buf = bytearray(2048)
        gro_buf = bytearray(_native.GRO_SLOT_MIN)
        drains = {"stdlib": (plain, lambda: drain_stdlib(plain.sock, buf)),
                  "stdlib-gro": (std_gro, lambda: drain_stdlib_gro(std_gro.sock, gro_buf)),
                  "burstio-gro": (gro, lambda: drain_burstio(gro, batch))}
        for name in names * WARMUP_ROUNDS:
            progress.show(f"warming up {name}")
            fill(drains[name][0])
            drains[name][1]()
        for _r, order in rounds(opts, names, progress):
            for name in order:
                progress.show(name)
                sock, drain = drains[name]
                fill(sock)
                got, wall, cpu = timed(drain)
                res.variants[name].add(got, wall, cpu)
                _check(res.variants[name], got, want, res.notes)
        progress.show("counting syscalls")
        for name in names:
            sock, drain = drains[name]
            fill(sock)
            _count_python(res, name, drain, (lambda: gro.counters["rx_syscalls"]) if name == "burstio-gro" else None)
        c = gro.counters
        res.variants["burstio-gro"].extra.update(
            gro=gro.gro, datagrams_per_gro_message=round(c["rx_gro_datagrams"] / max(1, c["rx_gro_messages"]), 1))
    return res
