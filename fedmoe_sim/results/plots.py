"""Comparison plots: accuracy vs round, accuracy vs bytes, per-domain bars, and a grid's trade-off.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas, never
pyplot, so plotting needs no display and does not switch the global backend
of whoever imported us. Accuracies come in as fractions and are drawn in
percent; bands and error bars are Student-t 95% intervals over seeds (none
where only one seed has a value). Every PNG is written atomically.

A comparison may hold 20+ strategies, so each series gets its own colour and
marker, kept across all plots of the comparison, and past 8 series the plots
split into stacked panels: one per strategy with several grid variants
(`STRATEGY[key=v,...]`, labelled by their grid values alone), else one per
family. A panel is never shorter than its legend: the figure grows instead.
Each `plot_*` saves what its `_build_*` returns, so tests read the Figure
without writing files.
"""

from __future__ import annotations

import math
import os
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from matplotlib.transforms import offset_copy

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
FACET_OVER = 8                                  # more series than this: panels per grid strategy, else per family
OTHER = "other"                                 # the panel of series whose family the mapping does not give
SINGLES = " (one variant each)"                 # in a grid sweep: the panel of a family's single-variant strategies
_LEGEND_PAD_IN = 0.15                           # inches a panel keeps above its legend's height
_MIN_WIDTH_IN = 4.5                             # stacked panels keep at least this width beside their legends


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


@dataclass(frozen=True)
class Panel:
    """One panel's series. `strategy` is set for a grid strategy's own panel: its legend drops the name."""
    title: str | None
    names: list[str]
    strategy: str | None = None

    def label(self, name: str) -> str:
        """`fedmoe-da[top_p=1,tau=0.3]` -> `top_p=1,tau=0.3` in fedmoe-da's panel; other names unchanged."""
        if self.strategy and name.startswith(self.strategy + "[") and name.endswith("]"):
            return name[len(self.strategy) + 1:-1]
        return name


def strategy_of(name: str) -> str:
    """The method a series belongs to: `fedmoe-da[top_p=1,tau=0.3]` -> `fedmoe-da` (compare's variant names)."""
    return name.split("[", 1)[0]


def _grid_groups(names: Sequence[str], families: Mapping[str, str] | None) -> list[Panel]:
    """One group per strategy with several variants, titled by it; the single-variant strategies of a family
    together (a lone line is not worth a panel, and beside its family it is still compared), titled by the
    family. Order of first appearance, "other" (family unknown) last."""
    count = _count_by_strategy(names)
    groups: dict[tuple[str, str], list[str]] = {}
    for n in names:
        s = strategy_of(n)
        key = ("strategy", s) if count[s] > 1 else ("family", (families or {}).get(n, OTHER))
        groups.setdefault(key, []).append(n)
    if ("family", OTHER) in groups:
        groups[("family", OTHER)] = groups.pop(("family", OTHER))
    single = SINGLES if len(groups) > 1 else ""
    return [Panel(key, members, key) if kind == "strategy" else Panel(key + single, members)
            for (kind, key), members in groups.items()]


def _panels(names: Sequence[str], families: Mapping[str, str] | None) -> list[Panel]:
    """The figure's panels. Up to FACET_OVER series stay in one untitled panel: splitting a few lines only makes
    them harder to compare. Past it, a grid sweep (some name holds `[`) gets one panel per strategy, since its
    question is which setting of each method is best; otherwise, with `families` known, one panel per family in
    order of first appearance, "other" last."""
    if len(names) <= FACET_OVER:
        return [Panel(None, list(names))]
    if any("[" in n for n in names):
        return _grid_groups(names, families)
    if not families:
        return [Panel(None, list(names))]
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(families.get(n, OTHER), []).append(n)
    if OTHER in groups:
        groups[OTHER] = groups.pop(OTHER)
    return [Panel(family, members) for family, members in groups.items()]


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
    """One figure, its panels stacked (rows line up on the shared axes). Several panels use the
    constrained layout, which keeps each panel's outside legend and the title above them clear of each other."""
    fig = Figure(figsize=(width, 4.5 if n_panels == 1 else 0.8 + panel_height * n_panels),
                 layout="constrained" if n_panels > 1 else None)
    return fig, list(fig.subplots(n_panels, 1, squeeze=False, **share)[:, 0])


