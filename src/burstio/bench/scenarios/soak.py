"""``soak``: many datagrams through every path; nothing lost unaccounted, nothing leaked.

Each path moves numbered datagrams (an 8-byte sequence number first) from a
sender to a receiver that checks every number with numpy: delivered (each
number once), duplicated, reordered (a number below one already seen on its
flow), dropped where the path can drop and counts it, and lost unaccounted
(sent - delivered - dropped: must be 0). RSS (/proc/self/status VmRSS) and
open descriptors (/proc/self/fd) are sampled after a warm-up and at the end,
with the path's objects open both times, so what grows is what the path
leaks while it runs. Paths:

- ``mmsg``: BurstSocket to BurstSocket (recvmmsg/sendmmsg) on loopback;
  dropped: the receiving socket's kernel drops (SO_MEMINFO).
- ``socketset-uring``, ``socketset-epoll``: a BurstSocket sends round-robin
  to 4 sockets a SocketSet receives from (the flow is the socket); dropped:
  the sockets' kernel drops; the set's ENOBUFS re-arms and per-socket errors
  are reported beside them.
- ``pipe``: ports.pipe between this process and a forked producer; a full
  ring makes the producer wait, so nothing is dropped; the producer's RSS
  and descriptors are sampled too. Its warm-up makes each side sleep once
  (a port opens a pidfd on its peer the first time it sleeps: that
  descriptor is not growth).
- ``aio-asyncio``, ``aio-uvloop``: burstio.aio endpoints on one loop
  (``sendto_many`` of a batch, a batch protocol receiving); dropped: the
  receiver's kernel drops; errors: error_received calls.

``--datagrams N`` is the total over the paths run, split evenly (default
10^8); ``--paths a,b`` picks paths. The sender sends a batch and the
receiver drains it before the next, so a drop is rare, and every one is
counted where it happened. Targets: per path, nothing lost unaccounted, RSS
growth under 1 MiB, no descriptor growth; in all, 10^8 datagrams.
"""
from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ... import _native
from ..._socketset import SocketSet
from ..._udp import BurstSocket
from ..common import Options
from ..report import Progress, ScenarioResult, Target, Variant

__all__ = ["soak", "PATHS", "DEFAULT_DATAGRAMS"]

PATHS = ("mmsg", "socketset-uring", "socketset-epoll", "pipe", "aio-asyncio", "aio-uvloop")
DEFAULT_DATAGRAMS = 10**8
BURST = 256  # datagrams per send, drained before the next
FLOWS = 4  # receiving sockets of a SocketSet path
SLOT = 2048
RCVBUF = 4 << 20
RING = 4 * BURST  # slots of the pipe path's rings
QUIET = 2.0  # seconds without a datagram after which what is missing is lost


# ---- accounting ------------------------------------------------------------------------------


def rss_kib(pid: int | str = "self") -> int:
    """Resident set size of a process, KiB (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def open_fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Tally:
    """What one path's receiver saw, every sequence number checked."""

    total: int
    flows: int = 1
    sent: int = 0
    delivered: int = 0
    duplicates: int = 0
    reordered: int = 0
    corrupt: int = 0  # numbers never sent
    np: Any = None
    seen: Any = None
    top: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        import numpy as np
        self.np = np
        self.seen = np.zeros(self.total, dtype=np.bool_)
        self.seen[:] = False  # touch every page now: the bitmap is not growth
        self.top = [-1] * self.flows

    def take(self, seqs: Any, flow: int = 0) -> None:
        """Account received sequence numbers (a uint64 array) of one flow."""
        np, n = self.np, len(seqs)
        if not n:
            return
        known = seqs < self.total
        if not known.all():  # a number never sent: a corrupt datagram
            self.corrupt += int(n - np.count_nonzero(known))
            seqs = seqs[known]
            n = len(seqs)
            if not n:
                return
        fresh = seqs[~self.seen[seqs]]
        if len(fresh) > 1 and not (fresh[1:] > fresh[:-1]).all():  # not in order: a number may repeat
            fresh = np.unique(fresh)
        self.seen[fresh] = True
        self.delivered += len(fresh)
        self.duplicates += n - len(fresh)
        highest = np.maximum.accumulate(seqs)
        before = np.concatenate(([self.top[flow]], highest[:-1]))
        self.reordered += int(np.count_nonzero(seqs.astype(np.int64) < before))
        self.top[flow] = max(self.top[flow], int(highest[-1]))

    def take_batch(self, batch: _native.PacketBatch, n: int, memory: Any, flows: Any | None = None) -> None:
        """Account entries [0, n) of a received batch: the first 8 bytes of
        each, in ``memory`` (the bytes its offsets point into, as uint8)."""
        seqs = self.numbers(memory, self.np.frombuffer(batch.offsets, dtype=self.np.uint64)[:n])
        if flows is None:
            self.take(seqs)
            return
        per = flows[:n]
        for f in range(self.flows):
            self.take(seqs[per == f], f)


    def numbers(self, memory: Any, offsets: Any) -> Any:
        """The little-endian u64 at each offset of memory (uint8; offsets need not be aligned)."""
        np = self.np
        return memory[offsets[:, None] + np.arange(8, dtype=np.uint64)].view("<u8")[:, 0]


