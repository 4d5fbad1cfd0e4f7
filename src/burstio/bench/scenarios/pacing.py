"""``pacing``: flows paced at 10k, 100k and 1M datagrams/s; how close to its
schedule each datagram arrives, and what the pacing costs the sender.

A sender process (pinned to one CPU) sends ``PER_ROUND[rate]`` numbered
datagrams on a schedule: datagram i is meant to leave at t0 + (i // g) * g /
rate, g datagrams sharing each time (g = ``GROUP[rate]``: 1, 1, 8 -- at 1M/s
a Python timer per datagram is out of reach, so every variant gets the same
small groups). This process (pinned to the other CPU) receives them with
kernel timestamps (SO_TIMESTAMPNS, taken when loopback delivers the datagram,
in the sender's context) and computes each one's jitter: |(actual - actual of
the first) - (intended - intended of the first)|.

Variants, per rate:

- ``python-sleep``: what an asyncio program does today: one ``loop.call_at``
  per time slot, whose callback sends the slot's datagrams with
  ``socket.sendto`` (aioquic's pacer works this way).
- ``burstio-paced``: one ``send_batch`` of the whole schedule on a
  ``BurstSocket(paced=True, gso=False)`` (each entry's ``txtimes`` set), then
  ``flush()``: burstio's pacer thread, at the default ``pacer_slack``
  (``PACER_SLACK``), releases with sendmmsg every datagram due within half
  the slack of each wake-up, the first release at the first datagram's time
  and later ones centred on what they carry: one wake-up per slack, each
  datagram within half of it of its time (in a dense flow, 32 datagrams
  due within half the slack, as at 100k and 1M: one per half slack, each
  within a quarter).
- ``burstio-paced-slack0``: the same with ``pacer_slack=0``: a wake-up per
  time slot, each datagram at its time (the precision the default gives up
  for CPU, shown side by side).
- ``burstio-paced-gso``: as burstio-paced, with GSO: the datagrams of a
  release to one destination with one size leave as GSO sends (on the sink
  a GSO send reaches the device whole, as on a NIC that segments UDP: the
  ifb offers it; loopback segments it at receive).

CPU per datagram is the sender process's CPU time (all its threads) from
the first scheduling call until the last datagram has left, over the
datagrams sent. On loopback that charges the sender the receiver's whole
stack too: loopback delivers in the sender's context (IP and UDP receive,
the socket queue, the receiver's wake-up, an IPI in a VM), work that a
sender on a real link never does (measured here: 3.1 us per datagram to
loopback, 1.8 us to a device that drops at transmit, sendmmsg of 11; a
paced release of 11 every 1 ms, 5.2 against 3.5 us per datagram). So where
it may make namespaces (root), the scenario runs in a lab's namespace
(``burstio.napi.lab.Lab``, ``ifb=True``) and each variant's round sends its
schedule twice from the same sender process: to the receiver on that
namespace's loopback, whose kernel timestamps give the jitter (and the
``loopback_cpu_ns_per_datagram`` figure, shown beside), then to the lab's
ifb sink (routed there, dropped at transmit: route, IP output, qdisc and
device, the sender's own work alone), which gives ``cpu_ns_per_datagram``
and ``datagrams_per_s``. Without the privileges both come from loopback,
and the params say so (``cpu_measured``). Targets: burstio-paced's (the
default slack's) p99 jitter and CPU per datagram at most half
python-sleep's, at each rate.

    python -m burstio.bench.scenarios.pacing sender   (the sender process)
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import IO, Any, cast

from ..._native import PacketBatch
from ..._udp import PACER_SLACK, BurstSocket
from ...napi.lab import Lab, LabError
from ..common import Options, pinned, rounds
from ..procs import client_and_server_cpus
from ..report import Progress, ScenarioResult, Target, Variant, percentile

RATES = (10_000, 100_000, 1_000_000)
GROUP = {10_000: 1, 100_000: 1, 1_000_000: 8}
PER_ROUND = {10_000: 2_000, 100_000: 10_000, 1_000_000: 40_000}
KINDS = ("python-sleep", "burstio-paced", "burstio-paced-slack0", "burstio-paced-gso")
START_NS = 20_000_000  # the schedule starts this long after the command arrives
SINK_PORT = 9  # the sink drops everything: any port
INDEX = struct.Struct("=Q")
RCVBUF = 256 << 20


def _label(rate: int) -> str:
    return f"{rate // 1_000_000}M" if rate >= 1_000_000 else f"{rate // 1000}k"


def _name(kind: str, rate: int) -> str:
    return f"{kind}@{_label(rate)}"


def _parse(name: str) -> tuple[str, int]:
    kind, label = name.split("@")
    return kind, next(r for r in RATES if _label(r) == label)


def _offsets(rate: int, count: int) -> list[int]:
    """Each datagram's intended time after the first's, in ns."""
    g = GROUP[rate]
    return [(i // g) * g * 1_000_000_000 // rate for i in range(count)]


# ---- the sender process --------------------------------------------------------------


def _send_python(dest: tuple[str, int], rate: int, count: int) -> dict[str, float]:
    """One loop.call_at per time slot, sendto per datagram (stdlib)."""
    g = GROUP[rate]
    payloads = [INDEX.pack(i) for i in range(count)]
    offsets = _offsets(rate, count)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    loop = asyncio.new_event_loop()
    sendto = sock.sendto

    def fire(first: int) -> None:
        for i in range(first, min(first + g, count)):
            sendto(payloads[i], dest)
    try:
        c0, w0 = time.process_time(), time.perf_counter()
        t0 = loop.time() + START_NS / 1e9
        for first in range(0, count, g):
            loop.call_at(t0 + offsets[first] / 1e9, fire, first)
        loop.call_at(t0 + offsets[-1] / 1e9, loop.stop)  # after the last slot's callback (same time, later)
        loop.run_forever()
        return {"cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - w0 - START_NS / 1e9}
    finally:
        loop.close()
        sock.close()


def _send_burstio(dest: tuple[str, int], rate: int, count: int, gso: bool, slack: float) -> dict[str, float]:
    """One send_batch of the schedule on a paced BurstSocket, then flush()."""
    import numpy as np

    with BurstSocket(paced=True, gso=gso, pacer_queue=max(count, 1), pacer_slack=slack) as sock:
        batch = PacketBatch(count, INDEX.size)
        for i in range(count):
            batch.append(INDEX.pack(i), dest)
        offsets = np.asarray(_offsets(rate, count), dtype=np.int64)
        c0, w0 = time.process_time(), time.perf_counter()
        np.asarray(batch.txtimes)[:count] = time.monotonic_ns() + START_NS + offsets
        sent = sock.send_batch(batch)
        sock.flush()
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0 - START_NS / 1e9
        c = sock.counters
        return {"cpu_s": cpu, "wall_s": wall, "queued": sent, "gso_messages": c["tx_gso_messages"],
                "syscalls": c["tx_syscalls"], "waits": c["paced_waits"], "releases": c["paced_releases"]}


def _sender() -> None:
    """Read one JSON command per line, answer one JSON line each."""
    for line in sys.stdin:
        cmd = json.loads(line)
        dest = (cmd["host"], cmd["port"])
        kind = cmd["kind"]
        if kind == "python-sleep":
            out = _send_python(dest, cmd["rate"], cmd["count"])
        else:
            slack = cmd.get("slack", 0.0 if kind.endswith("-slack0") else PACER_SLACK)
            out = _send_burstio(dest, cmd["rate"], cmd["count"], kind.endswith("-gso"), slack)
        print(json.dumps(out), flush=True)


# ---- the receiving side -------------------------------------------------------------


class _Receiver(threading.Thread):
    """Collects (index, kernel timestamp) of one round's datagrams."""

    def __init__(self, sock: BurstSocket, count: int):
        super().__init__(daemon=True)
        self.sock, self.count = sock, count
        self.got: dict[int, int] = {}
        self.stop_at: float | None = None  # set when the sender is done: receive until then

    def run(self) -> None:
        batch = PacketBatch(1024, 64)
        while len(self.got) < self.count and (self.stop_at is None or time.monotonic() < self.stop_at):
            n = self.sock.recv_batch(batch, 0.05)
            ts = batch.timestamps
            for i in range(n):
                self.got[INDEX.unpack_from(batch[i])[0]] = ts[i]