def _panel_title(ax: Any, panel: Panel, families: Mapping[str, str] | None) -> None:
    """The family or strategy on the left; a strategy's panel names its family on the right."""
    if panel.title is not None:
        ax.set_title(panel.title, fontsize="medium", loc="left", fontweight="bold")
    if panel.strategy is not None and families and panel.names[0] in families:
        ax.set_title(families[panel.names[0]], fontsize="small", loc="right", color="grey")


def _fit_legends(fig: Figure, axes: Sequence[Any]) -> None:
    """Make every panel at least as tall as its legend (plus _LEGEND_PAD_IN) and as tall as it is today, growing
    the figure: a legend taller than its panel would run into the next one, and the constrained layout gives up
    ("axes sizes collapsed to zero") when it cannot place them. Legends are measured by the renderer; panel
    heights are set through the grid's height ratios, so each panel grows by what its own legend needs."""
    legends = [ax.get_legend() for ax in axes]
    if not any(legends):
        return
    renderer = FigureCanvasAgg(fig).get_renderer()
    for lg in filter(None, legends):
        lg.set_in_layout(False)               # today's panel heights, as if every legend fitted
    fig.draw_without_rendering()
    width, height = fig.get_size_inches()
    heights = [ax.get_position().height * height for ax in axes]
    need = [h if lg is None else max(h, lg.get_window_extent(renderer).height / fig.dpi + _LEGEND_PAD_IN)
            for h, lg in zip(heights, legends, strict=True)]
    for lg in filter(None, legends):
        lg.set_in_layout(True)                # back in, so the layout keeps room for it on the right
    if fig.get_layout_engine() is None:       # one panel at fixed fractions of the figure
        fig.set_size_inches(width, height * max(1.0, need[0] / heights[0]))
        return
    axes[0].get_subplotspec().get_gridspec().set_height_ratios(need)
    fig.set_size_inches(width, height - sum(heights) + sum(need))
    for _ in range(4):                        # the layout's gaps scale a little with the figure: correct them
        fig.draw_without_rendering()
        width, height = fig.get_size_inches()
        short, k = max((n - ax.get_position().height * height, k) for k, (n, ax) in enumerate(zip(need, axes)))
        narrow = _MIN_WIDTH_IN - min(ax.get_position().width * width for ax in axes)   # long legend labels
        if short <= 1e-3 and narrow <= 1e-3:
            break
        # panel k gets need[k] / sum(need) of the height the panels share: grow that by what k lacks
        fig.set_size_inches(width + max(0.0, narrow), height + max(0.0, short) * sum(need) / need[k])


