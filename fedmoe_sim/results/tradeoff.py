"""The grid trade-off plot: what each grid setting buys for its server-bound traffic.

Unlike the curves and bars of `plots`, this is one scatter of a sweep's variants, final accuracy against
bytes, and it needs machinery of its own: markers at one byte count set side by side (`_dodge`), strategies
at 0 bytes shown as a level rather than dropped (`_zero_byte_lines`), the best variant named, and one
legend grouped by strategy. Styles and grouping come from `plotkit`, so a variant looks as in the other plots.
"""

from __future__ import annotations

import math
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.transforms import offset_copy

from .plotkit import Style, assign_styles, below, count_by_strategy, grid_groups, log_bytes_axes, save_png, strategy_of
from .stats import mean_ci
from .tables import human_bytes

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
    """(header, [(handle, label)]) per strategy, grouped as the panels of the other plots (grid_groups)."""
    handles = {line.get_gid(): line for line in ax.get_lines() if line.get_gid()}
    several = len({p.n for p in points.values()}) > 1
    groups = []
    for panel in grid_groups(names, families):
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
    styles = assign_styles(names, families)
    kept = {n: [(x, y) for x, y in points[n] if x > 0] for n in names}
    scale, unit = human_bytes(max((x for pts in kept.values() for x, _ in pts), default=1.0))
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.add_subplot()
    drawn = _draw_points(fig, ax, kept, scale, styles, level)
    free = _zero_byte_lines(ax, points, kept, styles, level)
    log_bytes_axes([ax], [p.x for p in drawn.values()])
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
            f"{s} ({k} variant{'s' if k != 1 else ''})" for s, k in count_by_strategy(zero).items()), 90)
    ax.set_title(title + note, fontsize="medium")
    groups = _legend_groups(ax, names, families, drawn, free, styles)
    if groups:
        _grouped_legend(ax, below(fig, ax), groups)
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
    return save_png(_build_grid_tradeoff(points, level=level, title=title, x_label=x_label, y_label=y_label,
                                         families=families), path)
