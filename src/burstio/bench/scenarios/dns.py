"""``dns``: the real ``dnsperf`` against one DNS responder on asyncio and on burstio.

The responder (``burstio.apps.dns``: a fixed answer for every A/AAAA query,
the same ``answer()`` function in every variant) runs in one server process
per variant, all pinned to one CPU; dnsperf runs on the other CPU, for
``ROUND_SECONDS`` per round against each server in turn, rounds alternating.
Queries/s and latency are dnsperf's own figures; CPU is the server process's
(from /proc) over the round. Syscalls per query come from a separate,
shorter run with perf attached to the server (``perf stat -e
raw_syscalls:sys_enter``).

Variants:

- ``asyncio``: ``AsyncioResponder`` (datagram_received + sendto) on asyncio's transport.
- ``uvloop``: the same protocol on uvloop's own transport (when uvloop is installed).
- ``burstio-compat``: the same protocol on burstio's transport, asyncio's loop: nothing else changed.
- ``burstio``: ``BurstResponder`` (datagrams_received, a burst per call) on burstio's transport.

The target is against uvloop, the fastest event loop a user can pick without
changing the protocol; the ratio to asyncio is shown for information.
"""
from __future__ import annotations

import importlib.util
import os
import re
import resource
import shutil
import struct
import subprocess
import sys
import tempfile

from ..common import Options, rounds
from ..perfcount import SyscallCounter, perf_available
from ..procs import client_and_server_cpus, cpu_seconds, free_port, stop, wait_answering
from ..report import Progress, ScenarioResult, Target, Variant

ROUND_SECONDS = 1
COUNT_SECONDS = 1
QUERY_NAMES = 10_000
OUTSTANDING = 200  # dnsperf -q: queries in flight
CLIENTS = 4        # dnsperf -c: client sockets
VARIANTS = {  # name: (transport, loop)
    "asyncio": ("asyncio", "asyncio"),
    "uvloop": ("asyncio", "uvloop"),
    "burstio-compat": ("burstio-compat", "asyncio"),
    "burstio": ("burstio", "asyncio"),
}
_STAT = re.compile(r"^\s*(Queries sent|Queries completed|Queries lost|Run time \(s\)|Queries per second"
                   r"|Average Latency \(s\)):\s*([\d.]+)", re.MULTILINE)


def _write_queries(path: str) -> None:
    """dnsperf's input: one "name type" per line, A and AAAA mixed."""
    with open(path, "w") as f:
        f.writelines(f"host{i}.example.com {'AAAA' if i % 3 == 0 else 'A'}\n" for i in range(QUERY_NAMES))


def _wait_ready(port: int, proc: subprocess.Popen[str]) -> None:
    """Ask an A query until the responder answers."""
    query = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + b"\x05ready\x00\x00\x01\x00\x01"
    wait_answering(port, proc, query, lambda reply: reply[:2] == b"\x42\x42", "the DNS responder")


