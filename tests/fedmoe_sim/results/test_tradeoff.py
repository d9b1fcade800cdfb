"""The grid trade-off plot: one marker per variant at its means, error bars only over several seeds,
0-byte variants left off the log axis (a strategy all at 0 bytes drawn as a level), the best of each strategy
named, a legend grouped by strategy, equal byte counts set side by side, and the other plots' styles."""

import inspect

import numpy as np
import pytest
from matplotlib.colors import to_hex
from matplotlib.container import ErrorbarContainer

from fedmoe_sim.results import plots, tradeoff
from fedmoe_sim.results.stats import mean_ci
from fedmoe_sim.results.tradeoff import plot_grid_tradeoff

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


MIB = 1024 ** 2
TRADEOFF = {
    "fedmoe-da[top_p=1]": [(1.2 * MIB, 0.65), (1.2 * MIB, 0.61), (1.2 * MIB, 0.66)],     # 3 seeds
    "fedmoe-da[top_p=5]": [(1.2 * MIB, 0.60)],                                           # 1 seed
    "fedavg[lr=0.01]": [(14 * MIB, 0.52), (14 * MIB, 0.56)],                             # 2 seeds
    "fedavg[lr=0.05]": [(14 * MIB, 0.63), (14 * MIB, 0.62)],
    "local[lr=0.01]": [(0, 0.66), (0, 0.70)],                                            # never talks to the server
    "local[lr=0.05]": [(0, 0.77), (0, 0.79)],
}


def _tradeoff(points=TRADEOFF, families=None):
    return tradeoff._build_grid_tradeoff(points, level=0.95, title="t", x_label="bytes up", y_label="acc (%)",
                                         families=families)


def _markers(fig):
    return {line.get_gid(): line for line in fig.axes[0].get_lines() if line.get_gid()}


def test_tradeoff_draws_one_marker_per_variant_at_its_mean_on_a_log_axis():
    fig = _tradeoff()
    ax = fig.axes[0]
    markers = _markers(fig)
    assert sorted(markers) == sorted(n for n in TRADEOFF if not n.startswith("local"))
    for name, line in markers.items():
        xs, ys = zip(*TRADEOFF[name])
        assert list(line.get_xdata()) == pytest.approx([sum(xs) / len(xs) / MIB])       # MiB: the data, not moved
        assert list(line.get_ydata()) == pytest.approx([100 * sum(ys) / len(ys)])
        assert line.get_linestyle() == "None"                                          # variants are not joined
    assert ax.get_xscale() == "log" and "MiB, log scale" in ax.get_xlabel()


def test_tradeoff_error_bars_only_where_there_are_several_seeds():
    fig = _tradeoff()
    spans = sorted(tuple(np.round(c.lines[2][0].get_segments()[0][:, 1], 6))
                   for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer))
    want = []
    for name in ("fedmoe-da[top_p=1]", "fedavg[lr=0.01]", "fedavg[lr=0.05]"):      # not the one-seed variant
        mean, hw = mean_ci([100 * y for _, y in TRADEOFF[name]], 0.95)
        want.append((round(mean - hw, 6), round(mean + hw, 6)))
    assert spans == sorted(want)
    one = _tradeoff({"a[x=1]": [(10.0, 0.5)], "a[x=2]": [(20.0, 0.6)]})
    assert not [c for c in one.axes[0].containers if isinstance(c, ErrorbarContainer)]
    assert "one seed: no CI" in one.axes[0].get_title()


def test_tradeoff_drops_zero_byte_variants_with_a_note():
    fig = _tradeoff()
    ax = fig.axes[0]
    assert "0 bytes, off the log axis" in ax.get_title() and "local (2 variants)" in ax.get_title()
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "lr=0.05: best of 2, 0 bytes" in texts                     # Local's best is the bar to beat: a level
    level = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert len(level) == 1 and level[0].get_ydata()[0] == pytest.approx(78.0)
    partial = _tradeoff({"a[x=1]": [(0, 0.5)], "a[x=2]": [(2048, 0.6)]})      # only some variants at 0 bytes
    assert sorted(_markers(partial)) == ["a[x=2]"]
    assert "x=1: not shown (0 bytes)" in [t.get_text() for t in partial.axes[0].get_legend().get_texts()]


def test_tradeoff_names_each_strategys_best_and_groups_the_legend_by_strategy():
    fig = _tradeoff()
    ax = fig.axes[0]
    assert sorted(a.get_text() for a in ax.texts if "[" in a.get_text() and "0 bytes" not in a.get_text()) == \
        ["fedavg[lr=0.05]", "fedmoe-da[top_p=1]"]
    assert to_hex(_markers(fig)["fedavg[lr=0.05]"].get_markeredgecolor()) == "#000000"
    texts = ax.get_legend().get_texts()
    headers = [t.get_text() for t in texts if t.get_fontweight() == "bold"]
    assert headers == ["fedmoe-da", "fedavg", "local"]
    assert {"top_p=1 (n=3)", "top_p=5 (n=1)", "lr=0.01 (n=2)"} <= {t.get_text() for t in texts}


def test_tradeoff_styles_are_those_of_the_other_plots():
    names = list(TRADEOFF)
    fams = {n: "personalised" if n.startswith("fedmoe") else "classic" for n in names}
    curves = {n: [[(r, 0.3 + 0.02 * i + 0.05 * r) for r in range(1, 4)] for _ in range(2)] for i, n in enumerate(names)}
    drawn = plots._build_accuracy_vs_round(curves, level=0.95, title="t", families=fams)
    rounds = {line.get_gid(): (to_hex(line.get_color()), line.get_marker())
              for ax in drawn.axes for line in ax.get_lines()}
    for name, line in _markers(_tradeoff(families=fams)).items():
        assert (to_hex(line.get_color()), line.get_marker()) == rounds[name]


def test_tradeoff_sets_equal_byte_counts_side_by_side_without_moving_the_data():
    fig = _tradeoff()
    fig.canvas.draw()
    markers = _markers(fig)
    screen = {n: line.get_transform().transform((line.get_xdata()[0], line.get_ydata()[0]))[0]
              for n, line in markers.items()}
    assert screen["fedmoe-da[top_p=1]"] != screen["fedmoe-da[top_p=5]"]     # same bytes, drawn apart
    assert markers["fedmoe-da[top_p=1]"].get_xdata()[0] == markers["fedmoe-da[top_p=5]"].get_xdata()[0]
    lo, hi = fig.axes[0].get_window_extent().x0, fig.axes[0].get_window_extent().x1
    assert all(lo < x < hi for x in screen.values())                         # none pushed off the axes


def test_plot_grid_tradeoff_writes_pngs_and_takes_its_labels(tmp_path):
    _assert_png(plot_grid_tradeoff(TRADEOFF, tmp_path / "t.png", families={n: "classic" for n in TRADEOFF},
                                   x_label="bytes up", y_label="mean client, own split (%)", title="T"))
    _assert_png(plot_grid_tradeoff({}, tmp_path / "empty.png"))
    _assert_png(plot_grid_tradeoff({"local[lr=1]": [(0, 0.5)]}, tmp_path / "zero.png"))
    params = inspect.signature(plot_grid_tradeoff).parameters
    assert list(params)[:2] == ["points", "path"]
    assert all(params[k].kind is inspect.Parameter.KEYWORD_ONLY for k in ("families", "x_label", "y_label", "title"))
