"""xdp: receiving (and forwarding) a flood through XDP and AF_XDP, against
the UDP socket path and a C reference.

A lab (two namespaces, a veth with NAPI on, threaded NAPI on b pinned to
the receive CPU): the packet generator (BPF live frames, batches of 256,
favoured: see GENERATOR_NICE) floods from namespace a on the other CPU with
64-byte UDP frames of 64 flows; one receiver at a time runs in namespace b
on the receive CPU:

- recvmmsg: BurstSocket.recv_batch on a UDP socket (the kernel's stack);
- c-xsk: a C AF_XDP rxdrop (bench/c/xsk.c, raw syscalls, burstio's ring
  sizes and batch), steered to by burstio's Steer program;
- burstio-xsk: a Python loop over XskSocket.recv_batch that counts (the
  frames go back when the batch is refilled);
- burstio-xsk-udp: the same, with burstio.xdp.udp.parse of every batch;
- xdp-drop: the Filter program dropping every frame in the driver hook,
  counted in its map (its one rule, Rule(), names only the IP version: the
  program reads no header beyond it);
- c-l2fwd, burstio-l2fwd: every frame's MACs swapped and sent back out of
  the same socket (zero copy); namespace a counts what comes back.

On the receive CPU the receiver runs at SCHED_FIFO above the NAPI thread,
which runs above everything else (see RECEIVER_PRIORITY).

Per variant: frames per second delivered, receive-side CPU per frame (the
receiver and the NAPI thread), and where frames were dropped (the
socket's XDP_STATISTICS, the devices' drop counters). The generator's own
rate is a row too: the receivers, not the generator, must be the limit.
Variants alternate round by round. The workers are this module run as a
program (``python -m burstio.bench.scenarios.xdp VARIANT ...``).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from typing import IO, Any, cast

from ... import _native
from ..._caps import capabilities
from .. import cref
from ..common import Options, rounds
from ..procs import client_and_server_cpus, cpu_seconds, favour, stop
from ..report import Progress, ScenarioResult, Target, Variant

PORT = 9000
FRAME = 64
FLOWS = 64
ROUND_SECONDS = 1.0
WARM_SECONDS = 0.2
RING = 2048
XSK = ("c-xsk", "burstio-xsk", "burstio-xsk-udp", "c-l2fwd", "burstio-l2fwd")
USER_RECEIVERS = ("recvmmsg", "c-xsk", "burstio-xsk", "burstio-xsk-udp")
NAMES = ["recvmmsg", "c-xsk", "burstio-xsk", "burstio-xsk-udp", "xdp-drop", "c-l2fwd", "burstio-l2fwd"]


# ---- the workers (run in namespace b) ---------------------------------------------------

def _napi_cpu(pid: int) -> float:
    return cpu_seconds(pid) if pid > 0 else 0.0


def _measure(once: Any, batch_wait: Any, seconds: float, napi: int) -> dict[str, Any]:
    """Wait for the first frame, warm up, then count for ``seconds``."""
    deadline = time.monotonic() + 20
    while once(0.1) == 0:
        if time.monotonic() > deadline:
            raise SystemExit("xdp worker: no frame in 20 s")
    warm = time.monotonic() + WARM_SECONDS
    while time.monotonic() < warm:
        once(0.1)
    frames = 0
    t0, c0, n0 = time.perf_counter_ns(), time.process_time_ns(), _napi_cpu(napi)
    end = t0 + int(seconds * 1e9)
    while time.perf_counter_ns() < end:
        frames += once(0.1)
    t1, c1, n1 = time.perf_counter_ns(), time.process_time_ns(), _napi_cpu(napi)
    return {"frames": frames, "ns": t1 - t0, "cpu_ns": c1 - c0, "napi_cpu_ns": int((n1 - n0) * 1e9),
            "stats": batch_wait()}


def _xsk_worker(variant: str, dev: str, queue: int, map_fd: int, batch_size: int) -> tuple[Any, Any]:
    import numpy as np

    from ...xdp import XskSocket
    from ...xdp.udp import UdpFrames

    xsk = XskSocket(dev, queue, rx_size=RING, tx_size=RING, fill_size=RING, comp_size=RING)
    _native.bpf_map_update(map_fd, queue.to_bytes(4, "little"), xsk.fileno().to_bytes(4, "little"), 0)
    batch = _native.PacketBatch(batch_size)
    recv = xsk.recv_batch
    if variant == "burstio-xsk":
        return (lambda t: recv(batch, t)), xsk.statistics
    if variant == "burstio-xsk-udp":
        frames = UdpFrames(batch_size)
        parse = frames.parse

        def once_udp(t: float) -> int:
            n = recv(batch, t)
            parse(batch)
            return n

        return once_udp, xsk.statistics
    swap = np.array([6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 4, 5], dtype=np.uint64)
    span = np.arange(12, dtype=np.uint64)
    send = xsk._x.send_batch
    offsets = np.asarray(batch.offsets)

    def once_fwd(t: float) -> int:  # burstio-l2fwd: the burst's MACs swapped in one array operation
        n = recv(batch, t)
        if n:
            mem = np.frombuffer(batch.buffer, np.uint8)
            at = offsets[:n, None]
            mem[at + span] = mem[at + swap]
            sent = send(batch)
            if sent < n:
                xsk.send_batch(batch, sent, n - sent, timeout=1.0)
        return n

    return once_fwd, xsk.statistics


def worker(argv: list[str]) -> None:
    """VARIANT DEV QUEUE MAP_FD SECONDS BATCH NAPI_PID ADDR"""
    variant, dev, queue, map_fd, seconds, batch_size, napi, addr = argv
    if variant == "recvmmsg":
        from ..._udp import BurstSocket

        sock = BurstSocket.bind((addr, PORT), rcvbuf=32 << 20)
        batch = _native.PacketBatch(int(batch_size))
        recv = sock.recv_batch

        def once(t: float) -> int:
            return recv(batch, t)

        def stats() -> dict[str, int]:
            return {"kernel_drops": sock.counters["kernel_drops"]}
    else:
        once, stats = _xsk_worker(variant, dev, int(queue), int(map_fd), int(batch_size))
    print("ready", flush=True)
    print(json.dumps(_measure(once, stats, float(seconds), int(napi))), flush=True)


# ---- the scenario ------------------------------------------------------------------------

def _run(lab: Any, side: str, argv: list[str]) -> str:
    r = subprocess.run(lab.command(side, argv), capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` in {side} failed: {r.stderr.strip()}")
    return r.stdout


#: real-time priorities on the receive CPU: the receiver preempts the NAPI
#: thread when it wakes (its work per frame is small, and it sleeps when the
#: rx ring is empty), the NAPI thread preempts everything else. Without them
#: the figures measure how long other processes keep the receiver from
#: running (rings overflow meanwhile), not what receiving costs.
NAPI_PRIORITY, RECEIVER_PRIORITY = 1, 2
#: the generator's niceness, in a session of its own (procs.favour): its CPU
#: stays its own when processes of other sessions want it, so that the rate
#: it offers does not measure them. Not real-time: a real-time loop in the
#: kernel on the other CPU too would leave RCU's and the kernel's workers
#: (and so the generator's own calls, which wait for RCU) only the scraps.
GENERATOR_NICE = -20
#: every variant runs at least this many rounds, whatever the budget: a machine's pace can change for
#: seconds to minutes at a time (the project's VM: stretches where a cache line takes 4-10x longer between
#: its CPUs, and every variant here runs at about half speed, the generator too; `generator_ns_per_frame`
#: marks such rounds), so that with 3 rounds one such stretch, landing on one variant's rounds and not on
#: another's, decided their ratio; more rounds spread them over every variant
MIN_ROUNDS = 5
#: the generator's batches: the kernel's most, for the most frames per second (burstio.xdp.pktgen.BATCH_MAX)
GENERATOR_BATCH = 256


def _threaded_napi(lab: Any, cpu: str) -> int:
    """Threaded NAPI on b's veth, its thread pinned to cpu at SCHED_FIFO
    NAPI_PRIORITY; its pid."""
    from ...napi import netdev

    _run(lab, "b", ["sh", "-c", f"echo 1 > /sys/class/net/{lab.dev['b']}/threaded"])
    with lab.inside("b"):
        pids = [n.pid for n in netdev.napi_list(lab.dev["b"]) if n.pid]
    for pid in pids:
        subprocess.run(["taskset", "-p", "-c", cpu, str(pid)], capture_output=True, check=False)
        subprocess.run(["chrt", "-f", "-p", str(NAPI_PRIORITY), str(pid)], capture_output=True, check=False)
    return pids[0] if pids else 0


def _dev_drops(lab: Any) -> dict[str, int]:
    out = {}
    for side, key in (("a", "tx"), ("b", "rx")):
        stats = json.loads(_run(lab, side, ["ip", "-j", "-s", "link", "show", lab.dev[side]]))[0]["stats64"]
        out[f"{side}_{key}_dropped"] = int(stats[key]["dropped"])
    return out


class _Round:
    """What every round needs: the lab, the programs, CPUs, the generator."""

    def __init__(self, lab: Any, stack: ExitStack, opts: Options, cpus: tuple[str, str]):
        from ...xdp import Filter, Rule, Steer
        from ...xdp.udp import mac_of

        self.lab, self.opts = lab, opts
        self.gen_cpu, self.rx_cpu = cpus
        self.napi = _threaded_napi(lab, self.rx_cpu)
        with lab.inside("b"):
            self.mac_b = mac_of(lab.dev["b"]).hex(":")
            self.steer = stack.enter_context(Steer([Rule(proto="udp", dport=PORT)]))
            self.drop = stack.enter_context(Filter([Rule()]))
        with lab.inside("a"):
            self.back = stack.enter_context(Filter([Rule(proto="udp", dport=PORT)]))
        self.map_fd = self.steer._program.maps["xsks"].fd
        self.gen_favoured = True
        self.cref: str | None = None
        try:
            self.cref = str(cref.build("xsk"))
        except RuntimeError as e:
            self.cref_error = str(e)

    def generator(self, seconds: float) -> subprocess.Popen[str]:
        lab = self.lab
        argv = ["taskset", "-c", self.gen_cpu, sys.executable, "-m", "burstio", "pktgen", "--dev", lab.dev["a"],
                "--dst", lab.addr("b"), "--dport", str(PORT), "--dst-mac", self.mac_b, "--flows", str(FLOWS),
                "--size", str(FRAME), "--seconds", str(seconds), "--batch", str(GENERATOR_BATCH), "--json"]
        gen = subprocess.Popen(lab.command("a", argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
        self.gen_favoured = favour(gen.pid, GENERATOR_NICE) and self.gen_favoured
        return gen

    def worker_argv(self, name: str) -> list[str]:
        lab = self.lab
        if name.startswith("c-"):
            return [cast(str, self.cref), "rxdrop" if name == "c-xsk" else "l2fwd", lab.dev["b"], "0",
                    str(self.map_fd), str(ROUND_SECONDS), str(self.opts.batch), str(self.napi)]
        return [sys.executable, "-m", "burstio.bench.scenarios.xdp", name, lab.dev["b"], "0", str(self.map_fd),
                str(ROUND_SECONDS), str(self.opts.batch), str(self.napi), lab.addr("b")]

    def one(self, name: str, variant: Variant, gen: Variant) -> None:
        lab = self.lab
        with ExitStack() as attached:
            if name in XSK:
                with lab.inside("b"):
                    self.steer.attach(lab.dev["b"])
                attached.callback(self.steer.detach)
            if name.endswith("l2fwd"):
                with lab.inside("a"):
                    self.back.attach(lab.dev["a"])
                attached.callback(self.back.detach)
            if name == "xdp-drop":
                with lab.inside("b"):
                    self.drop.attach(lab.dev["b"])
                attached.callback(self.drop.detach)
            # attaching and detaching XDP programs makes the veth's NAPI anew: pin its thread each round
            self.napi = _threaded_napi(lab, self.rx_cpu)
            drops0 = _dev_drops(lab)
            result = self._drop_round() if name == "xdp-drop" else self._worker_round(name)
            drops = {k: v - drops0[k] for k, v in _dev_drops(lab).items()}
            returned = self.back.counters()[0].packets if name.endswith("l2fwd") else None
        frames, g = result
        variant.add(frames["frames"], frames["ns"] / 1e9, (frames["cpu_ns"] + frames["napi_cpu_ns"]) / 1e9)
        if g is not None:
            gen.add(g["frames"], g["seconds"], 0.0)
            gen.extra["device_sent"] = gen.extra.get("device_sent", 0) + (g["device_sent"] or 0)
            # the generator's own CPU per frame in this variant's round: the VM's state then (see the notes)
            variant.extra.setdefault("generator_ns_per_frame", []).append(g.get("ns_per_frame"))
        for key, value in {**frames.get("stats", {}), **drops}.items():
            variant.extra[key] = variant.extra.get(key, 0) + value
        if returned is not None:
            variant.extra["returned_to_a"] = variant.extra.get("returned_to_a", 0) + returned
        variant.extra["napi_cpu_s"] = round(variant.extra.get("napi_cpu_s", 0) + frames["napi_cpu_ns"] / 1e9, 3)

    def _worker_round(self, name: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
        lab = self.lab
        pass_fds = (self.map_fd,)
        rt = ["chrt", "-f", str(RECEIVER_PRIORITY)]
        w = subprocess.Popen(lab.command("b", ["taskset", "-c", self.rx_cpu, *rt, *self.worker_argv(name)]),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, pass_fds=pass_fds)
        gen: subprocess.Popen[str] | None = None
        try:
            out = cast(IO[str], w.stdout)
            if out.readline().strip() != "ready":
                raise RuntimeError(f"{name} did not start: {cast(IO[str], w.stderr).read()[-500:]}")
            gen = self.generator(ROUND_SECONDS + 2.0)
            line = out.readline()
            if not line:
                raise RuntimeError(f"{name} failed: {cast(IO[str], w.stderr).read()[-500:]}")
            frames = json.loads(line)
            g_out, g_err = gen.communicate(timeout=60)
            if gen.returncode != 0:
                raise RuntimeError(f"the generator failed: {g_err.strip()[-300:]}")
            return frames, json.loads(g_out)
        finally:
            stop([p for p in (w, gen) if p is not None])

    def _drop_round(self) -> tuple[dict[str, Any], dict[str, Any]]:
        before = self.drop.counters()[0].packets
        gen = self.generator(ROUND_SECONDS + 2.0)
        try:
            # as the workers do (_measure): the window starts WARM_SECONDS after the first frame, not after
            # the generator's start (its start-up, imports and program load, can take longer than the warm-up)
            deadline = time.monotonic() + 20
            while self.drop.counters()[0].packets == before:
                if gen.poll() is not None:
                    raise RuntimeError(f"the generator failed: {cast(IO[str], gen.stderr).read().strip()[-300:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError("xdp-drop: no frame from the generator in 20 s")
                time.sleep(0.005)
            time.sleep(WARM_SECONDS)
            p0, t0, n0 = self.drop.counters()[0].packets, time.perf_counter_ns(), _napi_cpu(self.napi)
            time.sleep(ROUND_SECONDS)
            p1, t1, n1 = self.drop.counters()[0].packets, time.perf_counter_ns(), _napi_cpu(self.napi)
            g_out, g_err = gen.communicate(timeout=60)
        finally:
            stop([gen])
        if gen.returncode != 0:
            raise RuntimeError(f"the generator failed: {g_err.strip()[-300:]}")
        return ({"frames": p1 - p0, "ns": t1 - t0, "cpu_ns": 0, "napi_cpu_ns": int((n1 - n0) * 1e9)},
                json.loads(g_out))


def _skip_reason() -> str | None:
    from ...napi.lab import LabError, require_privileges

    try:
        require_privileges()
    except (PermissionError, LabError) as e:
        return str(e)
    caps = capabilities()
    for name in ("bpf", "xdp_link", "af_xdp", "bpf_prog_run_live_frames"):
        if not caps[name].available:
            return f"{name} is not available: {caps[name].detail}"
    try:
        import numpy  # noqa: F401 - burstio-l2fwd swaps MACs with it
    except ImportError:
        return "numpy is needed (pip install 'burstio[bench]')"
    return None


def xdp(opts: Options, progress: Progress) -> ScenarioResult:
    from ...napi.lab import Lab

    names = list(NAMES)
    res = ScenarioResult(
        "xdp", {"frame": FRAME, "flows": FLOWS, "batch": opts.batch, "rings": RING, "round_s": ROUND_SECONDS,
                "path": "veth, 2 netns, threaded NAPI on the receive CPU"},
        {n: Variant(n) for n in [*names, "generator"]},
        targets=[Target("burstio-xsk", "datagrams_per_s", "c-xsk", 0.9, True),
                 Target("burstio-xsk", "datagrams_per_s", "recvmmsg", 2.5, True),
                 Target("burstio-l2fwd", "datagrams_per_s", "c-l2fwd", 0.8, True)],
        baselines=("recvmmsg", "c-xsk"))
    why = _skip_reason()
    if why:
        res.skipped = why
        return res
    cpus = client_and_server_cpus()
    res.params.update(generator_cpu=cpus[0], receive_cpu=cpus[1])
    with ExitStack() as stack:
        lab = stack.enter_context(Lab(f"bx{os.getpid() % 100000}", queues=1))
        r = _Round(lab, stack, opts, cpus)
        if r.cref is None:
            names = [n for n in names if not n.startswith("c-")]
            res.notes.append(f"C references not built: {r.cref_error}")
        for _k, order in rounds(dataclasses.replace(opts, min_rounds=max(opts.min_rounds, MIN_ROUNDS)), names,
                                progress):
            for name in order:
                progress.show(name)
                r.one(name, res.variants[name], res.variants["generator"])
    _targets_after(res)
    idle = []
    for name in names:
        v = res.variants[name]
        if v.seconds:
            v.extra["receive_cpu_busy"] = round(v.cpu_s / v.seconds, 3)
            if v.cpu_s / v.seconds < 0.9:
                idle.append(f"{name} {v.cpu_s / v.seconds:.0%}")
    for name in names:
        e, v = res.variants[name].extra, res.variants[name]
        where = [f"at the veth {e.get('a_tx_dropped', 0)}"]
        if "rx_dropped" in e:
            where.append(f"at the AF_XDP socket {e['rx_dropped'] + e.get('rx_ring_full', 0)} "
                         f"(fill ring empty {e.get('rx_fill_ring_empty_descs', 0)}, rx ring full "
                         f"{e.get('rx_ring_full', 0)})")
        if "kernel_drops" in e:
            where.append(f"at the UDP socket {e['kernel_drops']}")
        back = f"; back in namespace a {e['returned_to_a']}" if "returned_to_a" in e else ""
        res.notes.append(f"{name}: delivered {v.datagrams} in the timed windows; dropped over its rounds "
                         + ", ".join(where) + back)
    if idle:
        res.notes.append("the receive CPU was not busy all the time (" + ", ".join(idle) + "): there the "
                         "generator or the veth between the namespaces, not the receiver, set the rate; its CPU "
                         "per frame is the receiver's cost")
    res.notes.append("CPU ns/dgram is the receive CPU's: the receiver process and the NAPI thread (threaded, "
                     "pinned there); xdp-drop runs in the NAPI thread alone")
    res.notes.append("xdp-drop's rule is Rule() (every IP frame): the Filter parses no further than the IP version "
                     "for it, so it reads the Ethernet type and the IP header's first bytes, not the cache line of "
                     "the rest of the headers that the generator's CPU just wrote (a rule on ports or addresses "
                     "reads that line too, and costs the receive CPU more per frame)")
    res.notes.append("generator: BPF_PROG_RUN live frames from namespace a; its row is the rate it offered")
    res.notes.append("generator_ns_per_frame (each variant, per round): what a frame cost the generator's CPU in that "
                     "round (the kernel's timing of its frame loops). The work per frame is the same in every round; "
                     "on the project's VM it is ~75-95 ns, and in stretches of seconds to minutes ~110-130 ns, when "
                     "every transfer of a cache line between the two CPUs costs several times more (the page pool's "
                     "ring lock, the veth's ring): every variant then runs slower, and a round that fell in such a "
                     "stretch moves its variant's figures (compare a ratio's variants round by round with it)")
    res.notes.append(f"the generator runs in a session of its own at niceness {GENERATOR_NICE} (the session's "
                     "autogroup too), so that other processes do not take its CPU"
                     + ("" if r.gen_favoured else ": setting it failed at least once (no autogroup scheduling?)"))
    res.notes.append(f"on the receive CPU the receiver runs at SCHED_FIFO {RECEIVER_PRIORITY} and the NAPI thread at "
                     f"{NAPI_PRIORITY}: the receiver preempts it when woken, and other processes do not delay either")
    return res


def _targets_after(res: ScenarioResult) -> None:
    """Targets against the best user-space receiver (known after the run)."""
    rates = {n: res.variants[n].metrics().get("datagrams_per_s", 0.0) for n in USER_RECEIVERS}
    best = max(rates, key=lambda n: rates[n])
    if rates[best]:
        res.targets.append(Target("xdp-drop", "datagrams_per_s", best, 3.0, True))
        res.targets.append(Target("generator", "datagrams_per_s", best, 1.5, True))


if __name__ == "__main__":
    worker(sys.argv[1:])
