"""Benchmark plumbing: per-variant results, targets, progress and reports.

Every scenario measures its variants side by side in one run, alternating
them round by round (so drift on a shared machine hits all alike), and
reports rates plus ratios to the baselines it names. A variant's headline
figures pool every round (datagrams over seconds, percentiles of all the
samples); each round's own figures are kept beside them, and their spread
(min-max over the rounds) goes into the tables, the JSON and the plot.
"""
from __future__ import annotations

import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from .figure import plot
from .versions import versions as collect_versions

__all__ = ["Variant", "Target", "ScenarioResult", "Progress", "percentile", "format_result", "write_json", "plot"]


# The figures Variant.metrics() computes itself: an ``extra`` entry may not
# reuse one of these names (it would silently replace a measured figure).
MEASURED_KEYS = frozenset({
    "rounds", "cpu_s", "datagrams", "datagrams_per_s", "ns_per_datagram", "cpu_ns_per_datagram",
    "syscalls_per_datagram", "syscalls_by", "p50_us", "p99_us", "p99_9_us", "p99_99_us", "samples",
    "per_round", "spread"})

#: the headline figures whose value in each round is kept, with their spread over the rounds
SPREAD_KEYS = ("datagrams_per_s", "p50_us", "p99_us")


class KeyClashError(ValueError):
    """An ``extra`` figure named like a measured one."""


class Extra(dict[str, Any]):
    """A variant's extra figures: refuses, loudly, a key that names a
    measured figure (MEASURED_KEYS)."""

    def __setitem__(self, key: str, value: Any) -> None:
        _refuse_clash(key)
        super().__setitem__(key, value)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for k, v in dict(*args, **kwargs).items():
            self[k] = v

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]


def _refuse_clash(key: str) -> None:
    if key in MEASURED_KEYS:
        raise KeyClashError(f"extra figure {key!r} would overwrite the measured figure of that name")


@dataclass
class RoundFigures:
    """One timed round of one variant (what ``Variant.add`` was given)."""

    datagrams: int
    seconds: float
    cpu_s: float
    samples_end: int  # len(samples_us) after the round: its latency samples end here


