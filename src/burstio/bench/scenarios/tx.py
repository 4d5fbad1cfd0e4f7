"""Send scenarios: a sender on loopback, its receivers drained between rounds.

Sending over loopback includes delivering to the receiving socket (the
kernel does it in the sender's context), so these are end-to-end costs of
getting a datagram into a peer's queue. Receivers have room for a whole
round, so no datagram is dropped (checked after every round).
"""
from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from contextlib import ExitStack

from ... import _native
from ..._caps import capabilities
from ..._kernel import SOL_UDP, UDP_SEGMENT
from ..._types import Address
from ..._udp import BurstSocket
from ..common import Options, measure_sends, pinned, syscall_source
from ..report import Progress, ScenarioResult, Target, Variant
from .rx import RCVBUF_PER_DATAGRAM

DESTINATIONS = 64


def _drain_all(receivers: list[BurstSocket], batch: _native.PacketBatch) -> int:
    total = 0
    for r in receivers:
        while k := r.recv_batch(batch, 0):
            total += k
    return total


def _sendto_loop(sock: socket.socket, pairs: list[tuple[bytes, Address]], reps: int) -> Callable[[], int]:
    def run() -> int:
        sendto = sock.sendto
        for _ in range(reps):
            for payload, addr in pairs:
                sendto(payload, addr)
        return reps * len(pairs)
    return run


def _send_batch_loop(sock: BurstSocket, batch: _native.PacketBatch, reps: int) -> Callable[[], int]:
    def run() -> int:
        send = sock.send_batch
        n = 0
        for _ in range(reps):
            n += send(batch)
        return n
    return run


def tx_many(opts: Options, progress: Progress) -> ScenarioResult:
    reps = 16384 // DESTINATIONS
    res = ScenarioResult(
        "tx-many", {"size": opts.size, "destinations": DESTINATIONS, "per_round": reps * DESTINATIONS},
        {n: Variant(n) for n in ("stdlib", "burstio")},
        targets=[Target("burstio", "datagrams_per_s", "stdlib", 1.2, True),
                 Target("burstio", "syscalls_per_datagram", None, 1 / 32, False)],
        syscall_source=syscall_source())
    with ExitStack() as stack, pinned(opts.cpu):
        receivers = [stack.enter_context(BurstSocket.bind(("127.0.0.1", 0), rcvbuf=reps * RCVBUF_PER_DATAGRAM))
                     for _ in range(DESTINATIONS)]
        tx = stack.enter_context(BurstSocket.bind(("127.0.0.1", 0)))
        payload = bytes(opts.size)
        pairs = [(payload, r.getsockname()) for r in receivers]
        batch = _native.PacketBatch(DESTINATIONS, max(1, opts.size))
        for p, a in pairs:  # one datagram per destination, round-robin
            batch.append(p, a)
        sink = _native.PacketBatch(1024, 2048)
        runs = {"stdlib": _sendto_loop(tx.sock, pairs, reps), "burstio": _send_batch_loop(tx, batch, reps)}
        measure_sends(res, opts, progress, runs, lambda: _drain_all(receivers, sink),
                      lambda: tx.counters["tx_syscalls"])
    return res


def _sendmsg_gso_loop(sock: socket.socket, buf: bytes, seg: int, addr: Address, reps: int) -> Callable[[], int]:
    """What a stdlib user who knows GSO can write: sendmsg with UDP_SEGMENT,
    one call per 64 datagrams."""
    anc = [(SOL_UDP, UDP_SEGMENT, struct.pack("H", seg))]
    per_call = -(-len(buf) // seg)

    def run() -> int:
        sendmsg = sock.sendmsg
        for _ in range(reps):
            sendmsg([buf], anc, 0, addr)
        return reps * per_call
    return run


def tx_gso(opts: Options, progress: Progress) -> ScenarioResult:
    """One destination. The usual receiver has GRO on, so a GSO send is
    queued to it whole; on a real link the NIC (or the device layer) would
    segment it and the peer's CPU would receive it. `burstio-gso-rx-split`
    sends to a receiver without GRO: on loopback the kernel then splits every
    GSO send into datagrams in the sender's context, which is the upper bound
    of what segmentation costs the sender."""
    caps = capabilities()
    per_batch = 1024
    names = ["stdlib", "stdlib-gso", "burstio-gso", "burstio-gso-rx-split"]
    res = ScenarioResult(
        "tx-gso", {"size": opts.size, "destinations": 1, "segments_per_send": 64, "receiver": "gro"},
        {n: Variant(n) for n in names},
        targets=[Target("burstio-gso", "datagrams_per_s", "stdlib", 20.0, True)],
        syscall_source=syscall_source())
    if not caps.udp_segment:
        res.notes.append(f"UDP GSO unavailable ({caps['udp_segment'].detail}): the GSO variants send without it")
    rounds_of = {"stdlib": 16384, "stdlib-gso": 16 * 16384, "burstio-gso": 16 * 16384,
                 "burstio-gso-rx-split": 32768}
    with ExitStack() as stack, pinned(opts.cpu):
        rx = stack.enter_context(BurstSocket.bind(("127.0.0.1", 0), gro=True,
                                                  rcvbuf=16 * 16384 * RCVBUF_PER_DATAGRAM // 16))
        split = stack.enter_context(BurstSocket.bind(("127.0.0.1", 0),
                                                     rcvbuf=32768 * RCVBUF_PER_DATAGRAM))
        tx = stack.enter_context(BurstSocket.bind(("127.0.0.1", 0)))
        dest, split_dest = rx.getsockname(), split.getsockname()
        payload = bytes(opts.size)
        batch = _native.PacketBatch(per_batch, max(1, opts.size))
        split_batch = _native.PacketBatch(per_batch, max(1, opts.size))
        for _ in range(per_batch):
            batch.append(payload, dest)
            split_batch.append(payload, split_dest)
        sink = _native.PacketBatch(4096, _native.GRO_SLOT_MIN, slots=32)
        runs = {"stdlib": _sendto_loop(tx.sock, [(payload, dest)], rounds_of["stdlib"]),
                "stdlib-gso": _sendmsg_gso_loop(tx.sock, payload * 64, max(1, opts.size), dest,
                                                rounds_of["stdlib-gso"] // 64),
                "burstio-gso": _send_batch_loop(tx, batch, rounds_of["burstio-gso"] // per_batch),
                "burstio-gso-rx-split": _send_batch_loop(tx, split_batch,
                                                         rounds_of["burstio-gso-rx-split"] // per_batch)}
        measure_sends(res, opts, progress, runs, lambda: _drain_all([rx, split], sink),
                      lambda: tx.counters["tx_syscalls"])
        c = tx.counters
        res.variants["burstio-gso"].extra.update(
            gso=tx.gso, datagrams_per_gso_send=round(c["tx_gso_datagrams"] / max(1, c["tx_gso_messages"]), 1),
            gso_downgrades=c["gso_downgrades"])
    res.baselines = ("stdlib", "stdlib-gso")
    return res