def _dnsperf(cpu: str, port: int, queries: str, seconds: float) -> dict[str, float]:
    """dnsperf's figures, and its own CPU seconds ("client_cpu_s")."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(["taskset", "-c", cpu, "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", queries,
                        "-l", str(seconds), "-q", str(OUTSTANDING), "-c", str(CLIENTS)],
                       capture_output=True, check=False, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    stats = {k: float(v) for k, v in _STAT.findall(r.stdout)}
    stats["client_cpu_s"] = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    if r.returncode != 0 or "Queries completed" not in stats:
        raise RuntimeError(f"dnsperf failed ({r.returncode}): {(r.stdout + r.stderr).strip()[-400:]}")
    return stats


def _variants() -> tuple[list[str], list[str]]:
    names: list[str] = []
    notes: list[str] = []
    for n, (_, loop) in VARIANTS.items():
        if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
            notes.append("uvloop: skipped, not installed (pip install uvloop)")
            continue
        names.append(n)
    return names, notes


def dns(opts: Options, progress: Progress) -> ScenarioResult:
    names, notes = _variants()
    res = ScenarioResult(
        "dns", {"round_s": ROUND_SECONDS, "outstanding": OUTSTANDING, "clients": CLIENTS,
                "answer": "fixed A/AAAA"},
        {n: Variant(n) for n in names},
        targets=[Target("burstio", "queries_per_s", "uvloop", 1.3, True)],
        notes=notes, baselines=("asyncio", "uvloop"), tools=("dnsperf",))
    if shutil.which("dnsperf") is None:
        res.skipped = "dnsperf is not installed (Debian: apt install dnsperf)"
        return res
    client_cpu, server_cpu = client_and_server_cpus()
    res.params.update(client_cpu=client_cpu, server_cpu=server_cpu)
    ports = {n: free_port() for n in names}
    procs: dict[str, subprocess.Popen[str]] = {}
    stats: dict[str, dict[str, float]] = {n: {"lost": 0.0, "latency_sum": 0.0, "client_cpu_s": 0.0} for n in names}
    with tempfile.TemporaryDirectory(prefix="burstio-dns-") as tmp:
        queries = os.path.join(tmp, "queries.txt")
        _write_queries(queries)
        try:
            for n in names:
                transport, loop = VARIANTS[n]
                procs[n] = subprocess.Popen(
                    ["taskset", "-c", server_cpu, sys.executable, "-m", "burstio.apps.dns", "--quiet",
                     "--port", str(ports[n]), "--transport", transport, "--loop", loop],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for n in names:
                _wait_ready(ports[n], procs[n])
            _run_rounds(res, opts, progress, procs, ports, client_cpu, queries, stats)
            _count_syscalls(res, names, procs, ports, client_cpu, queries, progress)
        finally:
            stop(procs.values())
    _finish(res, stats)
    return res


def _run_rounds(res: ScenarioResult, opts: Options, progress: Progress, procs: dict[str, subprocess.Popen[str]],
                ports: dict[str, int], cpu: str, queries: str, stats: dict[str, dict[str, float]]) -> None:
    """One dnsperf run per variant per round, the order rotating each round."""
    for _r, order in rounds(opts, list(res.variants), progress):
        for n in order:
            progress.show(n)
            cpu0 = cpu_seconds(procs[n].pid)
            out = _dnsperf(cpu, ports[n], queries, ROUND_SECONDS)
            server_s = cpu_seconds(procs[n].pid) - cpu0
            done = int(out["Queries completed"])
            res.variants[n].add(done, out["Run time (s)"], server_s)
            stats[n]["lost"] += out.get("Queries lost", 0)
            stats[n]["latency_sum"] += out.get("Average Latency (s)", 0) * done
            stats[n]["client_cpu_s"] += out["client_cpu_s"]


def _finish(res: ScenarioResult, stats: dict[str, dict[str, float]]) -> None:
    """queries/s, latency, CPU per query, how busy each server was."""
    for n, v in res.variants.items():
        if v.datagrams and v.seconds:
            v.extra.update(queries_per_s=v.datagrams / v.seconds, lost=int(stats[n]["lost"]),
                           avg_latency_us=stats[n]["latency_sum"] / v.datagrams * 1e6,
                           cpu_us_per_query=v.cpu_s * 1e6 / v.datagrams, server_busy=v.cpu_s / v.seconds,
                           client_busy=stats[n]["client_cpu_s"] / v.seconds)
            res.notes.append(f"{n}: {v.extra['queries_per_s']:.0f} queries/s, avg latency "
                             f"{v.extra['avg_latency_us']:.0f} us, {v.extra['cpu_us_per_query']:.2f} server CPU "
                             f"us/query, server busy {v.extra['server_busy']:.0%}, dnsperf busy "
                             f"{v.extra['client_busy']:.0%}, {v.extra['lost']} lost (in flight when a round ended)")
    res.notes.append("datagrams/s = queries answered per second (each is one datagram in and one out); "
                     "a server busy well under 100% while dnsperf is near 100% was waiting for dnsperf: "
                     "the rate is then dnsperf's limit, not the server's")


def _count_syscalls(res: ScenarioResult, names: list[str], procs: dict[str, subprocess.Popen[str]],
                    ports: dict[str, int], cpu: str, queries: str, progress: Progress) -> None:
    """One more dnsperf run per variant with perf attached to its server."""
    ok, why = perf_available()
    res.syscall_source = why if ok else f"not counted ({why})"
    if not ok:
        return
    for n in names:
        progress.show(f"counting syscalls, {n}")
        counter = SyscallCounter(procs[n].pid)
        try:
            counter.enable()
            out = _dnsperf(cpu, ports[n], queries, COUNT_SECONDS)
            counter.disable()
        finally:
            calls = counter.close()
        res.variants[n].syscalls = calls
        res.variants[n].syscall_datagrams = int(out["Queries completed"])
