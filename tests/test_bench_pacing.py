"""The pacing bench: a short run where every variant sends its schedule and
every datagram is accounted for, and the jitter arithmetic. No figure is
asserted: the bench measures, the tests check that it counts right."""
from __future__ import annotations

import pytest

import burstio
from burstio.bench import SCENARIOS
from burstio.bench.common import Options
from burstio.bench.report import Progress
from burstio.bench.scenarios import pacing

pytest.importorskip("numpy")


def test_offsets_and_jitter_align_on_the_first_received():
    assert pacing._offsets(1_000_000, 10) == [0] * 8 + [8000, 8000]
    assert pacing._offsets(10_000, 3) == [0, 100_000, 200_000]
    # datagram 0 lost: aligned on datagram 1; 2 arrived 5 us late relative to it
    got = {1: 1_000_000, 2: 1_105_000, 3: 1_200_000}
    assert pacing._jitter_us(got, 10_000, 4) == [0.0, 5.0, 0.0]
    assert pacing._jitter_us({}, 10_000, 4) == []


def test_a_short_run_accounts_for_every_datagram(monkeypatch):
    monkeypatch.setattr(pacing, "PER_ROUND", dict.fromkeys(pacing.RATES, 400))
    assert SCENARIOS["pacing"] is pacing.pacing
    res = pacing.pacing(Options(seconds=0, min_rounds=1, max_rounds=1), Progress(False))
    assert res.skipped is None
    assert set(res.variants) == {f"{k}@{lab}" for k in pacing.KINDS for lab in ("10k", "100k", "1M")}
    for name, v in res.variants.items():
        m = v.metrics()
        assert v.datagrams == 400 and m["lost"] == 0 and m["jitter_samples"] == 400, name
        assert m["jitter_p99_us"] >= m["jitter_p50_us"] >= 0, name
        if name.startswith("burstio"):
            assert m["releases_per_datagram"] > 0, name
    if burstio.capabilities().udp_segment:  # at 1M/s a time slot holds 8 datagrams: GSO runs
        assert res.variants["burstio-paced-gso@1M"].metrics()["gso_messages"] > 0
    assert res.variants["burstio-paced@1M"].metrics()["gso_messages"] == 0
    assert len(res.targets) == 2 * len(pacing.RATES)
    # the targets judge the default slack; the slack-0 variant is shown beside it
    assert {t.variant for t in res.targets} == {f"burstio-paced@{lab}" for lab in ("10k", "100k", "1M")}
    assert res.params["pacer_slack_us"] == burstio._udp.PACER_SLACK * 1e6 == 1000