@dataclass
class Outcome:
    """A path's result, before it becomes a Variant."""

    tally: Tally
    dropped: dict[str, int] = field(default_factory=dict)  # where: how many
    info: dict[str, int] = field(default_factory=dict)  # counted, but not datagrams lost
    rss_growth_kib: int = 0
    fd_growth: int = 0
    seconds: float = 0.0
    cpu_s: float = 0.0
    peer: dict[str, float] = field(default_factory=dict)  # another process's growth (pipe)

    @property
    def lost_unaccounted(self) -> int:
        return self.tally.sent - self.tally.delivered - sum(self.dropped.values())


class Sampler:
    """RSS and descriptors after the warm-up, then at the end; the timed part between."""

    started = False

    def start(self) -> None:
        self.started = True
        self.rss, self.fds = rss_kib(), open_fds()
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def stop(self, out: Outcome) -> None:
        out.seconds, out.cpu_s = time.perf_counter() - self.t0, time.process_time() - self.c0
        out.rss_growth_kib, out.fd_growth = rss_kib() - self.rss, open_fds() - self.fds


def warmup_of(n: int) -> int:
    return max(min(n // 50, 1_000_000), min(n, 2 * BURST))


def _seq_batch(np: Any, dest: Any, size: int, flows: int = 1, k: int = BURST) -> tuple[_native.PacketBatch, Any, Any]:
    """A batch of k datagrams of ``size`` bytes to ``dest`` (a list of
    addresses, round-robin), and uint64 views to write their numbers."""
    batch = _native.PacketBatch(k, max(size, 8))
    for i in range(k):
        batch.append(bytes(max(size, 8)), dest[i % flows])
    words = np.frombuffer(batch.arena, dtype=np.uint64)
    index = np.frombuffer(batch.offsets, dtype=np.uint64)[:k] >> 3
    return batch, words, index


# ---- BurstSocket and SocketSet ----------------------------------------------------------------


def _drain(recv: Callable[[float], int], accounted: Callable[[], bool]) -> None:
    """Receive until everything sent is delivered or counted as dropped, or
    until nothing more comes for QUIET seconds (the rest is lost unaccounted)."""
    quiet = 0.0
    while not accounted():
        if recv(0.0):
            quiet = 0.0
        elif quiet < QUIET:
            if not recv(0.1):
                quiet += 0.1
        else:
            return


def run_mmsg(n: int, size: int) -> Outcome:
    import numpy as np
    rx = BurstSocket.bind(("127.0.0.1", 0), backend="mmsg", rcvbuf=RCVBUF)
    tx = BurstSocket(backend="mmsg")
    tally, sampler = Tally(n), Sampler()
    out = Outcome(tally)
    try:
        batch, words, index = _seq_batch(np, [rx.getsockname()], size)
        rb = _native.PacketBatch(BURST, SLOT)
        rbytes = np.frombuffer(rb.arena, dtype=np.uint8)

        def recv(timeout: float) -> int:
            k = rx.recv_batch(rb, timeout)
            tally.take_batch(rb, k, rbytes)
            return k

        def accounted() -> bool:
            return tally.delivered + tally.duplicates + rx.counters["kernel_drops"] >= tally.sent

        _pump(n, batch, words, index, lambda k: tx.send_batch(batch, 0, k), recv, accounted, tally, sampler, out)
        out.dropped["kernel socket (SO_MEMINFO)"] = rx.counters["kernel_drops"]
        sampler.stop(out)
    finally:
        rx.close()
        tx.close()
    return out


def _pump(n: int, batch: _native.PacketBatch, words: Any, index: Any, send: Callable[[int], int],
          recv: Callable[[float], int], accounted: Callable[[], bool], tally: Tally, sampler: Sampler,
          out: Outcome) -> None:
    """Send n numbered datagrams a burst at a time, draining after each; the
    sampler starts after the warm-up. (The sampler stops in the caller, with
    the path's objects still open.)"""
    np, warm, seq = tally.np, warmup_of(n), 0
    ramp = np.arange(BURST, dtype=np.uint64)
    while seq < n:
        if seq >= warm and not sampler.started:
            sampler.start()
        k = min(BURST, n - seq)
        words[index[:k]] = ramp[:k] + seq
        sent = send(k)
        seq += sent
        tally.sent += sent
        _drain(recv, accounted)
    if not sampler.started:
        sampler.start()


def run_socketset(n: int, size: int, backend: str) -> Outcome:
    import numpy as np
    ss = SocketSet(backend=backend, buffers=4096, buffer_size=SLOT)
    rxs = [BurstSocket.bind(("127.0.0.1", 0), rcvbuf=RCVBUF) for _ in range(FLOWS)]
    tx = BurstSocket(backend="mmsg")
    tally, sampler = Tally(n, FLOWS), Sampler()
    out = Outcome(tally)
    try:
        index_of = {ss.add(r): f for f, r in enumerate(rxs)}
        batch, words, index = _seq_batch(np, [r.getsockname() for r in rxs], size, FLOWS)
        rb = _native.PacketBatch(BURST, SLOT)
        rbytes = np.frombuffer(rb.arena, dtype=np.uint8)
        flow_of = np.zeros(max(index_of) + 1, dtype=np.int64)
        for i, f in index_of.items():
            flow_of[i] = f
        errors: list[tuple[int, int]] = []

        def recv(timeout: float) -> int:
            k = ss.recv_batch(rb, timeout)
            if k:
                tally.take_batch(rb, k, rbytes, flow_of[np.frombuffer(rb.sockets, dtype=np.int32)[:k]])
            errors.extend(ss.take_errors())
            return k

        def drops() -> int:
            return sum(r.counters["kernel_drops"] for r in rxs)

        def accounted() -> bool:
            return tally.delivered + tally.duplicates + drops() >= tally.sent

        _pump(n, batch, words, index, lambda k: tx.send_batch(batch, 0, k), recv, accounted, tally, sampler, out)
        out.dropped["kernel sockets (SO_MEMINFO)"] = drops()
        c = ss.counters
        out.info.update({"socket errors": len(errors), "rx_enobufs (re-armed, not dropped)": c["rx_enobufs"],
                         "rx_truncated": c["rx_truncated"]})
        sampler.stop(out)
    finally:
        ss.close()
        for r in rxs:
            r.close()
        tx.close()
    return out


# ---- a port pipe between two processes ---------------------------------------------------------


def _producer(conn: Any, port: Any, size: int) -> None:
    """The forked side of the pipe path: ("run", count) sends numbered
    messages (waiting while the ring is full), answers ("done", RSS KiB, fds)."""
    import numpy as np
    tx = port.tx
    batch = _native.PacketBatch(BURST, max(size, 8))
    for _ in range(BURST):
        batch.append(bytes(max(size, 8)))
    words = np.frombuffer(batch.arena, dtype=np.uint64)
    index = np.frombuffer(batch.offsets, dtype=np.uint64)[:BURST] >> 3
    ramp, seq = np.arange(BURST, dtype=np.uint64), 0
    while True:
        cmd = conn.recv()
        if cmd[0] == "stop":
            break
        end = seq + cmd[1]
        while seq < end:
            k = min(BURST, end - seq)
            if len(tx) < k:
                tx.wait(k)
            words[index[:k]] = ramp[:k] + seq
            tx.put_batch(batch, 0, k)
            tx.sync()
            seq += k
        conn.send(("done", rss_kib(), open_fds()))
    port.close()


def run_pipe(n: int, size: int) -> Outcome:
    import multiprocessing

    import numpy as np

    from ... import ports
    ctx = multiprocessing.get_context("fork")
    a, b = ports.pipe(slots=RING, slot_size=max(size, 8))
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_producer, args=(child, b, size), daemon=True)
    proc.start()
    child.close()
    b.close()  # the producer's now
    a.rx.sync()  # claimed before the producer's first sleep, which then watches this process (a pidfd) from the start
    tally, sampler = Tally(n), Sampler()
    out = Outcome(tally)
    try:
        pb = _native.PacketBatch(BURST, 1)
        memory = np.frombuffer(a.memory, dtype=np.uint8)
        warm = min(n, max(warmup_of(n), 4 * RING))
        peer0 = _consume(a, parent, pb, memory, tally, warm, pause=0.05)  # the producer waits for room
        a.rx.wait(1, 0.05)  # and this side for data: both have slept once
        sampler.start()
        peer1 = _consume(a, parent, pb, memory, tally, n - warm)
        out.peer = {"producer_rss_growth_kib": peer1[1] - peer0[1], "producer_fd_growth": peer1[2] - peer0[2]}
        out.peer["producer_rss_growth_mib"] = out.peer["producer_rss_growth_kib"] / 1024
        out.dropped["ring full (the producer waits: never)"] = 0
        sampler.stop(out)
    finally:
        parent.send(("stop",))
        proc.join(30)
        if proc.is_alive():
            proc.kill()
        a.close()
        parent.close()
    return out


def _consume(port: Any, conn: Any, pb: _native.PacketBatch, memory: Any, tally: Tally, count: int,
             pause: float = 0.0) -> Any:
    """Ask the producer for ``count`` messages and account them (starting
    after ``pause`` seconds); its ("done", rss, fds)."""
    conn.send(("run", count))
    time.sleep(pause)
    tally.sent += count
    rx, np, got = port.rx, tally.np, 0
    offsets = np.frombuffer(pb.offsets, dtype=np.uint64)
    while got < count:
        if not rx.wait(1, QUIET):
            break  # the producer stopped sending: the rest is lost unaccounted
        k = rx.peek(pb, min(BURST, count - got))
        tally.take(tally.numbers(memory, offsets[:k]))
        rx.advance(k)
        got += k
    rx.sync()
    return conn.recv()


# ---- burstio.aio ----------------------------------------------------------------------------------


def run_aio(n: int, size: int, loop_kind: str) -> Outcome:
    loop: asyncio.AbstractEventLoop
    if loop_kind == "uvloop":
        import uvloop
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_aio(n, size))
    finally:
        loop.close()