def _jitter_us(got: dict[int, int], rate: int, count: int) -> list[float]:
    """|actual - intended| of each received datagram, aligned on the first received."""
    if not got:
        return []
    offsets = _offsets(rate, count)
    first = min(got)
    a0, s0 = got[first], offsets[first]
    return [abs((got[i] - a0) - (offsets[i] - s0)) / 1000 for i in sorted(got)]


def _command(sender: subprocess.Popen[str], cmd: dict[str, Any]) -> dict[str, Any]:
    """Send one command to the sender process and return its answer."""
    stdin, stdout = cast(IO[str], sender.stdin), cast(IO[str], sender.stdout)
    stdin.write(json.dumps(cmd) + "\n")
    stdin.flush()
    line = stdout.readline()
    if not line:
        raise RuntimeError(f"pacing sender exited: {cast(IO[str], sender.stderr).read().strip()[-500:]}")
    return cast(dict[str, Any], json.loads(line))


def _round(sender: subprocess.Popen[str], rx: BurstSocket, sink: str | None, name: str, res: ScenarioResult,
           stats: dict[str, dict[str, Any]]) -> None:
    """One round of one variant: its schedule to the receiver (jitter), then,
    with a sink, the same schedule to the sink (the sender's CPU alone)."""
    kind, rate = _parse(name)
    count = PER_ROUND[rate]
    recv = _Receiver(rx, count)
    recv.start()
    cmd = {"kind": kind, "rate": rate, "count": count, "host": "127.0.0.1", "port": rx.getsockname()[1]}
    out = _command(sender, cmd)
    recv.stop_at = time.monotonic() + 1.0
    recv.join()
    s = stats[name]
    s["jitter"] += _jitter_us(recv.got, rate, count)
    s["lost"] += count - len(recv.got)
    s["loopback_cpu_s"] += out["cpu_s"]
    s["loopback_wall_s"] += out["wall_s"]
    if sink is not None:
        out = _command(sender, {**cmd, "host": sink, "port": SINK_PORT})
    res.variants[name].add(count, out["wall_s"], out["cpu_s"])
    for key in ("gso_messages", "syscalls", "waits", "releases"):
        s[key] = s.get(key, 0) + out.get(key, 0)


