"""burstio fuzz: every target against its committed corpus and a fixed
stream of random inputs (in this process: no crash allowed), the mutator's
determinism, and the runner itself: targets that raise, segfault or hang on
purpose (tests/support/fuzz_targets.py) are reported as crashes, every one,
with the input that caused it saved, and the run goes on past them.

The corpus is tests/corpus/<target>/: each target's seeds, inputs that reach
each of its outcomes, and the inputs that found bugs (``bug-*``). Nothing
here measures time.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from burstio._fuzz import TARGETS, load, run_one
from burstio._fuzz.mutate import Mutator
from burstio._fuzz.runner import fuzz_target
from support import fuzz_targets
from support.paths import ROOT
from support.proc import subprocess_env

CORPUS = ROOT / "tests" / "corpus"
SEED = 20261201
RANDOM_INPUTS = 3000


def _target_or_skip(name: str):
    target = load(name)
    why = target.missing()
    if why:
        pytest.skip(f"fuzz target {name}: {why}")
    return target


def test_every_target_has_a_corpus():
    assert sorted(p.name for p in CORPUS.iterdir()) == sorted(TARGETS)
    for name in TARGETS:
        assert any((CORPUS / name).glob("*.bin")), name


@pytest.mark.parametrize("name", list(TARGETS))
def test_the_corpus_runs_without_a_crash(name):
    target = _target_or_skip(name)
    outcomes = set()
    for path in sorted((CORPUS / name).glob("*.bin")):
        outcome, exc = run_one(target, path.read_bytes())
        assert exc is None, f"{path.name}: {exc!r}"
        outcomes.add(outcome)
    assert len(outcomes) > 1  # the corpus reaches more than one outcome


@pytest.mark.parametrize("name", list(TARGETS))
def test_random_inputs_run_without_a_crash(name):
    target = _target_or_skip(name)
    mutator = Mutator(name, SEED, target.seeds(), target.max_len)
    for i in range(RANDOM_INPUTS):
        data = mutator.input(i)
        outcome, exc = run_one(target, data)
        assert exc is None, f"input {i} ({data.hex()}): {exc!r}"


def test_the_bugs_the_fuzzer_found_stay_fixed():
    """dns: a name over 255 octets was answered NOERROR; netdev: replies
    without an ifindex, with an NLA_UINT of 12 bytes, shorter than their
    header, or carrying an error code beyond the int range raised TypeError,
    ValueError, struct.error, OverflowError instead of NetdevError."""
    found = sorted(CORPUS.glob("*/bug-*.bin"))
    assert {p.parent.name for p in found} >= {"dns", "netdev"}
    for path in found:
        target = _target_or_skip(path.parent.name)
        outcome, exc = run_one(target, path.read_bytes())
        assert exc is None, f"{path.parent.name}/{path.name}: {exc!r}"
    assert run_one(load("dns"), (CORPUS / "dns" / "bug-name-over-255-octets.bin").read_bytes())[0] == "FORMERR"


def test_inputs_are_a_function_of_seed_target_and_index():
    seeds = [b"abc", b"defgh"]
    a, b = Mutator("t", 1, seeds, 100), Mutator("t", 1, seeds, 100)
    first = [a.input(i) for i in range(200)]
    assert first == [b.input(i) for i in range(200)]
    assert [a.input(i) for i in (150, 3, 77)] == [first[150], first[3], first[77]]  # any order
    assert first != [Mutator("t", 2, seeds, 100).input(i) for i in range(200)]
    assert first != [Mutator("u", 1, seeds, 100).input(i) for i in range(200)]
    assert len(set(first)) > 150 and all(len(x) <= 100 for x in first)


# ---- the runner ------------------------------------------------------------------------


@pytest.fixture
def child_path(monkeypatch):
    """The fuzzing children find tests/support (the targets that misbehave)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "tests"), subprocess_env()["PYTHONPATH"]]))


