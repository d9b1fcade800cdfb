"""Comparison plots: accuracy vs round, accuracy vs bytes, per-domain bars.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas, never
pyplot, so plotting needs no display and does not switch the global backend
of whoever imported us. Accuracies come in as fractions and are drawn in
percent; bands and error bars are Student-t 95% intervals over seeds (none
where only one seed has a value). Every PNG is written atomically.

A comparison may hold 20+ strategies, so each series gets its own colour and
marker, kept across all plots of the comparison, and past 8 series with their
families known the plots split into one panel per family. Each `plot_*` saves
what its `_build_*` returns, so tests read the Figure without writing files.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from .stats import mean_ci
from .tables import MEAN_ACC_KEY, human_bytes

Series = Sequence[tuple[float, float]]          # one seed: [(x, accuracy fraction), ...]
BYTE_KEYS = ("bytes-up", "bytes-down", "bytes-p2p")
_DPI = 150


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


# ------------------------------------------------------------ styles ----
# tab10, then ten colours picked so that no two of the twenty are closer than tab10's own closest pair
# (red/brown, CIEDE2000 16) and none is lighter than L* 75: every one reads as a thin line on white.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#000000", "#555500", "#1100cc", "#771155", "#006644", "#ff8888", "#88aaee", "#996611",
           "#dd0077", "#66bb99")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")   # 7 is coprime with 20: (colour, marker) repeats after 140 series
LINESTYLES = ("-", "--", ":")                   # one per lap of the palette, so same-coloured lines differ twice
HATCHES = ("", "//", "..", "xx", "\\\\")        # bars carry no marker: past the palette, a hatch tells them apart
FACET_OVER = 8                                  # more series than this (and families given): one panel per family
OTHER = "other"                                 # the panel of series whose family the mapping does not give


@dataclass(frozen=True)
class Style:
    """How one series is drawn, in every plot of a comparison."""
    color: str
    marker: str
    linestyle: str
    hatch: str


def _style(i: int) -> Style:
    """The i-th series' look: colours distinct for the first 20, (colour, marker) for the first 140, and
    (colour, hatch) for the first 100."""
    lap = i // len(PALETTE)
    return Style(PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)], LINESTYLES[lap % len(LINESTYLES)],
                 HATCHES[lap % len(HATCHES)])


def _styles(names: Sequence[str], families: Mapping[str, str] | None) -> dict[str, Style]:
    """Styles by position in the comparison's roster, so a strategy looks the same in every plot. The roster is
    `families`' key order when given (the caller maps every strategy of the comparison, so one missing from a
    plot, e.g. from the gate plot, shifts no one's colour), else the order the series are passed in."""
    roster = {n: k for k, n in enumerate(dict.fromkeys([*(families or {}), *names]))}
    return {n: _style(roster[n]) for n in names}


def _panels(names: Sequence[str], families: Mapping[str, str] | None) -> list[tuple[str | None, list[str]]]:
    """[(family, its series)] in order of first appearance, "other" last. Up to FACET_OVER series stay in one
    untitled panel: splitting a few lines only makes them harder to compare."""
    if not families or len(names) <= FACET_OVER:
        return [(None, list(names))]
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(families.get(n, OTHER), []).append(n)
    if OTHER in groups:
        groups[OTHER] = groups.pop(OTHER)
    return list(groups.items())