async def _aio(n: int, size: int) -> Outcome:
    import numpy as np

    from ... import aio
    tally, sampler = Tally(n), Sampler()
    out = Outcome(tally)
    arrived = asyncio.Event()
    errors = [0]

    class Receiver(aio.BatchDatagramProtocol):
        memory: Any = None

        def datagrams_received(self, batch: _native.PacketBatch) -> None:
            if self.memory is None:  # the transport's batch, the same for every burst
                self.memory = np.frombuffer(batch.arena, dtype=np.uint8)
            tally.take_batch(batch, len(batch), self.memory)
            arrived.set()

        def error_received(self, exc: Exception) -> None:
            errors[0] += 1

    class Sender(asyncio.DatagramProtocol):
        def error_received(self, exc: Exception) -> None:
            errors[0] += 1

    loop = asyncio.get_running_loop()
    rt, _ = await aio.create_datagram_endpoint(loop, Receiver, local_addr=("127.0.0.1", 0))
    rsock: BurstSocket = rt.get_extra_info("burst_socket")
    rt.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    st, _ = await aio.create_datagram_endpoint(loop, Sender, remote_addr=rt.get_extra_info("sockname"))
    try:
        batch, words, index = _seq_batch(np, [None], size)
        await _aio_pump(n, st, batch, words, index, tally, sampler, arrived, rsock)
        out.dropped["kernel socket (SO_MEMINFO)"] = rsock.counters["kernel_drops"]
        out.info["error_received calls"] = errors[0]
        sampler.stop(out)
    finally:
        st.close()
        rt.close()
        await asyncio.sleep(0)
    return out


