"""What every comparison plot shares: one look per series, the panels a crowded plot splits into, and files.

`plots` (curves and bars) and `tradeoff` (the grid's scatter) draw different things, but a strategy must look
the same in all of them and be grouped the same way, so both take their styles, panels, titles, legends and
PNG writing from here. Figures are built on `matplotlib.figure.Figure` with the Agg canvas, never pyplot, so
plotting needs no display and does not switch the global backend of whoever imported us.

A comparison may hold 20+ strategies, so each series gets its own colour and marker, kept across all plots of
the comparison, and past FACET_OVER series the plots split into stacked panels: one per strategy with several
grid variants (`STRATEGY[key=v,...]`, labelled by their grid values alone), else one per family. A panel is
never shorter than its legend: the figure grows instead. Every PNG is written atomically.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

_DPI = 150


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


def assign_styles(names: Sequence[str], families: Mapping[str, str] | None) -> dict[str, Style]:
    """Styles by position in the comparison's roster, so a strategy looks the same in every plot. The roster is
    `families`' key order when given (the caller maps every strategy of the comparison, so one missing from a
    plot, e.g. from the gate plot, shifts no one's colour), else the order the series are passed in."""
    roster = {n: k for k, n in enumerate(dict.fromkeys([*(families or {}), *names]))}
    return {n: _style(roster[n]) for n in names}


# ------------------------------------------------------------ panels ----
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


def count_by_strategy(names: Iterable[str]) -> dict[str, int]:
    """Variants per strategy, in order of first appearance."""
    out: dict[str, int] = {}
    for n in names:
        out[strategy_of(n)] = out.get(strategy_of(n), 0) + 1
    return out


def grid_groups(names: Sequence[str], families: Mapping[str, str] | None) -> list[Panel]:
    """One group per strategy with several variants, titled by it; the single-variant strategies of a family
    together (a lone line is not worth a panel, and beside its family it is still compared), titled by the
    family. Order of first appearance, "other" (family unknown) last."""
    count = count_by_strategy(names)
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


def facet_panels(names: Sequence[str], families: Mapping[str, str] | None) -> list[Panel]:
    """The figure's panels. Up to FACET_OVER series stay in one untitled panel: splitting a few lines only makes
    them harder to compare. Past it, a grid sweep (some name holds `[`) gets one panel per strategy, since its
    question is which setting of each method is best; otherwise, with `families` known, one panel per family in
    order of first appearance, "other" last."""
    if len(names) <= FACET_OVER:
        return [Panel(None, list(names))]
    if any("[" in n for n in names):
        return grid_groups(names, families)
    if not families:
        return [Panel(None, list(names))]
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(families.get(n, OTHER), []).append(n)
    if OTHER in groups:
        groups[OTHER] = groups.pop(OTHER)
    return [Panel(family, members) for family, members in groups.items()]


# ------------------------------------------------------------ figures, titles, legends ----
def save_png(fig: Figure, path: str | os.PathLike) -> Path:
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


def ci_title(fig: Figure, axes: Sequence[Any], title: str, what: str, level: float, any_ci: bool) -> None:
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


def facet_figure(n_panels: int, width: float, panel_height: float, **share: bool) -> tuple[Figure, list[Any]]:
    """One figure, its panels stacked (rows line up on the shared axes). Several panels use the
    constrained layout, which keeps each panel's outside legend and the title above them clear of each other."""
    fig = Figure(figsize=(width, 4.5 if n_panels == 1 else 0.8 + panel_height * n_panels),
                 layout="constrained" if n_panels > 1 else None)
    return fig, list(fig.subplots(n_panels, 1, squeeze=False, **share)[:, 0])


def panel_title(ax: Any, panel: Panel, families: Mapping[str, str] | None) -> None:
    """The family or strategy on the left; a strategy's panel names its family on the right."""
    if panel.title is not None:
        ax.set_title(panel.title, fontsize="medium", loc="left", fontweight="bold")
    if panel.strategy is not None and families and panel.names[0] in families:
        ax.set_title(families[panel.names[0]], fontsize="small", loc="right", color="grey")


def fit_legends(fig: Figure, axes: Sequence[Any]) -> None:
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


def legend_or_empty(ax: Any, inside: bool = True, not_drawn: Sequence[Line2D] = (),
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


# ------------------------------------------------------------ axes ----
def log_bytes_axes(axes: Sequence[Any], xs: Sequence[float]) -> None:
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


def below(fig: Figure, ax: Any) -> float:
    """The y, in axes coordinates, just below everything the axes draws (tick labels, x label)."""
    bottom = ax.get_tightbbox(FigureCanvasAgg(fig).get_renderer()).y0
    return ax.transAxes.inverted().transform((0.0, bottom))[1] - 0.02