def _save_png(fig: Figure, path: str | os.PathLike) -> Path:
    """savefig to a temp file beside `path`, then rename: a reader never sees half a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=_DPI, bbox_inches="tight")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _title(fig: Figure, axes: Sequence[Any], title: str, what: str, level: float, any_ci: bool) -> None:
    """Say what the shading means, or that there is none (one seed); above all panels when there are several
    (each panel is titled with its family)."""
    if not any(ax.get_lines() or ax.patches for ax in axes):
        note = ""
    else:
        note = f"\n({what}: {level * 100:g}% CI over seeds)" if any_ci else "\n(one seed: no CI)"
    if len(axes) == 1:
        axes[0].set_title(title + note, fontsize="medium")
    else:
        fig.suptitle(title + note, fontsize="medium")


def _facet_figure(n_panels: int, width: float, panel_height: float, **share: bool) -> tuple[Figure, list[Any]]:
    """One figure, one panel per family stacked (rows line up on the shared axes). Several panels use the
    constrained layout, which keeps each panel's outside legend and the title above them clear of each other."""
    fig = Figure(figsize=(width, 4.5 if n_panels == 1 else 0.8 + panel_height * n_panels),
                 layout="constrained" if n_panels > 1 else None)
    return fig, list(fig.subplots(n_panels, 1, squeeze=False, **share)[:, 0])


def _panel_title(ax: Any, family: str | None) -> None:
    if family is not None:
        ax.set_title(family, fontsize="medium", loc="left", fontweight="bold")


def _legend_or_empty(ax: Any, inside: bool = True, not_drawn: Sequence[Line2D] = ()) -> None:
    """Inside while it fits (and `inside`: family panels keep their legends in one column on the right);
    outside on the right when many strategies would cover the curves. With nothing to draw, say so on the
    plot rather than leave a blank frame. `not_drawn`: entries for series that have no place on the axes."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        ax.text(0.5, 0.5, "no data to plot", transform=ax.transAxes, ha="center", va="center", color="grey")
    handles, labels = handles + list(not_drawn), labels + [h.get_label() for h in not_drawn]
    if handles and len(handles) <= 4 and inside:
        ax.legend(handles, labels, loc="best", fontsize="small", framealpha=0.9)
    elif handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", borderaxespad=0)


_MARKS = 12     # about this many markers per line at most: enough to tell lines apart, few enough to see them


def _curve(ax: Any, name: str, seeds: Sequence[Series], st: Style, k: int, by_index: bool, level: float,
           scale: float, band_alpha: float) -> bool:
    """One strategy's mean line and CI band; True if it has a band anywhere. Markers of long series are
    thinned, and the k-th line of a panel starts them k points in, so neighbours do not stack theirs."""
    xs, means, hws = _band(seeds, by_index, level)
    xs = [x / scale for x in xs]
    step = max(1, math.ceil(len(xs) / _MARKS))
    ax.plot(xs, means, color=st.color, linestyle=st.linestyle, linewidth=1.4, marker=st.marker, markersize=4.5,
            markevery=(k % step, step), label=_n_label(name, seeds))
    has_ci = [not math.isnan(h) for h in hws]
    if any(has_ci):
        lo = [m - (h if ok else 0.0) for m, h, ok in zip(means, hws, has_ci)]
        hi = [m + (h if ok else 0.0) for m, h, ok in zip(means, hws, has_ci)]
        ax.fill_between(xs, lo, hi, where=has_ci, color=st.color, alpha=band_alpha, linewidth=0)
    return any(has_ci)


def _curves(per_strategy: Mapping[str, Sequence[Series]], by_index: bool, level: float,
            families: Mapping[str, str] | None, scale: float = 1.0,
            empty_note: str | None = None) -> tuple[Figure, list[Any], bool]:
    """Line figure, one panel per family past FACET_OVER series, all sharing both axes. A series without
    points is left out, or with `empty_note` listed in its panel's legend with that note, in its style."""
    styles = _styles(list(per_strategy), families)
    panels = _panels(list(per_strategy), families)
    fig, axes = _facet_figure(len(panels), 7.0, 2.8, sharex=True, sharey=True)
    any_ci = False
    for ax, (family, names) in zip(axes, panels, strict=True):
        drawn = {n: [s for s in per_strategy[n] if len(s)] for n in names}
        drawn = {n: seeds for n, seeds in drawn.items() if seeds}
        alpha = 0.2 if len(drawn) <= 4 else 0.1
        for k, (name, seeds) in enumerate(drawn.items()):
            any_ci |= _curve(ax, name, seeds, styles[name], k, by_index, level, scale, alpha)
        ax.set_ylabel("mean accuracy (%)")
        ax.grid(True, alpha=0.3)
        _panel_title(ax, family)
        not_drawn = [] if empty_note is None else [
            Line2D([], [], color=styles[n].color, linestyle=styles[n].linestyle, marker=styles[n].marker,
                   markersize=4.5, label=f"{n}: {empty_note}") for n in names if n not in drawn]
        _legend_or_empty(ax, inside=len(panels) == 1, not_drawn=not_drawn)
    return fig, axes, any_ci