@dataclass
class Variant:
    """What one variant did, summed over the timed rounds, and each round's own figures."""

    name: str
    datagrams: int = 0
    seconds: float = 0.0  # wall time of the timed sections
    cpu_s: float = 0.0  # CPU time of the measured process in them
    rounds: int = 0
    syscalls: int | None = None  # from the separate counted run; None: not measured
    syscall_datagrams: int = 0
    syscalls_by: str | None = None  # what counted them, when not the scenario's syscall_source
    samples_us: list[float] = field(default_factory=list)  # latency scenarios
    extra: dict[str, Any] = field(default_factory=Extra)
    per_round: list[RoundFigures] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.extra, Extra):
            self.extra = Extra(self.extra)

    def add(self, datagrams: int, seconds: float, cpu_s: float) -> None:
        """Count one timed round; a latency scenario extends ``samples_us`` with the round's
        samples first, so that the round's own percentiles can be taken."""
        self.datagrams += datagrams
        self.seconds += seconds
        self.cpu_s += cpu_s
        self.rounds += 1
        self.per_round.append(RoundFigures(datagrams, seconds, cpu_s, len(self.samples_us)))

    def round_figures(self) -> dict[str, list[Any]]:
        """Each round's figures, one list per figure in round order: what ``add`` was given,
        ``datagrams_per_s``, and with latency samples the round's ``p50_us`` and ``p99_us``
        (None for a round without samples)."""
        rounds = self.per_round
        out: dict[str, list[Any]] = {"datagrams": [r.datagrams for r in rounds],
                                     "seconds": [r.seconds for r in rounds], "cpu_s": [r.cpu_s for r in rounds]}
        if rounds and all(r.seconds > 0 for r in rounds):
            out["datagrams_per_s"] = [r.datagrams / r.seconds for r in rounds]
        if rounds and self.samples_us and rounds[-1].samples_end == len(self.samples_us):
            starts = [0] + [r.samples_end for r in rounds[:-1]]
            chunks = [sorted(self.samples_us[a:r.samples_end]) for a, r in zip(starts, rounds, strict=True)]
            for p, key in ((50, "p50_us"), (99, "p99_us")):
                out[key] = [percentile(c, p) if c else None for c in chunks]
        return out

    def metrics(self) -> dict[str, Any]:
        """The variant's figures over all rounds (rates, CPU, syscalls,
        percentiles, extras), as the JSON has them."""
        m: dict[str, Any] = {"rounds": self.rounds, "cpu_s": round(self.cpu_s, 6)}
        if self.datagrams and self.seconds:
            m["datagrams"] = self.datagrams
            m["datagrams_per_s"] = self.datagrams / self.seconds
            m["ns_per_datagram"] = self.seconds * 1e9 / self.datagrams
            m["cpu_ns_per_datagram"] = self.cpu_s * 1e9 / self.datagrams
        if self.syscalls is not None and self.syscall_datagrams:
            m["syscalls_per_datagram"] = self.syscalls / self.syscall_datagrams
            if self.syscalls_by:
                m["syscalls_by"] = self.syscalls_by
        if self.samples_us:
            s = sorted(self.samples_us)
            for p, key in ((50, "p50_us"), (99, "p99_us"), (99.9, "p99_9_us"), (99.99, "p99_99_us")):
                m[key] = percentile(s, p)
            m["samples"] = len(s)
        if self.per_round:
            per_round = self.round_figures()
            m["per_round"] = per_round
            m["spread"] = {k: spread(per_round[k]) for k in SPREAD_KEYS
                           if k in per_round and any(v is not None for v in per_round[k])}
        for k in self.extra:  # the dict may have been replaced by a plain one
            _refuse_clash(k)
        m.update(self.extra)
        return m


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (exact integer rank:
    p is taken to 1/100 of a percent)."""
    if not sorted_values:
        return math.nan
    rank = max(1, -(-round(p * 100) * len(sorted_values) // 10000))
    return sorted_values[rank - 1]


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """The spread of one figure over the rounds: ``min``, ``max``, the sample ``stdev`` (None
    with fewer than two values) and how many ``rounds`` had the figure (None values: rounds
    without it, left out)."""
    have = [v for v in values if v is not None]
    if not have:
        raise ValueError("spread of no values")
    return {"min": min(have), "max": max(have), "stdev": statistics.stdev(have) if len(have) > 1 else None,
            "rounds": len(have)}


def _number(v: Any) -> float | None:
    """v as a float, or None when it is missing or not a number (NaN included)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return None if math.isnan(f) else f


