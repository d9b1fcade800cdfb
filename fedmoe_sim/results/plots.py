"""Comparison plots: accuracy vs round, accuracy vs bytes, per-domain bars.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas, never
pyplot, so plotting needs no display and does not switch the global backend
of whoever imported us. Accuracies come in as fractions and are drawn in
percent; bands and error bars are Student-t 95% intervals over seeds (none
where only one seed has a value). Every PNG is written atomically.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
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


def _color(i: int) -> str:
    return f"C{i % 10}"


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


def _title(ax: Any, title: str, what: str, level: float, any_ci: bool) -> None:
    """Say what the shading means, or that there is none (one seed)."""
    if not (ax.get_lines() or ax.patches):
        note = ""
    else:
        note = f"\n({what}: {level * 100:g}% CI over seeds)" if any_ci else "\n(one seed: no CI)"
    ax.set_title(title + note, fontsize="medium")


def _legend_or_empty(ax: Any, n_entries: int) -> None:
    """Inside while it fits; outside on the right when many strategies would cover the curves.
    With nothing to draw, say so on the plot rather than leave a blank frame."""
    if n_entries == 0:
        ax.text(0.5, 0.5, "no data to plot", transform=ax.transAxes, ha="center", va="center", color="grey")
    elif n_entries <= 4:
        ax.legend(loc="best", fontsize="small", framealpha=0.9)
    else:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", borderaxespad=0)


def _curves(per_strategy: Mapping[str, Sequence[Series]], by_index: bool, level: float,
            scale: float = 1.0) -> tuple[Figure, Any, bool]:
    fig = Figure(figsize=(7.0, 4.5))
    ax = fig.add_subplot()
    any_ci = False
    for i, (name, seeds) in enumerate(per_strategy.items()):
        seeds = [s for s in seeds if len(s)]
        if not seeds:
            continue
        xs, means, hws = _band(seeds, by_index, level)
        xs = [x / scale for x in xs]
        ax.plot(xs, means, color=_color(i), linestyle=("-", "--", ":")[(i // 10) % 3], marker="o" if len(xs) < 20 else None, markersize=3,
                label=_n_label(name, seeds))
        has_ci = [not math.isnan(h) for h in hws]
        if any(has_ci):
            any_ci = True
            lo = [m - (h if ok else 0.0) for m, h, ok in zip(means, hws, has_ci)]
            hi = [m + (h if ok else 0.0) for m, h, ok in zip(means, hws, has_ci)]
            ax.fill_between(xs, lo, hi, where=has_ci, color=_color(i), alpha=0.2 if len(per_strategy) <= 4 else 0.1,
                            linewidth=0)
    ax.set_ylabel("mean accuracy (%)")
    ax.grid(True, alpha=0.3)
    _legend_or_empty(ax, len(ax.get_lines()))
    return fig, ax, any_ci


def plot_accuracy_vs_round(per_strategy: Mapping[str, Sequence[Series]], path: str | os.PathLike, *,
                           level: float = 0.95, title: str = "Mean accuracy vs round") -> Path:
    """One line per strategy (mean over seeds at each round) with its CI band."""
    fig, ax, any_ci = _curves(per_strategy, by_index=False, level=level)
    ax.set_xlabel("round")
    ax.xaxis.get_major_locator().set_params(integer=True)
    _title(ax, title, "band", level, any_ci)
    return _save_png(fig, path)


def plot_accuracy_vs_bytes(per_strategy: Mapping[str, Sequence[Series]], path: str | os.PathLike, *,
                           level: float = 0.95, title: str = "Mean accuracy vs communication") -> Path:
    """Accuracy against cumulative bytes on a log axis, so strategies that differ in cost by
    orders of magnitude fit one plot. Seeds are aligned by evaluation index (their byte counts
    may differ slightly), x is the mean over seeds; points at 0 bytes cannot sit on a log axis
    and are dropped."""
    positive = {name: [[(x, y) for x, y in s if x > 0] for s in seeds] for name, seeds in per_strategy.items()}
    peak = max((x for seeds in positive.values() for s in seeds for x, _ in s), default=1.0)
    scale, unit = human_bytes(peak)
    fig, ax, any_ci = _curves(positive, by_index=True, level=level, scale=scale)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))   # 20, 50, 100 reads better than 10^2
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f"cumulative bytes communicated, up + down + P2P ({unit}, log scale)")
    xs = [x / scale for seeds in positive.values() for s in seeds for x, _ in s]
    if xs and max(xs) < 4 * min(xs):
        # near-equal costs (e.g. one-shot methods differing by a few KiB of extras): a tight
        # axis would blow a 1% difference up to the plot's width; show at least a factor of 10
        mid = (min(xs) * max(xs)) ** 0.5
        ax.set_xlim(min(min(xs), mid / 10 ** 0.5) / 1.1, max(max(xs), mid * 10 ** 0.5) * 1.1)
    silent = [name for name, seeds in positive.items() if not any(seeds)]
    if silent:  # a strategy that never communicates has no place on a log axis: say so instead of hiding it
        ax.text(0.99, 0.02, "not shown (0 bytes communicated): " + ", ".join(silent), transform=ax.transAxes,
                ha="right", va="bottom", fontsize=8, color="0.3")
    _title(ax, title, "band", level, any_ci)
    return _save_png(fig, path)


def _rotate_if_crowded(fig: Figure, ax: Any) -> None:
    """Slant the domain names only if, drawn flat, two of them would touch."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels()]
    if any(a.x1 + 4 > b.x0 for a, b in zip(boxes, boxes[1:])):
        for t in ax.get_xticklabels():
            t.set_rotation(30)
            t.set_horizontalalignment("right")


