"""burstio.bench.report and the run around it: every round's figures and their spread, the
targets by outcome and `bench --fail-on-miss`, the JSON, and the progress display (scenario i of
N, round, time left; on stderr only). Results are built by hand: nothing here times anything,
but for one tiny real scenario that shows the progress never reaches the JSON on stdout."""
from __future__ import annotations

import io
import json
import statistics
import subprocess
import sys
from typing import Any

import pytest

from burstio import bench
from burstio._cli import main
from burstio.bench.common import Options, expected_rounds, rounds
from burstio.bench.report import (
    Progress,
    ScenarioResult,
    Target,
    TargetSummary,
    Variant,
    format_footer,
    format_result,
    percentile,
    spread,
    write_json,
)
from burstio.bench.versions import versions
from support.paths import ROOT
from support.proc import subprocess_env

# ---- each round's figures and their spread -------------------------------------------------


def _rounds(*rounds: tuple[int, float]) -> Variant:
    v = Variant("v")
    for datagrams, seconds in rounds:
        v.add(datagrams, seconds, seconds / 2)
    return v


def test_each_round_is_kept_and_the_headline_pools_them():
    m = _rounds((100_000, 1.0), (300_000, 1.0), (200_000, 2.0)).metrics()
    assert m["per_round"]["datagrams"] == [100_000, 300_000, 200_000]
    assert m["per_round"]["seconds"] == [1.0, 1.0, 2.0]
    assert m["per_round"]["cpu_s"] == [0.5, 0.5, 1.0]
    assert m["per_round"]["datagrams_per_s"] == [100_000, 300_000, 100_000]
    assert m["datagrams_per_s"] == 150_000  # all datagrams over all seconds, as before: not a median
    assert m["spread"]["datagrams_per_s"] == {"min": 100_000, "max": 300_000, "rounds": 3,
                                              "stdev": pytest.approx(statistics.stdev([1e5, 3e5, 1e5]))}
    assert m["spread"]["datagrams_per_s"]["min"] <= m["datagrams_per_s"] <= m["spread"]["datagrams_per_s"]["max"]


def test_one_round_has_no_stdev_and_no_rounds_no_spread():
    assert _rounds((500, 1.0)).metrics()["spread"]["datagrams_per_s"] == {"min": 500, "max": 500, "stdev": None,
                                                                          "rounds": 1}
    m = Variant("idle").metrics()
    assert "per_round" not in m and "spread" not in m
    with pytest.raises(ValueError):
        spread([None, None])


def test_latency_rounds_have_their_own_percentiles():
    v = Variant("lat")
    for samples in ([float(s) for s in range(1, 101)], [float(s) for s in range(201, 301)], []):
        v.samples_us.extend(samples)
        v.add(len(samples), 1.0, 0.1)
    m = v.metrics()
    assert m["per_round"]["p50_us"] == [50, 250, None]  # the third round had no sample
    assert m["per_round"]["p99_us"] == [99, 299, None]
    assert m["spread"]["p50_us"] == {"min": 50, "max": 250, "stdev": pytest.approx(statistics.stdev([50, 250])),
                                     "rounds": 2}
    pooled = sorted(v.samples_us)
    assert (m["p50_us"], m["p99_us"]) == (percentile(pooled, 50), percentile(pooled, 99))  # the headline: pooled


def test_samples_not_taken_in_rounds_give_no_round_percentiles():
    v = Variant("lat")
    v.samples_us.extend([1.0, 2.0])
    v.add(2, 1.0, 0.1)
    v.samples_us.append(3.0)  # after the last round: no round to give it to
    m = v.metrics()
    assert "p50_us" not in m["per_round"] and "p50_us" not in m["spread"]
    assert m["p50_us"] == 2.0


def _result(name: str = "s", targets: list[Target] | None = None, **rounds: list[tuple[int, float]]) -> ScenarioResult:
    res = ScenarioResult(name, {}, {n: Variant(n) for n in rounds}, targets=targets or [], baselines=("slow",))
    for n, rs in rounds.items():
        for datagrams, seconds in rs:
            res.variants[n].add(datagrams, seconds, seconds / 2)
    return res


def test_tables_show_the_headline_and_the_rounds_min_max():
    res = _result(fast=[(100_000, 1.0), (300_000, 1.0), (200_000, 2.0)], slow=[(50_000, 1.0)])
    header, _, fast, slow = format_result(res).splitlines()[1:5]
    assert "datagrams/s [min-max of rounds]" in header
    assert "150.0 k [100.0-300.0 k]" in fast
    assert "50.0 k" in slow and "[" not in slow  # one round: no range to show


