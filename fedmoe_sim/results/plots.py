"""Comparison plots: accuracy vs round, accuracy vs bytes, per-domain bars, and the gate.

These are the plots every comparison gets, one line or bar per strategy over its seeds; the look, panels
and file writing they share with the grid trade-off plot live in `plotkit`. Accuracies come in as fractions
and are drawn in percent; bands and error bars are Student-t 95% intervals over seeds (none where only one
seed has a value). Each `plot_*` saves what its `_build_*` returns, so tests read the Figure without writing
files. `plot_grid_tradeoff` is drawn by `tradeoff` and re-exported here, so callers find every plot in one place.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .plotkit import (Panel, Style, assign_styles, below, ci_title, facet_figure, facet_panels, fit_legends,
                      legend_or_empty, log_bytes_axes, panel_title, save_png)
from .stats import mean_ci
from .tables import MEAN_ACC_KEY, human_bytes
from .tradeoff import plot_grid_tradeoff

__all__ = ["BYTE_KEYS", "Series", "accuracy_series", "accuracy_vs_bytes_series", "plot_accuracy_vs_bytes",
           "plot_accuracy_vs_round", "plot_gate_vs_heterogeneity", "plot_grid_tradeoff", "plot_per_domain_bars"]

Series = Sequence[tuple[float, float]]          # one seed: [(x, accuracy fraction), ...]
BYTE_KEYS = ("bytes-up", "bytes-down", "bytes-p2p")


# ------------------------------------------------------------ series ----
def accuracy_series(rounds: Iterable[Mapping[str, Any]], key: str = MEAN_ACC_KEY) -> list[tuple[int, float]]:
    """[(round, acc)] from rounds.jsonl records; rounds without an evaluation are skipped."""
    return [(r["round"], r[key]) for r in rounds if r.get(key) is not None]


def accuracy_vs_bytes_series(rounds: Iterable[Mapping[str, Any]], key: str = MEAN_ACC_KEY,
                             byte_keys: Sequence[str] = BYTE_KEYS) -> list[tuple[int, float]]:
    """[(cumulative bytes, acc)]: per-round byte counts are summed over all rounds so far,
    including rounds that were not evaluated (their traffic was still paid)."""
    total, out = 0, []
    for r in sorted(rounds, key=lambda r: r["round"]):
        total += sum(r.get(k) or 0 for k in byte_keys)
        if r.get(key) is not None:
            out.append((total, r[key]))
    return out


def _band(seeds: Sequence[Series], by_index: bool, level: float) -> tuple[list[float], list[float], list[float]]:
    """Mean curve and half-widths over seeds, aligned on x (rounds) or on position (bytes differ by seed)."""
    groups: dict[float, list[tuple[float, float]]] = {}
    for series in seeds:
        for i, (x, y) in enumerate(series):
            groups.setdefault(i if by_index else x, []).append((x, y))
    xs, means, hws = [], [], []
    for k in sorted(groups):
        pts = groups[k]
        mean, hw = mean_ci([y * 100.0 for _, y in pts], level)
        xs.append(sum(x for x, _ in pts) / len(pts))
        means.append(mean)
        hws.append(hw)
    return xs, means, hws


def _n_label(name: str, seeds: Sequence[Any]) -> str:
    return f"{name} (n={len(seeds)} seed{'s' if len(seeds) != 1 else ''})"


# ------------------------------------------------------------ curves ----
_MARKS = 12     # about this many markers per line at most: enough to tell lines apart, few enough to see them


def _curve(ax: Any, name: str, label: str, seeds: Sequence[Series], st: Style, k: int, by_index: bool,
           level: float, scale: float, band_alpha: float) -> bool:
    """One strategy's mean line and CI band; True if it has a band anywhere. Markers of long series are
    thinned, and the k-th line of a panel starts them k points in, so neighbours do not stack theirs. The line's
    gid is the series name (its legend label may be shortened)."""
    xs, means, hws = _band(seeds, by_index, level)
    xs = [x / scale for x in xs]
    step = max(1, math.ceil(len(xs) / _MARKS))
    ax.plot(xs, means, color=st.color, linestyle=st.linestyle, linewidth=1.4, marker=st.marker, markersize=4.5,
            markevery=(k % step, step), label=_n_label(label, seeds), gid=name)
    has_ci = [not math.isnan(h) for h in hws]
    if any(has_ci):
        lo = [m - (h if ok else 0.0) for m, h, ok in zip(means, hws, has_ci)]
        hi = [m + (h if ok else 0.0) for m, h, ok in zip(means, hws, has_ci)]
        ax.fill_between(xs, lo, hi, where=has_ci, color=st.color, alpha=band_alpha, linewidth=0)
    return any(has_ci)


def _curves(per_strategy: Mapping[str, Sequence[Series]], by_index: bool, level: float,
            families: Mapping[str, str] | None, scale: float = 1.0,
            empty_note: str | None = None) -> tuple[Figure, list[Any], bool]:
    """Line figure, one panel per grid strategy or family past FACET_OVER series (see facet_panels), all sharing both
    axes. A series without points is left out, or with `empty_note` listed in its panel's legend with that note,
    in its style."""
    styles = assign_styles(list(per_strategy), families)
    panels = facet_panels(list(per_strategy), families)
    fig, axes = facet_figure(len(panels), 7.0, 2.8, sharex=True, sharey=True)
    any_ci = False
    for ax, panel in zip(axes, panels, strict=True):
        drawn = {n: [s for s in per_strategy[n] if len(s)] for n in panel.names}
        drawn = {n: seeds for n, seeds in drawn.items() if seeds}
        alpha = 0.2 if len(drawn) <= 4 else 0.1
        for k, (name, seeds) in enumerate(drawn.items()):
            any_ci |= _curve(ax, name, panel.label(name), seeds, styles[name], k, by_index, level, scale, alpha)
        ax.set_ylabel("mean accuracy (%)")
        ax.grid(True, alpha=0.3)
        panel_title(ax, panel, families)
        not_drawn = [] if empty_note is None else [
            Line2D([], [], color=styles[n].color, linestyle=styles[n].linestyle, marker=styles[n].marker,
                   markersize=4.5, label=f"{panel.label(n)}: {empty_note}") for n in panel.names if n not in drawn]
        if panel.strategy is not None and not drawn and len(not_drawn) > 1:
            # a grid strategy none of whose variants has a point (e.g. Local on the bytes plot): say it once
            legend_or_empty(ax, empty=f"{panel.strategy}: all {len(not_drawn)} variants {empty_note}")
            continue
        legend_or_empty(ax, inside=len(panels) == 1, not_drawn=not_drawn)
    return fig, axes, any_ci


def _build_accuracy_vs_round(per_strategy: Mapping[str, Sequence[Series]], *, level: float, title: str,
                             families: Mapping[str, str] | None) -> Figure:
    fig, axes, any_ci = _curves(per_strategy, by_index=False, level=level, families=families)
    axes[-1].set_xlabel("round")
    axes[-1].xaxis.get_major_locator().set_params(integer=True)
    ci_title(fig, axes, title, "band", level, any_ci)
    fit_legends(fig, axes)
    return fig


def plot_accuracy_vs_round(per_strategy: Mapping[str, Sequence[Series]], path: str | os.PathLike, *,
                           level: float = 0.95, title: str = "Mean accuracy vs round",
                           families: Mapping[str, str] | None = None) -> Path:
    """One line per strategy (mean over seeds at each round) with its CI band. Past FACET_OVER series, one panel
    per grid strategy (names `STRATEGY[...]`) or, with `families` (series name -> family), per family; `families`'
    key order also fixes each strategy's style."""
    return save_png(_build_accuracy_vs_round(per_strategy, level=level, title=title, families=families), path)


