"""The bench's plot (``burstio bench --plot FILE.png``, needs matplotlib): one panel per
scenario, the panels in a grid of ceil(sqrt(n)) columns. Each variant is a bar of its headline
figure (datagrams/s; p50, p99 and p99.9 for latency) with an error bar spanning the figure's
min-max over the rounds, the baselines grey (hatched for latency), ratios to the first
baseline over the bars, and each target's goal marked on the bar it is about where the panel
shows the target's figure. Variant names are wrapped, and turned upright where they would
still touch."""
from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .report import ScenarioResult

__all__ = ["figure", "plot", "grid"]

PANEL_IN = (5.2, 4.2)  # one panel's width and height, inches
DPI = 110
GOAL_COLOUR = "#d62728"
GOAL_LABEL = "target's goal"
LATENCY_KEYS = (("p50_us", "p50"), ("p99_us", "p99"), ("p99_9_us", "p99.9"))
LATENCY_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c")


def grid(n: int) -> tuple[int, int]:
    """(rows, columns) for n panels: ceil(sqrt(n)) columns, as many rows as they need."""
    cols = max(1, math.ceil(math.sqrt(n)))
    return math.ceil(n / cols), cols


def plot(results: Sequence[ScenarioResult], path: str) -> None:
    """Draw every scenario that produced results into one PNG at ``path``."""
    figure(results).savefig(path, dpi=DPI)


def figure(results: Sequence[ScenarioResult]) -> Figure:
    """The figure ``plot`` saves, laid out (its labels placed)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'burstio[bench]'") from None
    shown = [r for r in results if not r.skipped]
    if not shown:
        raise SystemExit("--plot: no scenario produced results")
    rows, cols = grid(len(shown))
    fig = Figure(figsize=(PANEL_IN[0] * cols, PANEL_IN[1] * rows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, res in zip(axes.flat, shown, strict=False):
        metrics = {n: v.metrics() for n, v in res.variants.items()}
        if any("p50_us" in m for m in metrics.values()):
            _latency_panel(ax, res, metrics)
        else:
            _rate_panel(ax, res, metrics)
        params = ", ".join(f"{k}={v}" for k, v in res.params.items())
        ax.set_title(textwrap.fill(f"{res.scenario} ({params})", 70), fontsize=8)
    for ax in axes.flat[len(shown):]:
        ax.remove()
    fig.draw_without_rendering()  # lays the panels out: now the labels' extents are known
    if any(_upright_if_touching(ax) for ax in fig.axes):
        fig.draw_without_rendering()
    return fig


def _rate_panel(ax: Axes, res: ScenarioResult, metrics: dict[str, dict[str, Any]]) -> None:
    names = list(metrics)
    rates = [metrics[n].get("datagrams_per_s", 0.0) for n in names]
    errors = _errors(metrics, names, "datagrams_per_s")
    ax.bar(range(len(names)), rates, yerr=errors, capsize=2, error_kw={"elinewidth": 0.8},
           color=["#999999" if n in res.baselines else "#1f77b4" for n in names])
    base = metrics.get(res.baselines[0], {}).get("datagrams_per_s")
    for i, rate in enumerate(rates if base else []):  # the ratio over the error bar's top
        ax.annotate(f"{rate / base:.2f}x", (i, rate + (errors[1][i] if errors else 0.0)), xytext=(0, 2),
                    textcoords="offset points",
                    ha="center", va="bottom", fontsize=6, rotation=90 if len(names) > 6 else 0)
    if _goals(ax, res, metrics, {"datagrams_per_s": 0.0}, 0.8):
        ax.legend(fontsize=6, loc="upper left")
    _scale(ax, rates)
    _names(ax, names)
    ax.set_ylabel("datagrams/s (error bars: min-max of rounds)", fontsize=7)


def _latency_panel(ax: Axes, res: ScenarioResult, metrics: dict[str, dict[str, Any]]) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    names = list(metrics)
    width = 0.8 / len(LATENCY_KEYS)
    offsets = {key: (i - (len(LATENCY_KEYS) - 1) / 2) * width for i, (key, _) in enumerate(LATENCY_KEYS)}
    values: list[float] = []
    for (key, _), colour in zip(LATENCY_KEYS, LATENCY_COLOURS, strict=True):
        heights = [metrics[n].get(key, 0.0) for n in names]
        values += heights
        bars = ax.bar([i + offsets[key] for i in range(len(names))], heights, width, color=colour,
                      yerr=_errors(metrics, names, key), capsize=2, error_kw={"elinewidth": 0.8})
        for patch, n in zip(bars.patches, names, strict=True):
            patch.set_hatch("//" if n in res.baselines else "")
    handles: list[Any] = [Patch(color=c, label=label) for (_, label), c in zip(LATENCY_KEYS, LATENCY_COLOURS,
                                                                               strict=True)]
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="baseline"))
    if _goals(ax, res, metrics, offsets, width):
        handles.append(Line2D([], [], color=GOAL_COLOUR, linestyle="--", label=GOAL_LABEL))
    ax.legend(handles=handles, fontsize=6, loc="upper left", ncols=len(handles))
    _scale(ax, values)
    _names(ax, names)
    ax.set_ylabel("latency (us; error bars: min-max of rounds)", fontsize=7)


def _errors(metrics: dict[str, dict[str, Any]], names: list[str], key: str) -> list[list[float]] | None:
    """Asymmetric error bars (below, above) from each figure's min-max over the rounds; None
    when no variant has the figure's spread (p99.9: no error bars at all)."""
    if not any(key in metrics[n].get("spread", {}) for n in names):
        return None
    below, above = [], []
    for n in names:
        value, sp = metrics[n].get(key), metrics[n].get("spread", {}).get(key)
        if value is None or not sp:
            below.append(0.0)
            above.append(0.0)
            continue
        below.append(max(0.0, value - sp["min"]))
        above.append(max(0.0, sp["max"] - value))
    return [below, above]


