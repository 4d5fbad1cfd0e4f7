"""The bench's plumbing: target evaluation, percentiles, the perf syscall
counter and its fallback, and figures that must not overwrite one another.
Nothing here times anything: these are the rules the reports follow."""
from __future__ import annotations

import math
import os
import re
import shutil

import pytest

from burstio.bench import cref
from burstio.bench.common import OWN_COUNTER, Options, count_syscalls, measure_sends
from burstio.bench.perfcount import EVENT, parse_count, perf_available
from burstio.bench.report import (
    MEASURED_KEYS,
    KeyClashError,
    Progress,
    ScenarioResult,
    Target,
    Variant,
    format_result,
    percentile,
)
from burstio.bench.scenarios.rx import C_OWN_COUNT, rx_many_flow

# ---- targets -------------------------------------------------------------------


def _metrics(**variants: dict) -> dict[str, dict]:
    return dict(variants)


@pytest.mark.parametrize(("at_least", "value", "met"), [
    (True, 2.0, True), (True, 1.5, True), (True, 1.4, False),
    (False, 1.0, True), (False, 1.5, True), (False, 1.6, False),
])
def test_target_direction(at_least, value, met):
    t = Target("fast", "rate", "slow", 1.5, at_least)
    r = t.evaluate(_metrics(fast={"rate": value * 10}, slow={"rate": 10}))
    assert r["met"] is met
    assert r["value"] == pytest.approx(value)


def test_target_against_a_fixed_goal():
    t = Target("fast", "syscalls_per_datagram", None, 1 / 32, False)
    assert t.evaluate(_metrics(fast={"syscalls_per_datagram": 1 / 64}))["met"] is True
    assert t.evaluate(_metrics(fast={"syscalls_per_datagram": 1.0}))["met"] is False


@pytest.mark.parametrize(("metrics", "why"), [
    ({"fast": {"rate": math.nan}, "slow": {"rate": 10}}, "fast has no rate"),
    ({"fast": {"rate": 20}, "slow": {"rate": math.nan}}, "slow has no rate"),
    ({"fast": {}, "slow": {"rate": 10}}, "fast has no rate"),
    ({"fast": {"rate": 20}, "slow": {}}, "slow has no rate"),
    ({"fast": {"rate": None}, "slow": {"rate": 10}}, "fast has no rate"),
    ({"fast": {"rate": True}, "slow": {"rate": 10}}, "fast has no rate"),
    ({"fast": {"rate": 20}, "slow": {"rate": 0}}, "slow rate is 0"),
    ({"fast": {"rate": 20}}, "no variant slow in this run"),
    ({"slow": {"rate": 10}}, "no variant fast in this run"),
])
def test_target_without_figures_is_not_applicable(metrics, why):
    for at_least in (True, False):  # neither direction may turn a missing figure into MET or MISSED
        r = Target("fast", "rate", "slow", 1.5, at_least).evaluate(metrics)
        assert (r["met"], r["value"], r["why"]) == (None, None, why)


def test_target_needing_evidence_is_not_applicable_without_it():
    t = Target("zc", "copied_notifications", None, 0, False, evidence="notifications")
    none_arrived = t.evaluate(_metrics(zc={"copied_notifications": 0, "notifications": 0}))
    assert none_arrived["met"] is None
    assert none_arrived["why"] == "no evidence: zc notifications is not positive"
    assert t.evaluate(_metrics(zc={"copied_notifications": 0}))["met"] is None
    assert t.evaluate(_metrics(zc={"copied_notifications": 0, "notifications": 12}))["met"] is True
    assert t.evaluate(_metrics(zc={"copied_notifications": 3, "notifications": 12}))["met"] is False


def _result(targets: list[Target], **rates: float) -> ScenarioResult:
    res = ScenarioResult("s", {}, {n: Variant(n) for n in rates}, targets=targets, baselines=("slow",))
    for n, rate in rates.items():
        if rate:
            res.variants[n].add(int(rate), 1.0, 0.5)
    return res


