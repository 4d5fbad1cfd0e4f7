"""Benchmark plumbing: per-variant results, targets, progress and reports.

Every scenario measures its variants side by side in one run, alternating
them round by round (so drift on a shared machine hits all alike), and
reports rates plus ratios to the baselines it names.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

__all__ = ["Variant", "Target", "ScenarioResult", "Progress", "percentile", "format_result", "write_json", "plot"]


# The figures Variant.metrics() computes itself: an ``extra`` entry may not
# reuse one of these names (it would silently replace a measured figure).
MEASURED_KEYS = frozenset({
    "rounds", "cpu_s", "datagrams", "datagrams_per_s", "ns_per_datagram", "cpu_ns_per_datagram",
    "syscalls_per_datagram", "syscalls_by", "p50_us", "p99_us", "p99_9_us", "p99_99_us", "samples"})


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
class Variant:
    """What one variant did, summed over the timed rounds."""

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

    def __post_init__(self) -> None:
        if not isinstance(self.extra, Extra):
            self.extra = Extra(self.extra)

    def add(self, datagrams: int, seconds: float, cpu_s: float) -> None:
        self.datagrams += datagrams
        self.seconds += seconds
        self.cpu_s += cpu_s
        self.rounds += 1

    def metrics(self) -> dict[str, Any]:
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

    def as_json(self) -> dict[str, Any]:
        metrics = {n: v.metrics() for n, v in self.variants.items()}
        out: dict[str, Any] = {"scenario": self.scenario, "params": self.params, "variants": metrics}
        if self.skipped:
            out["skipped"] = self.skipped
        out["targets"] = [t.evaluate(metrics) for t in self.targets]
        out["syscall_source"] = self.syscall_source
        out["notes"] = self.notes
        return out


class Progress:
    """One status line on stderr (rewritten in place on a terminal)."""

    def __init__(self, enabled: bool = True):
        self.tty = sys.stderr.isatty()
        self.enabled = enabled
        self._last = 0.0

    def show(self, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            sys.stderr.write("\r\033[K" + text)
            sys.stderr.flush()
        elif force or now - self._last > 2.0:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()
            self._last = now

    def done(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


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


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                     for i, (h, w) in enumerate(zip(headers, widths, strict=False)))
    out = [line, "-" * len(line)]
    out.extend("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False)))
               for r in rows)
    return "\n".join(out)


def format_result(res: ScenarioResult) -> str:
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
    headers = ["variant", "datagrams/s", "ns/datagram", "syscalls/dgram", "CPU ns/dgram"]
    headers += [f"x {b}" for b in present]
    rows = []
    for name, m in metrics.items():
        row = [name, _fmt(m.get("datagrams_per_s")), _fmt(m.get("ns_per_datagram")),
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
    headers = ["variant", "p50 us", "p99 us", "p99.9 us", "p99.99 us", "samples", "CPU us/req", "syscalls/req"]
    irqs = any("irqs_per_request" in m for m in metrics.values())
    if irqs:
        headers.append("IRQs/req")
    for base in bases:
        headers += [f"p50 x {base}", f"p99 x {base}"]
    rows = []
    for name, m in metrics.items():
        row = [name] + [_fmt(m.get(k)) for k in keys] + [str(m.get("samples", "-")),
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


def write_json(results: list[ScenarioResult], stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    obj: dict[str, Any] = (results[0].as_json() if len(results) == 1
                           else {"scenarios": {r.scenario: r.as_json() for r in results}})
    obj["host"] = {"kernel": os.uname().release, "cpus": os.cpu_count()}
    json.dump(obj, stream, indent=2, default=_json_default)
    stream.write("\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and math.isnan(o):
        return None
    raise TypeError(f"cannot serialise {type(o).__name__}")


def plot(results: list[ScenarioResult], path: str) -> None:
    """Bar charts of every scenario into one PNG (needs matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'burstio[bench]'") from None
    shown = [r for r in results if not r.skipped]
    if not shown:
        raise SystemExit("--plot: no scenario produced results")
    fig, axes = plt.subplots(len(shown), 1, figsize=(8, 3.2 * len(shown)), squeeze=False)
    for ax, res in zip(axes[:, 0], shown, strict=False):
        metrics = {n: v.metrics() for n, v in res.variants.items()}
        names = list(metrics)
        if any("p50_us" in m for m in metrics.values()):
            keys = ["p50_us", "p99_us", "p99_9_us"]
            width = 0.8 / len(names)
            for i, n in enumerate(names):
                ax.bar([k + i * width for k in range(len(keys))], [metrics[n].get(k, 0) for k in keys],
                       width, label=n)
            ax.set_xticks([k + 0.4 - width / 2 for k in range(len(keys))], ["p50", "p99", "p99.9"])
            ax.set_ylabel("latency (us)")
            ax.legend()
        else:
            rates = [metrics[n].get("datagrams_per_s", 0) for n in names]
            bars = ax.bar(names, rates, color=["#999999" if n in res.baselines else "#1f77b4" for n in names])
            base = metrics.get(res.baselines[0], {}).get("datagrams_per_s")
            if base:
                ax.bar_label(bars, [f"{r / base:.2f}x" for r in rates], fontsize=8)
            positive = [r for r in rates if r > 0]
            if positive and max(positive) / min(positive) > 20:
                ax.set_yscale("log")  # ratios this large need it; labels give the factors
            else:
                ax.set_ylim(bottom=0)  # a linear axis from zero: bar heights are the ratios
            ax.set_ylabel("datagrams/s")
        ax.set_title(f"{res.scenario} ({', '.join(f'{k}={v}' for k, v in res.params.items())})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