def plot_per_domain_bars(per_strategy: Mapping[str, Mapping[str, Sequence[float]]], path: str | os.PathLike, *,
                         level: float = 0.95, title: str = "Final accuracy per domain") -> Path:
    """Grouped bars: one group per domain, one bar per strategy, CI error bars (none for one seed)."""
    domains = sorted({d for per_domain in per_strategy.values() for d in per_domain})
    n = max(len(per_strategy), 1)
    width = 0.8 / n
    fig = Figure(figsize=(min(16.0, max(6.0, 1.0 + len(domains) * (0.5 + 0.25 * n))), 4.5))
    ax = fig.add_subplot()
    top, any_ci = 0.0, False
    for i, (name, per_domain) in enumerate(per_strategy.items()):
        xs, means, errs, n_max = [], [], [], 0
        for j, d in enumerate(domains):
            values = [v for v in per_domain.get(d, []) if v is not None and not math.isnan(v)]
            if not values:
                continue
            mean, hw = mean_ci([v * 100.0 for v in values], level)
            xs.append(j - 0.4 + width * (i + 0.5))
            means.append(mean)
            errs.append(0.0 if math.isnan(hw) else hw)
            any_ci = any_ci or not math.isnan(hw)
            n_max = max(n_max, len(values))
            top = max(top, mean + errs[-1])
        ax.bar(xs, means, width * 0.95, yerr=errs if any(errs) else None, capsize=3, color=_color(i),
               label=f"{name} (n={n_max} seed{'s' if n_max != 1 else ''})", error_kw={"elinewidth": 1})
    ax.set_xticks(range(len(domains)))
    ax.set_xticklabels(domains)
    _rotate_if_crowded(fig, ax)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, min(110.0, top * 1.06) if top > 0 else 100.0)   # room for CI caps above 100
    ax.grid(True, axis="y", alpha=0.3)
    _title(ax, title, "error bars", level, any_ci)
    if not domains:
        ax.text(0.5, 0.5, "no data to plot", transform=ax.transAxes, ha="center", va="center", color="grey")
        return _save_png(fig, path)
    # below the axes: inside it would cover bars, to the right it squeezes few-domain plots
    bottom = ax.get_tightbbox(FigureCanvasAgg(fig).get_renderer()).y0      # below the tick labels
    y = ax.transAxes.inverted().transform((0.0, bottom))[1]
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, y - 0.02), ncol=min(n, 4), fontsize="small", frameon=False)
    return _save_png(fig, path)


def plot_gate_vs_heterogeneity(per_strategy: Mapping[str, Sequence[tuple[float, float]]], path: str | os.PathLike, *,
                               title: str = "What the gate learned") -> Path:
    """One point per client and seed: its label entropy (bits; 1 = two balanced classes) against
    the mean weight its gate gives the global expert on its own test split."""
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot()
    for i, (name, points) in enumerate(per_strategy.items()):
        if points:
            xs, ys = zip(*points, strict=True)
            ax.scatter(xs, ys, s=14, alpha=0.7, color=_color(i), label=f"{name} ({len(points)} client-runs)")
    ax.set_xlabel("label entropy of the client's training data (bits)")
    ax.set_ylabel("mean gate weight on the global expert")
    ax.set_ylim(-0.02, 1.02)
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    _legend_or_empty(ax, sum(1 for p in per_strategy.values() if p))
    return _save_png(fig, path)
