"""Runs fuzz targets in child processes and reports what each did.

For each target, a child process (``burstio._fuzz.child``) runs the inputs.
When the child dies (a signal, an exit, or no progress for ``hang_seconds``)
the input it was running is saved to ``crash_dir`` and counted as a crash,
and a new child goes on from its last snapshot, skipping that input, so one
crash never hides the inputs after it. Per target the report has: inputs
run, outcomes (how often each), crashes (with the saved inputs), seconds.
"""
from __future__ import annotations

import collections
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import TARGETS, load
from .child import SHARED_SIZE, read_current, read_snapshot

__all__ = ["TargetReport", "fuzz_target", "fuzz", "format_reports"]

#: after this many process deaths a target stops (its inputs kill it again and again)
MAX_DEATHS = 20
_POLL = 0.2


@dataclass
class TargetReport:
    """What fuzzing one target found."""

    name: str
    inputs: int  # asked for
    ran: int = 0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    crash_count: int = 0
    crashes: list[dict[str, Any]] = field(default_factory=list)  # the saved ones
    seconds: float = 0.0
    skipped: str | None = None  # why the target did not run
    stopped: str | None = None  # why it stopped before all inputs ran

    def as_dict(self) -> dict[str, Any]:
        return {"inputs_run": self.ran, "inputs_asked": self.inputs, "outcomes": dict(self.outcomes.most_common()),
                "distinct_outcomes": len(self.outcomes), "crashes": self.crash_count,
                "crash_inputs": self.crashes, "seconds": round(self.seconds, 3), "skipped": self.skipped,
                "stopped": self.stopped}


def _death(rc: int, hung: bool, hang_seconds: float) -> str:
    if hung:
        return f"hang: no progress for {hang_seconds:g} s"
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exited with status {rc}"


class _Run:
    """One target's run: children, one after another."""

    def __init__(self, spec: str, inputs: int, seed: int, crash_dir: Path, hang_seconds: float, tmp: Path):
        self.spec, self.inputs, self.seed = spec, inputs, seed
        self.crash_dir, self.hang_seconds = crash_dir, hang_seconds
        self.shared = tmp / "shared"
        self.stderr = tmp / "stderr"
        self.report = TargetReport(load(spec).name, inputs)

    def child(self, start: int, skip: list[int]) -> tuple[int, bool]:
        """Run one child from ``start``; (its exit status, whether it hung)."""
        with self.shared.open("wb") as f:
            f.truncate(SHARED_SIZE)
        argv = [sys.executable, "-m", "burstio._fuzz.child", self.spec, str(start), str(self.inputs),
                str(self.seed), str(self.shared), str(self.crash_dir), ",".join(map(str, skip))]
        with self.stderr.open("wb") as err:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        try:
            last, since = b"", time.monotonic()
            while True:
                try:
                    return p.wait(_POLL), False
                except subprocess.TimeoutExpired:
                    with self.shared.open("rb") as f:
                        now = f.read(8)  # the index of the input running
                    if now != last:
                        last, since = now, time.monotonic()
                    elif time.monotonic() - since > self.hang_seconds:
                        p.kill()
                        return p.wait(), True
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()

    def merge(self, snap: dict[str, Any] | None) -> int | None:
        """Add a child's snapshot to the report; the index it got to, if any."""
        if snap is None:
            return None
        self.report.ran += snap["ran"]
        self.report.outcomes.update(snap["outcomes"])
        self.report.crash_count += snap["crash_count"]
        self.report.crashes += snap["crashes"]
        return int(snap["next"])

    def died(self, start: int, rc: int, hung: bool) -> tuple[int, int] | None:
        """Record a child's death; (the input that killed it, where the next
        child starts), or None to stop."""
        shared = self.shared.read_bytes()
        now = read_current(shared)
        got_to = self.merge(read_snapshot(shared))
        why = _death(rc, hung, self.hang_seconds)
        if now is None:  # died before its first input: not an input's doing
            tail = self.stderr.read_text(errors="replace").strip().splitlines()[-5:]
            self.report.stopped = f"the fuzzing process {why} before its first input: {' | '.join(tail)}"
            return None
        index, data = now
        self.crash_dir.mkdir(parents=True, exist_ok=True)
        path = self.crash_dir / f"{self.report.name}-{index}.bin"
        path.write_bytes(data)
        self.report.ran += 1
        self.report.crash_count += 1
        self.report.crashes.append({"index": index, "kind": "process", "detail": why, "file": str(path)})
        return index, (got_to if got_to is not None else start)


def fuzz_target(spec: str, inputs: int, seed: int, crash_dir: Path, *, hang_seconds: float = 30.0) -> TargetReport:
    """Fuzz one target (a name in TARGETS, or "module:attribute")."""
    target = load(spec)
    missing = target.missing()
    if missing:
        return TargetReport(target.name, inputs, skipped=missing)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="burstio-fuzz-") as tmp:
        run = _Run(spec, inputs, seed, crash_dir, hang_seconds, Path(tmp))
        start, deaths = 0, 0
        skip: list[int] = []
        while start < inputs:
            rc, hung = run.child(start, skip)
            if rc == 0 and not hung:
                run.merge(read_snapshot(run.shared.read_bytes()))
                break
            deaths += 1
            death = run.died(start, rc, hung)
            if death is None:
                break
            if deaths >= MAX_DEATHS:
                run.report.stopped = f"stopped after {deaths} process deaths"
                break
            skip.append(death[0])
            start = death[1]
    run.report.seconds = time.monotonic() - began
    return run.report


def fuzz(names: list[str], inputs: int, seed: int, crash_dir: Path, *,
         progress: Callable[[TargetReport], None] | None = None) -> list[TargetReport]:
    reports = []
    for name in names or list(TARGETS):
        report = fuzz_target(name, inputs, seed, crash_dir)
        if progress is not None:
            progress(report)
        reports.append(report)
    return reports


def format_reports(reports: list[TargetReport], seed: int, as_json: bool) -> str:
    if as_json:
        return json.dumps({"seed": seed, "targets": {r.name: r.as_dict() for r in reports}}, indent=2)
    lines = [f"{'target':<15}{'inputs run':>12}{'outcomes':>10}{'crashes':>9}{'seconds':>9}"]
    for r in reports:
        if r.skipped:
            lines.append(f"{r.name:<15}{'skipped: ' + r.skipped}")
            continue
        lines.append(f"{r.name:<15}{r.ran:>12}{len(r.outcomes):>10}{r.crash_count:>9}{r.seconds:>9.1f}")
        top = ", ".join(f"{k} {v}" for k, v in r.outcomes.most_common(6))
        lines.append(f"{'':<15}outcomes: {top}{' ...' if len(r.outcomes) > 6 else ''}")
        lines += [f"{'':<15}crash at input {c['index']}: {c['detail']} (input saved: {c['file']})"
                  for c in r.crashes]
        if r.stopped:
            lines.append(f"{'':<15}{r.stopped}")
    lines.append(f"seed {seed}; same seed, same inputs")
    return "\n".join(lines)

