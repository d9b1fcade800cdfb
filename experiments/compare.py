"""`fedmoe-sim compare`: strategies x seeds on identical partitions, with CIs, plots and resume.

Fairness: data, partitions and the per-round client stream depend only on the
data config and the seed, so every strategy of one seed sees the same clients
(each run records a fingerprint of its partitions; the table refuses to pair
runs whose fingerprints differ). Resume: each run writes summary.json last,
atomically, with its config hash; a rerun skips runs whose summary matches and
starts the others again. The sweep directory is bound to one base config: a
different one is refused instead of mixing results.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from fedmoe_sim.config import ConfigError, RunConfig, parse_assignments
from fedmoe_sim.progress import format_seconds

SWEEP_FILE = "sweep.json"
ACC_KEY = "acc-mean"
ROUND_TITLE = ("Mean accuracy vs round (one-shot unification methods: earlier rounds show\n"
               "their experts on their own domains, the last round the unified model)")


def add_compare_parser(sub) -> None:
    p = sub.add_parser("compare", help="run strategies x seeds and write tables with 95%% CIs, plots, report")
    p.add_argument("--experiment", default="digits-domains", help="catalogue entry (fedmoe-sim experiments)")
    p.add_argument("--strategies", default="", help="comma list (default: the experiment's own list)")
    p.add_argument("--seeds", default="0,1,2", help="comma list of seeds (default 0,1,2)")
    p.add_argument("--baseline", default="", help="strategy the paired differences refer to (default: the first)")
    p.add_argument("--out", default="", help="sweep directory (default results/compare-<experiment>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--{what} must be a comma list of integers (got {text!r})") from None
    if not values or len(set(values)) != len(values):
        raise ConfigError(f"--{what} must list distinct integers (got {text!r})")
    return values


def plan_sweep(args: argparse.Namespace) -> tuple[RunConfig, list[RunConfig], str, Path]:
    """Validate everything up front: the base config, each run's config, the baseline, the directory."""
    from experiments.catalogue import build_config, get_experiment
    from experiments.registry import get_method

    exp = get_experiment(args.experiment)
    overrides = parse_assignments(args.overrides)
    for key in ("strategy", "seed", "out"):
        if key in overrides:
            raise ConfigError(f"--set {key}=... is chosen by compare itself; use --strategies / --seeds / --out")
    from experiments.registry import METHODS

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()] or list(exp.strategies or METHODS)
    for name in strategies:
        get_method(name)
    if len(set(strategies)) != len(strategies):
        raise ConfigError(f"--strategies lists a strategy twice ({args.strategies!r})")
    seeds = _int_list(args.seeds, "seeds")
    baseline = args.baseline or strategies[0]
    if baseline not in strategies:
        raise ConfigError(f"--baseline {baseline!r} is not among the compared strategies ({', '.join(strategies)})")
    out = Path(args.out or f"results/compare-{args.experiment}")
    base = build_config(args.experiment, overrides)
    runs = [
        build_config(args.experiment, {**overrides, "strategy": s, "seed": seed, "out": str(out / "runs" / f"{s}-seed{seed}")})
        for seed in seeds for s in strategies
    ]
    return base, runs, baseline, out


def bind_sweep_dir(out: Path, base: RunConfig) -> None:
    """Create or reuse the sweep directory; refuse one made for another base config."""
    identity = base.identity_hash(exclude=("out", "strategy", "seed"))
    manifest = out / SWEEP_FILE
    if manifest.exists():
        recorded = json.loads(manifest.read_text()).get("base_config_hash")
        if recorded != identity:
            raise ConfigError(f"--out {out} holds a sweep of another config (hash {recorded}, this one {identity}); "
                              "choose a new directory")
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} exists and is not a fedmoe-sim sweep directory; choose a new directory")
    from fedmoe_sim.results.io import atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(manifest, {"base_config_hash": identity, "experiment": base.experiment,
                                 "base_config": json.loads(base.to_json())})