def _build_accuracy_vs_round(per_strategy: Mapping[str, Sequence[Series]], *, level: float, title: str,
                             families: Mapping[str, str] | None) -> Figure:
    fig, axes, any_ci = _curves(per_strategy, by_index=False, level=level, families=families)
    axes[-1].set_xlabel("round")
    axes[-1].xaxis.get_major_locator().set_params(integer=True)
    _title(fig, axes, title, "band", level, any_ci)
    return fig


def plot_accuracy_vs_round(per_strategy: Mapping[str, Sequence[Series]], path: str | os.PathLike, *,
                           level: float = 0.95, title: str = "Mean accuracy vs round",
                           families: Mapping[str, str] | None = None) -> Path:
    """One line per strategy (mean over seeds at each round) with its CI band. `families` (series name ->
    family) splits more than FACET_OVER series into one panel per family and fixes each strategy's style."""
    return _save_png(_build_accuracy_vs_round(per_strategy, level=level, title=title, families=families), path)


def _build_accuracy_vs_bytes(per_strategy: Mapping[str, Sequence[Series]], *, level: float, title: str,
                             families: Mapping[str, str] | None) -> Figure:
    positive = {name: [[(x, y) for x, y in s if x > 0] for s in seeds] for name, seeds in per_strategy.items()}
    peak = max((x for seeds in positive.values() for s in seeds for x, _ in s), default=1.0)
    scale, unit = human_bytes(peak)
    # a strategy that never communicates has no place on a log axis: say so in the legend instead of hiding it
    fig, axes, any_ci = _curves(positive, by_index=True, level=level, families=families, scale=scale,
                                empty_note="not shown (0 bytes communicated)")
    xs = [x / scale for seeds in positive.values() for s in seeds for x, _ in s]
    # 20, 50, 100 reads better than 10^2; past a few decades, labels at 2 and 5 would run into each other
    subs = (1.0, 2.0, 5.0) if not xs or max(xs) / min(xs) <= 10 ** 2.5 else (1.0,)
    for ax in axes:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    axes[-1].set_xlabel(f"cumulative bytes communicated, up + down + P2P ({unit}, log scale)")
    if xs and max(xs) < 4 * min(xs):
        # near-equal costs (e.g. one-shot methods differing by a few KiB of extras): a tight
        # axis would blow a 1% difference up to the plot's width; show at least a factor of 10
        mid = (min(xs) * max(xs)) ** 0.5
        axes[0].set_xlim(min(min(xs), mid / 10 ** 0.5) / 1.1, max(max(xs), mid * 10 ** 0.5) * 1.1)
    _title(fig, axes, title, "band", level, any_ci)
    return fig


def plot_accuracy_vs_bytes(per_strategy: Mapping[str, Sequence[Series]], path: str | os.PathLike, *,
                           level: float = 0.95, title: str = "Mean accuracy vs communication",
                           families: Mapping[str, str] | None = None) -> Path:
    """Accuracy against cumulative bytes on a log axis, so strategies that differ in cost by
    orders of magnitude fit one plot. Seeds are aligned by evaluation index (their byte counts
    may differ slightly), x is the mean over seeds; points at 0 bytes cannot sit on a log axis
    and are dropped. `families` as in plot_accuracy_vs_round."""
    return _save_png(_build_accuracy_vs_bytes(per_strategy, level=level, title=title, families=families), path)


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
          domains: Sequence[str], level: float, slots: int) -> tuple[float, bool]:
    """One bar per strategy with a value in each domain group, `slots` wide (the fullest panel's count, so
    bars are equally wide in every panel; fewer are centred); returns (highest CI cap, any CI)."""
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
               label=f"{name} (n={n_max} seed{'s' if n_max != 1 else ''})", error_kw={"elinewidth": 1})
    ax.set_xticks(range(len(domains)))
    ax.set_xticklabels(domains)
    ax.set_ylabel("accuracy (%)")
    ax.grid(True, axis="y", alpha=0.3)
    return top, any_ci