def _legend_or_empty(ax: Any, inside: bool = True, not_drawn: Sequence[Line2D] = (),
                     empty: str = "no data to plot") -> None:
    """Inside while it fits (and `inside`: family panels keep their legends in one column on the right);
    outside on the right when many strategies would cover the curves. With nothing to draw, say so (`empty`)
    on the plot rather than leave a blank frame. `not_drawn`: entries for series with no place on the axes."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        ax.text(0.5, 0.5, empty, transform=ax.transAxes, ha="center", va="center", color="grey")
    handles, labels = handles + list(not_drawn), labels + [h.get_label() for h in not_drawn]
    if handles and len(handles) <= 4 and inside:
        ax.legend(handles, labels, loc="best", fontsize="small", framealpha=0.9)
    elif handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", borderaxespad=0)


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
    """Line figure, one panel per grid strategy or family past FACET_OVER series (see _panels), all sharing both
    axes. A series without points is left out, or with `empty_note` listed in its panel's legend with that note,
    in its style."""
    styles = _styles(list(per_strategy), families)
    panels = _panels(list(per_strategy), families)
    fig, axes = _facet_figure(len(panels), 7.0, 2.8, sharex=True, sharey=True)
    any_ci = False
    for ax, panel in zip(axes, panels, strict=True):
        drawn = {n: [s for s in per_strategy[n] if len(s)] for n in panel.names}
        drawn = {n: seeds for n, seeds in drawn.items() if seeds}
        alpha = 0.2 if len(drawn) <= 4 else 0.1
        for k, (name, seeds) in enumerate(drawn.items()):
            any_ci |= _curve(ax, name, panel.label(name), seeds, styles[name], k, by_index, level, scale, alpha)
        ax.set_ylabel("mean accuracy (%)")
        ax.grid(True, alpha=0.3)
        _panel_title(ax, panel, families)
        not_drawn = [] if empty_note is None else [
            Line2D([], [], color=styles[n].color, linestyle=styles[n].linestyle, marker=styles[n].marker,
                   markersize=4.5, label=f"{panel.label(n)}: {empty_note}") for n in panel.names if n not in drawn]
        if panel.strategy is not None and not drawn and len(not_drawn) > 1:
            # a grid strategy none of whose variants has a point (e.g. Local on the bytes plot): say it once
            _legend_or_empty(ax, empty=f"{panel.strategy}: all {len(not_drawn)} variants {empty_note}")
            continue
        _legend_or_empty(ax, inside=len(panels) == 1, not_drawn=not_drawn)
    return fig, axes, any_ci


def _build_accuracy_vs_round(per_strategy: Mapping[str, Sequence[Series]], *, level: float, title: str,
                             families: Mapping[str, str] | None) -> Figure:
    fig, axes, any_ci = _curves(per_strategy, by_index=False, level=level, families=families)
    axes[-1].set_xlabel("round")
    axes[-1].xaxis.get_major_locator().set_params(integer=True)
    _title(fig, axes, title, "band", level, any_ci)
    _fit_legends(fig, axes)
    return fig


def plot_accuracy_vs_round(per_strategy: Mapping[str, Sequence[Series]], path: str | os.PathLike, *,
                           level: float = 0.95, title: str = "Mean accuracy vs round",
                           families: Mapping[str, str] | None = None) -> Path:
    """One line per strategy (mean over seeds at each round) with its CI band. Past FACET_OVER series, one panel
    per grid strategy (names `STRATEGY[...]`) or, with `families` (series name -> family), per family; `families`'
    key order also fixes each strategy's style."""
    return _save_png(_build_accuracy_vs_round(per_strategy, level=level, title=title, families=families), path)


def _build_accuracy_vs_bytes(per_strategy: Mapping[str, Sequence[Series]], *, level: float, title: str,
                             families: Mapping[str, str] | None) -> Figure:
    positive = {name: [[(x, y) for x, y in s if x > 0] for s in seeds] for name, seeds in per_strategy.items()}
    peak = max((x for seeds in positive.values() for s in seeds for x, _ in s), default=1.0)
    scale, unit = human_bytes(peak)
    # a strategy that never communicates has no place on a log axis: say so in the legend instead of hiding it
    fig, axes, any_ci = _curves(positive, by_index=True, level=level, families=families, scale=scale,
                                empty_note="not shown (0 bytes communicated)")
    _log_bytes_axes(axes, [x / scale for seeds in positive.values() for s in seeds for x, _ in s])
    axes[-1].set_xlabel(f"cumulative bytes communicated, up + down + P2P ({unit}, log scale)")
    _title(fig, axes, title, "band", level, any_ci)
    _fit_legends(fig, axes)
    return fig