@dataclass
class Target:
    """A goal: variant's metric relative to a baseline's (ratio <= or >= goal).

    ``evidence`` names a metric of the variant that must be present and
    positive for the target to mean anything (``copied_notifications <= 0``
    says nothing when no notification arrived): without it the target is
    n/a, never MET."""

    variant: str
    metric: str
    baseline: str | None  # None: compare the metric itself to goal
    goal: float
    at_least: bool  # True: ratio >= goal; False: ratio <= goal
    evidence: str | None = None

    def evaluate(self, metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """{"text", "value", "goal", "met"}: met is True, False, or None
        (n/a, with "why") when a figure is missing, NaN, or has no evidence."""
        out: dict[str, Any] = {"text": self.text(), "value": None, "goal": self.goal, "met": None}
        why = self._missing(metrics)
        if why:
            out["why"] = why
            return out
        v = _number(metrics[self.variant][self.metric]) or 0.0  # _missing checked: a number
        b = 1.0 if self.baseline is None else _number(metrics[self.baseline][self.metric]) or 1.0  # and not 0
        value = v / b
        out["value"] = value
        out["met"] = value >= self.goal if self.at_least else value <= self.goal
        return out

    def _missing(self, metrics: dict[str, dict[str, Any]]) -> str | None:
        """Why the target cannot be evaluated, or None."""
        for name in (self.variant, self.baseline):
            if name is not None and name not in metrics:
                return f"no variant {name} in this run"
        if _number(metrics[self.variant].get(self.metric)) is None:
            return f"{self.variant} has no {self.metric}"
        if self.baseline is not None:
            b = _number(metrics[self.baseline].get(self.metric))
            if b is None:
                return f"{self.baseline} has no {self.metric}"
            if b == 0:
                return f"{self.baseline} {self.metric} is 0"
        if self.evidence is not None and not (_number(metrics[self.variant].get(self.evidence)) or 0) > 0:
            return f"no evidence: {self.variant} {self.evidence} is not positive"
        return None

    def text(self) -> str:
        """The target as one line, e.g. "burstio datagrams_per_s >= 1.2x stdlib"."""
        op = ">=" if self.at_least else "<="
        if self.baseline is None:
            return f"{self.variant} {self.metric} {op} {self.goal:g}"
        return f"{self.variant} {self.metric} {op} {self.goal:g}x {self.baseline}"


@dataclass
class ScenarioResult:
    scenario: str
    params: dict[str, Any]
    variants: dict[str, Variant]
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    syscall_source: str = ""
    skipped: str | None = None
    baselines: tuple[str, ...] = ("stdlib",)
    tools: tuple[str, ...] = ()  # the external programs it runs (their versions go into the JSON)

    def as_json(self) -> dict[str, Any]:
        """The scenario as the JSON report has it: params, variants, targets, notes."""
        metrics = {n: v.metrics() for n, v in self.variants.items()}
        out: dict[str, Any] = {"scenario": self.scenario, "params": self.params, "variants": metrics}
        if self.skipped:
            out["skipped"] = self.skipped
        out["targets"] = [t.evaluate(metrics) for t in self.targets]
        out["syscall_source"] = self.syscall_source
        out["notes"] = self.notes
        return out


@dataclass
class TargetSummary:
    """Every target of a run by outcome, each as "scenario: target". An n/a target (a figure
    missing or not a number, no evidence, a baseline not run, the scenario skipped) is not a
    miss."""

    met: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    na: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, results: Sequence[ScenarioResult]) -> TargetSummary:
        out = cls()
        for res in results:
            for t in res.as_json()["targets"]:
                {True: out.met, False: out.missed, None: out.na}[t["met"]].append(f"{res.scenario}: {t['text']}")
        return out

    def as_json(self) -> dict[str, Any]:
        return {"met": len(self.met), "missed": len(self.missed), "na": len(self.na),
                "missed_targets": self.missed}

    def text(self) -> str:
        line = f"targets: {len(self.met)} met, {len(self.missed)} missed, {len(self.na)} n/a"
        if self.na:
            line += " (n/a is not a miss: a figure missing, no evidence, or a baseline not run)"
        return line