async def _aio_pump(n: int, st: Any, batch: _native.PacketBatch, words: Any, index: Any, tally: Tally,
                    sampler: Sampler, arrived: asyncio.Event, rsock: BurstSocket) -> None:
    np, warm, seq = tally.np, warmup_of(n), 0
    ramp = np.arange(BURST, dtype=np.uint64)
    while seq < n:
        if seq >= warm and not sampler.started:
            sampler.start()
        k = min(BURST, n - seq)
        if k < BURST:  # the last burst: a batch of its own with k entries
            batch, words, index = _seq_batch(np, [None], batch.slot_size, k=k)
        words[index[:k]] = ramp[:k] + seq
        st.sendto_many(batch)
        seq += k
        tally.sent += k
        while tally.delivered + tally.duplicates + rsock.counters["kernel_drops"] < tally.sent:
            arrived.clear()
            try:
                await asyncio.wait_for(arrived.wait(), QUIET)
            except TimeoutError:
                return  # the rest is lost unaccounted
    if not sampler.started:
        sampler.start()


# ---- the scenario -------------------------------------------------------------------------------


_RUNNERS: dict[str, Callable[[int, int], Outcome]] = {
    "mmsg": run_mmsg,
    "socketset-uring": lambda n, size: run_socketset(n, size, "uring"),
    "socketset-epoll": lambda n, size: run_socketset(n, size, "epoll"),
    "pipe": run_pipe,
    "aio-asyncio": lambda n, size: run_aio(n, size, "asyncio"),
    "aio-uvloop": lambda n, size: run_aio(n, size, "uvloop"),
}