def _log_bytes_axes(axes: Sequence[Any], xs: Sequence[float]) -> None:
    """Log x axes (shared: limits set on the first) for byte counts `xs`, already in display units."""
    # 20, 50, 100 reads better than 10^2; past a few decades, labels at 2 and 5 would run into each other
    subs = (1.0, 2.0, 5.0) if not xs or max(xs) / min(xs) <= 10 ** 2.5 else (1.0,)
    for ax in axes:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    if xs and max(xs) < 4 * min(xs):
        # near-equal costs (e.g. one-shot methods differing by a few KiB of extras): a tight
        # axis would blow a 1% difference up to the plot's width; show at least a factor of 10
        mid = (min(xs) * max(xs)) ** 0.5
        axes[0].set_xlim(min(min(xs), mid / 10 ** 0.5) / 1.1, max(max(xs), mid * 10 ** 0.5) * 1.1)


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
    styles = _styles(list(per_strategy), families)
    panels = _panels(list(per_strategy), families)
    slots = max((len(p.names) for p in panels), default=1)
    width = min(16.0, max(6.0, 1.0 + len(domains) * (0.5 + 0.25 * slots)))
    fig, axes = _facet_figure(len(panels), width, 2.6, sharey=True)
    top, any_ci = 0.0, False
    for ax, panel in zip(axes, panels, strict=True):
        panel_top, panel_ci = _bars(ax, {name: per_strategy[name] for name in panel.names}, styles, domains, level,
                                    slots, panel)
        top, any_ci = max(top, panel_top), any_ci or panel_ci
        _panel_title(ax, panel, families)
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
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, _below(fig, ax)), ncol=min(n_bars, 4),
                      fontsize="small", frameon=False)
    if len(axes) > 1:
        _fit_legends(fig, axes)
    return fig


def _below(fig: Figure, ax: Any) -> float:
    """The y, in axes coordinates, just below everything the axes draws (tick labels, x label)."""
    bottom = ax.get_tightbbox(FigureCanvasAgg(fig).get_renderer()).y0
    return ax.transAxes.inverted().transform((0.0, bottom))[1] - 0.02


def plot_per_domain_bars(per_strategy: Mapping[str, Mapping[str, Sequence[float]]], path: str | os.PathLike, *,
                         level: float = 0.95, title: str = "Final accuracy per domain",
                         families: Mapping[str, str] | None = None) -> Path:
    """Grouped bars: one group per domain, one bar per strategy, CI error bars (none for one seed). Past
    FACET_OVER strategies, stacked panels on a shared accuracy axis, grouped as in plot_accuracy_vs_round."""
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
    _fit_legends(fig, [ax])
    return fig


def plot_gate_vs_heterogeneity(per_strategy: Mapping[str, Sequence[tuple[float, float]]], path: str | os.PathLike, *,
                               title: str = "What the gate learned", families: Mapping[str, str] | None = None) -> Path:
    """One point per client and seed: its label entropy (bits; 1 = two balanced classes) against
    the mean weight its gate gives the global expert on its own test split. Few strategies have a gate,
    so this plot is never split; `families` only keeps each strategy's style that of the other plots."""
    return _save_png(_build_gate_vs_heterogeneity(per_strategy, title=title, families=families), path)


# ------------------------------------------------------------ grid trade-off ----
_LEGEND_COLS = 4        # legend columns under the trade-off plot; further groups stack under the shortest
_DODGE_PT = 7.0         # points between trade-off markers at one byte count (a grid over lr leaves bytes equal)


