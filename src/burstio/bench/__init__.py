"""``burstio bench``: side-by-side benchmarks on loopback.

Each scenario runs its variants alternately in one process tree and reports
rates, syscalls per datagram (perf tracepoint), CPU per datagram, ratios to
its baselines, and whether the project's targets hold. Not tests: nothing
here asserts.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from .common import Options
from .report import Progress, ScenarioResult, format_footer, format_result, plot, used_tools, write_json
from .scenarios.dns import dns
from .scenarios.latency import latency
from .scenarios.latency_lab import latency_lab
from .scenarios.pacing import pacing
from .scenarios.pipes import pipes
from .scenarios.port import port
from .scenarios.quic import quic
from .scenarios.rx import rx_gro, rx_many_flow
from .scenarios.soak import soak
from .scenarios.socketset import rx_many_sockets, tx_redundant
from .scenarios.tx import tx_gso, tx_many
from .scenarios.xdp import xdp
from .scenarios.zerocopy import tx_zerocopy

SCENARIOS: dict[str, Callable[[Options, Progress], ScenarioResult]] = {
    "rx-many-flow": rx_many_flow,
    "rx-gro": rx_gro,
    "tx-many": tx_many,
    "tx-gso": tx_gso,
    "latency": latency,
    "rx-many-sockets": rx_many_sockets,
    "tx-redundant": tx_redundant,
    "tx-zerocopy": tx_zerocopy,
    "latency-lab": latency_lab,
    "pipes": pipes,
    "dns": dns,
    "quic": quic,
    "pacing": pacing,
    "soak": soak,
    "xdp": xdp,
    "port": port,
}
#: run only when named: too long for the run of all scenarios
LONG = ("soak",)
#: sized by --datagrams, not by the time budget (progress cannot say how long they take)
UNTIMED = ("soak",)

__all__ = ["SCENARIOS", "LONG", "Options", "run"]


def run(names: list[str], opts: Options, *, as_json: bool = False, plot_path: str | None = None,
        progress: bool = True) -> list[ScenarioResult]:
    """Run the scenarios in order: a table each as it ends and then the versions and the
    targets by outcome (or, ``as_json``, one JSON object at the end), progress on stderr."""
    from .versions import versions

    started = datetime.now(UTC)
    prog = Progress(progress)
    prog.plan(names, [None if n in UNTIMED else opts.seconds for n in names])
    results = []
    for i, name in enumerate(names):
        prog.scenario(i)
        res = SCENARIOS[name](opts, prog)
        prog.done()
        results.append(res)
        if not as_json:
            print(format_result(res), flush=True)
            print(flush=True)
    found = versions(used_tools(results), started)
    if as_json:
        write_json(results, versions=found)
    else:
        print(format_footer(results, found), flush=True)
    if plot_path:
        plot(results, plot_path)
        if not as_json:
            print(f"plot written to {plot_path}")
    return results