def _unavailable(path: str) -> str | None:
    from ..._caps import capabilities
    if path == "aio-uvloop":
        try:
            import uvloop  # noqa: F401  # only whether it is there
        except ImportError:
            return "uvloop is not installed"
    if path == "socketset-uring" and not capabilities().io_uring_buf_ring:
        return f"io_uring buffer rings: {capabilities()['io_uring_buf_ring'].detail}"
    try:
        import numpy  # noqa: F401  # only whether it is there
    except ImportError:
        return "numpy is not installed (pip install 'burstio[bench]')"
    return None


def _variant(name: str, out: Outcome) -> Variant:
    t = out.tally
    v = Variant(name)
    v.add(t.delivered, out.seconds, out.cpu_s)
    v.extra.update({"sent": t.sent, "delivered": t.delivered, "duplicates": t.duplicates, "reordered": t.reordered,
                    "corrupt": t.corrupt,
                    "dropped": dict(out.dropped), "counted": dict(out.info),
                    "lost_unaccounted": out.lost_unaccounted, "rss_growth_kib": out.rss_growth_kib,
                    "rss_growth_mib": out.rss_growth_kib / 1024, "fd_growth": out.fd_growth, **out.peer})
    return v


def soak(opts: Options, progress: Progress) -> ScenarioResult:
    """The soak scenario: ``opts.datagrams`` numbered datagrams split over
    ``opts.paths`` (the module's docstring says what is checked)."""
    paths = list(getattr(opts, "paths", None) or PATHS)
    total = getattr(opts, "datagrams", None) or DEFAULT_DATAGRAMS
    # the first total % len(paths) paths take one more: the paths add up to exactly `total`
    per_path = {p: total // len(paths) + (i < total % len(paths)) for i, p in enumerate(paths)}
    res = ScenarioResult("soak", {"datagrams": total, "per_path": per_path, "paths": ",".join(paths),
                                  "size": opts.size},
                         {}, baselines=())
    for path in paths:
        why = _unavailable(path)
        if why:
            res.notes.append(f"{path}: skipped: {why}")
            continue
        per = per_path[path]
        progress.show(f"{path}, {per} datagrams", force=True)
        out = _RUNNERS[path](per, opts.size)
        res.variants[path] = _variant(path, out)
        res.targets += [Target(path, "lost_unaccounted", None, 0, False),
                        Target(path, "rss_growth_mib", None, 1.0, False),
                        Target(path, "fd_growth", None, 0, False)]
        if out.peer:
            res.targets += [Target(path, "producer_rss_growth_mib", None, 1.0, False),
                            Target(path, "producer_fd_growth", None, 0, False)]
        t = out.tally
        res.notes.append(
            f"{path}: sent {t.sent}, delivered {t.delivered}, duplicates {t.duplicates}, reordered {t.reordered}, "
            f"corrupt {t.corrupt}, "
            f"dropped {sum(out.dropped.values())} ({', '.join(f'{k}: {v}' for k, v in out.dropped.items())}), "
            f"lost unaccounted {out.lost_unaccounted}; RSS {out.rss_growth_kib:+d} KiB, descriptors "
            f"{out.fd_growth:+d}" + "".join(f"; {k} {v}" for k, v in out.info.items())
            + "".join(f"; {k} {v:+d}" for k, v in out.peer.items() if k.endswith(("kib", "fd_growth"))))
    sent = sum(v.extra["sent"] for v in res.variants.values())
    res.variants["all paths"] = Variant("all paths", extra={
        "sent": sent, "lost_unaccounted": sum(v.extra["lost_unaccounted"] for v in res.variants.values())})
    res.targets.append(Target("all paths", "sent", None, float(DEFAULT_DATAGRAMS), True))
    return res