def test_report_says_met_missed_and_na_with_the_reason():
    res = _result([Target("fast", "datagrams_per_s", "slow", 1.5, True),
                   Target("fast", "datagrams_per_s", "slow", 3.0, True),
                   Target("fast", "datagrams_per_s", "absent", 1.0, True),
                   Target("idle", "datagrams_per_s", "slow", 1.0, True)],
                  fast=200, slow=100, idle=0)
    lines = [ln.strip() for ln in format_result(res).splitlines() if ln.strip().startswith("target")]
    assert lines == ["target fast datagrams_per_s >= 1.5x slow: 2 -> MET",
                     "target fast datagrams_per_s >= 3x slow: 2 -> MISSED",
                     "target fast datagrams_per_s >= 1x absent: - -> n/a (no variant absent in this run)",
                     "target idle datagrams_per_s >= 1x slow: - -> n/a (idle has no datagrams_per_s)"]


# ---- percentiles -------------------------------------------------------------------


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 99.9) == 100
    assert percentile(values, 0) == 1  # the lowest rank is the first value, not an index of -1
    assert percentile([7.0], 99.99) == 7
    assert percentile([1.0, 2.0, 3.0], 50) == 2
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2  # rank ceil(0.5 * 4) = 2, no interpolation
    assert math.isnan(percentile([], 50))


def test_latency_metrics_use_the_percentiles_of_the_samples():
    v = Variant("x", samples_us=[float(s) for s in range(1000, 0, -1)])
    m = v.metrics()
    assert (m["p50_us"], m["p99_us"], m["p99_9_us"], m["p99_99_us"], m["samples"]) == (500, 990, 999, 1000, 1000)


# ---- figures that must not clash ------------------------------------------------------


@pytest.mark.parametrize("key", sorted(MEASURED_KEYS))
def test_extra_refuses_a_measured_name(key):
    v = Variant("x")
    with pytest.raises(KeyClashError, match=key):
        v.extra[key] = 1
    with pytest.raises(KeyClashError):
        v.extra.update({key: 1})
    with pytest.raises(KeyClashError):
        v.extra.setdefault(key, 1)


def test_extra_replaced_by_a_plain_dict_still_cannot_overwrite():
    v = Variant("x")
    v.add(100, 1.0, 1.0)
    v.extra = {"datagrams_per_s": 1e9}
    with pytest.raises(KeyClashError):
        v.metrics()
    assert Variant("y", extra={"queries_per_s": 5.0}).metrics()["queries_per_s"] == 5.0


def test_extra_figures_of_other_names_are_reported():
    v = Variant("x")
    v.add(100, 1.0, 1.0)
    v.extra["kicks"] = 3
    v.extra.setdefault("wakeups", 0)
    v.extra.update(gro=True)
    m = v.metrics()
    assert (m["kicks"], m["wakeups"], m["gro"], m["datagrams_per_s"]) == (3, 0, True, 100)


# ---- the perf counter and its fallback ----------------------------------------------------


def test_parse_perf_stat_output():
    ok = f"1234,,{EVENT},1000500,100.00,,\n"
    assert parse_count(ok) == 1234
    assert parse_count("# started on ...\n\n" + ok) == 1234
    assert parse_count(f"<not counted>,,{EVENT},0,0.00,,\n") is None
    assert parse_count(f"<not supported>,,{EVENT},0,100.00,,\n") is None
    assert parse_count("7,,cycles,1,100.00,,\n") is None  # another event
    assert parse_count("") is None
    assert parse_count("perf: no permission\n") is None


@pytest.fixture
def no_perf(tmp_path, monkeypatch):
    """PATH without perf (the C reference is compiled before PATH changes, where a compiler
    exists: a wheel's test run has none, and only the receive scenario's test needs it)."""
    try:
        compiled = bool(cref.build("rx_recvmmsg"))
    except cref.BuildError:
        compiled = False
    monkeypatch.setenv("PATH", str(tmp_path))
    perf_available.cache_clear()
    yield compiled
    perf_available.cache_clear()


