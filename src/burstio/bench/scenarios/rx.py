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
from contextlib import ExitStack
from typing import IO, TypedDict, cast

from ... import _native
from ..._caps import capabilities
from ..._udp import BurstSocket
from .. import cref
from ..common import Options, count_syscalls, pinned, rounds, syscall_source, timed
from ..report import Progress, ScenarioResult, Target, Variant

FLOWS = 64  # distinct source ports in rx-many-flow
RCVBUF_PER_DATAGRAM = 4096  # generous: a 64-byte datagram's skb truesize is ~1 KiB


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
    """What bench/c/rx_recvmmsg.c prints (one JSON object)."""

    datagrams: int
    bytes: int
    ns: int
    cpu_ns: int
    calls: int


class _CReference:
    """Runs bench/c/rx_recvmmsg.c on the receiving socket's inherited fd."""

    def __init__(self, sock: socket.socket, batch: int, slot: int):
        self.exe = cref.build("rx_recvmmsg")
        self.fd = sock.fileno()
        self.args = [str(self.exe), str(self.fd), str(batch), str(slot)]

    def drain(self) -> _DrainResult:
        r = subprocess.run(self.args, pass_fds=(self.fd,), capture_output=True, text=True, check=True)
        result: _DrainResult = json.loads(r.stdout)
        return result

    def counted(self) -> tuple[int | None, int]:
        """(syscalls, datagrams) of one drain, counted by perf on the child."""
        p = subprocess.Popen([*self.args, "--wait"], pass_fds=(self.fd,), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        out: list[str] = []
        stdin, stdout = cast(IO[str], p.stdin), cast(IO[str], p.stdout)  # both PIPEs

        def go() -> None:
            stdin.write("g")
            stdin.close()

        def work() -> int:
            out.append(stdout.read())
            return p.wait()

        calls = count_syscalls(p.pid, work, start=go)
        if p.poll() is None:  # perf unavailable: the child still waits
            go()
            work()
        data: _DrainResult = json.loads(out[-1])
        return (calls if calls is not None else data["calls"]), data["datagrams"]


def rx_many_flow(opts: Options, progress: Progress) -> ScenarioResult:
    names = ["stdlib", "burstio", "c-reference"]
    res = ScenarioResult(
        "rx-many-flow",
        {"size": opts.size, "batch": opts.batch, "flows": FLOWS, "queue": opts.queue},
        {n: Variant(n) for n in names},
        targets=[Target("burstio", "datagrams_per_s", "stdlib", 1.8, True),
                 Target("burstio", "ns_per_datagram", "c-reference", 1.15, False),
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
        python = {"stdlib": lambda: drain_stdlib(raw, buf), "burstio": lambda: drain_burstio(rx, batch)}

        for r, order in rounds(opts, names):
            for name in order:
                progress.show(f"rx-many-flow: round {r + 1}, {name}")
                fill()
                if name == "c-reference":
                    d = ref.drain()
                    got, wall, cpu = d["datagrams"], d["ns"] / 1e9, d["cpu_ns"] / 1e9
                else:
                    got, wall, cpu = timed(python[name])
                res.variants[name].add(got, wall, cpu)
                _check(res.variants[name], got, opts.queue, res.notes)

        progress.show("rx-many-flow: counting syscalls")
        for name in names:
            fill()
            if name == "c-reference":
                calls, got = ref.counted()
            else:
                got_box: list[int] = []
                before = rx.counters["rx_syscalls"]

                def work() -> int:
                    got_box.append(python[name]())  # noqa: B023 - called right here, in this iteration
                    return 0

                calls = count_syscalls(os.getpid(), work)
                got = got_box[0]
                if calls is None:  # no perf: what the code itself counted
                    calls = rx.counters["rx_syscalls"] - before if name == "burstio" else got + 1
            res.variants[name].syscalls, res.variants[name].syscall_datagrams = calls, got
        res.variants["burstio"].extra["mechanism"] = rx.describe()
    return res


def rx_gro(opts: Options, progress: Progress) -> ScenarioResult:
    names = ["stdlib", "burstio-gro"]
    caps = capabilities()
    res = ScenarioResult(
        "rx-gro",
        {"size": opts.size, "segments_per_send": 64, "queue": opts.queue},
        {n: Variant(n) for n in names},
        targets=[Target("burstio-gro", "datagrams_per_s", "stdlib", 30.0, True)],
        syscall_source=syscall_source())
    if not caps.udp_gro:
        res.notes.append(f"UDP GRO unavailable ({caps['udp_gro'].detail}): burstio-gro receives without it")
    if not caps.udp_segment:
        res.notes.append(f"UDP GSO unavailable ({caps['udp_segment'].detail}): the flow is sent datagram by datagram")
    with ExitStack() as stack, pinned(opts.cpu):
        tx = stack.enter_context(BurstSocket.bind(("127.0.0.1", 0)))
        plain = stack.enter_context(BurstSocket.bind(("127.0.0.1", 0), rcvbuf=opts.queue * RCVBUF_PER_DATAGRAM))
        gro = stack.enter_context(BurstSocket.bind(("127.0.0.1", 0), gro=True,
                                                   rcvbuf=opts.queue * RCVBUF_PER_DATAGRAM))
        plain.setblocking(False)
        payload = bytes(64 * opts.size)

        def fill(dest: BurstSocket) -> None:
            addr = dest.getsockname()
            for _ in range(opts.queue // 64):
                tx.send_segments(payload, opts.size, addr)

        want = opts.queue // 64 * 64
        batch = _native.PacketBatch(4096, _native.GRO_SLOT_MIN, slots=32)
        buf = bytearray(2048)
        drains = {"stdlib": (plain, lambda: drain_stdlib(plain.sock, buf)),
                  "burstio-gro": (gro, lambda: drain_burstio(gro, batch))}
        for r, order in rounds(opts, names):
            for name in order:
                progress.show(f"rx-gro: round {r + 1}, {name}")
                sock, drain = drains[name]
                fill(sock)
                got, wall, cpu = timed(drain)
                res.variants[name].add(got, wall, cpu)
                _check(res.variants[name], got, want, res.notes)
        progress.show("rx-gro: counting syscalls")
        for name in names:
            sock, drain = drains[name]
            fill(sock)
            before = gro.counters["rx_syscalls"]
            got_box: list[int] = []

            def work() -> int:
                got_box.append(drain())  # noqa: B023 - called right here, in this iteration
                return 0

            calls = count_syscalls(os.getpid(), work)
            if calls is None:
                calls = gro.counters["rx_syscalls"] - before if name == "burstio-gro" else got_box[0] + 1
            res.variants[name].syscalls, res.variants[name].syscall_datagrams = calls, got_box[0]
        c = gro.counters
        res.variants["burstio-gro"].extra.update(
            gro=gro.gro, datagrams_per_gro_message=round(c["rx_gro_datagrams"] / max(1, c["rx_gro_messages"]), 1))
    return res