def test_latency_tables_show_the_min_max_of_p50_and_p99():
    v = Variant("lat")
    for samples in ([10.0, 20.0, 30.0], [40.0, 50.0, 60.0]):
        v.samples_us.extend(samples)
        v.add(3, 1.0, 0.1)
    res = ScenarioResult("lat", {}, {"lat": v}, baselines=())
    header, _, row = format_result(res).splitlines()[1:4]
    assert "p50 us [min-max of rounds]" in header and "p99 us [min-max of rounds]" in header
    assert "30.0 [20.0-50.0]" in row and "60.0 [30.0-60.0]" in row


def test_a_target_uses_the_pooled_headline_not_a_statistic_of_the_rounds():
    # fast: 100/s for 1 s and 300/s for 3 s: pooled 250/s (its rounds' median would be 200)
    res = _result(targets=[Target("fast", "datagrams_per_s", "slow", 2.4, True)],
                  fast=[(100, 1.0), (900, 3.0)], slow=[(100, 1.0)])
    t = res.as_json()["targets"][0]
    assert (t["value"], t["met"]) == (2.5, True)


# ---- targets by outcome, and the exit status -------------------------------------------------


def _mixed() -> list[ScenarioResult]:
    """One target MET, one MISSED, two n/a (a baseline not run; a scenario skipped)."""
    first = _result("first", [Target("fast", "datagrams_per_s", "slow", 1.5, True),
                              Target("fast", "datagrams_per_s", "slow", 3.0, True),
                              Target("fast", "datagrams_per_s", "absent", 1.0, True)],
                    fast=[(200, 1.0)], slow=[(100, 1.0)])
    skipped = _result("second", [Target("fast", "datagrams_per_s", "slow", 1.0, True)], fast=[], slow=[])
    skipped.skipped = "a tool is missing"
    return [first, skipped]


def test_targets_by_outcome_and_na_is_not_a_miss():
    s = TargetSummary.of(_mixed())
    assert s.met == ["first: fast datagrams_per_s >= 1.5x slow"]
    assert s.missed == ["first: fast datagrams_per_s >= 3x slow"]
    assert s.na == ["first: fast datagrams_per_s >= 1x absent", "second: fast datagrams_per_s >= 1x slow"]
    assert s.as_json() == {"met": 1, "missed": 1, "na": 2, "missed_targets": ["first: fast datagrams_per_s >= 3x slow"]}
    assert s.text().startswith("targets: 1 met, 1 missed, 2 n/a (n/a is not a miss")
    assert TargetSummary().text() == "targets: 0 met, 0 missed, 0 n/a"


@pytest.fixture
def fake_run(monkeypatch):
    """`burstio bench` with bench.run returning what the test made (no scenario runs)."""
    results: list[ScenarioResult] = []

    def run(names: list[str], opts: Options, **kwargs: Any) -> list[ScenarioResult]:
        return results

    monkeypatch.setattr(bench, "run", run)
    return results