def _inputs(target, n: int, pred) -> dict[int, bytes]:
    mutator = Mutator(target.name, SEED, target.seeds(), target.max_len)
    return {i: d for i in range(n) if pred(d := mutator.input(i))}


def test_an_exception_outside_the_documented_set_is_a_crash(child_path, tmp_path):
    n = 3000
    report = fuzz_target("support.fuzz_targets:RAISES", n, SEED, tmp_path)
    bad = _inputs(fuzz_targets.RAISES, n, fuzz_targets.raises_on)
    assert bad and report.crash_count == len(bad)
    assert report.ran == n and sum(report.outcomes.values()) == n - len(bad)
    assert set(report.outcomes) == {"even", "ValueError"}  # the documented exception is an outcome
    first = min(bad)
    [saved] = report.crashes  # one saved input per place in the code
    assert saved["index"] == first and "KeyError" in saved["detail"]
    assert Path(saved["file"]).read_bytes() == bad[first]
    assert "KeyError" in Path(saved["file"]).with_suffix(".txt").read_text()


def test_a_segfault_is_a_crash_with_its_input_and_the_run_goes_on(child_path, tmp_path):
    n = 6000
    report = fuzz_target("support.fuzz_targets:SEGFAULTS", n, SEED, tmp_path)
    bad = _inputs(fuzz_targets.SEGFAULTS, n, fuzz_targets.dies_on)
    assert bad, "the seed makes no input that segfaults: pick another"
    assert report.stopped is None and report.ran == n
    assert report.outcomes == {"fine": n - len(bad)} and report.crash_count == len(bad)
    assert sorted(c["index"] for c in report.crashes) == sorted(bad)
    for c in report.crashes:
        assert c["detail"] == "killed by SIGSEGV"
        assert Path(c["file"]).read_bytes() == bad[c["index"]]


def test_a_hang_is_a_crash(child_path, tmp_path):
    n = 2000
    bad = _inputs(fuzz_targets.HANGS, n, fuzz_targets.hangs_on)
    assert bad, "the seed makes no input that hangs: pick another"
    report = fuzz_target("support.fuzz_targets:HANGS", n, SEED, tmp_path, hang_seconds=1.0)
    assert report.ran == n and report.crash_count == len(bad)
    assert {c["index"]: c["detail"] for c in report.crashes} == dict.fromkeys(bad, "hang: no progress for 1 s")


def test_a_target_that_cannot_run_here_is_skipped_saying_why(tmp_path):
    for name in TARGETS:
        why = load(name).missing()
        report = fuzz_target(name, 10, SEED, tmp_path)
        assert report.skipped == why
        assert (report.ran == 0) == bool(why)


# ---- the command ---------------------------------------------------------------------


def fuzz_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "burstio", "fuzz", *args], capture_output=True, text=True,
                          env=subprocess_env(), cwd=ROOT, timeout=300)


def test_fuzz_command(tmp_path):
    r = fuzz_cli("dns", "sockperf", "--inputs", "500", "--seed", "5", "--json", "--crash-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["seed"] == 5 and list(out["targets"]) == ["dns", "sockperf"]
    for t in out["targets"].values():
        assert t["inputs_run"] == 500 and t["crashes"] == 0 and sum(t["outcomes"].values()) == 500
        assert t["distinct_outcomes"] == len(t["outcomes"]) > 1
    again = json.loads(fuzz_cli("dns", "--inputs", "500", "--seed", "5", "--json").stdout)
    assert again["targets"]["dns"]["outcomes"] == out["targets"]["dns"]["outcomes"]  # same seed, same inputs
    r = fuzz_cli("nosuch")
    assert r.returncode == 2 and "unknown target nosuch; choose from sockperf, dns, netdev" in r.stderr
    r = fuzz_cli("dns", "--inputs", "0")
    assert r.returncode == 2 and "argument --inputs: must be between 1 and" in r.stderr