class Progress:
    """The bench's status on stderr, never stdout (where ``--json`` goes): which scenario of
    how many, which round of about how many, what runs, and about how long is left, from the
    time budgets (a scenario's setup and its syscall count come on top). On a terminal one line
    rewritten in place; otherwise plain lines, each scenario's first and then at most one every
    2 s."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.enabled = enabled
        self._last = 0.0
        self._names: list[str] = []
        self._budgets: list[float | None] = []
        self._index = -1
        self._round = ""  # "round 3/~7", in the rounds of a scenario
        self._estimated = False  # the rounds' time is estimated (from the rounds so far)
        self._ends: float | None = None  # when the rounds should end (monotonic); None: not in them
        self._rounds_over = False

    def plan(self, names: Sequence[str], budgets: Sequence[float | None]) -> None:
        """The scenarios to run, each with its time budget (None: not bounded by time)."""
        self._names, self._budgets = list(names), list(budgets)

    def scenario(self, index: int) -> None:
        """Scenario ``index`` of the plan starts."""
        self._index, self._round, self._ends, self._rounds_over = index, "", None, False
        self.show("starting", force=True)

    def round(self, number: int, expected: int | None, left_s: float) -> None:
        """Round ``number`` (from 1) of about ``expected`` (None: not known yet) starts; the
        rounds should need ``left_s`` more seconds."""
        self._round = f"round {number}" + (f"/~{expected}" if expected else "")
        self._estimated = expected is not None
        self._ends = time.monotonic() + left_s

    def rounds_over(self) -> None:
        """The scenario's timed rounds are done: no round or time left is shown from here."""
        self._round, self._ends, self._rounds_over = "", None, True

    def line(self, text: str) -> str:
        """The status line for ``text`` (what runs now)."""
        if not 0 <= self._index < len(self._names):
            return text
        where = f"[scenario {self._index + 1}/{len(self._names)} {self._names[self._index]}]"
        left = self._left()
        return " ".join(filter(None, (where, self._round, text))) + (f", {left}" if left else "")

    def _left(self) -> str:
        """About how long is left of the run: "~T s left" (+ the scenarios not bounded by time)."""
        budget = self._budgets[self._index]
        if budget is None:
            return ""
        if self._ends is not None and not self._estimated:
            return "estimating the time left"  # the first round: nothing to go by yet
        if self._ends is not None:
            here = max(0.0, self._ends - time.monotonic())
        else:
            here = 0.0 if self._rounds_over else budget
        later = self._budgets[self._index + 1:]
        total = here + sum(b for b in later if b is not None)
        untimed = [n for n, b in zip(self._names[self._index + 1:], later, strict=True) if b is None]
        return f"~{math.ceil(total)} s left" + "".join(f" + {n}" for n in untimed)

    def show(self, text: str, force: bool = False) -> None:
        """Show what runs now, with the scenario, round and time left (a
        line at most every 2 s off a terminal, unless ``force``)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\033[K" + self.line(text))
            self.stream.flush()
        elif force or now - self._last > 2.0:
            self.stream.write(self.line(text) + "\n")
            self.stream.flush()
            self._last = now

    def done(self) -> None:
        """Clear the progress line (on a tty) once the bench is over."""
        if self.enabled and self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()


# ---- reports ---------------------------------------------------------------

def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        if v >= 1e6:
            return f"{v / 1e6:.2f} M"
        if v >= 1e3:
            return f"{v / 1e3:.1f} k"
        if v < 0.01:
            return f"{v:.4f}"
        return f"{v:.{digits}g}" if v < 10 else f"{v:.1f}"
    return str(v)


RANGE = "[min-max of rounds]"


def _with_range(m: dict[str, Any], key: str) -> str:
    """The headline figure ``key`` and, over two rounds or more, its range over them."""
    text = _fmt(m.get(key))
    sp = m.get("spread", {}).get(key)
    if text == "-" or not sp or sp["rounds"] < 2:
        return text
    lo, hi = _fmt(sp["min"]), _fmt(sp["max"])
    for unit in (" M", " k"):
        if lo.endswith(unit) and hi.endswith(unit):
            lo = lo.removesuffix(unit)
    return f"{text} [{lo}-{hi}]"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                     for i, (h, w) in enumerate(zip(headers, widths, strict=False)))
    out = [line, "-" * len(line)]
    out.extend("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False)))
               for r in rows)
    return "\n".join(out)


def format_result(res: ScenarioResult) -> str:
    """The scenario's human report: its tables, targets and notes."""
    head = f"== {res.scenario} " + " ".join(f"{k}={v}" for k, v in res.params.items())
    if res.skipped:
        return f"{head}\n   skipped: {res.skipped}"
    data = res.as_json()
    metrics = data["variants"]
    if any("p50_us" in m for m in metrics.values()):
        body = _latency_table(metrics, res.baselines)
    else:
        body = _rate_table(metrics, res.baselines)
    lines = [head, body]
    for t in data["targets"]:
        mark = {True: "MET", False: "MISSED", None: "n/a"}[t["met"]]
        val = "-" if t["value"] is None else f"{t['value']:.3g}"
        why = f" ({t['why']})" if t.get("why") else ""
        lines.append(f"   target {t['text']}: {val} -> {mark}{why}")
    if res.syscall_source:
        lines.append(f"   syscalls counted by: {res.syscall_source}")
    by: dict[str, list[str]] = {}
    for n, m in metrics.items():
        if m.get("syscalls_by"):
            by.setdefault(m["syscalls_by"], []).append(n)
    lines.extend(f"   syscalls of {', '.join(ns)} counted by: {src}" for src, ns in by.items())
    unmeasured = [n for n, v in res.variants.items() if v.rounds and v.syscalls is None]
    if unmeasured:
        lines.append(f"   syscalls not measured (n/a) for: {', '.join(unmeasured)}")
    lines.extend(f"   note: {n}" for n in res.notes)
    return "\n".join(lines)