def _scale(ax: Axes, values: list[float]) -> None:
    """Log scale for bars that differ over 20-fold, else a linear axis from zero; either way
    with room at the top for the legend and the ratios over every bar, error bar and goal."""
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > 20:
        ax.set_yscale("log")  # ratios this large need it; the labels give the factors
        bottom, top = ax.get_ylim()
        ax.set_ylim(bottom, top * (top / bottom) ** 0.25)
    else:
        ax.set_ylim(0, ax.get_ylim()[1] * 1.25)  # a linear axis from zero: bar heights are the ratios


def _goals(ax: Axes, res: ScenarioResult, metrics: dict[str, dict[str, Any]], offsets: dict[str, float],
           width: float) -> bool:
    """Mark each target's goal, as a value of the panel's figure, across the bar it is about
    (``offsets``: the panel's figures, each with its bars' offset); True if any was marked."""
    names = list(metrics)
    label = GOAL_LABEL
    for t in res.targets:
        if t.metric not in offsets or t.variant not in metrics:
            continue
        if t.baseline is None:
            goal = t.goal
        else:
            base = metrics.get(t.baseline, {}).get(t.metric)
            if not isinstance(base, int | float) or not base > 0:
                continue  # n/a: nothing to mark
            goal = t.goal * base
        x = names.index(t.variant) + offsets[t.metric]
        ax.hlines(goal, x - width / 2, x + width / 2, colors=GOAL_COLOUR, linestyles="--", linewidth=1.2,
                  label=label)
        label = "_nolegend_"  # one legend entry for all of them
    return label != GOAL_LABEL


def _names(ax: Axes, names: list[str]) -> None:
    ax.set_xticks(range(len(names)), [textwrap.fill(n, 12, break_on_hyphens=True) for n in names], fontsize=7)
    ax.set_xlim(-0.6, len(names) - 0.4)


def _upright_if_touching(ax: Axes) -> bool:
    """Turn the variant names upright (unwrapped) when two neighbours touch; True if it did."""
    labels = ax.get_xticklabels()
    boxes = [label.get_window_extent() for label in labels]
    if not any(a.x1 >= b.x0 for a, b in pairwise(boxes)):
        return False
    ax.set_xticks(ax.get_xticks(), [label.get_text().replace("\n", "") for label in labels], rotation=90,
                  fontsize=7)
    return True