def _grouped_legend(ax: Any, y: float, groups: Sequence[tuple[str, Sequence[tuple[Any, str]]]]) -> Any:
    """One legend below the axes, each group a block in one column: a bold header, then its (handle, label)s.
    Groups go left to right, then each under the shortest column; a legend fills column by column, so padding
    every column to one length keeps each block whole."""
    blank = Line2D([], [], linestyle="none", marker="")
    columns: list[list[tuple[Any, str, bool]]] = [[] for _ in range(max(1, min(len(groups), _LEGEND_COLS)))]
    for title, entries in groups:
        min(columns, key=len).extend([(blank, title, True), *[(h, lb, False) for h, lb in entries]])
    length = max(map(len, columns))
    cells = [cell for col in columns for cell in col + [(blank, "", False)] * (length - len(col))]
    legend = ax.legend([h for h, _, _ in cells], [lb for _, lb, _ in cells], ncol=len(columns), loc="upper center",
                       bbox_to_anchor=(0.5, y), fontsize="small", frameon=False, handletextpad=0.4,
                       columnspacing=1.5)
    for text, (_, _, bold) in zip(legend.get_texts(), cells, strict=True):
        if bold:
            text.set_fontweight("bold")
    return legend


@dataclass(frozen=True)
class _Point:
    """One variant on the trade-off plot: means over its seeds (x in display units, y in %)."""
    x: float
    y: float
    hw: float          # CI half-width in y; nan for one seed
    n: int             # seeds
    dodge: float = 0.0  # sideways drawing offset (points)


def _draw_points(fig: Figure, ax: Any, kept: Mapping[str, Sequence[tuple[float, float]]], scale: float,
                 styles: Mapping[str, Style], level: float) -> dict[str, _Point]:
    """One marker per variant at its means (gid = name), with a y error bar where it has several seeds."""
    means = {}
    for n, pts in kept.items():
        if pts:
            y, hw = mean_ci([b * 100.0 for _, b in pts], level)
            means[n] = (sum(a for a, _ in pts) / len(pts) / scale, y, hw, len(pts))
    dodge = _dodge({n: m[0] for n, m in means.items()})
    out = {}
    for n, (x, y, hw, k) in means.items():
        st, moved = styles[n], offset_copy(ax.transData, fig=fig, x=dodge[n], units="points")
        if not math.isnan(hw):
            bars = ax.errorbar([x], [y], yerr=[hw], fmt="none", ecolor=st.color, elinewidth=1, capsize=3, alpha=0.8)
            for artist in bars.get_children():
                artist.set_transform(moved)
        line, = ax.plot([x], [y], linestyle="none", marker=st.marker, color=st.color, markersize=6.5,
                        markeredgecolor="white", markeredgewidth=0.5, gid=n)
        line.set_transform(moved)           # after plot(), so the data limits hold the true x
        out[n] = _Point(x, y, hw, k, dodge[n])
    for x in {p.x for p in out.values() if p.dodge}:
        ax.axvline(x, color="grey", linewidth=0.8, alpha=0.5, zorder=0)   # where a spread-out cluster truly is
    return out


def _room_for_dodge(fig: Figure, ax: Any, points: Mapping[str, _Point]) -> None:
    """Widen the log x limits by the largest sideways offset (plus a marker), so no moved marker is cut."""
    reach = max((abs(p.dodge) for p in points.values()), default=0.0) + 8.0
    lo, hi = ax.get_xlim()
    width_in = fig.get_figwidth() * ax.get_position().width
    frac = min(0.3, reach / 72.0 / width_in)          # of the axes width, on each side
    decades = math.log10(hi / lo)
    pad = decades * frac / (1 - 2 * frac)
    ax.set_xlim(lo / 10 ** pad, hi * 10 ** pad)


def _label_best(ax: Any, points: Mapping[str, _Point]) -> None:
    """Name each strategy's best variant (highest mean y; black marker edge) above everything drawn at its byte
    count, so the name covers none of the variants set side by side there."""
    lo, hi = (math.log(v) for v in ax.get_xlim())
    handles = {line.get_gid(): line for line in ax.get_lines() if line.get_gid()}
    top = {}
    for p in points.values():
        top[p.x] = max(top.get(p.x, -math.inf), p.y + (0.0 if math.isnan(p.hw) else p.hw))
    for s in dict.fromkeys(map(strategy_of, points)):
        best = max((n for n in points if strategy_of(n) == s), key=lambda n: points[n].y)
        p = points[best]
        handles[best].set_markeredgecolor("black")
        where = (math.log(p.x) - lo) / (hi - lo)
        ha = "left" if where < 0.3 else "right" if where > 0.7 else "center"
        ax.annotate(best, (p.x, top[p.x]), xytext=(p.dodge + {"left": -4, "right": 4, "center": 0}[ha], 4),
                    textcoords="offset points", fontsize="x-small", ha=ha, va="bottom", color="0.15")


