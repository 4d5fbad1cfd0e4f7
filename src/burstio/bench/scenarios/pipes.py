"""``pipes``: messages between two processes, side by side.

A producer process (forked once per variant, driven over a control pipe)
sends numbered messages; this process consumes them. Every variant does the
same work per message (bench/workers/pipes.py): the producer writes the
message's sequence number into its payload and hands it over, the consumer
reads every sequence number and checks it is the next one. Variants:

- ``mp-queue``: multiprocessing.Queue (put/get: an object pickled per
  message, a feeder thread, a pipe), for information;
- ``mp-pipe``: multiprocessing.Pipe, one preallocated payload per side
  (``pack_into`` + ``send_bytes``; ``recv_bytes_into`` + ``unpack_from``):
  the baseline of the target;
- ``shm-ring``: the strongest stdlib peer a careful user writes by hand: a
  ring of payloads in multiprocessing.shared_memory, sequence numbers
  written and read in place, a batch published (and handed back) with one
  pipe message each way, since Python has no atomics to publish an index;
- ``burstio-pipe``: a port pipe, a batch of ``--batch`` messages per call on
  both sides (numpy over the shared memory);
- ``burstio-switch``: the same through a Switch running in a third process
  (one copy per message, into the receiver's own region);
- the same five with 1500-byte messages (``-1500``);
- ``burstio-pipe-perpacket``: the pipe driven one message per Python call;
- ``burstio-pipe-bN-nolinger``: batch sizes 1 to 1024 with lingering off and
  a consumer that checks each message in Python (slower than the producer):
  the producer fills the ring and sleeps, and is woken once per batch (the
  batch-size cliff).

Rates are messages the consumer checked per second of wall time, rounds
alternating between variants. ``kicks_per_message`` counts wake-ups sent
(both rings' sides) per message; one-way latency is measured afterwards at
low load (one message every 200 us, so a burstio consumer goes to sleep
between messages and is kicked for each).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from ... import ports as R  # noqa: N812 - R.pipe, R.Switch: the rings under test
from ..common import Options, rounds
from ..perfcount import SyscallCounter, perf_available
from ..report import Progress, ScenarioResult, Target, Variant
from ..workers import pipes as W  # noqa: N812 - W.serve, W.QueueProducer: the worker side

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

SWEEP = (1, 4, 16, 64, 256, 1024)
BIG = 1500
LATENCY_GAP_S = 200e-6
LATENCY_MESSAGES = 400
SWITCH_KEY = 2


@dataclass
class _Setup:
    """One variant: its producer process, its consumer here, what to count."""

    name: str
    consumer: Any
    conn: Any = None                                   # control pipe to the producer
    procs: list[BaseProcess] = field(default_factory=list)   # processes to stop
    rings: list[R.PortTx | R.PortRx] = field(default_factory=list)  # (ring, peer side too) for kicks
    switch_pid: int | None = None
    keep: Any = None                                   # objects that must outlive the run
    count: int = 2000                                  # messages per round (calibrated)
    producer_pid: int | None = None

    def kicks(self) -> tuple[int, int]:
        kicks = wakeups = 0
        for ring in self.rings:
            for c in (ring.counters(), ring.peer_counters()):
                kicks += c["kicks"]
                wakeups += c["wakeups"]
        return kicks, wakeups


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Bench:
    round_s: float  # seconds per timed round (set once the variants are known)

    def __init__(self, opts: Options):
        import multiprocessing
        self.ctx = multiprocessing.get_context("fork")  # ports travel by inheritance
        self.opts = opts
        self.setups: dict[str, _Setup] = {}
        self.shms: list[Any] = []  # shared_memory blocks to unlink at the end

    def _start(self, setup: _Setup, producer_factory: tuple[Any, ...], *inherit: Any) -> None:
        parent, child = self.ctx.Pipe()
        p = self.ctx.Process(target=_producer_main, args=(child, producer_factory, inherit), daemon=True)
        p.start()
        child.close()
        setup.conn = parent
        setup.procs.append(p)
        setup.producer_pid = p.pid
        self.setups[setup.name] = setup

    def add_queue(self, name: str, size: int) -> None:
        q = self.ctx.Queue(maxsize=4096)
        self._start(_Setup(name, W.QueueConsumer(q)), (W.QueueProducer, size), q)

    def add_mp_pipe(self, name: str, size: int) -> None:
        rx, tx = self.ctx.Pipe(duplex=False)
        self._start(_Setup(name, W.PipeConsumer(rx, size)), (W.PipeProducer, size), tx)

    def add_shm_ring(self, name: str, size: int, batch: int) -> None:
        from multiprocessing import shared_memory
        slots = max(1024, 4 * batch)
        shm = shared_memory.SharedMemory(create=True, size=slots * size)
        ready_rx, ready_tx = self.ctx.Pipe(duplex=False)
        credits_rx, credits_tx = self.ctx.Pipe(duplex=False)
        consumer = W.ShmRingConsumer(shm, ready_rx, credits_tx, size, slots)
        self.shms.append(shm)
        self._start(_Setup(name, consumer), (W.ShmRingProducer, size, slots, batch), shm, ready_tx, credits_rx)

    def add_ring_pipe(self, name: str, size: int, batch: int, *, per_packet_producer: bool = False,
                      per_packet_consumer: bool = False, linger: float = R.LINGER) -> None:
        a, b = R.pipe(slots=max(1024, 4 * batch), slot_size=size, linger=linger)
        consumer = W.RingPerPacketConsumer if per_packet_consumer else W.RingBatchConsumer
        producer = W.RingPerPacketProducer if per_packet_producer else W.RingBatchProducer
        setup = _Setup(name, consumer(a, batch), rings=[a.rx])
        self._start(setup, (producer, size, batch), b)

    def add_ring_switch(self, name: str, size: int, batch: int) -> None:
        sw = R.Switch(slots=max(1024, 4 * batch), slot_size=size, max_ports=2)
        src = sw.add_port(key=1)
        dst = sw.add_port(key=SWITCH_KEY)
        proc = self.ctx.Process(target=_switch_main, args=(sw,), daemon=True)
        proc.start()
        setup = _Setup(name, W.RingBatchConsumer(dst, batch), rings=[src.tx, dst.rx],
                       switch_pid=proc.pid, keep=sw)
        setup.procs.append(proc)
        self._start(setup, (W.RingBatchProducer, size, batch, SWITCH_KEY), src)

    def round(self, setup: _Setup, variant: Variant | None) -> None:
        """One round: the producer sends setup.count messages, we check them."""
        k0, w0 = setup.kicks()
        s0 = _cpu_s(setup.switch_pid) if setup.switch_pid else 0.0
        c0, t0 = time.process_time(), time.perf_counter()
        setup.conn.send(("run", setup.count))
        got = setup.consumer.run(setup.count)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        _, producer_cpu = setup.conn.recv()
        k1, w1 = setup.kicks()
        rate = got / wall
        if variant is None:  # calibration: size rounds to the time budget
            setup.count = int(min(5e6, max(1000, rate * self.round_s)))
            return
        variant.add(got, wall, cpu)
        ex = variant.extra
        ex["kicks"] = ex.get("kicks", 0) + k1 - k0
        ex["wakeups"] = ex.get("wakeups", 0) + w1 - w0
        ex["kicks_per_message"] = ex["kicks"] / variant.datagrams
        ex["producer_cpu_s"] = ex.get("producer_cpu_s", 0.0) + producer_cpu
        ex["producer_cpu_ns_per_message"] = ex["producer_cpu_s"] * 1e9 / variant.datagrams
        if setup.switch_pid:
            ex["switch_cpu_s"] = ex.get("switch_cpu_s", 0.0) + _cpu_s(setup.switch_pid) - s0
            ex["switch_cpu_ns_per_message"] = ex["switch_cpu_s"] * 1e9 / variant.datagrams

    def counted(self, setup: _Setup) -> tuple[int, int]:
        """(syscalls, messages) of one round, perf attached to every process
        of the variant: this consumer, the producer, the switch if any."""
        pids = [os.getpid(), *(pid for pid in (setup.producer_pid, setup.switch_pid) if pid)]
        counters: list[SyscallCounter] = []
        try:
            for pid in pids:
                counters.append(SyscallCounter(pid))  # noqa: PERF401 - one at a time: the started ones close if the next fails
            for c in counters:
                c.enable()
            setup.conn.send(("run", setup.count))
            got = setup.consumer.run(setup.count)
            setup.conn.recv()
            for c in counters:
                c.disable()
        finally:
            calls = sum(c.close() for c in counters)
        return calls, got

    def latency(self, setup: _Setup, n: int) -> list[float]:
        setup.conn.send(("latency", n, LATENCY_GAP_S))
        samples: list[float] = setup.consumer.latency(n)
        setup.conn.recv()
        return samples

    def close(self) -> None:
        for setup in self.setups.values():
            with contextlib.suppress(OSError):
                setup.conn.send(("stop",))
        for setup in self.setups.values():
            for p in setup.procs:
                if p.pid == setup.switch_pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(cast(int, p.pid), signal.SIGTERM)  # started: it has a pid
                p.join(5)
                if p.is_alive():
                    p.kill()
                    p.join(5)
            setup.conn.close()
        for shm in self.shms:
            shm.close()
            shm.unlink()


def _producer_main(conn: Any, factory: tuple[Any, ...], inherit: tuple[Any, ...]) -> None:
    cls, *args = factory
    W.serve(conn, cls(*inherit, *args))


def _switch_main(sw: R.Switch) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sw.run()


def _pct(values: list[float], p: float) -> float:
    from ..report import percentile
    return percentile(sorted(values), p)


def pipes(opts: Options, progress: Progress) -> ScenarioResult:
    batch = max(1, min(opts.batch, 1024))
    small = max(8, opts.size)
    sizes = [small] + ([BIG] if small != BIG else [])
    main = ["mp-queue", "mp-pipe", "shm-ring", "burstio-pipe", "burstio-switch"]
    names = [n if s == small else f"{n}-{s}" for s in sizes for n in main]
    names.append("burstio-pipe-perpacket")
    sweep = [f"burstio-pipe-b{b}-nolinger" for b in SWEEP]
    names += sweep
    res = ScenarioResult(
        "pipes", {"size": small, "big": BIG, "batch": batch, "linger_us": R.LINGER * 1e6,
                  "latency_gap_us": LATENCY_GAP_S * 1e6},
        {n: Variant(n) for n in names},
        targets=[Target("burstio-pipe", "datagrams_per_s", "mp-pipe", 10.0, True),
                 Target("burstio-pipe", "kicks_per_message", None, 1 / 32, False),
                 Target("burstio-pipe-b64-nolinger", "kicks_per_message", None, 1 / 32, False)],
        baselines=("mp-pipe", "shm-ring") + ((f"mp-pipe-{BIG}", f"shm-ring-{BIG}") if len(sizes) > 1 else ()),
        notes=[("datagrams/s column = messages/s checked by the consumer; CPU = the consumer's; "
                "kicks and latency below and in --json")])
    try:
        import numpy  # noqa: F401
    except ImportError:
        res.skipped = "needs numpy (pip install 'burstio[numpy]')"
        return res
    bench = _Bench(opts)
    bench.round_s = min(1.0, max(0.04, opts.seconds / (len(names) * max(2, opts.min_rounds))))
    res.params["round_s"] = round(bench.round_s, 3)
    try:
        progress.show("starting the producers")
        for s in sizes:
            sfx = "" if s == small else f"-{s}"
            bench.add_queue("mp-queue" + sfx, s)
            bench.add_mp_pipe("mp-pipe" + sfx, s)
            bench.add_shm_ring("shm-ring" + sfx, s, batch)
            bench.add_ring_pipe("burstio-pipe" + sfx, s, batch)
            bench.add_ring_switch("burstio-switch" + sfx, s, batch)
        bench.add_ring_pipe("burstio-pipe-perpacket", small, batch, per_packet_producer=True,
                            per_packet_consumer=True)
        for b, name in zip(SWEEP, sweep, strict=False):  # a batching producer, a slower consumer
            bench.add_ring_pipe(name, small, b, per_packet_consumer=True, linger=0)
        _measure(bench, res, names, opts, progress)
    finally:
        bench.close()
    _report(res, sweep)
    return res


def _measure(bench: _Bench, res: ScenarioResult, names: list[str], opts: Options,
             progress: Progress) -> None:
    for name in names:
        progress.show(f"calibrating {name}")
        bench.round(bench.setups[name], None)
    for _r, order in rounds(dataclasses.replace(opts, min_rounds=max(2, opts.min_rounds)), names, progress):
        for name in order:
            progress.show(name)
            bench.round(bench.setups[name], res.variants[name])
    ok, why = perf_available()
    res.syscall_source = (f"{why}, attached to the consumer, the producer and the switch (per message)" if ok
                          else f"not measured ({why})")
    if ok:
        for name in names:
            progress.show(f"counting syscalls, {name}")
            v = res.variants[name]
            v.syscalls, v.syscall_datagrams = bench.counted(bench.setups[name])
    lat = [n for n in ("mp-queue", "mp-pipe", "shm-ring", "burstio-pipe", "burstio-switch") if n in names]
    for r in range(2):
        for name in lat[r:] + lat[:r]:
            progress.show(f"latency, {name}")
            res.variants[name].extra.setdefault("_lat", []).extend(
                bench.latency(bench.setups[name], LATENCY_MESSAGES // 2))


def _report(res: ScenarioResult, sweep: list[str]) -> None:
    for v in res.variants.values():
        ex = v.extra
        lat = ex.pop("_lat", None)
        if lat:
            ex["latency_p50_us"] = round(_pct(lat, 50), 2)
            ex["latency_p99_us"] = round(_pct(lat, 99), 2)
            ex["latency_samples"] = len(lat)
        if "kicks_per_message" in ex:
            ex["kicks_per_message"] = round(ex["kicks_per_message"], 6)
        for k in ("producer_cpu_ns_per_message", "switch_cpu_ns_per_message"):
            if k in ex:
                ex[k] = round(ex[k], 1)
    res.notes.append("kicks/message (wake-ups sent, both sides): " + ", ".join(
        f"{n} {res.variants[n].extra.get('kicks_per_message', 0):.4g}"
        for n in res.variants if n.startswith("burstio")))
    res.notes.append("producer CPU ns/message: " + ", ".join(
        f"{n} {v.extra['producer_cpu_ns_per_message']:.0f}" for n, v in res.variants.items()
        if "producer_cpu_ns_per_message" in v.extra))
    sw = [n for n in res.variants if "switch_cpu_ns_per_message" in res.variants[n].extra]
    if sw:
        res.notes.append("switch process CPU ns/message: " + ", ".join(
            f"{n} {res.variants[n].extra['switch_cpu_ns_per_message']:.0f}" for n in sw))
    lat = [n for n, v in res.variants.items() if "latency_p50_us" in v.extra]
    if lat:
        res.notes.append(f"one-way latency at low load (1 message / {LATENCY_GAP_S * 1e6:.0f} us), "
                         "p50/p99 us: " + ", ".join(
                             f"{n} {res.variants[n].extra['latency_p50_us']:.1f}/"
                             f"{res.variants[n].extra['latency_p99_us']:.1f}" for n in lat))
    cliff = [(n, res.variants[n].metrics()) for n in sweep]
    res.notes.append("batch-size cliff (no linger, consumer-bound; msgs/s, kicks/msg, "
                     "producer wakeups/msg): " + "; ".join(
                         f"b{n.split('-b')[1].split('-')[0]} {m.get('datagrams_per_s', 0) / 1e6:.2f}M "
                         f"{m.get('kicks_per_message', 0):.3g} "
                         f"{m.get('wakeups', 0) / max(1, m.get('datagrams', 1)):.3g}"
                         for n, m in cliff))