def _rate_table(metrics: dict[str, dict[str, Any]], baselines: tuple[str, ...]) -> str:
    present = [b for b in baselines if b in metrics and metrics[b].get("datagrams_per_s")]
    headers = ["variant", f"datagrams/s {RANGE}", "ns/datagram", "syscalls/dgram", "CPU ns/dgram"]
    headers += [f"x {b}" for b in present]
    rows = []
    for name, m in metrics.items():
        row = [name, _with_range(m, "datagrams_per_s"), _fmt(m.get("ns_per_datagram")),
               _fmt(m["syscalls_per_datagram"]) if "syscalls_per_datagram" in m else "n/a",
               _fmt(m.get("cpu_ns_per_datagram"))]
        for b in present:
            r = m.get("datagrams_per_s")
            row.append("-" if r is None else f"{r / metrics[b]['datagrams_per_s']:.2f}x")
        rows.append(row)
    return _table(headers, rows)


def _latency_table(metrics: dict[str, dict[str, Any]], baselines: tuple[str, ...]) -> str:
    bases = [b for b in baselines if b in metrics and metrics[b].get("p50_us")]
    keys = ["p50_us", "p99_us", "p99_9_us", "p99_99_us"]
    headers = ["variant", f"p50 us {RANGE}", f"p99 us {RANGE}", "p99.9 us", "p99.99 us", "samples", "CPU us/req",
               "syscalls/req"]
    irqs = any("irqs_per_request" in m for m in metrics.values())
    if irqs:
        headers.append("IRQs/req")
    for base in bases:
        headers += [f"p50 x {base}", f"p99 x {base}"]
    rows = []
    for name, m in metrics.items():
        row = [name] + [_with_range(m, k) if k in SPREAD_KEYS else _fmt(m.get(k)) for k in keys] + [
            str(m.get("samples", "-")),
                                                          _fmt(m.get("cpu_us_per_request")),
                                                          _fmt(m["syscalls_per_datagram"])
                                                          if "syscalls_per_datagram" in m else "n/a"]
        if irqs:
            row.append(_fmt(m.get("irqs_per_request")))
        for base in bases:
            for k in ("p50_us", "p99_us"):
                v, b = m.get(k), metrics[base].get(k)
                row.append("-" if v is None or not b else f"{v / b:.2f}x")
        rows.append(row)
    return _table(headers, rows)


def format_footer(results: Sequence[ScenarioResult], found: dict[str, Any]) -> str:
    """The human report's last lines: what was measured with, and the targets by outcome."""
    return f"measured with: {versions_line(found)}\n{TargetSummary.of(results).text()}"


def versions_line(v: dict[str, Any]) -> str:
    """The versions in one line, for people."""
    libs = [f"{k} {v[k]}" for k in ("numpy", "uvloop", "aioquic", "liburing") if v.get(k)]
    tools = [f"{k} {ver or '(version unknown)'}" for k, ver in v.get("tools", {}).items()]
    return ", ".join([f"burstio {v['burstio']}", f"{v['python_implementation']} {v['python']}",
                      f"Linux {v['kernel']}", f"{v['cpus']} x {v['cpu_model'] or 'unknown CPU'}",
                      *libs, *tools, f"run started {v['date']}"])


def write_json(results: list[ScenarioResult], stream: TextIO | None = None, *,
               versions: dict[str, Any] | None = None) -> None:
    """One JSON object: the scenario's (several: ``{"scenarios": {NAME: ...}}``), with
    ``versions`` (what it was measured with; gathered now when not given) and ``summary`` (the
    targets by outcome)."""
    stream = stream or sys.stdout
    obj: dict[str, Any] = (results[0].as_json() if len(results) == 1
                           else {"scenarios": {r.scenario: r.as_json() for r in results}})
    obj["versions"] = versions if versions is not None else collect_versions(used_tools(results))
    obj["summary"] = TargetSummary.of(results).as_json()
    # strict JSON: a figure that is not a finite number (a NaN from an empty
    # round, an infinite ratio) is written as null, never as NaN/Infinity
    json.dump(_finite(obj), stream, indent=2, allow_nan=False)
    stream.write("\n")


def used_tools(results: Sequence[ScenarioResult]) -> list[str]:
    """The external programs the scenarios that ran used."""
    return sorted({t for r in results if not r.skipped for t in r.tools})


def _finite(o: Any) -> Any:
    """``o`` with every float that is not finite replaced by None (lists, tuples and dicts
    walked; everything else as it is)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o

