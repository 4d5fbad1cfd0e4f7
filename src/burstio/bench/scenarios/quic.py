"""``quic``: HTTP/3 bulk downloads with aioquic, over asyncio's transport and burstio's.

aioquic (from PyPI, unmodified) serves ``GET /bytes/N`` (``burstio.apps.quic``)
in one server process per transport, pinned to one CPU; one client process,
pinned to the other, opens a fresh connection per variant per round (warmed
up by a first download, not timed) and downloads ``download_bytes`` on it,
the variants alternating round by round. A connection per round, because
a connection settles into one of two steady states of the server's pacing
and keeps it: one per run would make a run all one or the other. aioquic's
Reno leaves slow start only on a loss or a rising RTT, and grows its window
with every ACK even while the pacer, not the window, limits; once the
window over the RTT passes a datagram per microsecond, the pacer's
``packet_time`` stops at 1 us while its bucket keeps shrinking, to a
datagram or two: a timer per datagram or two, the server's CPU the limit,
and the client woken as often. Below that, the pacer releases groups of up
to 16. Throughput is the client's bytes over the
download's wall time; CPU is the client's CPU during the download plus the
server's over the same span (from /proc), per byte.

Variants:

- ``asyncio``: aioquic's protocols on asyncio's own datagram transport, both ends.
- ``burstio-compat``: the same protocols on burstio's transport
  (``burstio.aio.install``), both ends: the drop-in case, nothing else changed.
- ``burstio``: as burstio-compat, and the client protocol takes each burst
  whole (``BurstQuicProtocol``: receive every datagram of the burst, then
  process events and transmit once, instead of after every datagram; and
  between bursts let datagrams gather in the socket until its ACK is due).
- ``burstio-paced``: as burstio, and the server's pacing is burstio's
  (``PacedH3Server`` on a paced transport: aioquic's pacer evaluated ahead,
  each datagram released by the pacer thread at its time, instead of a loop
  timer per datagram or small group).

The server code is the same in the first three; the two burstio variants
share a server, burstio-paced has its own.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from typing import IO, Any, cast

from ..common import Options, rounds
from ..perfcount import SyscallCounter, perf_available
from ..procs import client_and_server_cpus, cpu_seconds, finish, free_port, stop
from ..report import Progress, ScenarioResult, Target, Variant

DOWNLOAD_BYTES = 16 << 20
COUNT_BYTES = 4 << 20  # the separate download whose syscalls perf counts
VARIANTS = {  # name: (transport at both ends, client takes bursts)
    "asyncio": ("asyncio", False),
    "burstio-compat": ("burstio", False),
    "burstio": ("burstio", True),
    "burstio-paced": ("burstio-paced", True),  # the server paced by burstio; the client as burstio
}


def _missing() -> str | None:
    for module in ("aioquic", "cryptography"):
        if importlib.util.find_spec(module) is None:
            return f"needs {module} (pip install aioquic)"
    return None


class _Client:
    """The client worker: one JSON command, one JSON answer."""

    def __init__(self, cpu: str):
        self.proc = subprocess.Popen(["taskset", "-c", cpu, sys.executable, "-m", "burstio.bench.workers.quic",
                                      "client"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)

    def ask(self, **cmd: Any) -> dict[str, Any]:
        stdin, stdout = cast(IO[str], self.proc.stdin), cast(IO[str], self.proc.stdout)  # PIPEs
        stdin.write(json.dumps(cmd) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"quic client worker exited: {cast(IO[str], self.proc.stderr).read().strip()[-500:]}")
        answer: dict[str, Any] = json.loads(line)  # one JSON object per command
        return answer

    def close(self) -> None:
        """End the process (end of its input; killed after 10 s)."""
        finish(self.proc)


def _start_server(transport: str, cpu: str, port: int, cert: str, key: str) -> subprocess.Popen[str]:
    p = subprocess.Popen(["taskset", "-c", cpu, sys.executable, "-m", "burstio.bench.workers.quic", "server",
                          transport, str(port), cert, key], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    stdout, stderr = cast(IO[str], p.stdout), cast(IO[str], p.stderr)  # PIPEs
    if stdout.readline().strip() != "ready":
        p.kill()
        raise RuntimeError(f"quic server ({transport}) did not start: {stderr.read().strip()[-500:]}")
    return p


def quic(opts: Options, progress: Progress) -> ScenarioResult:
    names = list(VARIANTS)
    res = ScenarioResult(
        "quic", {"download_bytes": DOWNLOAD_BYTES, "http": "HTTP/3 (aioquic)"},
        {n: Variant(n) for n in names},
        targets=[Target("burstio", "mbit_per_s", "asyncio", 1.3, True),
                 Target("burstio", "cpu_ns_per_byte", "asyncio", 0.85, False)],
        baselines=("asyncio",))
    why = _missing()
    if why:
        res.skipped = why
        return res
    from ...apps.quic import self_signed_certificate

    client_cpu, server_cpu = client_and_server_cpus()
    res.params.update(client_cpu=client_cpu, server_cpu=server_cpu)
    totals: dict[str, dict[str, float]] = {
        n: {"bytes": 0, "client_cpu": 0.0, "server_cpu": 0.0, "drops": 0} for n in names}
    servers: dict[str, subprocess.Popen[str]] = {}
    client = None
    with tempfile.TemporaryDirectory(prefix="burstio-quic-") as tmp:
        cert, key = self_signed_certificate(tmp)
        try:
            ports: dict[str, int] = {}
            for transport in sorted({t for t, _ in VARIANTS.values()}):
                ports[transport] = free_port()
                servers[transport] = _start_server(transport, server_cpu, ports[transport], cert, key)
            client = _Client(client_cpu)
            _run_rounds(res, opts, progress, client, servers, ports, totals)
            _count_syscalls(res, client, servers, progress)
        finally:
            if client is not None:
                client.close()
            stop(servers.values())
    _finish(res, totals)
    return res


def _run_rounds(res: ScenarioResult, opts: Options, progress: Progress, client: _Client,
                servers: dict[str, subprocess.Popen[str]], ports: dict[str, int],
                totals: dict[str, dict[str, float]]) -> None:
    """One connection and download per variant per round, the order rotating
    each round."""
    for _r, order in rounds(opts, list(res.variants), progress):
        for n in order:
            progress.show(n)
            transport, bursts = VARIANTS[n]
            opened = client.ask(cmd="connect", name=n, transport=transport, port=ports[transport], bursts=bursts)
            server = servers[transport]
            s0 = cpu_seconds(server.pid)
            out = client.ask(cmd="get", name=n, size=DOWNLOAD_BYTES)
            server_s = cpu_seconds(server.pid) - s0
            if out["status"] != 200 or out["bytes"] != DOWNLOAD_BYTES:
                raise RuntimeError(f"quic {n}: download answered {out}")
            res.variants[n].add(out["datagrams"], out["wall_s"], out["cpu_s"] + server_s)
            t = totals[n]
            t["bytes"] += out["bytes"]
            t["client_cpu"] += out["cpu_s"]
            t["server_cpu"] += server_s
            t["drops"] += out["kernel_drops"] - opened["kernel_drops"]


def _count_syscalls(res: ScenarioResult, client: _Client, servers: dict[str, subprocess.Popen[str]],
                    progress: Progress) -> None:
    """One more download per variant with perf attached to the client and
    its server: syscalls of both ends per datagram the client received."""
    ok, why = perf_available()
    res.syscall_source = (why + " (client and server, per datagram received)") if ok else f"not counted ({why})"
    if not ok:
        return
    for n, (transport, _) in VARIANTS.items():
        progress.show(f"counting syscalls, {n}")
        counters = [SyscallCounter(client.proc.pid), SyscallCounter(servers[transport].pid)]
        try:
            for c in counters:
                c.enable()
            out = client.ask(cmd="get", name=n, size=COUNT_BYTES)
            for c in counters:
                c.disable()
        finally:
            calls = sum(c.close() for c in counters)
        res.variants[n].syscalls = calls
        res.variants[n].syscall_datagrams = out["datagrams"]


def _finish(res: ScenarioResult, totals: dict[str, dict[str, float]]) -> None:
    for n, v in res.variants.items():
        t = totals[n]
        if not t["bytes"] or not v.seconds:
            continue
        v.extra.update(bytes=t["bytes"], mbit_per_s=t["bytes"] * 8 / v.seconds / 1e6,
                       cpu_ns_per_byte=v.cpu_s * 1e9 / t["bytes"],
                       client_cpu_s=round(t["client_cpu"], 4), server_cpu_s=round(t["server_cpu"], 4),
                       client_kernel_drops=t["drops"])
        res.notes.append(f"{n}: {v.extra['mbit_per_s']:.1f} Mbit/s, {v.extra['cpu_ns_per_byte']:.1f} CPU ns/byte "
                         f"(client {t['client_cpu'] * 1e9 / t['bytes']:.1f} + server "
                         f"{t['server_cpu'] * 1e9 / t['bytes']:.1f}); the client's kernel dropped "
                         f"{t['drops']} datagrams (full receive buffer) in the timed downloads")
    res.notes.append("datagrams/s counts the client's receives; the goal is met only when both targets hold "
                     "(throughput and CPU per byte)")
