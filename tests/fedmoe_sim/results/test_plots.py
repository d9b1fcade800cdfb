"""Plots: valid PNGs for every shape of input, series helpers computed by hand, one look per strategy, one
panel per family or per grid strategy and panels as tall as their legends, read from the figures the
`_build_*` functions return. The grid trade-off plot is tested in test_tradeoff.py."""

import math
import warnings

import matplotlib
import numpy as np
import pytest
from matplotlib.colors import to_hex
from matplotlib.container import BarContainer
from matplotlib.markers import MarkerStyle

from fedmoe_sim.results import plotkit, plots, tradeoff
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


def test_plots_reexports_the_trade_off_plot_for_its_callers():
    assert plots.plot_grid_tradeoff is tradeoff.plot_grid_tradeoff      # experiments/compare.py calls it there


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
    real = plots.save_png

    def keep_limits(fig, path):
        limits.append(fig.axes[0].get_xlim())
        return real(fig, path)

    monkeypatch.setattr(plots, "save_png", keep_limits)
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


# ------------------------------------------------------------ styles and family panels ----
MAIN = ["fedavg", "local", "fedmoe-da", "fedavg-moe", "local-moe", "metamoe", "metamoe-no-dpp", "metamoe-no-context",
        "metamoe-no-proxy-training", "flexolmo", "btx", "btm", "modelsoup", "separate", "zeroshot", "unrestricted"]
CLASSIC, PERSONALISED = {"fedavg", "local", "fedavg-moe", "local-moe"}, {"fedmoe-da"}
FAMILIES = {n: "classic" if n in CLASSIC else "personalised" if n in PERSONALISED else "unification" for n in MAIN}


def _names(n):
    """The main job's 16, then grid variants (whose family the caller maps) up to n."""
    return (MAIN + [f"fedmoe-da[P={i},tau=0.5]" for i in range(n)])[:n]


def _families(names):
    return {n: FAMILIES.get(n, "personalised") for n in names}


def _curves(names, rounds=3):
    return {n: [[(r, 0.3 + 0.02 * i + 0.05 * r) for r in range(1, rounds + 1)] for _ in range(2)]
            for i, n in enumerate(names)}


def _byte_curves(names):
    return {n: [[(r * 10 ** (3 + i % 5), a) for r, a in seed] for seed in seeds]
            for i, (n, seeds) in enumerate(_curves(names).items())}


def _domains(names):
    return {n: {d: [0.5 + 0.01 * i, 0.55] for d in ("blur", "gamma", "invert")} for i, n in enumerate(names)}


def _series(label):
    return label.rsplit(" (n=", 1)[0].split(": not shown")[0]


def _line_styles(fig):
    """[(series, colour, marker, linestyle, axes index)] over every panel of the figure. A line's gid is its
    series (its label drops the strategy in a grid strategy's panel)."""
    return [(line.get_gid(), to_hex(line.get_color()), line.get_marker(), line.get_linestyle(), k)
            for k, ax in enumerate(fig.axes) for line in ax.get_lines()]


def _bar_styles(fig):
    """[(series, facecolour, hatch, axes index)], one per strategy's bar container (each bar's gid: its series)."""
    return [(c.patches[0].get_gid(), to_hex(c.patches[0].get_facecolor()), c.patches[0].get_hatch(), k)
            for k, ax in enumerate(fig.axes) for c in ax.containers if isinstance(c, BarContainer)]


def _build_lines(builder, data, families):
    return builder(data, level=0.95, title="t", families=families)


LINE_BUILDERS = [(plots._build_accuracy_vs_round, _curves), (plots._build_accuracy_vs_bytes, _byte_curves)]


@pytest.mark.parametrize("n", [13, 16, 25])
@pytest.mark.parametrize("with_families", [False, True])
@pytest.mark.parametrize("builder, make", LINE_BUILDERS)
def test_every_line_has_its_own_colour_and_marker_across_all_panels(builder, make, with_families, n):
    names = _names(n)
    fig = _build_lines(builder, make(names), _families(names) if with_families else None)
    styles = _line_styles(fig)
    assert sorted(s for s, *_ in styles) == sorted(names)
    assert len({(c, m) for _, c, m, _, _ in styles}) == n
    colours = [c for _, c, *_ in styles]
    assert len(set(colours)) == min(n, len(plotkit.PALETTE)) and len(plotkit.PALETTE) >= 20
    assert all(m not in (None, "None", "", " ") for _, _, m, _, _ in styles)


def test_palette_has_no_duplicates_and_pairs_stay_unique_far_past_it():
    assert len(set(plotkit.PALETTE)) == len(plotkit.PALETTE) >= 20
    looks = [plotkit._style(i) for i in range(140)]
    assert len({(s.color, s.marker) for s in looks}) == 140
    assert len({(s.color, s.hatch) for s in looks[:100]}) == 100


