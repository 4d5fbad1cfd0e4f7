"""burstio bench soak: a short soak over every path proves the accounting
works (every datagram delivered or counted as dropped where it was dropped,
nothing lost unaccounted, no descriptor growth); drops and losses, made on
purpose, are reported as such. Not for figures: nothing here measures time
or asserts a rate."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from burstio.bench.scenarios import soak
from support.paths import ROOT
from support.proc import subprocess_env

pytest.importorskip("numpy", reason="the soak checks sequence numbers with numpy (pip install numpy)")


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "burstio", "bench", *args], capture_output=True, text=True,
                          env=subprocess_env(), cwd=ROOT, timeout=600)


def test_a_short_soak_accounts_for_every_datagram_on_every_path():
    r = bench("soak", "--datagrams", "100000", "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["scenario"] == "soak" and sum(d["params"]["per_path"].values()) == 100000
    skipped = [n.split(":")[0] for n in d["notes"] if ": skipped: " in n]
    ran = [p for p in soak.PATHS if p not in skipped]
    assert list(d["variants"]) == [*ran, "all paths"] and {"mmsg", "socketset-epoll", "pipe", "aio-asyncio"} <= set(ran)
    for path in ran:
        v = d["variants"][path]
        share = 100000 // len(soak.PATHS)
        assert v["sent"] == d["params"]["per_path"][path] in (share, share + 1), path
        assert v["delivered"] + sum(v["dropped"].values()) == v["sent"], path
        assert (v["lost_unaccounted"], v["duplicates"], v["fd_growth"]) == (0, 0, 0), path
        assert isinstance(v["rss_growth_kib"], int), path
    assert d["variants"]["pipe"]["producer_fd_growth"] == 0
    met = {t["text"]: t["met"] for t in d["targets"]}
    assert all(met[f"{p} lost_unaccounted <= 0"] and met[f"{p} fd_growth <= 0"] for p in ran)
    assert met["all paths sent >= 1e+08"] is False  # a short soak is short, and says so


def test_bench_without_a_scenario_leaves_the_soak_out():
    from burstio import bench as b
    assert "soak" in b.SCENARIOS and "soak" in b.LONG
    r = bench("--help")
    assert "None given: all but soak" in " ".join(r.stdout.split())
    r = bench("soak", "--paths", "mmsg,warp")
    assert r.returncode == 2 and "unknown soak path warp; choose from mmsg, socketset-uring" in r.stderr


def test_kernel_drops_are_counted_where_they_happen(monkeypatch):
    """A receive buffer of a few datagrams and bursts of 256: the kernel drops
    most, and each drop is counted at the socket, none lost unaccounted."""
    monkeypatch.setattr(soak, "RCVBUF", 1)  # the kernel's minimum
    out = soak.run_mmsg(4096, 64)
    dropped = out.dropped["kernel socket (SO_MEMINFO)"]
    assert dropped > 0 and out.tally.delivered > 0
    assert out.tally.delivered + dropped == out.tally.sent == 4096 and out.lost_unaccounted == 0


def test_a_lost_datagram_is_reported_as_lost(monkeypatch):
    """A receiver that overlooks every 100th datagram: the soak reports them
    lost unaccounted (the measurement can fail)."""
    take = soak.Tally.take

    def overlook(self, seqs, flow=0):
        take(self, seqs[seqs % 100 != 7], flow)

    monkeypatch.setattr(soak.Tally, "take", overlook)
    monkeypatch.setattr(soak, "QUIET", 0.05)
    out = soak.run_mmsg(1000, 64)
    assert out.lost_unaccounted == 10 and out.tally.delivered == 990


def test_the_tally_counts_duplicates_reordering_and_corruption():
    import numpy as np
    t = soak.Tally(100, flows=2)
    t.take(np.array([0, 1, 2, 2, 5, 3], dtype=np.uint64))       # 2 twice; 3 after 5
    t.take(np.array([4, 1, 250], dtype=np.uint64))              # 1 again; 250 was never sent
    t.take(np.array([6, 7], dtype=np.uint64), flow=1)            # another flow: its own order
    assert (t.delivered, t.duplicates, t.reordered, t.corrupt) == (8, 2, 3, 1)
