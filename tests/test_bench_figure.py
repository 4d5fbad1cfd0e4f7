"""burstio.bench.figure: the plot's panels sit in a grid, their labels fit (inside the figure,
no two touching), every bar has the error bar of its rounds' min-max, and a target's goal is
marked on the bar it is about. The results are built by hand; the checks read matplotlib's
objects."""
from __future__ import annotations

from itertools import pairwise

import pytest

from burstio.bench.report import ScenarioResult, Target, Variant

pytest.importorskip("matplotlib", reason="the plot needs matplotlib (the 'bench' extra)")

from matplotlib.collections import LineCollection  # after the skip
from matplotlib.container import BarContainer

from burstio.bench.figure import figure, grid, plot

LONG_NAMES = [f"burstio-pipe-b{b}-nolinger" for b in (1, 4, 16, 64, 256)] + [
    "mp-queue", "mp-pipe", "shm-ring", "burstio-pipe", "burstio-switch", "mp-queue-65536", "mp-pipe-65536",
    "burstio-pipe-perpacket", "burstio-socketset-uring-multishot"]


def _rates(name: str, rates: dict[str, list[float]], targets: list[Target] | None = None) -> ScenarioResult:
    """A rate scenario whose variants ran one round per listed rate (1 s each)."""
    base = next(iter(rates))
    res = ScenarioResult(name, {"size": 64, "batch": 64}, {n: Variant(n) for n in rates}, targets=targets or [],
                         baselines=(base,))
    for n, per_round in rates.items():
        for r in per_round:
            res.variants[n].add(int(r), 1.0, 0.5)
    return res


def _latency() -> ScenarioResult:
    names = ["sockperf-server", "burstio"]
    res = ScenarioResult("latency", {"size": 64}, {n: Variant(n) for n in names}, baselines=("sockperf-server",),
                         targets=[Target("burstio", "p99_us", "sockperf-server", 1.1, False)])
    for first in (10.0, 20.0):
        for i, n in enumerate(names):
            samples = [first + i + s for s in range(100)]
            res.variants[n].samples_us.extend(samples)
            res.variants[n].add(len(samples), 1.0, 0.1)
    return res


def _five() -> list[ScenarioResult]:
    return [_rates("rx-many-flow", {"stdlib": [100, 120, 110], "burstio": [300, 330, 360]},
                   [Target("burstio", "datagrams_per_s", "stdlib", 2.0, True)]),
            _latency(),
            _rates("pipes", {n: [1000.0 + 100 * i, 1050.0 + 100 * i] for i, n in enumerate(LONG_NAMES)}),
            _rates("tx-gso", {"stdlib": [10, 12], "stdlib-gso": [50, 55], "burstio-segments": [70, 90]}),
            _rates("tx-many", {"stdlib": [10, 11], "burstio": [40, 44]})]


@pytest.mark.parametrize(("n", "rows_cols"), [(1, (1, 1)), (2, (1, 2)), (3, (2, 2)), (4, (2, 2)), (5, (2, 3)),
                                              (12, (3, 4)), (16, (4, 4)), (17, (4, 5))])
def test_grid(n, rows_cols):
    assert grid(n) == rows_cols


def test_panels_sit_in_a_grid():
    fig = figure(_five())
    assert len(fig.axes) == 5  # the grid's sixth cell is not drawn
    specs = [ax.get_subplotspec() for ax in fig.axes]
    assert {s.get_gridspec().get_geometry() for s in specs} == {(2, 3)}
    assert sorted((s.rowspan.start, s.colspan.start) for s in specs) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    assert [ax.get_title().split(" ")[0] for ax in fig.axes] == ["rx-many-flow", "latency", "pipes", "tx-gso",
                                                                 "tx-many"]


def test_labels_fit():
    fig = figure(_five())
    renderer = fig.canvas.get_renderer()
    whole = fig.bbox
    for ax in fig.axes:
        boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels()]
        boxes.append(ax.title.get_window_extent(renderer))
        for box in boxes:
            assert whole.x0 <= box.x0 and box.x1 <= whole.x1 and whole.y0 <= box.y0 and box.y1 <= whole.y1
        ticks = boxes[:-1]
        assert all(a.x1 < b.x0 for a, b in pairwise(ticks)), ax.get_title()
    names = [t.get_text() for t in fig.axes[2].get_xticklabels()]
    assert names == LONG_NAMES  # too many to lie flat: upright, whole
    assert all(t.get_rotation() == 90 for t in fig.axes[2].get_xticklabels())
    assert [t.get_text() for t in fig.axes[3].get_xticklabels()] == ["stdlib", "stdlib-gso", "burstio-\nsegments"]


def _error_spans(container: BarContainer) -> list[tuple[float, float]]:
    """Each bar's error bar, as (low, high)."""
    assert container.errorbar is not None
    (bars,) = [c for c in container.errorbar.lines[2] if isinstance(c, LineCollection)]
    return [(min(seg[:, 1]), max(seg[:, 1])) for seg in bars.get_segments()]


def test_error_bars_span_the_rounds():
    fig = figure(_five())
    (rates,) = [c for c in fig.axes[0].containers if isinstance(c, BarContainer)]
    assert [p.get_height() for p in rates.patches] == pytest.approx([110, 330])  # the pooled headline
    assert _error_spans(rates) == [pytest.approx((100, 120)), pytest.approx((300, 360))]
    p50, p99, p99_9 = [c for c in fig.axes[1].containers if isinstance(c, BarContainer)]
    lat = _latency().variants
    for container, key in ((p50, "p50_us"), (p99, "p99_us")):
        want = [(min(v.round_figures()[key]), max(v.round_figures()[key])) for v in lat.values()]
        assert _error_spans(container) == [pytest.approx(w) for w in want]
    assert p99_9.errorbar is None  # no per-round p99.9: no error bars


def test_goals_are_marked_on_their_bars():
    fig = figure(_five())
    goal_lines = [c for c in fig.axes[0].collections if c.get_label() == "target's goal"]
    (segment,) = goal_lines[0].get_segments()
    assert segment[:, 1] == pytest.approx([2.0 * 110, 2.0 * 110])  # 2x the baseline's rate
    assert segment[0, 0] < 1 < segment[1, 0]  # across burstio's bar (x = 1)
    lat_goals = [c for c in fig.axes[1].collections if c.get_label() == "target's goal"]
    (segment,) = lat_goals[0].get_segments()
    p99 = _latency().variants["sockperf-server"].metrics()["p99_us"]
    assert segment[:, 1] == pytest.approx([1.1 * p99, 1.1 * p99])
    assert not [c for c in fig.axes[2].collections if c.get_label() == "target's goal"]  # pipes: none


def test_skipped_scenarios_are_not_drawn(tmp_path):
    skipped = _rates("dns", {"asyncio": []})
    skipped.skipped = "dnsperf is not installed"
    fig = figure([skipped, *_five()[:1]])
    assert len(fig.axes) == 1
    with pytest.raises(SystemExit, match="no scenario produced results"):
        figure([skipped])
    path = tmp_path / "bench.png"
    plot(_five(), str(path))
    assert path.read_bytes().startswith(b"\x89PNG")
