"""The `compare` table and report: variants x seeds -> mean and 95% CI.

Inputs are `RunSummary.to_dict()` dicts (accuracies as fractions). A row is a
*variant*: `summary["variant"]` when a grid sweep set it (e.g.
"fedmoe-da[P=1,tau=0.5]"), else the strategy name. Intervals are Student-t over
seeds; the difference against the baseline is paired by seed, because the seeds
fix partitions and client cohorts, so pairing removes the variance both runs
share. A pair needs the same seed *and* the same `data_fingerprint` (a grid over
a data key gives the same seed different partitions). Each row's paired t-test
p-value is Holm-adjusted across the comparisons the table shows.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from .io import atomic_write_text, write_csv_atomic
from .stats import holm, mean_ci, paired_diff_ci, paired_test

MEAN_ACC_KEY = "acc-mean"   # in summary["final"]: mean accuracy over domains of the final model (server- or client-evaluated)
CLIENT_ACC_KEY = "acc-own"              # in each summary["per_client"] row (wire.ACC_OWN)
DOMAIN_ACC_KEY = "acc"                  # in summary["per_domain"][d] when that is a dict
BYTE_FIELDS = ("bytes_up", "bytes_down", "bytes_p2p")
ROUTING_OWN_KEY = "server-eval/routing-own"   # unified MoEs: share of test tokens routed to their own domain's expert


@dataclass(frozen=True)
class Cell:
    """Mean over seeds, CI half-width (nan when n = 1) and the number of seeds."""

    mean: float
    hw: float
    n: int


@dataclass
class StrategyRow:
    """One table row; `strategy` is the row label, i.e. the variant name (the strategy when no grid ran)."""

    strategy: str
    seeds: list[int]
    is_baseline: bool
    cells: dict[str, Cell] = field(default_factory=dict)   # metric -> Cell; metric names as in the CSV
    diff: Cell | None = None                                # paired mean-accuracy difference vs baseline
    p: float | None = None          # two-sided paired t-test of accuracy vs baseline; nan: undefined (n < 2, ...)
    p_holm: float | None = None     # p Holm-adjusted across the rows with a defined p (nan where p is nan)


def _cell(values: list[float], level: float) -> Cell | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None
    mean, hw = mean_ci(values, level)
    return Cell(mean, hw, len(values))


def _domain_acc(value: Any) -> float | None:
    return value.get(DOMAIN_ACC_KEY) if isinstance(value, Mapping) else value


def variant_name(s: Mapping[str, Any]) -> str:
    """The row a summary belongs to: its grid variant, else its strategy."""
    return s.get("variant") or s["strategy"]


def run_metrics(s: Mapping[str, Any], acc_key: str = MEAN_ACC_KEY,
                client_acc_key: str = CLIENT_ACC_KEY) -> dict[str, float | None]:
    """The per-run numbers one table row averages over seeds."""
    if acc_key not in s.get("final", {}):
        raise KeyError(f"summary of {s.get('strategy')} seed {s.get('seed')} has no final[{acc_key!r}]")
    out: dict[str, float | None] = {"acc": s["final"][acc_key]}
    clients = [c[client_acc_key] for c in s.get("per_client", []) if c.get(client_acc_key) is not None]
    out["worst_client_acc"] = min(clients) if clients else None
    out["client_acc"] = sum(clients) / len(clients) if clients else None   # personalised: each client's own split
    out["routing_own"] = s["final"].get(ROUTING_OWN_KEY)
    for domain, value in s.get("per_domain", {}).items():
        out[f"acc/{domain}"] = _domain_acc(value)
    for name in (*BYTE_FIELDS, "wall_s"):
        out[name] = s.get(name)
    return out


def build_table(summaries: Sequence[Mapping[str, Any]], baseline: str | None = None, *, level: float = 0.95,
                acc_key: str = MEAN_ACC_KEY, client_acc_key: str = CLIENT_ACC_KEY) -> tuple[list[StrategyRow], list[str]]:
    """Rows (one per variant) sorted by mean accuracy (best first) and the sorted domain names."""
    experiments = {s.get("experiment") for s in summaries}
    if len(experiments) > 1:
        raise ValueError(f"summaries mix experiments {sorted(map(str, experiments))}; compare one at a time")
    per_run: dict[str, dict[int, dict[str, float | None]]] = {}
    fingerprints: dict[str, dict[int, str]] = {}      # variant -> seed -> data_fingerprint
    for s in summaries:
        name = variant_name(s)
        runs = per_run.setdefault(name, {})
        if s["seed"] in runs:
            raise ValueError(f"two summaries for variant {name!r} seed {s['seed']}")
        runs[s["seed"]] = run_metrics(s, acc_key, client_acc_key)
        fingerprints.setdefault(name, {})[s["seed"]] = s.get("data_fingerprint", "")
    if baseline is not None and baseline not in per_run:
        raise ValueError(f"baseline {baseline!r} not among variants {sorted(per_run)}")
    domains = sorted({k[4:] for runs in per_run.values() for m in runs.values() for k in m if k.startswith("acc/")})
    rows = []
    for name, runs in per_run.items():
        seeds = sorted(runs)
        row = StrategyRow(name, seeds, name == baseline)
        metrics = dict.fromkeys(k for seed in seeds for k in runs[seed])
        for metric in metrics:
            cell = _cell([runs[seed].get(metric) for seed in seeds], level)
            if cell is not None:
                row.cells[metric] = cell
        if baseline is not None and name != baseline:
            base, fp, base_fp = per_run[baseline], fingerprints[name], fingerprints[baseline]
            common = [seed for seed in seeds if seed in base and fp[seed] == base_fp[seed]]   # same seed, same data
            if common:
                a, b = [runs[x]["acc"] for x in common], [base[x]["acc"] for x in common]
                mean, hw = paired_diff_ci(a, b, level)
                row.diff, row.p = Cell(mean, hw, len(common)), paired_test(a, b)
        rows.append(row)
    compared = [r for r in rows if r.p is not None]     # holm keeps nan (undefined test) out of the count
    for r, adjusted in zip(compared, holm([r.p for r in compared]), strict=True):
        r.p_holm = adjusted
    rows.sort(key=lambda r: (-r.cells["acc"].mean if "acc" in r.cells else math.inf, r.strategy))
    return rows, domains


# ------------------------------------------------------------- formatting ----
def human_bytes(n: float) -> tuple[float, str]:
    """Scale for display: (divisor, unit) in binary units."""
    for power, unit in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
        if abs(n) >= 1024 ** power:
            return 1024.0 ** power, unit
    return 1.0, "B"


def human_seconds(s: float) -> tuple[float, str]:
    return (3600.0, "h") if s >= 3 * 3600 else (60.0, "min") if s >= 600 else (1.0, "s")


def format_cell(cell: Cell | None, scale: float = 1.0, unit: str = "", signed: bool = False) -> str:
    """`85.2 ± 1.3`; `85.2 (n=1)` where one seed gives no interval; no `±` where all seeds
    agree exactly (byte counts usually do); `—` when missing."""
    if cell is None or math.isnan(cell.mean):
        return "—"
    digits = 0 if unit == "B" else 1
    text = f"{cell.mean / scale:{'+' if signed else ''}.{digits}f}"
    if cell.n > 1 and cell.hw > 0:
        text += f" ± {cell.hw / scale:.{digits}f}"
    text = f"{text} {unit}".rstrip()
    return f"{text} (n=1)" if cell.n == 1 or math.isnan(cell.hw) else text


def _scaled(cell: Cell | None, kind: str) -> str:
    if cell is None:
        return "—"
    if kind == "pct":
        return format_cell(cell, 0.01)
    scale, unit = human_bytes(cell.mean) if kind == "bytes" else human_seconds(cell.mean)
    return format_cell(cell, scale, unit)


def format_p(p: float | None) -> str:
    """3 significant digits (`0.0351`, `1.00`), `<0.001` below that, `—` where no test was defined."""
    if p is None or math.isnan(p):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:#.3g}"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(rows: list[StrategyRow], domains: list[str], baseline: str | None, level: float = 0.95) -> str:
    pct = f"{level * 100:g}%"
    head = ["strategy", "seeds", "mean acc (%)"]
    if baseline is not None:
        head += ["Δ acc vs baseline (pp)", "p vs baseline (Holm)"]
    routing = any("routing_own" in r.cells for r in rows)
    head += ["mean client, own split (%)", "worst client (%)", *[f"{_md_escape(d)} (%)" for d in domains]]
    head += ["routed to own domain (%)"] if routing else []
    head += ["bytes up", "bytes down", "bytes P2P", "wall time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in rows:
        cells = [_md_escape(r.strategy) + (" (baseline)" if r.is_baseline else ""), str(len(r.seeds)),
                 _scaled(r.cells.get("acc"), "pct")]
        if baseline is not None:
            cells.append("—" if r.is_baseline else format_cell(
                None if r.diff is None else Cell(r.diff.mean * 100, r.diff.hw * 100, r.diff.n), signed=True))
            cells.append("—" if r.is_baseline else format_p(r.p_holm))
        cells += [_scaled(r.cells.get("client_acc"), "pct"), _scaled(r.cells.get("worst_client_acc"), "pct"),
                  *[_scaled(r.cells.get(f"acc/{d}"), "pct") for d in domains]]
        cells += [_scaled(r.cells.get("routing_own"), "pct")] if routing else []
        cells += [*[_scaled(r.cells.get(b), "bytes") for b in BYTE_FIELDS], _scaled(r.cells.get("wall_s"), "time")]
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"\nMean ± {pct} CI half-width over seeds (Student t, n-1 df); `(n=1)`: one seed, no interval; "
            "no `±`: all seeds gave the same value. Accuracy in percent; bytes are run totals in binary units. "
            "Mean acc: per domain on its held-out test set, averaged over domains; mean client: each client's "
            "own test split (what personalised methods optimise), averaged over clients.")
    if baseline is not None:
        k = sum(r.p_holm is not None and not math.isnan(r.p_holm) for r in rows)
        pairs = max((r.diff.n for r in rows if r.diff is not None), default=0)
        note += (f" Δ: accuracy minus `{_md_escape(baseline)}`'s in percentage points, paired by seed "
                 "(seeds both ran, on the same data partitions); an interval excluding 0 is a difference at that "
                 "level.")
        if k:
            note += (" p: paired two-sided t-test of accuracy over those seeds, Holm-corrected across the "
                     f"k = {k} comparisons shown; `—`: undefined (under 2 pairs, or the same difference on every "
                     "seed).")
        else:
            note += " p: `—` throughout: a paired test needs 2 or more paired seeds with differences that vary."
        if k and pairs < 6:
            note += (f" With {pairs} paired seeds the test has little power: a large p is no evidence that two "
                     "methods are equal.")
    if routing:
        note += (" Routed to own domain: share of each domain's test tokens whose top-1 expert is one of that "
                 "domain's, averaged over MoE layers and domains (unified MoEs only; oracle routing = 100).")
    return "\n".join(lines) + "\n" + note + "\n"


def table_csv(rows: list[StrategyRow], domains: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Machine-readable table: raw numbers (fractions, bytes, seconds), mean and half-width per metric."""
    metrics = ["acc", "client_acc", "worst_client_acc", *[f"acc/{d}" for d in domains], "routing_own", *BYTE_FIELDS,
               "wall_s"]
    columns = ["strategy", "is_baseline", "n_seeds", "seeds"]
    columns += [f"{m}_{part}" for m in metrics for part in ("mean", "hw")]
    columns += ["diff_acc_mean", "diff_acc_hw", "diff_acc_n", "diff_acc_p", "diff_acc_p_holm"]
    out = []
    for r in rows:
        d: dict[str, Any] = {"strategy": r.strategy, "is_baseline": r.is_baseline, "n_seeds": len(r.seeds),
                             "seeds": ";".join(map(str, r.seeds))}
        for m in metrics:
            cell = r.cells.get(m)
            d[f"{m}_mean"], d[f"{m}_hw"] = (cell.mean, cell.hw) if cell else (None, None)
        if r.diff is not None:
            d.update(diff_acc_mean=r.diff.mean, diff_acc_hw=r.diff.hw, diff_acc_n=r.diff.n, diff_acc_p=r.p,
                     diff_acc_p_holm=r.p_holm)
        out.append(d)
    return out, columns


