"""Latency: the real sockperf client, ping-pong, against two servers.

``sockperf sr`` (sockperf's own C++ server) and ``burstio serve sockperf``
run side by side on one CPU, the client on another; rounds alternate
between them, and every sample of every round (sockperf --full-log) is
pooled per server before percentiles are taken.
"""
from __future__ import annotations

import csv
import dataclasses
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time

from ..common import Options, rounds
from ..perfcount import SyscallCounter, perf_available
from ..procs import client_and_server_cpus, cpu_seconds, free_port, wait_answering
from ..report import Progress, ScenarioResult, Target, Variant

ROUND_SECONDS = 1
SAME_CPU = "-same-cpu"  # variant suffix: the client on the server's CPU (information only)
# Tail percentiles need samples from several rounds to settle; a brief run
# still alternates the servers at least this many times each.
MIN_ROUNDS = 5



def _wait_ready(port: int, proc: subprocess.Popen[bytes], host: str = "127.0.0.1") -> None:
    """Send sockperf pong requests until the server answers."""
    probe = struct.pack("!QHI", 0, 1 | 2, 14)
    wait_answering(port, proc, probe, lambda reply: True, "the sockperf server", host=host)



def _read_full_log(path: str) -> list[float]:
    """Latencies (us) from sockperf --full-log: 'packet, txTime, rxTime, latency'."""
    with open(path, newline="") as f:
        return [float(row[3]) for row in csv.reader(f) if len(row) == 4 and row[0].strip().isdigit()]



def latency(opts: Options, progress: Progress) -> ScenarioResult:
    opts = dataclasses.replace(opts, min_rounds=max(opts.min_rounds, MIN_ROUNDS))
    servers = ["sockperf-server", "burstio"]
    names = servers + [f"{n}{SAME_CPU}" for n in servers]
    size = max(opts.size, 14)
    res = ScenarioResult(
        "latency", {"size": size, "mode": "ping-pong", "round_s": ROUND_SECONDS},
        {n: Variant(n) for n in names},
        targets=[Target("burstio", "p50_us", "sockperf-server", 1.1, False),
                 Target("burstio", "p99_us", "sockperf-server", 1.1, False)],
        baselines=("sockperf-server", f"sockperf-server{SAME_CPU}"))
    sockperf = shutil.which("sockperf")
    if sockperf is None:
        res.skipped = "sockperf is not installed (Debian: apt install sockperf)"
        return res
    client_cpu, server_cpu = client_and_server_cpus()
    ports = {n: free_port() for n in servers}
    cmds = {
        "sockperf-server": [sockperf, "sr", "-i", "127.0.0.1", "-p", str(ports["sockperf-server"])],
        "burstio": [sys.executable, "-m", "burstio", "serve", "sockperf", "--host", "127.0.0.1",
                    "--port", str(ports["burstio"]), "--quiet"],
    }
    res.params.update(client_cpu=client_cpu, server_cpu=server_cpu)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    with tempfile.TemporaryDirectory(prefix="burstio-lat-") as tmp:
        try:
            for n in servers:
                procs[n] = subprocess.Popen(["taskset", "-c", server_cpu, *cmds[n]],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for n in servers:
                _wait_ready(ports[n], procs[n])
            for r, order in rounds(opts, names):
                for n in order:
                    progress.show(f"latency: round {r + 1}, {n}")
                    server = n.removesuffix(SAME_CPU)
                    cpu = server_cpu if n.endswith(SAME_CPU) else client_cpu
                    _one_round(res.variants[n], sockperf, cpu, ports[server], size, procs[server],
                               os.path.join(tmp, f"{n}-{r}.csv"))
            ok, why = perf_available()
            res.syscall_source = f"{why}, attached to the server (per request)" if ok else f"not measured ({why})"
            for n in servers if ok else []:
                progress.show(f"latency: counting syscalls, {n}")
                count_server_syscalls(res.variants[n], procs[n].pid,
                                      ["taskset", "-c", client_cpu, sockperf, "pp", "-i", "127.0.0.1", "-p",
                                       str(ports[n]), "-t", "1", "-m", str(size)])
        finally:
            for p in procs.values():
                p.terminate()
            for p in procs.values():
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
    for v in res.variants.values():
        if v.extra.get("requests"):
            v.extra["cpu_us_per_request"] = v.cpu_s * 1e6 / v.extra["requests"]
    return res


def count_server_syscalls(variant: Variant, server_pid: int, pp: list[str]) -> None:
    """One more sockperf run (``pp``: its command), untimed, with perf
    attached to the server: its syscalls per request answered."""
    counter = SyscallCounter(server_pid)
    try:
        counter.enable()
        r = subprocess.run(pp, capture_output=True, check=False, text=True)
        counter.disable()
    finally:
        calls = counter.close()
    total = re.search(r"\[Total Run\].*?ReceivedMessages=(\d+)", r.stdout + r.stderr)
    if r.returncode == 0 and total:
        variant.syscalls, variant.syscall_datagrams = calls, int(total.group(1))


def _one_round(variant: Variant, sockperf: str, cpu: str, port: int, size: int,
               server: subprocess.Popen[bytes], log: str) -> None:
    cpu0 = cpu_seconds(server.pid)
    t0 = time.perf_counter()
    r = subprocess.run(["taskset", "-c", cpu, sockperf, "pp", "-i", "127.0.0.1", "-p", str(port),
                        "-t", str(ROUND_SECONDS), "-m", str(size), "--full-log", log],
                       capture_output=True, check=False, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"sockperf pp failed ({r.returncode}): {r.stderr.strip()[-300:]}")
    samples = _read_full_log(log)
    variant.samples_us.extend(samples)
    variant.add(len(samples), wall, cpu_seconds(server.pid) - cpu0)
    # the server's CPU covers every message of the round, warm-up included
    total = re.search(r"\[Total Run\].*?ReceivedMessages=(\d+)", r.stdout + r.stderr)
    variant.extra["requests"] = variant.extra.get("requests", 0) + (int(total.group(1)) if total else len(samples))
