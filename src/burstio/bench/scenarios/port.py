"""port: frames from a NIC queue to worker processes, through burstio's
ports, against one process on AF_XDP and against the recvmmsg plus
multiprocessing.Queue pipeline.

The lab, the programs, the CPUs, threaded NAPI and the generator are the
xdp scenario's (``bench.scenarios.xdp._Round``): the packet generator floods
from namespace a on one CPU with 64-byte UDP frames of 64 flows; everything
that receives runs in namespace b on the receive CPU, at SCHED_FIFO above
the NAPI thread as the xdp scenario's receiver does (its worker processes
inherit that). Variants, one at a time:

- xsk-direct: one process on AF_XDP (the xdp scenario's burstio-xsk worker):
  the rate a single process takes;
- port-pipes: a NIC port (``ports.nic_port``) and WORKERS pipes made from it;
  one process sends each frame to its flow's pipe, zero copy
  (``nic.rx.spread([near.tx, ...])``), and WORKERS worker processes take the
  frames from their pipes;
- port-switch: a Switch by MAC address with the NIC port attached and one
  port per worker, the host's MAC routed to the workers' group by flow hash;
  the switch runs on a thread of the process that opened the queue, and
  under load looks at the NIC queue every SWITCH_GATHER seconds
  (``nic_gather``) rather than at each of the kernel's wake-ups;
- recvmmsg-mpqueue: a UDP socket (BurstSocket.recv_batch) and one
  multiprocessing.Queue put per datagram that the WORKERS workers share;
- recvmmsg-mpqueue-batch: the same with one put per burst (a list).

Every worker does the same: counts what it got. Per variant: frames per
second the workers got, and CPU per frame on the receive CPU (the processes
of the variant and the NAPI thread). The generator's own rate is a row.
Variants alternate round by round. The drivers are this module run as a
program (``python -m burstio.bench.scenarios.port VARIANT ...``).
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import sys
import time
from contextlib import ExitStack
from typing import Any

from ... import _native
from ..common import Options, rounds
from ..procs import client_and_server_cpus, cpu_seconds
from ..report import Progress, ScenarioResult, Target, Variant
from .xdp import (
    FLOWS,
    FRAME,
    MIN_ROUNDS,
    PORT,
    RING,
    ROUND_SECONDS,
    WARM_SECONDS,
    _dev_drops,
    _Round,
    _skip_reason,
    _threaded_napi,
)

WORKERS = 2
#: per ring: room for a whole gathering (SWITCH_GATHER, or the drivers' wait below) at ~3 M frames/s,
#: so that the NIC port's RX ring takes what the kernel queued in one pump, and two of the workers' bursts
SLOTS = 512
NAMES = ["xsk-direct", "port-pipes", "port-switch", "recvmmsg-mpqueue", "recvmmsg-mpqueue-batch"]
XSK_NAMES = ("xsk-direct", "port-pipes", "port-switch")
#: the port variants' drivers and workers wait for bursts of this many frames (at most
#: BURST_WAIT seconds): fewer wake-ups, calls and kicks per frame on the receive CPU, where each
#: wake-up stops the NAPI thread (with SLOTS 256 and bursts of 128: ~45 ns more per frame for port-pipes)
BURST, BURST_WAIT = 256, 0.0005
#: the switch takes the NIC queue's frames at most this often under load (Switch(nic_gather=)), not at each
#: of the kernel's wake-ups (one per 64 frames on the veth): as the port-pipes driver's wait(BURST) gathers
SWITCH_GATHER = 100e-6
QUEUE_ITEMS = 8192  # the multiprocessing.Queue's bound: a full one makes the receiver wait

_FORK = multiprocessing.get_context("fork")


# ---- the workers (forked by a driver, in namespace b) -----------------------------------

def _port_worker(port: Any, counts: Any, i: int) -> None:
    """Take frames from a port until it closes; counts[i] is how many."""
    with port.claim():
        rx, n = port.rx, 0
        while True:
            try:
                k = rx.wait(BURST, timeout=BURST_WAIT)
            except (BrokenPipeError, ConnectionResetError, ValueError):
                return
            if k:
                n += k
                rx.advance(k)
                counts[i] = n


def _queue_worker(q: Any, counts: Any, i: int, batched: bool) -> None:
    """Take datagrams (or lists of them) from a queue until None comes."""
    n = 0
    while (item := q.get()) is not None:
        n += len(item) if batched else 1
        counts[i] = n


# ---- the drivers (run in namespace b on the receive CPU) --------------------------------

class _Meter:
    """Frames the workers counted and CPU of the processes and the NAPI thread,
    over a window that starts once frames flow and the warm-up is over."""

    def __init__(self, counts: Any, pids: list[int], napi: int):
        self.counts, self.pids, self.napi = counts, pids, napi
        self.t0 = self.t1 = 0
        self.frames0 = self.frames1 = 0
        self.cpu0 = self.cpu1 = self.napi0 = self.napi1 = 0.0

    def sample(self) -> tuple[int, int, float, float]:
        return (time.perf_counter_ns(), sum(self.counts), sum(cpu_seconds(p) for p in self.pids),
                cpu_seconds(self.napi) if self.napi > 0 else 0.0)

    def run(self, step: Any, seconds: float) -> None:
        """Call step() (one unit of the driver's work, or a short sleep) until
        frames flow, through the warm-up and the window."""
        deadline = time.monotonic() + 20
        while sum(self.counts) == 0:
            step()
            if time.monotonic() > deadline:
                raise SystemExit("port driver: no frame reached a worker in 20 s")
        warm = time.monotonic() + WARM_SECONDS
        while time.monotonic() < warm:
            step()
        self.t0, self.frames0, self.cpu0, self.napi0 = self.sample()
        end = self.t0 + int(seconds * 1e9)
        while time.perf_counter_ns() < end:
            step()
        self.t1, self.frames1, self.cpu1, self.napi1 = self.sample()

    def result(self, stats: dict[str, int]) -> dict[str, Any]:
        return {"frames": self.frames1 - self.frames0, "ns": self.t1 - self.t0,
                "cpu_ns": int((self.cpu1 - self.cpu0) * 1e9), "napi_cpu_ns": int((self.napi1 - self.napi0) * 1e9),
                "stats": stats}


def _ready() -> None:
    """Tell the scenario that the driver is set up: it starts the generator."""
    print("ready", flush=True)


#: the workers this driver started: killed before it exits
_workers: list[Any] = []


def _start_workers(target: Any, args: list[tuple[Any, ...]]) -> list[Any]:
    procs = [_FORK.Process(target=target, args=a, daemon=True) for a in args]
    for p in procs:
        p.start()
        _workers.append(p)
    return procs


def _nic(dev: str, map_fd: int) -> Any:
    from ...ports import nic_port

    nic = nic_port(dev, 0, slots=SLOTS, fill_size=RING, tx_size=RING, linger=0)
    _native.bpf_map_update(map_fd, (0).to_bytes(4, "little"), nic.xsk.fileno().to_bytes(4, "little"), 0)
    return nic


def _drive_pipes(dev: str, map_fd: int, counts: Any, napi: int, seconds: float) -> dict[str, Any]:
    """The NIC port's bursts forwarded to the pipes in turn, zero copy."""
    nic = _nic(dev, map_fd)
    pipes = [nic.pipe(linger=0) for _ in range(WORKERS)]
    procs = _start_workers(_port_worker, [(far, counts, i) for i, (_near, far) in enumerate(pipes)])
    for _near, far in pipes:
        far.close()  # the worker's now (a parent's copy that never held it just lets go)
    nears = [near for near, _far in pipes]
    txs = [near.tx for near in nears]
    rx, spread = nic.rx, nic.rx.spread

    def step() -> None:
        if not rx.wait(BURST, timeout=BURST_WAIT):
            return
        if spread(txs):  # each frame to its flow's pipe, zero copy
            for tx in txs:
                tx.sync()
        else:  # the next frame's pipe is full: let the workers run
            for tx in txs:
                tx.wait(1, timeout=0.001)

    meter = _Meter(counts, [os.getpid(), *(p.pid for p in procs)], napi)
    _ready()
    meter.run(step, seconds)
    out = meter.result({**nic.xsk.statistics(), "forwarded_zerocopy": nic.rx.counters()["forwarded_zerocopy"]})
    for near in nears:
        near.close()
    nic.close()
    return out


def _drive_switch(dev: str, map_fd: int, counts: Any, napi: int, seconds: float) -> dict[str, Any]:
    """A MAC switch with the NIC port and one port per worker."""
    from ...ports import Switch
    from ...xdp.udp import mac_of

    nic = _nic(dev, map_fd)
    sw = Switch(slots=SLOTS, forward_by="mac", linger=0, nic_gather=SWITCH_GATHER)
    sw.add_nic(nic)
    ports = [sw.add_port(linger=0) for _ in range(WORKERS)]
    sw.route(mac_of(dev), ports, spread="flow")
    procs = _start_workers(_port_worker, [(p, counts, i) for i, p in enumerate(ports)])
    for p in ports:
        p.close()
    sw.start()
    meter = _Meter(counts, [os.getpid(), *(p.pid for p in procs)], napi)
    _ready()
    meter.run(lambda: time.sleep(0.01), seconds)
    c = sw.counters
    out = meter.result({**nic.xsk.statistics(), "full_drops": c["full_drops"], "forwarded": c["forwarded"]})
    sw.close()
    return out


def _drive_queue(addr: str, counts: Any, napi: int, seconds: float, batched: bool) -> dict[str, Any]:
    """recvmmsg into a batch, then multiprocessing.Queue puts to the workers."""
    from ..._udp import BurstSocket

    sock = BurstSocket.bind((addr, PORT), rcvbuf=32 << 20)
    batch = _native.PacketBatch(64)
    q = _FORK.Queue(QUEUE_ITEMS)
    procs = _start_workers(_queue_worker, [(q, counts, i, batched) for i in range(WORKERS)])
    recv, put = sock.recv_batch, q.put

    def step() -> None:
        n = recv(batch, 0.05)
        if batched and n:
            put([bytes(batch[i]) for i in range(n)])
        else:
            for i in range(n):
                put(bytes(batch[i]))

    meter = _Meter(counts, [os.getpid(), *(p.pid for p in procs)], napi)
    _ready()
    meter.run(step, seconds)
    return meter.result({"kernel_drops": sock.counters["kernel_drops"]})


def driver(argv: list[str]) -> None:
    """VARIANT DEV MAP_FD SECONDS NAPI_PID ADDR: print "ready", then the
    round's figures as JSON."""
    variant, dev, map_fd, seconds, napi, addr = argv
    counts = _FORK.Array("Q", WORKERS, lock=False)
    try:
        if variant == "port-pipes":
            out = _drive_pipes(dev, int(map_fd), counts, int(napi), float(seconds))
        elif variant == "port-switch":
            out = _drive_switch(dev, int(map_fd), counts, int(napi), float(seconds))
        else:
            out = _drive_queue(addr, counts, int(napi), float(seconds), variant.endswith("-batch"))
        print(json.dumps(out), flush=True)
    finally:
        for p in _workers:
            p.kill()
            p.join(10)


# ---- the scenario ------------------------------------------------------------------------

class _PortRound(_Round):
    """The xdp scenario's round (lab, programs, CPUs, NAPI, generator) with
    this scenario's variants."""

    def worker_argv(self, name: str) -> list[str]:
        if name == "xsk-direct":
            return super().worker_argv("burstio-xsk")
        lab = self.lab
        return [sys.executable, "-m", "burstio.bench.scenarios.port", name, lab.dev["b"], str(self.map_fd),
                str(ROUND_SECONDS), str(self.napi), lab.addr("b")]

    def one(self, name: str, variant: Variant, gen: Variant) -> None:
        lab = self.lab
        with ExitStack() as attached:
            if name in XSK_NAMES:
                with lab.inside("b"):
                    self.steer.attach(lab.dev["b"])
                attached.callback(self.steer.detach)
            # attaching and detaching XDP programs makes the veth's NAPI anew: pin its thread each round
            self.napi = _threaded_napi(lab, self.rx_cpu)
            drops0 = _dev_drops(lab)
            frames, g = self._worker_round(name)
            drops = {k: v - drops0[k] for k, v in _dev_drops(lab).items()}
        variant.add(frames["frames"], frames["ns"] / 1e9, (frames["cpu_ns"] + frames["napi_cpu_ns"]) / 1e9)
        if g is not None:
            gen.add(g["frames"], g["seconds"], 0.0)
        for key, value in {**frames.get("stats", {}), **drops}.items():
            variant.extra[key] = variant.extra.get(key, 0) + value
        variant.extra["napi_cpu_s"] = round(variant.extra.get("napi_cpu_s", 0) + frames["napi_cpu_ns"] / 1e9, 3)


def _notes(res: ScenarioResult, names: list[str]) -> None:
    for name in names:
        v = res.variants[name]
        if not v.seconds:
            continue
        e = v.extra
        where = [f"at the veth {e.get('a_tx_dropped', 0)}"]
        if "rx_dropped" in e:
            where.append(f"at the AF_XDP socket {e['rx_dropped'] + e.get('rx_ring_full', 0)} (fill ring empty "
                         f"{e.get('rx_fill_ring_empty_descs', 0)}, rx ring full {e.get('rx_ring_full', 0)})")
        if "full_drops" in e:
            where.append(f"at the switch {e['full_drops']}")
        if "kernel_drops" in e:
            where.append(f"at the UDP socket {e['kernel_drops']}")
        res.notes.append(f"{name}: delivered {v.datagrams} in the timed windows, receive CPU busy "
                         f"{v.cpu_s / v.seconds:.0%}; dropped over its rounds " + ", ".join(where))
    res.notes.append(f"{WORKERS} workers; CPU ns/dgram is the receive CPU's: the variant's processes (driver, "
                     "switch thread, workers) and the NAPI thread")
    res.notes.append("port-pipes forwards by swapping frame indices (zero copy); port-switch copies each frame "
                     "into the worker's own region (isolation); recvmmsg-mpqueue pickles each datagram")
    res.notes.append(f"the port variants' driver and workers wait for bursts of {BURST} frames or "
                     f"{BURST_WAIT * 1e6:.0f} us (port wait(n)), the switch looks at the NIC queue every "
                     f"{SWITCH_GATHER * 1e6:.0f} us under load (nic_gather); xsk-direct takes what each of the "
                     "kernel's wake-ups brings (recv_batch)")


def port(opts: Options, progress: Progress) -> ScenarioResult:
    from ...napi.lab import Lab

    names = list(NAMES)
    res = ScenarioResult(
        "port", {"frame": FRAME, "flows": FLOWS, "workers": WORKERS, "slots": SLOTS, "round_s": ROUND_SECONDS,
                 "path": "veth, 2 netns, threaded NAPI on the receive CPU"},
        {n: Variant(n) for n in [*names, "generator"]},
        targets=[Target("port-pipes", "datagrams_per_s", "xsk-direct", 0.7, True),
                 Target("port-switch", "datagrams_per_s", "xsk-direct", 0.7, True),
                 Target("port-pipes", "datagrams_per_s", "recvmmsg-mpqueue", 10.0, True),
                 Target("port-switch", "datagrams_per_s", "recvmmsg-mpqueue", 10.0, True)],
        baselines=("xsk-direct", "recvmmsg-mpqueue"))
    why = _skip_reason()
    if why:
        res.skipped = why
        return res
    cpus = client_and_server_cpus()
    res.params.update(generator_cpu=cpus[0], receive_cpu=cpus[1])
    with ExitStack() as stack:
        lab = stack.enter_context(Lab(f"bp{os.getpid() % 100000}", queues=1))
        r = _PortRound(lab, stack, opts, cpus)
        for _k, order in rounds(dataclasses.replace(opts, min_rounds=max(opts.min_rounds, MIN_ROUNDS)), names,
                                progress):
            for name in order:
                progress.show(name)
                r.one(name, res.variants[name], res.variants["generator"])
    _notes(res, names)
    return res


if __name__ == "__main__":
    driver(sys.argv[1:])
