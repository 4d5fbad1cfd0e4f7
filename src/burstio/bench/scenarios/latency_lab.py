"""latency-lab: busy polling measured through NAPI.

The real sockperf ping-pong client runs in namespace a of a burstio lab; one
server at a time runs in namespace b (on its own CPU), behind a veth with
NAPI on, so busy polling and the per-NAPI settings take effect as on a NIC:

- sockperf-server: `sockperf sr`; sockperf-server-lls: with its --lls busy
  poll (SO_BUSY_POLL);
- blocking, busy-poll, busy-poll-suspend: `burstio serve sockperf` in its
  three modes (see burstio.apps.sockperf), busy polling as busy_poll's
  "auto" chooses (for one socket: SO_BUSY_POLL, like sockperf --lls);
  busy-poll-epoll: its busy-poll mode made to busy poll through an epoll
  instance (--busy-poll-mechanism epoll), the comparison that "auto" rests on.

Rounds alternate the servers; all samples of a server are pooled. A veth has
no hardware interrupt: its "interrupt" is the NET_RX softirq the sender
raises, so the IRQ figure is NET_RX softirqs per request (host-wide).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..common import Options, rounds
from ..perfcount import perf_available
from ..procs import client_and_server_cpus, cpu_seconds, stop
from ..report import Progress, ScenarioResult, Target, Variant
from .latency import ROUND_SECONDS, _read_full_log, _wait_ready, count_server_syscalls

if TYPE_CHECKING:
    from ...napi.lab import Lab

PORT = 11111
#: variant: (sockperf path, server address) -> the server's command line
SERVERS: dict[str, Callable[[str, str], list[str]]] = {
    "sockperf-server": lambda sp, host: [sp, "sr", "-i", host, "-p", str(PORT)],
    "sockperf-server-lls": lambda sp, host: [sp, "sr", "-i", host, "-p", str(PORT), "--lls", "50"],
    "blocking": lambda sp, host: _burstio(host, "blocking"),
    # busy_poll's "auto": for the server's one socket, through the socket
    # (SO_BUSY_POLL), as sockperf --lls does
    "busy-poll": lambda sp, host: _burstio(host, "busy-poll"),
    "busy-poll-suspend": lambda sp, host: _burstio(host, "busy-poll-suspend"),
    # the same server made to busy poll through an epoll instance of its own
    # (EPIOCSPARAMS): shows what that path's epoll_wait before each receive
    # costs, and why "auto" does not take it here
    "busy-poll-epoll": lambda sp, host: _burstio(host, "busy-poll", "epoll"),
}


def _burstio(host: str, mode: str, mechanism: str = "auto") -> list[str]:
    return [sys.executable, "-m", "burstio", "serve", "sockperf", "--host", host, "--port", str(PORT),
            "--quiet", "--mode", mode, "--busy-poll-usecs", "50", "--busy-poll-budget", "8",
            "--busy-poll-mechanism", mechanism]


def _net_rx_softirqs() -> int:
    for line in Path("/proc/softirqs").read_text().splitlines():
        if line.strip().startswith("NET_RX:"):
            return sum(int(x) for x in line.split()[1:])
    return 0




def latency_lab(opts: Options, progress: Progress) -> ScenarioResult:
    from ...napi.lab import Lab, require_privileges

    names = list(SERVERS)
    res = ScenarioResult(
        "latency-lab", {"size": max(opts.size, 14), "mode": "ping-pong", "path": "veth with NAPI, 2 netns",
                        "round_s": ROUND_SECONDS},
        {n: Variant(n) for n in names},
        targets=[Target("busy-poll", "p99_us", "blocking", 0.7, False),
                 Target("busy-poll", "p50_us", "sockperf-server-lls", 1.1, False),
                 Target("busy-poll", "p99_us", "sockperf-server-lls", 1.1, False)],
        baselines=("blocking", "sockperf-server-lls"), tools=("sockperf",))
    sockperf = shutil.which("sockperf")
    if sockperf is None:
        res.skipped = "sockperf is not installed (Debian: apt install sockperf)"
        return res
    try:
        require_privileges()
    except (PermissionError, RuntimeError) as e:
        res.skipped = str(e)
        return res
    client_cpu, server_cpu = client_and_server_cpus()
    res.params.update(client_cpu=client_cpu, server_cpu=server_cpu)
    with tempfile.TemporaryDirectory(prefix="burstio-lablat-") as tmp, \
            Lab(f"bl{os.getpid() % 100000}", queues=1) as lab:
        host = lab.addr("b")
        for r, order in rounds(opts, names, progress):
            for n in order:
                progress.show(n)
                _one_round(res.variants[n], lab, SERVERS[n](sockperf, host), sockperf, client_cpu,
                           server_cpu, max(opts.size, 14), os.path.join(tmp, f"{n}-{r}.csv"))
        ok, why = perf_available()
        res.syscall_source = f"{why}, attached to the server (per request)" if ok else f"not measured ({why})"
        for n in names if ok else []:
            progress.show(f"counting syscalls, {n}")
            _counted_round(res.variants[n], lab, SERVERS[n](sockperf, host), sockperf, client_cpu, server_cpu,
                           max(opts.size, 14))
    for v in res.variants.values():
        req = v.extra.get("requests")
        if req:
            v.extra["cpu_us_per_request"] = v.cpu_s * 1e6 / req
            v.extra["irqs_per_request"] = v.extra.pop("softirqs", 0) / req
    res.notes.append("IRQs/req: a veth has no hardware interrupt; its interrupt is the NET_RX softirq, "
                     "counted host-wide per request (both directions)")
    return res


def _counted_round(variant: Variant, lab: Lab, server_cmd: list[str], sockperf: str, client_cpu: str,
                   server_cpu: str, size: int) -> None:
    """One more round, untimed, with perf attached to the server."""
    server = subprocess.Popen(lab.command("b", ["taskset", "-c", server_cpu, *server_cmd]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with lab.inside("a"):
            _wait_ready(PORT, server, host=lab.addr("b"))
        count_server_syscalls(variant, server.pid,
                              lab.command("a", ["taskset", "-c", client_cpu, sockperf, "pp", "-i", lab.addr("b"),
                                                "-p", str(PORT), "-t", "1", "-m", str(size)]))
    finally:
        stop([server])


def _one_round(variant: Variant, lab: Lab, server_cmd: list[str], sockperf: str, client_cpu: str,
               server_cpu: str, size: int, log: str) -> None:
    server = subprocess.Popen(lab.command("b", ["taskset", "-c", server_cpu, *server_cmd]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with lab.inside("a"):
            _wait_ready(PORT, server, host=lab.addr("b"))
        cpu0, irq0, t0 = cpu_seconds(server.pid), _net_rx_softirqs(), time.perf_counter()
        r = subprocess.run(lab.command("a", ["taskset", "-c", client_cpu, sockperf, "pp", "-i", lab.addr("b"),
                                             "-p", str(PORT), "-t", str(ROUND_SECONDS), "-m", str(size),
                                             "--full-log", log]), capture_output=True, check=False, text=True)
        wall, irqs, cpu = time.perf_counter() - t0, _net_rx_softirqs() - irq0, cpu_seconds(server.pid) - cpu0
    finally:
        stop([server])
    if r.returncode != 0:
        raise RuntimeError(f"sockperf pp failed ({r.returncode}): {r.stderr.strip()[-300:]}")
    samples = _read_full_log(log)
    variant.samples_us.extend(samples)
    variant.add(len(samples), wall, cpu)
    import re

    total = re.search(r"\[Total Run\].*?ReceivedMessages=(\d+)", r.stdout + r.stderr)
    variant.extra["requests"] = variant.extra.get("requests", 0) + (int(total.group(1)) if total else len(samples))
    variant.extra["softirqs"] = variant.extra.get("softirqs", 0) + irqs