def test_a_strategy_looks_the_same_in_the_round_bytes_bars_and_gate_plots():
    names = _names(16)
    fams = _families(names)
    by_round = {s: (c, m, ls) for s, c, m, ls, _ in _line_styles(_build_lines(plots._build_accuracy_vs_round,
                                                                             _curves(names), fams))}
    by_bytes = {s: (c, m, ls) for s, c, m, ls, _ in _line_styles(_build_lines(plots._build_accuracy_vs_bytes,
                                                                             _byte_curves(names), fams))}
    assert by_round == by_bytes
    bars = plots._build_per_domain_bars(_domains(names), level=0.95, title="t", families=fams)
    assert {s: c for s, c, _, _ in _bar_styles(bars)} == {s: c for s, (c, _, _) in by_round.items()}
    # the gate plot holds only the strategies with a gate: with the comparison's families they keep their look
    gate = plots._build_gate_vs_heterogeneity({"local-moe": [(0.5, 0.4)]}, title="t", families=fams)
    points = gate.axes[0].collections[0]
    colour, marker, _ = by_round["local-moe"]
    assert to_hex(points.get_facecolor()[0]) == colour
    want = MarkerStyle(marker)
    np.testing.assert_allclose(points.get_paths()[0].vertices,
                               want.get_path().transformed(want.get_transform()).vertices)


def test_styles_follow_the_order_passed_in_without_families():
    fig = _build_lines(plots._build_accuracy_vs_round, _curves(["b", "a"]), None)
    assert [(s, c) for s, c, *_ in _line_styles(fig)] == [("b", plotkit.PALETTE[0]), ("a", plotkit.PALETTE[1])]


@pytest.mark.parametrize("builder, make", LINE_BUILDERS)
def test_more_than_8_series_with_families_get_one_panel_per_family(builder, make):
    names = _names(16) + ["mystery"]                     # a series the mapping misses goes in "other", last
    fams = {n: f for n, f in _families(names).items() if n != "mystery"}
    fig = _build_lines(builder, make(names), fams)
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["classic", "personalised", "unification", "other"]
    panels = {ax.get_title(loc="left"): {_series(line.get_label()) for line in ax.get_lines()} for ax in fig.axes}
    assert panels == {"classic": CLASSIC, "personalised": PERSONALISED, "other": {"mystery"},
                      "unification": set(MAIN) - CLASSIC - PERSONALISED}
    assert all(ax.get_legend() is not None for ax in fig.axes)         # each panel its own legend
    first = fig.axes[0]
    assert all(ax.get_shared_y_axes().joined(first, ax) and ax.get_shared_x_axes().joined(first, ax)
               for ax in fig.axes)


@pytest.mark.parametrize("builder, make", LINE_BUILDERS)
@pytest.mark.parametrize("names, families", [
    (MAIN[:8], {n: FAMILIES[n] for n in MAIN[:8]}),      # few enough to compare in one panel
    (MAIN, None),                                        # families unknown
])
def test_few_series_or_no_families_stay_in_one_panel(builder, make, names, families):
    fig = _build_lines(builder, make(names), families)
    assert len(fig.axes) == 1 and len(fig.axes[0].get_lines()) == len(names)


def test_zero_byte_strategies_are_named_in_their_family_panel():
    names = _names(16)
    data = _byte_curves(names)
    data["zeroshot"] = [[(0, 0.5)], [(0, 0.52)]]
    fig = _build_lines(plots._build_accuracy_vs_bytes, data, _families(names))
    unification = next(ax for ax in fig.axes if ax.get_title(loc="left") == "unification")
    texts = [t.get_text() for t in unification.get_legend().get_texts()]
    assert "zeroshot: not shown (0 bytes communicated)" in texts
    assert "zeroshot" not in {s for s, *_ in _line_styles(fig)}


def test_long_series_thin_their_markers():
    fig = _build_lines(plots._build_accuracy_vs_round, _curves(["a", "b"], rounds=60), None)
    (start_a, step_a), (start_b, step_b) = [line.get_markevery() for line in fig.axes[0].get_lines()]
    assert step_a == step_b and 60 / step_a <= plots._MARKS and start_a != start_b    # staggered, not stacked
    fig = _build_lines(plots._build_accuracy_vs_round, _curves(["a"], rounds=10), None)
    assert fig.axes[0].get_lines()[0].get_markevery() == (0, 1)                      # short: every point