def _legend_groups(ax: Any, names: Sequence[str], families: Mapping[str, str] | None,
                   points: Mapping[str, _Point], free: Mapping[str, tuple[Any, str]],
                   styles: Mapping[str, Style]) -> list[tuple[str, list[tuple[Any, str]]]]:
    """(header, [(handle, label)]) per strategy, grouped as the panels of the other plots (_grid_groups)."""
    handles = {line.get_gid(): line for line in ax.get_lines() if line.get_gid()}
    several = len({p.n for p in points.values()}) > 1
    groups = []
    for panel in _grid_groups(names, families):
        entries = []
        for n in panel.names:
            label = panel.label(n) + (f" (n={points[n].n})" if n in points and several else "")
            if n in points:
                entries.append((handles[n], label))
            elif n in free:
                entries.append(free[n])
            elif strategy_of(n) not in map(strategy_of, free) and n not in points:
                entries.append((Line2D([], [], linestyle="none", marker=styles[n].marker, color=styles[n].color),
                                f"{label}: not shown (0 bytes)"))
        if entries:
            groups.append((panel.title or "", entries))
    return groups


def _build_grid_tradeoff(points: Mapping[str, Sequence[tuple[float, float]]], *, level: float, title: str,
                         x_label: str, y_label: str, families: Mapping[str, str] | None) -> Figure:
    names = [n for n, pts in points.items() if pts]
    styles = _styles(names, families)
    kept = {n: [(x, y) for x, y in points[n] if x > 0] for n in names}
    scale, unit = human_bytes(max((x for pts in kept.values() for x, _ in pts), default=1.0))
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.add_subplot()
    drawn = _draw_points(fig, ax, kept, scale, styles, level)
    free = _zero_byte_lines(ax, points, kept, styles, level)
    _log_bytes_axes([ax], [p.x for p in drawn.values()])
    moved = any(p.dodge for p in drawn.values())
    ax.set_xlabel(f"{x_label} ({unit}, log scale{'; equal values set side by side' if moved else ''})")
    ax.set_ylabel(y_label)
    ax.grid(True, alpha=0.3)
    ax.margins(y=0.12)
    if drawn:
        _room_for_dodge(fig, ax, drawn)
        _label_best(ax, drawn)
    seeds = sorted({p.n for p in drawn.values()})
    note = ("\n(one seed: no CI)" if seeds == [1] else
            f"\n(error bars: {level * 100:g}% CI over {'/'.join(map(str, seeds))} seeds)") if drawn else ""
    zero = [n for n in names if not kept[n]]
    if zero:
        note += "\n" + textwrap.fill(f"0 bytes, off the log axis{' (best dotted)' if free else ''}: " + ", ".join(
            f"{s} ({k} variant{'s' if k != 1 else ''})" for s, k in _count_by_strategy(zero).items()), 90)
    ax.set_title(title + note, fontsize="medium")
    groups = _legend_groups(ax, names, families, drawn, free, styles)
    if groups:
        _grouped_legend(ax, _below(fig, ax), groups)
    else:
        ax.text(0.5, 0.5, "no data to plot", transform=ax.transAxes, ha="center", va="center", color="grey")
    return fig


