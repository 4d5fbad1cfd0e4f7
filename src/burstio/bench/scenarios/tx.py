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
GSO_SEGMENTS = 64  # the kernel takes at most 64 segments per UDP_SEGMENT send


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
                      {"burstio": lambda: tx.counters["tx_syscalls"]})
    return res


def _sendmsg_gso_loop(sock: socket.socket, buf: bytes, seg: int, addr: Address, reps: int) -> Callable[[], int]:
    """What a stdlib user who knows GSO writes for one contiguous buffer:
    sendmsg with UDP_SEGMENT over consecutive slices of at most 64 segments
    (the kernel's limit per send), the slices cut once, before timing."""
    anc = [(SOL_UDP, UDP_SEGMENT, struct.pack("H", seg))]
    view = memoryview(buf)
    step = GSO_SEGMENTS * seg
    slices = [[view[o:o + step]] for o in range(0, len(buf), step)]
    per_run = -(-len(buf) // seg)

    def run() -> int:
        sendmsg = sock.sendmsg
        for _ in range(reps):
            for iov in slices:
                sendmsg(iov, anc, 0, addr)
        return reps * per_run
    return run


def _sendmsg_iov_loop(sock: socket.socket, batch: _native.PacketBatch, seg: int, addr: Address,
                      reps: int) -> Callable[[], int]:
    """The stdlib counterpart of send_batch: the batch's own entries (one
    buffer each in the batch's arena) as the iovecs of sendmsg with
    UDP_SEGMENT, 64 entries per call; the iovec lists are built once."""
    anc = [(SOL_UDP, UDP_SEGMENT, struct.pack("H", seg))]
    entries = [batch[i] for i in range(len(batch))]
    iovs = [entries[o:o + GSO_SEGMENTS] for o in range(0, len(entries), GSO_SEGMENTS)]

    def run() -> int:
        sendmsg = sock.sendmsg
        for _ in range(reps):
            for iov in iovs:
                sendmsg(iov, anc, 0, addr)
        return reps * len(entries)
    return run


def _send_segments_loop(sock: BurstSocket, buf: bytes, seg: int, addr: Address, reps: int) -> Callable[[], int]:
    def run() -> int:
        send = sock.send_segments
        n = 0
        for _ in range(reps):
            n += send(buf, seg, addr)
        return n
    return run


def tx_gso(opts: Options, progress: Progress) -> ScenarioResult:
    """One destination, 1,024 datagrams per run of each variant, in two fair
    pairs doing the same work:

    - one contiguous buffer: ``stdlib-gso`` (sendmsg with UDP_SEGMENT over
      its 64-segment slices) against ``burstio-segments`` (``send_segments``
      on the same buffer);
    - 1,024 separate entries of a batch: ``stdlib-gso-iov`` (sendmsg with
      UDP_SEGMENT, the entries as 64 iovecs per call) against
      ``burstio-gso`` (``send_batch``).

    ``stdlib`` (a sendto loop) is shown for information. The usual receiver
    has GRO on, so a GSO send is queued to it whole; on a real link the NIC
    (or the device layer) would segment it and the peer's CPU would receive
    it. ``burstio-gso-rx-split`` sends to a receiver without GRO: on loopback
    the kernel then splits every GSO send into datagrams in the sender's
    context, which is the upper bound of what segmentation costs the sender."""
    caps = capabilities()
    per_batch = 1024
    names = ["stdlib", "stdlib-gso", "burstio-segments", "stdlib-gso-iov", "burstio-gso", "burstio-gso-rx-split"]
    res = ScenarioResult(
        "tx-gso", {"size": opts.size, "destinations": 1, "segments_per_send": GSO_SEGMENTS,
                   "datagrams_per_call": per_batch, "receiver": "gro"},
        {n: Variant(n) for n in names},
        targets=[Target("burstio-segments", "datagrams_per_s", "stdlib-gso", 1.0, True),
                 Target("burstio-gso", "datagrams_per_s", "stdlib-gso-iov", 0.9, True)],
        syscall_source=syscall_source())
    if not caps.udp_segment:
        res.notes.append(f"UDP GSO unavailable ({caps['udp_segment'].detail}): the GSO variants send without it")
    bulk = 16 * 16384  # datagrams per timed run of a GSO variant
    with ExitStack() as stack, pinned(opts.cpu):
        rx = stack.enter_context(BurstSocket.bind(("127.0.0.1", 0), gro=True,
                                                  rcvbuf=bulk * RCVBUF_PER_DATAGRAM // 16))
        split = stack.enter_context(BurstSocket.bind(("127.0.0.1", 0),
                                                     rcvbuf=32768 * RCVBUF_PER_DATAGRAM))
        tx = stack.enter_context(BurstSocket.bind(("127.0.0.1", 0)))
        dest, split_dest = rx.getsockname(), split.getsockname()
        seg = max(1, opts.size)
        payload = bytes(opts.size)
        contiguous = payload * per_batch
        batch = _native.PacketBatch(per_batch, seg)
        split_batch = _native.PacketBatch(per_batch, seg)
        for _ in range(per_batch):
            batch.append(payload, dest)
            split_batch.append(payload, split_dest)
        sink = _native.PacketBatch(4096, _native.GRO_SLOT_MIN, slots=32)
        reps = bulk // per_batch
        runs = {"stdlib": _sendto_loop(tx.sock, [(payload, dest)], 16384),
                "stdlib-gso": _sendmsg_gso_loop(tx.sock, contiguous, seg, dest, reps),
                "burstio-segments": _send_segments_loop(tx, contiguous, seg, dest, reps),
                "stdlib-gso-iov": _sendmsg_iov_loop(tx.sock, batch, seg, dest, reps),
                "burstio-gso": _send_batch_loop(tx, batch, reps),
                "burstio-gso-rx-split": _send_batch_loop(tx, split_batch, 32768 // per_batch)}
        own = {n: (lambda: tx.counters["tx_syscalls"]) for n in names if n.startswith("burstio")}
        measure_sends(res, opts, progress, runs, lambda: _drain_all([rx, split], sink), own)
        c = tx.counters
        res.variants["burstio-gso"].extra.update(
            gso=tx.gso, datagrams_per_gso_send=round(c["tx_gso_datagrams"] / max(1, c["tx_gso_messages"]), 1),
            gso_downgrades=c["gso_downgrades"])
    res.baselines = ("stdlib", "stdlib-gso", "stdlib-gso-iov")
    return res