@pytest.mark.parametrize("n", [13, 16, 25])
@pytest.mark.parametrize("with_families", [False, True])
def test_every_bar_series_has_its_own_colour_then_hatch(n, with_families):
    names = _names(n)
    fig = plots._build_per_domain_bars(_domains(names), level=0.95, title="t",
                                       families=_families(names) if with_families else None)
    styles = _bar_styles(fig)
    assert sorted(s for s, *_ in styles) == sorted(names)
    assert len({c for _, c, _, _ in styles}) == min(n, len(plotkit.PALETTE))
    assert len({(c, h) for _, c, h, _ in styles}) == n


def test_bars_with_families_are_stacked_one_panel_per_family_on_one_accuracy_axis():
    names = _names(16)
    fig = plots._build_per_domain_bars(_domains(names), level=0.95, title="t", families=_families(names))
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["classic", "personalised", "unification"]
    by_panel = {}
    for s, _, _, k in _bar_styles(fig):
        by_panel.setdefault(fig.axes[k].get_title(loc="left"), set()).add(s)
    assert by_panel == {"classic": CLASSIC, "personalised": PERSONALISED,
                        "unification": set(MAIN) - CLASSIC - PERSONALISED}
    lefts = {round(ax.get_position().x0, 3) for ax in fig.axes}
    tops = [ax.get_position().y1 for ax in fig.axes]
    assert len(lefts) == 1 and tops == sorted(tops, reverse=True)                   # one column, top to bottom
    assert all(ax.get_ylim() == fig.axes[0].get_ylim() for ax in fig.axes)
    widths = {round(c.patches[0].get_width(), 6) for ax in fig.axes for c in ax.containers
              if isinstance(c, BarContainer)}
    assert len(widths) == 1                                                          # a bar is a bar in every panel
    few = plots._build_per_domain_bars(_domains(MAIN[:8]), level=0.95, title="t", families=_families(MAIN[:8]))
    assert len(few.axes) == 1


def test_public_plots_take_families_and_write_pngs(tmp_path):
    names = _names(16)
    fams = _families(names)
    for plot, data in [(plot_accuracy_vs_round, _curves(names)), (plot_accuracy_vs_bytes, _byte_curves(names)),
                       (plot_per_domain_bars, _domains(names))]:
        _assert_png(plot(data, tmp_path / f"{plot.__name__}.png", families=fams))


# ------------------------------------------------------------ grid sweeps: panels per strategy, legend room ----
GRID = {"fedmoe-da": [f"top_p={p},tau={t},every={e}" for p in (1, 5) for t in ("0.3", "1") for e in (1, 5)],
        **{s: [f"lr={lr},local_epochs={e}" for lr in ("0.01", "0.02", "0.03", "0.05") for e in (2, 5)]
           for s in ("fedavg-moe", "local-moe", "fedavg", "local")}}
GRID_NAMES = [f"{s}[{v}]" for s, values in GRID.items() for v in values]           # the 40 of fedmoe-da-tuning
SINGLES = ["pfedmoe", "metamoe", "mystery"]      # one variant each; mystery's family is not in the mapping


def _grid_families(names):
    fams = {"fedmoe-da": "personalised", "pfedmoe": "personalised", "metamoe": "unification"}
    return {n: fams.get(plotkit.strategy_of(n), "classic") for n in names if n != "mystery"}


ALL_BUILDERS = [(plots._build_accuracy_vs_round, _curves), (plots._build_accuracy_vs_bytes, _byte_curves),
                (plots._build_per_domain_bars, _domains)]


def _build(builder, make, names, families):
    return builder(make(names), level=0.95, title="t", families=families)


def _drawn_by_panel(fig):
    """{panel title: series drawn there} from the lines' or bars' gids."""
    out = {}
    for s, *_, k in _line_styles(fig) + _bar_styles(fig):
        if s is None:                             # an error bar's cap, not a series
            continue
        out.setdefault(fig.axes[k].get_title(loc="left"), []).append(s)
    return out


def _inches(fig, bbox):
    return bbox.height / fig.dpi


@pytest.mark.parametrize("builder, make", ALL_BUILDERS)
@pytest.mark.parametrize("names, families", [
    (GRID_NAMES, {n: "classic" for n in GRID_NAMES}),       # family panels would hold 32 + 8: strategies instead
    (GRID_NAMES, None),
    ([f"s{i}" for i in range(30)] + MAIN[:3], {**{f"s{i}": "classic" for i in range(30)}, **FAMILIES}),  # 31 in one
    ([f"s{i}" for i in range(40)], None),                   # one panel, legend outside on the right
    (MAIN, FAMILIES),
], ids=["grid-one-family", "grid-no-families", "31-in-one-family", "40-no-families", "main-16"])
def test_panels_are_never_shorter_than_their_legends(builder, make, names, families):
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # "constrained_layout not applied because axes sizes collapsed"
        fig = _build(builder, make, names, families)
        fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = 0
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        legends += 1
        height = _inches(fig, ax.get_window_extent(renderer))
        assert height >= _inches(fig, legend.get_window_extent(renderer)), ax.get_title(loc="left")
        assert height > 1.5                       # a panel, not a sliver
    assert legends >= 1