def _build_accuracy_vs_bytes(per_strategy: Mapping[str, Sequence[Series]], *, level: float, title: str,
                             families: Mapping[str, str] | None) -> Figure:
    positive = {name: [[(x, y) for x, y in s if x > 0] for s in seeds] for name, seeds in per_strategy.items()}
    peak = max((x for seeds in positive.values() for s in seeds for x, _ in s), default=1.0)
    scale, unit = human_bytes(peak)
    # a strategy that never communicates has no place on a log axis: say so in the legend instead of hiding it
    fig, axes, any_ci = _curves(positive, by_index=True, level=level, families=families, scale=scale,
                                empty_note="not shown (0 bytes communicated)")
    log_bytes_axes(axes, [x / scale for seeds in positive.values() for s in seeds for x, _ in s])
    axes[-1].set_xlabel(f"cumulative bytes communicated, up + down + P2P ({unit}, log scale)")
    ci_title(fig, axes, title, "band", level, any_ci)
    fit_legends(fig, axes)
    return fig


def plot_accuracy_vs_bytes(per_strategy: Mapping[str, Sequence[Series]], path: str | os.PathLike, *,
                           level: float = 0.95, title: str = "Mean accuracy vs communication",
                           families: Mapping[str, str] | None = None) -> Path:
    """Accuracy against cumulative bytes on a log axis, so strategies that differ in cost by
    orders of magnitude fit one plot. Seeds are aligned by evaluation index (their byte counts
    may differ slightly), x is the mean over seeds; points at 0 bytes cannot sit on a log axis
    and are dropped. `families` as in plot_accuracy_vs_round."""
    return save_png(_build_accuracy_vs_bytes(per_strategy, level=level, title=title, families=families), path)


