"""Plots: valid PNGs for every shape of input, series helpers computed by hand."""

import math

import matplotlib
import pytest

from fedmoe_sim.results import plots
from fedmoe_sim.results.plots import (accuracy_series, accuracy_vs_bytes_series, plot_accuracy_vs_bytes,
                                      plot_accuracy_vs_round, plot_per_domain_bars)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


ROUNDS = {
    "fedavg": [[(1, 0.50), (2, 0.60), (3, 0.65)], [(1, 0.52), (2, 0.61), (3, 0.66)]],
    "fedmoe-da": [[(1, 0.55), (2, 0.70), (3, 0.75)], [(1, 0.50), (2, 0.68), (3, 0.77)]],
}
BYTES = {name: [[(r * 5e6 * (i + 1), a) for r, a in seed] for seed in seeds]
         for i, (name, seeds) in enumerate(ROUNDS.items())}
DOMAINS = {"fedavg": {"mnist": [0.9, 0.92], "svhn": [0.6, 0.62]},
           "fedmoe-da": {"mnist": [0.93, 0.95], "svhn": [0.7, 0.66]}}


@pytest.mark.parametrize("plot, data", [
    (plot_accuracy_vs_round, ROUNDS), (plot_accuracy_vs_bytes, BYTES), (plot_per_domain_bars, DOMAINS)])
def test_plots_write_valid_pngs(tmp_path, plot, data):
    out = plot(data, tmp_path / "sub" / "p.png")
    assert out == tmp_path / "sub" / "p.png"
    _assert_png(out)


@pytest.mark.parametrize("plot, data", [
    (plot_accuracy_vs_round, {"only": [[(1, 0.4), (2, 0.5)]]}),
    (plot_accuracy_vs_bytes, {"only": [[(0, 0.1), (1024, 0.4), (4096, 0.5)]]}),   # 0 bytes cannot be on a log axis
    (plot_per_domain_bars, {"only": {"mnist": [0.9]}}),
    (plot_accuracy_vs_round, {"empty": []}),
    (plot_accuracy_vs_bytes, {"empty": [[(0, 0.1)]]}),
    (plot_per_domain_bars, {}),
])
def test_one_seed_one_strategy_or_nothing_still_plots(tmp_path, plot, data):
    _assert_png(plot(data, tmp_path / "p.png"))


def test_many_strategies_and_ragged_seeds(tmp_path):
    data = {f"s{i}": [[(1, 0.1 * i), (2, 0.1 * i + 0.05)], [(1, 0.1 * i)]] for i in range(12)}
    _assert_png(plot_accuracy_vs_round(data, tmp_path / "p.png"))


def test_plotting_does_not_touch_the_global_backend(tmp_path):
    before = matplotlib.get_backend()
    plot_accuracy_vs_round(ROUNDS, tmp_path / "p.png")
    assert matplotlib.get_backend() == before


def test_band_is_the_student_t_interval_in_percent():
    xs, means, hws = plots._band([[(1, 0.5), (2, 0.6)], [(1, 0.7), (2, 0.8)]], by_index=False, level=0.95)
    assert xs == [1, 2] and means == pytest.approx([60.0, 70.0])
    assert hws == pytest.approx([12.7062 * 10.0] * 2, abs=1e-2)     # sd 14.142 points, n = 2
    _, _, hws = plots._band([[(1, 0.5)]], by_index=False, level=0.95)
    assert math.isnan(hws[0])


def test_bytes_band_aligns_seeds_by_evaluation_index():
    xs, means, _ = plots._band([[(100, 0.5)], [(120, 0.7)]], by_index=True, level=0.95)
    assert xs == [110] and means == pytest.approx([60.0])


def test_accuracy_series_skips_rounds_without_evaluation():
    rounds = [{"round": 1, "acc-mean": 0.5}, {"round": 2}, {"round": 3, "acc-mean": None},
              {"round": 4, "acc-mean": 0.7}]
    assert accuracy_series(rounds) == [(1, 0.5), (4, 0.7)]


def test_bytes_series_counts_traffic_of_unevaluated_rounds():
    rounds = [{"round": 2, "bytes-up": 10, "bytes-down": 20, "acc-mean": 0.6},
              {"round": 1, "bytes-up": 10, "bytes-down": 20, "bytes-p2p": 5},                 # not evaluated
              {"round": 3, "bytes-up": 1, "acc-mean": 0.7}]
    assert accuracy_vs_bytes_series(rounds) == [(65, 0.6), (66, 0.7)]


def test_near_equal_costs_do_not_fill_the_bytes_axis(tmp_path, monkeypatch):
    """One-shot methods that differ by 1% in bytes must not look an axis apart."""
    limits = []
    real = plots._save_png

    def keep_limits(fig, path):
        limits.append(fig.axes[0].get_xlim())
        return real(fig, path)

    monkeypatch.setattr(plots, "_save_png", keep_limits)
    near = {"a": [[(2.84e6, 0.9)]], "b": [[(2.87e6, 0.8)]]}
    plot_accuracy_vs_bytes(near, tmp_path / "near.png")
    lo, hi = limits[-1]
    assert hi / lo >= 10
    plot_accuracy_vs_bytes(BYTES, tmp_path / "far.png")           # a factor >= 4 apart: matplotlib's own limits
    _assert_png(tmp_path / "far.png")


def test_gate_plot_draws_one_point_per_client_run(tmp_path):
    from fedmoe_sim.results.plots import plot_gate_vs_heterogeneity

    path = plot_gate_vs_heterogeneity({"pfedmoe": [(1.0, 0.9), (0.9, 0.2)], "other": []}, tmp_path / "gate.png")
    assert path.exists() and path.stat().st_size > 1000
    empty = plot_gate_vs_heterogeneity({}, tmp_path / "empty.png")
    assert empty.exists()