def test_a_long_legend_grows_its_own_panel_and_leaves_the_others_as_today():
    short = [f"s{k}[v={i}]" for k in range(5) for i in range(2)]              # 5 panels of 2 lines: today's look
    long = [f"s{k}[v={i}]" for k in range(4) for i in range(2)] + [f"s4[v={i}]" for i in range(30)]
    today = _build(plots._build_accuracy_vs_round, _curves, short, None)
    grown = _build(plots._build_accuracy_vs_round, _curves, long, None)
    for fig in (today, grown):
        fig.canvas.draw()
    heights = [[_inches(f, ax.get_window_extent()) for ax in f.axes] for f in (today, grown)]
    assert today.get_size_inches()[1] == pytest.approx(0.8 + 2.8 * 5)      # unchanged where legends fit
    assert all(h0 - 0.01 <= h <= 1.05 * h0 for h0, h in zip(heights[0][:4], heights[1][:4]))   # today's, about
    assert heights[1][4] > 2 * heights[0][4]
    assert grown.get_size_inches()[1] > today.get_size_inches()[1]


@pytest.mark.parametrize("builder, make", ALL_BUILDERS)
def test_grid_variants_get_one_panel_per_strategy_and_singles_share_their_familys(builder, make):
    names = GRID_NAMES[:8] + ["pfedmoe"] + GRID_NAMES[8:] + SINGLES[1:]
    fig = _build(builder, make, names, _grid_families(names))
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert titles == ["fedmoe-da", "personalised (one variant each)", "fedavg-moe", "local-moe", "fedavg", "local",
                      "unification (one variant each)", "other (one variant each)"]
    panels = _drawn_by_panel(fig)
    for strategy, values in GRID.items():
        assert panels[strategy] == [f"{strategy}[{v}]" for v in values]
    assert panels["personalised (one variant each)"] == ["pfedmoe"]
    assert panels["other (one variant each)"] == ["mystery"]
    # a strategy's panel names it once, in the title (its family on the right); its legend shows the grid values
    da = fig.axes[0]
    assert da.get_title(loc="right") == "personalised"
    assert [t.get_text().split(" (n=")[0] for t in da.get_legend().get_texts()] == GRID["fedmoe-da"]
    assert [t.get_text().split(" (n=")[0] for t in fig.axes[1].get_legend().get_texts()] == ["pfedmoe"]


def test_grid_panels_without_families_put_the_single_variant_strategies_in_other():
    names = GRID_NAMES[:16] + ["fedavg"]
    fig = _build(plots._build_accuracy_vs_round, _curves, names, None)
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["fedmoe-da", "fedavg-moe", "other (one variant each)"]
    assert _drawn_by_panel(fig)["other (one variant each)"] == ["fedavg"]


def test_few_grid_variants_stay_in_one_panel():
    fig = _build(plots._build_accuracy_vs_round, _curves, GRID_NAMES[:8], None)
    assert len(fig.axes) == 1 and len(fig.axes[0].get_lines()) == 8


def test_a_strategy_none_of_whose_variants_communicates_says_so_once():
    names = GRID_NAMES[:16]
    data = _byte_curves(names)
    data.update({n: [[(0, 0.5)]] for n in names[8:]})                       # fedavg-moe at 0 bytes throughout
    fig = _build_lines(plots._build_accuracy_vs_bytes, data, None)
    empty = fig.axes[1]
    assert empty.get_title(loc="left") == "fedavg-moe" and empty.get_lines() == [] and empty.get_legend() is None
    assert [t.get_text() for t in empty.texts] == ["fedavg-moe: all 8 variants not shown (0 bytes communicated)"]


@pytest.mark.parametrize("builder, make", ALL_BUILDERS)
def test_unique_styles_hold_across_all_panels_for_40_grid_variants(builder, make):
    fig = _build(builder, make, GRID_NAMES, _grid_families(GRID_NAMES))
    assert len(fig.axes) == 5
    if builder is plots._build_per_domain_bars:
        styles = _bar_styles(fig)
        assert len({(c, h) for _, c, h, _ in styles}) == 40
    else:
        styles = _line_styles(fig)
        assert len({(c, m) for _, c, m, _, _ in styles}) == 40
    assert sorted(s for s, *_ in styles) == sorted(GRID_NAMES)
    assert len({c for _, c, *_ in styles}) == len(plotkit.PALETTE)