def cmd_compare(args: argparse.Namespace) -> int:
    from experiments.cli import prepare_run
    from experiments.runner import run_many
    from fedmoe_sim.results import RunRecorder

    base, runs, baseline, out = plan_sweep(args)
    bind_sweep_dir(out, base)
    # unfinished runs continue from their checkpoint (resume starts afresh where there is none)
    todo = [dataclasses.replace(cfg, resume=True) for cfg in runs
            if not RunRecorder.is_complete(Path(cfg.out), cfg.identity_hash())]
    print(f"compare {base.experiment}: {len(runs)} runs ({len(runs) - len(todo)} already complete, {len(todo)} to run)")
    for cfg in todo:
        prepare_run(cfg)
    t0 = time.monotonic()
    done_before = len(runs) - len(todo)

    def prefix(i: int, cfg: RunConfig) -> str:
        elapsed = time.monotonic() - t0
        eta = elapsed / i * (len(todo) - i) if i else float("nan")
        return f"[run {done_before + i + 1}/{len(runs)} {cfg.strategy} seed {cfg.seed}, sweep ETA {format_seconds(eta)}] "

    if todo:
        run_many(todo, prefix, show_progress=not args.quiet)
    table = summarise_sweep(out, runs, baseline, args)
    print(table)
    print(f"\ntables, plots and report in {out}/ (table.md, table.csv, report.md, *.png)")
    return 0


def summarise_sweep(out: Path, runs: list[RunConfig], baseline: str, args: argparse.Namespace) -> str:
    """Tables, plots and the report from the finished runs' records."""
    from fedmoe_sim.models.pfedmoe import GATE_GLOBAL, LABEL_ENTROPY
    from fedmoe_sim.results import plots, tables
    from fedmoe_sim.results.io import read_jsonl

    summaries, curves, byte_curves, domains, gates = [], {}, {}, {}, {}
    for cfg in runs:
        run_dir = Path(cfg.out)
        summary = json.loads((run_dir / "summary.json").read_text())
        summaries.append(summary)
        rounds = read_jsonl(run_dir / "rounds.jsonl")
        curves.setdefault(cfg.strategy, []).append(plots.accuracy_series(rounds, ACC_KEY))
        byte_curves.setdefault(cfg.strategy, []).append(plots.accuracy_vs_bytes_series(rounds, ACC_KEY))
        for dom, metrics in summary.get("per_domain", {}).items():
            domains.setdefault(cfg.strategy, {}).setdefault(dom, []).append(metrics["acc"])
        for row in summary.get("per_client", []):     # methods with a gate over experts (pFedMoE)
            if GATE_GLOBAL in row and LABEL_ENTROPY in row:
                gates.setdefault(cfg.strategy, []).append((row[LABEL_ENTROPY], row[GATE_GLOBAL]))
    check_identical_partitions(summaries)
    table_md = tables.write_table(summaries, baseline, out)
    paths = [
        plots.plot_accuracy_vs_round(curves, out / "accuracy_vs_round.png", title=ROUND_TITLE),
        plots.plot_accuracy_vs_bytes(byte_curves, out / "accuracy_vs_bytes.png"),
        plots.plot_per_domain_bars(domains, out / "per_domain.png"),
    ]
    if gates:
        paths.append(plots.plot_gate_vs_heterogeneity(gates, out / "gate_vs_heterogeneity.png"))
    seeds = sorted({s["seed"] for s in summaries})
    command = "fedmoe-sim compare " + " ".join(
        [f"--experiment {args.experiment}", f"--strategies {','.join(dict.fromkeys(c.strategy for c in runs))}",
         f"--seeds {','.join(map(str, seeds))}", f"--baseline {baseline}", f"--out {out}"]
        + [f"--set {o}" for o in args.overrides])
    tables.write_report(out, table_md, [Path(p) for p in paths if p], {"command": command, "seeds": seeds, "baseline": baseline,
                                                              "experiment": args.experiment})
    return table_md


def check_identical_partitions(summaries: list[dict]) -> None:
    """All strategies of one seed must have trained on the same partitions."""
    by_seed: dict[int, set[str]] = {}
    for s in summaries:
        by_seed.setdefault(s["seed"], set()).add(s.get("data_fingerprint", ""))
    bad = {seed: fps for seed, fps in by_seed.items() if len(fps) > 1}
    if bad:
        raise RuntimeError(f"runs of the same seed saw different partitions: {bad}; the sweep is not a fair comparison")