def write_table(summaries: Sequence[Mapping[str, Any]], baseline: str | None, out_dir: str | os.PathLike, *,
                level: float = 0.95, acc_key: str = MEAN_ACC_KEY, client_acc_key: str = CLIENT_ACC_KEY) -> str:
    """Write out_dir/table.md and out_dir/table.csv; return the Markdown to print."""
    rows, domains = build_table(summaries, baseline, level=level, acc_key=acc_key, client_acc_key=client_acc_key)
    md = render_markdown(rows, domains, baseline, level)
    csv_rows, columns = table_csv(rows, domains)
    write_csv_atomic(Path(out_dir) / "table.csv", csv_rows, columns)
    atomic_write_text(Path(out_dir) / "table.md", md)
    return md


def write_report(out_dir: str | os.PathLike, table_md: str, plot_paths: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike],
                 meta: Mapping[str, Any]) -> Path:
    """out_dir/report.md: how the numbers were made (command, seeds, baseline, machine), table, plots.

    Image links are relative to out_dir so the report survives moving the directory.
    """
    out_dir = Path(out_dir)
    plots = plot_paths.items() if isinstance(plot_paths, Mapping) else [
        (Path(p).stem.replace("_", " "), p) for p in plot_paths]
    lines = [f"# Comparison: {meta.get('experiment', 'fedmoe-sim')}", ""]
    if "command" in meta:
        lines += ["```sh", str(meta["command"]), "```", ""]
    for key, value in meta.items():
        if key in ("command", "experiment", "machine"):
            continue
        if isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value))
        lines.append(f"- **{key}**: {value}")
    machine = meta.get("machine")
    if isinstance(machine, Mapping):
        machine = ", ".join(f"{k} {v}" for k, v in machine.items())
    if machine:
        lines.append(f"- **machine**: {machine}")
    lines.append(f"- **generated**: {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
    lines += ["", "## Results", "", table_md.rstrip(), "", "## Plots", ""]
    for title, path in plots:
        rel = Path(os.path.relpath(Path(path).resolve(), out_dir.resolve())).as_posix()
        lines += [f"### {title}", "", f"![{title}]({rel})", ""]
    return atomic_write_text(out_dir / "report.md", "\n".join(lines).rstrip() + "\n")
