"""Latency: the real sockperf client, ping-pong, against two servers.

``sockperf sr`` (sockperf's own C++ server) and ``burstio serve sockperf``
take turns, one at a time, pinned to one CPU, with the client pinned to the
other: every request and every reply wakes a process on another CPU, as a
request from a remote client (through a NIC interrupt) does in a real
deployment, where the client never shares the server's CPU. Left unpinned,
the scheduler puts the client and the server on one CPU for part of a run
(a different part for each server and each run), and those samples measure
a hand-over on one CPU that no deployment has. Rounds alternate between the
servers, and every sample of every round (sockperf --full-log) is pooled per
server before percentiles are taken. The ``-same-cpu`` variants pin the
client to the server's CPU on purpose, for information: with no cross-CPU
wake-up, their difference is the servers' own path length per request.
"""
from __future__ import annotations

import contextlib
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
from collections.abc import Iterator

from ..common import Options, rounds
from ..perfcount import SyscallCounter, perf_available
from ..procs import client_and_server_cpus, cpu_seconds, free_port, stop, wait_answering
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
        baselines=("sockperf-server", f"sockperf-server{SAME_CPU}"), tools=("sockperf",))
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
    res.params.update(client_cpu=client_cpu, server_cpu=server_cpu, servers="one at a time")
    with tempfile.TemporaryDirectory(prefix="burstio-lat-") as tmp:
        for r, order in rounds(opts, names, progress):
            for n in order:
                progress.show(n)
                server = n.removesuffix(SAME_CPU)
                cpu = server_cpu if n.endswith(SAME_CPU) else client_cpu
                with _server(cmds[server], server_cpu, ports[server]) as proc:
                    _one_round(res.variants[n], sockperf, cpu, ports[server], size, proc,
                               os.path.join(tmp, f"{n}-{r}.csv"))
        ok, why = perf_available()
        res.syscall_source = f"{why}, attached to the server (per request)" if ok else f"not measured ({why})"
        for n in names if ok else []:
            progress.show(f"counting syscalls, {n}")
            server = n.removesuffix(SAME_CPU)
            cpu = server_cpu if n.endswith(SAME_CPU) else client_cpu
            with _server(cmds[server], server_cpu, ports[server]) as proc:
                count_server_syscalls(res.variants[n], proc.pid,
                                      ["taskset", "-c", cpu, sockperf, "pp", "-i", "127.0.0.1", "-p",
                                       str(ports[server]), "-t", "1", "-m", str(size)])
    for v in res.variants.values():
        if v.extra.get("requests"):
            v.extra["cpu_us_per_request"] = v.cpu_s * 1e6 / v.extra["requests"]
    return res


@contextlib.contextmanager
def _server(cmd: list[str], cpu: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """The server pinned to ``cpu``, answering; stopped on the way out."""
    proc = subprocess.Popen(["taskset", "-c", cpu, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_ready(port, proc)
        yield proc
    finally:
        stop([proc])


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