def pacing(opts: Options, progress: Progress) -> ScenarioResult:
    names = [_name(k, r) for r in RATES for k in KINDS]
    res = ScenarioResult(
        "pacing", {"rates": list(RATES), "per_round": {_label(r): PER_ROUND[r] for r in RATES},
                   "group": {_label(r): GROUP[r] for r in RATES}, "receiver": "SO_TIMESTAMPNS on loopback",
                   "pacer_slack_us": PACER_SLACK * 1e6},
        {n: Variant(n) for n in names},
        targets=[t for r in RATES for t in (
            Target(_name("burstio-paced", r), "jitter_p99_us", _name("python-sleep", r), 0.5, False),
            Target(_name("burstio-paced", r), "cpu_ns_per_datagram", _name("python-sleep", r), 0.5, False))],
        baselines=tuple(_name("python-sleep", r) for r in RATES))
    try:
        import numpy  # noqa: F401 - the burstio variants set their schedule with it
    except ImportError:
        res.skipped = "needs numpy (pip install numpy)"
        return res
    rx_cpu, tx_cpu = client_and_server_cpus()
    res.params.update(sender_cpu=tx_cpu, receiver_cpu=rx_cpu)
    stats: dict[str, dict[str, Any]] = {n: {"jitter": [], "lost": 0, "loopback_cpu_s": 0.0, "loopback_wall_s": 0.0}
                                         for n in names}
    with contextlib.ExitStack() as stack:
        lab = _sink_lab(stack, res)
        argv = ["taskset", "-c", tx_cpu, sys.executable, "-m", "burstio.bench.scenarios.pacing", "sender"]
        sender = subprocess.Popen(lab.command("b", argv) if lab is not None else argv, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            with lab.inside("b") if lab is not None else contextlib.nullcontext():
                rx = stack.enter_context(BurstSocket.bind(("127.0.0.1", 0), timestamps=True, rcvbuf=RCVBUF))
            with pinned(int(rx_cpu)):
                for _r, order in rounds(opts, names, progress):
                    for name in order:
                        progress.show(name)
                        _round(sender, rx, lab.sink_addr if lab is not None else None, name, res, stats)
        finally:
            if sender.stdin:
                sender.stdin.close()
            sender.wait(timeout=30)
    _finish(res, stats)
    return res


def _sink_lab(stack: contextlib.ExitStack, res: ScenarioResult) -> Lab | None:
    """A lab with an ifb sink (torn down by ``stack``), or None (the
    privileges or tools are missing: CPU then comes from loopback, and the
    params say why)."""
    try:
        lab = stack.enter_context(Lab(f"bq{os.getpid() % 100000}", queues=1, ifb=True))
    except (PermissionError, LabError) as e:
        res.params["cpu_measured"] = f"loopback, receiver's stack included (no sink: {e})"
        return None
    res.params["cpu_measured"] = (f"ifb sink {lab.sink_addr} (dropped at transmit: the sender's own work); "
                                  "jitter and loopback_cpu_ns_per_datagram: loopback in the lab's namespace")
    return lab


def _finish(res: ScenarioResult, stats: dict[str, dict[str, Any]]) -> None:
    for name, v in res.variants.items():
        s = stats[name]
        jitter = sorted(s["jitter"])
        if not jitter:
            continue
        v.extra.update(jitter_p50_us=percentile(jitter, 50), jitter_p99_us=percentile(jitter, 99),
                       jitter_samples=len(jitter), lost=s["lost"],
                       loopback_cpu_ns_per_datagram=s["loopback_cpu_s"] * 1e9 / max(1, v.datagrams),
                       loopback_datagrams_per_s=v.datagrams / s["loopback_wall_s"] if s["loopback_wall_s"] > 0 else 0.0)
        if "syscalls" in s and not name.startswith("python"):
            v.extra.update(send_syscalls_per_datagram=s["syscalls"] / max(1, v.datagrams),
                           releases_per_datagram=s["releases"] / max(1, v.datagrams),
                           gso_messages=s["gso_messages"], socket_full_waits=s["waits"])
        res.notes.append(f"{name}: jitter p50 {v.extra['jitter_p50_us']:.1f} us, p99 "
                         f"{v.extra['jitter_p99_us']:.1f} us, {v.cpu_s * 1e9 / max(1, v.datagrams):.0f} CPU "
                         f"ns/datagram ({v.extra['loopback_cpu_ns_per_datagram']:.0f} to loopback), "
                         f"{s['lost']} lost")
    res.notes.append("jitter: |actual - intended| per datagram, both relative to the first datagram received "
                     "(kernel receive timestamps, loopback); CPU: the sender process, all threads, "
                     f"measured: {res.params.get('cpu_measured', 'loopback')}")


if __name__ == "__main__":
    if sys.argv[1:] == ["sender"]:
        _sender()
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