def test_a_missed_target_exits_0_without_fail_on_miss(fake_run, capsys):
    fake_run.extend(_mixed())
    assert main(["bench", "tx-gso", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_a_missed_target_exits_1_with_fail_on_miss(fake_run, capsys):
    fake_run.extend(_mixed())
    assert main(["bench", "tx-gso", "--quiet", "--fail-on-miss"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "burstio bench: 1 target missed (--fail-on-miss): first: fast datagrams_per_s >= 3x slow"]


def test_na_targets_are_not_misses_with_fail_on_miss(fake_run, capsys):
    results = _mixed()
    results[0].targets.pop(1)  # the missed one: MET and n/a are left
    fake_run.extend(results)
    assert main(["bench", "tx-gso", "--quiet", "--fail-on-miss"]) == 0
    assert capsys.readouterr().err == ""


# ---- the JSON and the human footer ----------------------------------------------------------------


def test_json_carries_rounds_spread_versions_and_summary():
    out = io.StringIO()
    found = versions()
    write_json(_mixed(), out, versions=found)
    obj = json.loads(out.getvalue())
    fast = obj["scenarios"]["first"]["variants"]["fast"]
    assert fast["per_round"]["datagrams_per_s"] == [200.0]
    assert fast["spread"]["datagrams_per_s"]["rounds"] == 1
    assert obj["versions"] == json.loads(json.dumps(found))
    assert obj["summary"] == {"met": 1, "missed": 1, "na": 2,
                              "missed_targets": ["first: fast datagrams_per_s >= 3x slow"]}
    one = io.StringIO()
    write_json(_mixed()[:1], one)  # one scenario: its object, with the versions gathered now
    assert {"scenario", "variants", "versions", "summary"} <= set(json.loads(one.getvalue()))


def test_json_is_strict_a_figure_that_is_not_finite_is_null():
    res = _mixed()[:1]
    res[0].variants["fast"].extra.update(nan_figure=float("nan"), ratio=float("inf"), fine=1.5,
                                         listed=[float("-inf"), 2.0])
    out = io.StringIO()
    write_json(res, out, versions={})

    def strict(token: str) -> None:
        raise AssertionError(f"not strict JSON: {token}")
    obj = json.loads(out.getvalue(), parse_constant=strict)
    fast = obj["variants"]["fast"]
    assert (fast["nan_figure"], fast["ratio"], fast["fine"], fast["listed"]) == (None, None, 1.5, [None, 2.0])


def test_footer_names_the_versions_and_the_targets():
    found = versions()
    measured, targets = format_footer(_mixed(), found).splitlines()
    assert measured.startswith(f"measured with: burstio {found['burstio']}, {found['python_implementation']} "
                               f"{found['python']}, Linux {found['kernel']}, {found['cpus']} x ")
    assert measured.endswith(f"run started {found['date']}")
    assert targets.startswith("targets: 1 met, 1 missed, 2 n/a")


# ---- progress ------------------------------------------------------------------------------------


class _Stream(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_progress_says_scenario_round_and_time_left():
    out = _Stream()
    p = Progress(stream=out)
    p.plan(["a", "b", "soak"], [100.0, 3.0, None])
    p.scenario(0)
    assert out.getvalue() == "[scenario 1/3 a] starting, ~103 s left + soak\n"
    p.round(1, None, 100.0)
    assert p.line("stdlib") == "[scenario 1/3 a] round 1 stdlib, estimating the time left"
    p.round(2, 7, 100.0)
    assert p.line("burstio") == "[scenario 1/3 a] round 2/~7 burstio, ~103 s left + soak"
    p.rounds_over()
    assert p.line("counting syscalls") == "[scenario 1/3 a] counting syscalls, ~3 s left + soak"
    p.scenario(2)
    assert p.line("mmsg, 1000 datagrams") == "[scenario 3/3 soak] mmsg, 1000 datagrams"  # not bounded by time


def test_progress_off_writes_nothing():
    out = _Stream()
    p = Progress(False, stream=out)
    p.plan(["a"], [1.0])
    p.scenario(0)
    p.show("x", force=True)
    p.done()
    assert out.getvalue() == ""


def test_expected_rounds():
    opts = Options(seconds=3.0, min_rounds=3, max_rounds=200)
    assert expected_rounds(opts, 0, 0.0) == (None, 3.0)  # nothing to go by yet: the budget
    assert expected_rounds(opts, 2, 1.0) == (6, 2.0)  # 0.5 s a round, 2 s of budget left
    assert expected_rounds(Options(seconds=0.1, min_rounds=3), 1, 1.0) == (3, 2.0)  # min_rounds go on past it
    assert expected_rounds(Options(seconds=60.0, max_rounds=4), 2, 1.0) == (4, 1.0)  # and max_rounds stop it


class _Recorder(Progress):
    def __init__(self) -> None:
        super().__init__(False)
        self.calls: list[tuple[Any, ...]] = []

    def round(self, number: int, expected: int | None, left_s: float) -> None:
        self.calls.append(("round", number))

    def rounds_over(self) -> None:
        self.calls.append(("over",))


def test_rounds_tell_the_progress():
    p = _Recorder()
    order = [names for _, names in rounds(Options(seconds=0.0, min_rounds=3), ["a", "b"], p)]
    assert order == [["a", "b"], ["b", "a"], ["a", "b"]]
    assert p.calls == [("round", 1), ("round", 2), ("round", 3), ("over",)]


def test_progress_never_reaches_the_json_on_stdout():
    r = subprocess.run([sys.executable, "-m", "burstio", "bench", "tx-gso", "--seconds", "0.2", "--json"],
                       capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)  # stdout is the one object, nothing else
    assert obj["scenario"] == "tx-gso"
    assert "[scenario 1/1 tx-gso] starting" in r.stderr
    assert "[scenario" not in r.stdout
    assert {"versions", "summary"} <= set(obj)
    assert all("spread" in v and "per_round" in v for v in obj["variants"].values())