def test_without_perf_the_work_runs_and_the_count_is_unknown(no_perf):
    ok, why = perf_available()
    assert not ok
    assert "perf not installed" in why
    ran: list[int] = []
    started: list[int] = []
    assert count_syscalls(os.getpid(), lambda: ran.append(1) or 0, start=lambda: started.append(1)) is None
    assert ran == [1]
    assert started == [1]


def test_without_perf_send_counts_are_own_counters_or_na(no_perf):
    res = ScenarioResult("s", {}, {"stdlib": Variant("stdlib"), "burstio": Variant("burstio")})
    own = {"calls": 0}

    def burstio() -> int:
        own["calls"] += 2
        return 64

    measure_sends(res, Options(seconds=0.0, min_rounds=1), Progress(False),
                  {"stdlib": lambda: 64, "burstio": burstio}, lambda: 64, {"burstio": lambda: own["calls"]})
    std, bio = res.variants["stdlib"], res.variants["burstio"]
    assert std.syscalls is None
    assert "syscalls_per_datagram" not in std.metrics()
    assert (bio.syscalls, bio.syscall_datagrams, bio.syscalls_by) == (2, 64, OWN_COUNTER)
    assert "syscalls not measured (n/a) for: stdlib" in format_result(res)


def test_without_perf_a_receive_scenario_runs_and_says_what_it_could_not_count(no_perf):
    if not no_perf:
        pytest.skip("no C compiler here: the scenario's C reference is compiled at bench time")
    opts = Options(seconds=0.0, queue=2000, min_rounds=1)
    res = rx_many_flow(opts, Progress(False))
    v = res.variants
    assert all(v[n].datagrams == 2000 for n in v)
    assert v["stdlib"].syscalls is None
    assert v["burstio"].syscalls_by == OWN_COUNTER
    assert v["burstio"].syscalls is not None and v["burstio"].syscalls > 0
    assert v["c-reference"].syscalls_by == C_OWN_COUNT
    assert v["c-reference"].syscalls is not None and v["c-reference"].syscalls > 0
    text = format_result(res)
    assert "syscalls not measured (n/a) for: stdlib" in text
    header, _, stdlib_row = text.splitlines()[1:4]
    column = re.split(r"\s{2,}", header).index("syscalls/dgram")
    assert re.split(r"\s{2,}", stdlib_row)[column] == "n/a"


@pytest.mark.skipif(not perf_available()[0], reason=f"perf cannot count here: {perf_available()[1]}")
def test_perf_counts_the_syscalls_of_the_work_only():
    def work() -> int:
        for _ in range(500):
            os.getppid()
        return 0

    calls = count_syscalls(os.getpid(), work)
    assert calls is not None
    assert 500 <= calls < 600  # the 500 getppid, and the few the counter's own enable/disable make


def test_no_perf_fixture_hides_perf(no_perf):
    assert shutil.which("perf") is None


def test_favour_gives_a_new_session_its_niceness_and_its_autogroup_too():
    """The xdp scenario's generator runs in a session of its own, favoured:
    its niceness, and its autogroup's (which is what counts against other
    sessions' processes)."""
    import subprocess
    import sys

    from burstio.bench.procs import favour

    if os.geteuid() != 0:
        pytest.skip("a negative niceness needs root (CAP_SYS_NICE)")
    p = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                         start_new_session=True)
    try:
        ok = favour(p.pid, -5)
        assert os.getpriority(os.PRIO_PROCESS, p.pid) == -5
        if os.path.exists(f"/proc/{p.pid}/autogroup"):
            with open(f"/proc/{p.pid}/autogroup") as f:
                assert ok and f.read().split()[-1] == "-5"
    finally:
        p.communicate(b"")