# ------------------------------------------------------------ bars ----
def _rotate_if_crowded(fig: Figure, axes: Sequence[Any]) -> None:
    """Slant the domain names only if, drawn flat, two of them would touch."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw_without_rendering()            # a layout engine places the axes only when drawing
    for ax in axes:
        boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels()]
        if any(a.x1 + 4 > b.x0 for a, b in zip(boxes, boxes[1:])):
            for t in ax.get_xticklabels():
                t.set_rotation(30)
                t.set_horizontalalignment("right")


def _bars(ax: Any, per_strategy: Mapping[str, Mapping[str, Sequence[float]]], styles: Mapping[str, Style],
          domains: Sequence[str], level: float, slots: int, panel: Panel) -> tuple[float, bool]:
    """One bar per strategy with a value in each domain group, `slots` wide (the fullest panel's count, so
    bars are equally wide in every panel; fewer are centred); returns (highest CI cap, any CI). Each bar's
    gid is its series name (the legend label may be shortened, see Panel.label)."""
    means_by: dict[str, dict[int, tuple[float, float, int]]] = {}
    for name, per_domain in per_strategy.items():
        for j, d in enumerate(domains):
            values = [v for v in per_domain.get(d, []) if v is not None and not math.isnan(v)]
            if values:
                mean, hw = mean_ci([v * 100.0 for v in values], level)
                means_by.setdefault(name, {})[j] = (mean, hw, len(values))
    width = 0.8 / max(slots, 1)
    left = -width * len(means_by) / 2
    top, any_ci = 0.0, False
    for i, (name, cells) in enumerate(means_by.items()):
        xs = [j + left + width * (i + 0.5) for j in cells]
        means = [m for m, _, _ in cells.values()]
        errs = [0.0 if math.isnan(hw) else hw for _, hw, _ in cells.values()]
        any_ci = any_ci or any(not math.isnan(hw) for _, hw, _ in cells.values())
        top = max(top, *(m + e for m, e in zip(means, errs)))
        n_max = max(n for _, _, n in cells.values())
        st = styles[name]
        ax.bar(xs, means, width * 0.95, yerr=errs if any(errs) else None, capsize=3, color=st.color,
               hatch=st.hatch or None, edgecolor="white" if st.hatch else None, linewidth=0,
               label=f"{panel.label(name)} (n={n_max} seed{'s' if n_max != 1 else ''})", error_kw={"elinewidth": 1},
               gid=name)
    ax.set_xticks(range(len(domains)))
    ax.set_xticklabels(domains)
    ax.set_ylabel("accuracy (%)")
    ax.grid(True, axis="y", alpha=0.3)
    return top, any_ci


def _build_per_domain_bars(per_strategy: Mapping[str, Mapping[str, Sequence[float]]], *, level: float,
                           title: str, families: Mapping[str, str] | None) -> Figure:
    domains = sorted({d for per_domain in per_strategy.values() for d in per_domain})
    styles = assign_styles(list(per_strategy), families)
    panels = facet_panels(list(per_strategy), families)
    slots = max((len(p.names) for p in panels), default=1)
    width = min(16.0, max(6.0, 1.0 + len(domains) * (0.5 + 0.25 * slots)))
    fig, axes = facet_figure(len(panels), width, 2.6, sharey=True)
    top, any_ci = 0.0, False
    for ax, panel in zip(axes, panels, strict=True):
        panel_top, panel_ci = _bars(ax, {name: per_strategy[name] for name in panel.names}, styles, domains, level,
                                    slots, panel)
        top, any_ci = max(top, panel_top), any_ci or panel_ci
        panel_title(ax, panel, families)
    axes[0].set_ylim(0, min(110.0, top * 1.06) if top > 0 else 100.0)   # room for CI caps above 100
    ci_title(fig, axes, title, "error bars", level, any_ci)
    _rotate_if_crowded(fig, axes)
    for ax in axes:
        n_bars = len(ax.get_legend_handles_labels()[0])
        if not n_bars:
            ax.text(0.5, 0.5, "no data to plot", transform=ax.transAxes, ha="center", va="center", color="grey")
        elif len(axes) > 1:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", borderaxespad=0)
        else:
            # below the axes: inside it would cover bars, to the right it squeezes few-domain plots
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, below(fig, ax)), ncol=min(n_bars, 4),
                      fontsize="small", frameon=False)
    if len(axes) > 1:
        fit_legends(fig, axes)
    return fig


def plot_per_domain_bars(per_strategy: Mapping[str, Mapping[str, Sequence[float]]], path: str | os.PathLike, *,
                         level: float = 0.95, title: str = "Final accuracy per domain",
                         families: Mapping[str, str] | None = None) -> Path:
    """Grouped bars: one group per domain, one bar per strategy, CI error bars (none for one seed). Past
    FACET_OVER strategies, stacked panels on a shared accuracy axis, grouped as in plot_accuracy_vs_round."""
    return save_png(_build_per_domain_bars(per_strategy, level=level, title=title, families=families), path)


# ------------------------------------------------------------ gate ----
def _build_gate_vs_heterogeneity(per_strategy: Mapping[str, Sequence[tuple[float, float]]], *, title: str,
                                 families: Mapping[str, str] | None) -> Figure:
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot()
    styles = assign_styles(list(per_strategy), families)
    for name, points in per_strategy.items():
        if points:
            xs, ys = zip(*points, strict=True)
            ax.scatter(xs, ys, s=16, alpha=0.7, color=styles[name].color, marker=styles[name].marker,
                       label=f"{name} ({len(points)} client-runs)")
    ax.set_xlabel("label entropy of the client's training data (bits)")
    ax.set_ylabel("mean gate weight on the global expert")
    ax.set_ylim(-0.02, 1.02)
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    legend_or_empty(ax)
    fit_legends(fig, [ax])
    return fig


def plot_gate_vs_heterogeneity(per_strategy: Mapping[str, Sequence[tuple[float, float]]], path: str | os.PathLike, *,
                               title: str = "What the gate learned", families: Mapping[str, str] | None = None) -> Path:
    """One point per client and seed: its label entropy (bits; 1 = two balanced classes) against
    the mean weight its gate gives the global expert on its own test split. Few strategies have a gate,
    so this plot is never split; `families` only keeps each strategy's style that of the other plots."""
    return save_png(_build_gate_vs_heterogeneity(per_strategy, title=title, families=families), path)