def _build_per_domain_bars(per_strategy: Mapping[str, Mapping[str, Sequence[float]]], *, level: float,
                           title: str, families: Mapping[str, str] | None) -> Figure:
    domains = sorted({d for per_domain in per_strategy.values() for d in per_domain})
    styles = _styles(list(per_strategy), families)
    panels = _panels(list(per_strategy), families)
    slots = max((len(names) for _, names in panels), default=1)
    width = min(16.0, max(6.0, 1.0 + len(domains) * (0.5 + 0.25 * slots)))
    fig, axes = _facet_figure(len(panels), width, 2.6, sharey=True)
    top, any_ci = 0.0, False
    for ax, (family, names) in zip(axes, panels, strict=True):
        panel_top, panel_ci = _bars(ax, {name: per_strategy[name] for name in names}, styles, domains, level, slots)
        top, any_ci = max(top, panel_top), any_ci or panel_ci
        _panel_title(ax, family)
    axes[0].set_ylim(0, min(110.0, top * 1.06) if top > 0 else 100.0)   # room for CI caps above 100
    _title(fig, axes, title, "error bars", level, any_ci)
    _rotate_if_crowded(fig, axes)
    for ax in axes:
        n_bars = len(ax.get_legend_handles_labels()[0])
        if not n_bars:
            ax.text(0.5, 0.5, "no data to plot", transform=ax.transAxes, ha="center", va="center", color="grey")
        elif len(axes) > 1:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", borderaxespad=0)
        else:
            # below the axes: inside it would cover bars, to the right it squeezes few-domain plots
            bottom = ax.get_tightbbox(FigureCanvasAgg(fig).get_renderer()).y0      # below the tick labels
            y = ax.transAxes.inverted().transform((0.0, bottom))[1]
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, y - 0.02), ncol=min(n_bars, 4),
                      fontsize="small", frameon=False)
    return fig


def plot_per_domain_bars(per_strategy: Mapping[str, Mapping[str, Sequence[float]]], path: str | os.PathLike, *,
                         level: float = 0.95, title: str = "Final accuracy per domain",
                         families: Mapping[str, str] | None = None) -> Path:
    """Grouped bars: one group per domain, one bar per strategy, CI error bars (none for one seed). Past
    FACET_OVER strategies and with `families`, one panel per family, stacked, on a shared accuracy axis."""
    return _save_png(_build_per_domain_bars(per_strategy, level=level, title=title, families=families), path)


def _build_gate_vs_heterogeneity(per_strategy: Mapping[str, Sequence[tuple[float, float]]], *, title: str,
                                 families: Mapping[str, str] | None) -> Figure:
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot()
    styles = _styles(list(per_strategy), families)
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
    _legend_or_empty(ax)
    return fig


def plot_gate_vs_heterogeneity(per_strategy: Mapping[str, Sequence[tuple[float, float]]], path: str | os.PathLike, *,
                               title: str = "What the gate learned", families: Mapping[str, str] | None = None) -> Path:
    """One point per client and seed: its label entropy (bits; 1 = two balanced classes) against
    the mean weight its gate gives the global expert on its own test split. Few strategies have a gate,
    so this plot is never split; `families` only keeps each strategy's style that of the other plots."""
    return _save_png(_build_gate_vs_heterogeneity(per_strategy, title=title, families=families), path)