def _dodge(xs: Mapping[str, float]) -> dict[str, float]:
    """Sideways offsets in points, so markers and error bars at one byte count (within 2%: a grid over lr or
    epochs does not change what is uploaded) sit side by side, centred on their true x, in the order given.
    The data stay at the true x; only the drawing moves."""
    out = dict.fromkeys(xs, 0.0)
    ordered = sorted(xs, key=xs.get)
    clusters: list[list[str]] = []
    for n in ordered:
        if clusters and xs[n] <= xs[clusters[-1][0]] * 1.02:
            clusters[-1].append(n)
        else:
            clusters.append([n])
    for members in clusters:
        members.sort(key=list(xs).index)
        for i, n in enumerate(members):
            out[n] = (i - (len(members) - 1) / 2) * _DODGE_PT
    return out


def _zero_byte_lines(ax: Any, points: Mapping[str, Sequence[tuple[float, float]]],
                     kept: Mapping[str, Sequence[tuple[float, float]]], styles: Mapping[str, Style],
                     level: float) -> dict[str, tuple[Any, str]]:
    """A strategy that sends the server nothing (Local) has no place on a log axis, yet it is the bar any costly
    setting must clear: its best variant's mean is a dotted line across the plot. Returns that variant ->
    its legend entry; strategies with only some variants at 0 bytes get none (those variants are listed)."""
    by_strategy: dict[str, list[str]] = {}
    for n, pts in points.items():
        if pts:
            by_strategy.setdefault(strategy_of(n), []).append(n)
    out = {}
    for s, members in by_strategy.items():
        if any(kept[n] for n in members):
            continue
        y = {n: mean_ci([b * 100.0 for _, b in points[n]], level)[0] for n in members}
        best = max(members, key=y.get)
        line = ax.axhline(y[best], color=styles[best].color, linestyle=":", linewidth=1.4)
        ax.annotate(f"{best}, 0 bytes", (0.01, y[best]), xycoords=ax.get_yaxis_transform(), xytext=(0, 2),
                    textcoords="offset points", fontsize="x-small", va="bottom", color="0.15")
        what = best if best == s or len(members) == 1 else best[len(s) + 1:-1]   # alone: under its family's heading
        out[best] = (line, f"{what}: best of {len(members)}, 0 bytes" if len(members) > 1 else f"{what}: 0 bytes")
    return out


def _count_by_strategy(names: Iterable[str]) -> dict[str, int]:
    """Variants per strategy, in order of first appearance."""
    out: dict[str, int] = {}
    for n in names:
        out[strategy_of(n)] = out.get(strategy_of(n), 0) + 1
    return out


def plot_grid_tradeoff(points: Mapping[str, Sequence[tuple[float, float]]], path: str | os.PathLike, *,
                       families: Mapping[str, str] | None = None,
                       x_label: str = "bytes up, server-bound",
                       y_label: str = "final accuracy (%)",
                       title: str = "Accuracy vs server-bound traffic, per grid variant",
                       level: float = 0.95) -> Path:
    """What each grid setting buys for its traffic. `points`: variant name (`STRATEGY[key=v,...]`) -> one
    (x, y) per seed, x in bytes (the run's bytes_up total) and y an accuracy fraction (drawn in percent; say
    which accuracy in `y_label`). One marker per variant at the mean over seeds, with a Student-t CI in y only
    (none for one seed), on a log x axis in binary units (appended to `x_label`); markers at one byte count
    are drawn side by side around it, a few points apart (their data stay exact). A strategy's variants are
    not joined (grid values are not an ordered axis) but share a legend column; the best of each strategy
    (highest mean y) is named beside its marker, which gets a black edge. Variants at 0 bytes cannot sit on a
    log axis: they are left out and counted in the title; a strategy with all its variants there (Local) gets
    its best variant's mean as a dotted line instead, the level any costly setting must beat. Styles are those
    of the other plots (`families` as there)."""
    return _save_png(_build_grid_tradeoff(points, level=level, title=title, x_label=x_label, y_label=y_label,
                                          families=families), path)
