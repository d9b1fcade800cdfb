"""The sweep engine behind `compare`: strategies x grid points x seeds, with CIs, plots and resume.

Fairness: data, partitions and the per-round client stream depend only on the
data config and the seed, so every strategy and grid point of one seed sees the
same clients (each run records a fingerprint of its partitions; the sweep refuses
runs whose configs agree on the data but whose fingerprints differ). A grid over a
data key (data.alpha, ...) changes the partitions on purpose: such variants are
only paired with runs on the same partitions.

Grid: every `KEY=V1,V2,...` axis is crossed with the others, the strategies and the
seeds; `STRATEGY:KEY=...` varies KEY for that strategy only. Points that give a
strategy the same run identity (its config hash: a key the method does not read,
or one it forces) are one run, not several identical ones, and its variant name
lists only the keys that change it.

Resume: each run writes summary.json last, atomically, with its config hash; a
rerun skips runs whose summary matches and continues the others from their
checkpoints. The sweep directory is bound to one base config: a different one is
refused instead of mixing results.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmoe_sim.config import NOT_IDENTITY, ConfigError, RunConfig

SWEEP_FILE = "sweep.json"
RUNS_CSV = "runs.csv"
ACC_KEY = "acc-mean"
CHOSEN_BY_COMPARE = ("strategy", "seed", "out")
ROUND_TITLE = ("Mean accuracy vs round (one-shot unification methods: earlier rounds show\n"
               "their experts on their own domains, the last round the unified model)")


@dataclass(frozen=True)
class GridAxis:
    """One `--grid [STRATEGY[,STRATEGY...]:]KEY=V1,V2,...`: the values KEY takes, for some strategies or all."""

    key: str
    values: tuple[Any, ...]
    strategies: tuple[str, ...] = ()     # () = every compared strategy

    @classmethod
    def parse(cls, text: str) -> GridAxis:
        head, sep, values = text.partition("=")
        key = head.rpartition(":")[2]
        items = tuple(v.strip() for v in values.split(","))
        if not sep or not key.strip() or not any(items) or not all(items):
            raise ConfigError(f"--grid expects [STRATEGY:]KEY=V1,V2,... (got {text!r})")
        return cls.of(head, items)

    @classmethod
    def of(cls, head: str, values: tuple[Any, ...]) -> GridAxis:
        """From `[STRATEGY,...:]KEY` and its values (the command line's and the Python API's form)."""
        scope, _, key = head.rpartition(":")
        return cls(key.strip(), values, tuple(s.strip() for s in scope.split(",") if s.strip()))

    def applies_to(self, strategy: str) -> bool:
        return not self.strategies or strategy in self.strategies

    @property
    def text(self) -> str:
        """As given on the command line."""
        return (",".join(self.strategies) + ":" if self.strategies else "") + \
            f"{self.key}={','.join(map(_show, self.values))}"


@dataclass(frozen=True)
class PlannedRun:
    variant: str                 # table and plot name: the strategy, plus the grid values that change it
    strategy: str
    seed: int
    point: dict[str, Any]        # grid key -> resolved value (only the keys that change this strategy's run)
    cfg: RunConfig


@dataclass
class Sweep:
    """A validated sweep: everything is checked before the first run starts."""

    experiment: str
    base: RunConfig
    runs: list[PlannedRun]
    baseline: str
    out: Path
    command: str                 # the CLI line that rebuilds it (for the report)
    notes: list[str] = field(default_factory=list)

    @property
    def variants(self) -> list[str]:
        return list(dict.fromkeys(r.variant for r in self.runs))


def _check_axes(axes: Sequence[GridAxis], strategies: Sequence[str], overrides: Mapping[str, Any]) -> None:
    seen: set[tuple[str, str]] = set()
    for axis in axes:
        if axis.key in CHOSEN_BY_COMPARE:
            raise ConfigError(f"--grid {axis.key}=... is chosen by compare itself; use --strategies / --seeds / --out")
        for s in axis.strategies:
            if s not in strategies:
                raise ConfigError(f"--grid {axis.text}: {s!r} is not among the compared strategies "
                                  f"({', '.join(strategies)})")
        if axis.key in overrides:
            raise ConfigError(f"--grid {axis.key} and --set {axis.key} both set it; keep one")
        for s in [s for s in strategies if axis.applies_to(s)]:
            if (s, axis.key) in seen:
                raise ConfigError(f"--grid varies {axis.key} twice for strategy {s!r}")
            seen.add((s, axis.key))
        if len(set(map(str, axis.values))) != len(axis.values):
            raise ConfigError(f"--grid {axis.key} lists a value twice ({', '.join(map(str, axis.values))})")


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _short_names(keys: Sequence[str]) -> dict[str, str]:
    """`fedmoe_da.tau` -> `tau` unless two grid keys end alike: then the full key."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _dir_name(variant: str) -> str:
    """A run directory name from a variant name: `fedmoe-da[P=1,tau=0.5]` -> `fedmoe-da_P=1_tau=0.5`."""
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", variant).strip("_")


def plan_variants(experiment: str, strategy: str, axes: Sequence[GridAxis], overrides: Mapping[str, Any],
                  seed: int) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(variant name, grid point shown, overrides) for one strategy: the grid points that give it
    distinct runs, named by the keys that make them distinct."""
    from experiments.catalogue import build_config

    mine = [a for a in axes if a.applies_to(strategy)]
    points = [dict(zip([a.key for a in mine], combo)) for combo in itertools.product(*[a.values for a in mine])]
    configs: dict[tuple, RunConfig] = {}

    def config(point: Mapping[str, Any]) -> RunConfig:
        key = tuple(sorted((k, str(v)) for k, v in point.items()))
        if key not in configs:
            configs[key] = build_config(experiment, {**overrides, **point, "strategy": strategy, "seed": seed})
        return configs[key]

    # a key matters to this strategy where setting it (to some value of the axis, at some point of
    # the grid) changes the run: a key it does not read or one its method fixes never does
    relevant = [a.key for a in mine if any(config(p).identity_hash() !=
                                           config({k: v for k, v in p.items() if k != a.key}).identity_hash()
                                           for p in points)]
    names = _short_names(relevant)
    out, seen = [], set()
    for p in points:
        point = {k: p[k] for k in relevant}
        cfg = config(point)
        if cfg.identity_hash() in seen:
            continue
        seen.add(cfg.identity_hash())
        shown = {k: cfg.to_flat()[k] for k in relevant}
        label = strategy + ("[" + ",".join(f"{names[k]}={_show(v)}" for k, v in shown.items()) + "]" if shown else "")
        out.append((label, shown, point))
    return out


def plan_sweep(experiment: str = "digits-domains", strategies: Sequence[str] = (), seeds: Sequence[int] = (0, 1, 2),
               grid: Sequence[GridAxis] = (), baseline: str = "", out: str | Path = "",
               overrides: Mapping[str, Any] | None = None) -> Sweep:
    """Validate everything up front: the base config, each run's config, the grid, the baseline, the directory."""
    from experiments.catalogue import build_config, get_experiment
    from experiments.registry import METHODS, get_method

    exp = get_experiment(experiment)
    overrides = dict(overrides or {})
    for key in CHOSEN_BY_COMPARE:
        if key in overrides:
            raise ConfigError(f"--set {key}=... is chosen by compare itself; use --strategies / --seeds / --out")
    strategies = list(strategies) or list(exp.strategies or METHODS)
    for name in strategies:
        get_method(name)
    if len(set(strategies)) != len(strategies):
        raise ConfigError(f"--strategies lists a strategy twice ({','.join(strategies)})")
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds) or any(not isinstance(s, int) or s < 0 for s in seeds):
        raise ConfigError(f"--seeds must list distinct integers >= 0 (got {','.join(map(str, seeds))})")
    _check_axes(grid, strategies, overrides)
    out = Path(out or f"results/compare-{experiment}")
    base = build_config(experiment, overrides)
    variants = {s: plan_variants(experiment, s, grid, overrides, seeds[0]) for s in strategies}
    notes = [f"{s} does not depend on --grid {a.key} (a key it does not read, or one it fixes): one run per seed"
             for a in grid for s in strategies
             if a.applies_to(s) and len(a.values) > 1
             and not any(a.key in shown for _, shown, _ in variants[s])]
    runs = []
    for seed in seeds:
        for s in strategies:
            for label, shown, point in variants[s]:
                cfg = build_config(experiment, {**overrides, **point, "strategy": s, "seed": seed,
                                                "out": str(out / "runs" / f"{_dir_name(label)}-seed{seed}")})
                runs.append(PlannedRun(label, s, seed, shown, cfg))
    dirs = [r.cfg.out for r in runs]
    if len(set(dirs)) != len(dirs):
        raise ConfigError("two grid points map to the same run directory name; use values that differ in "
                          "letters or digits")
    names = list(dict.fromkeys(r.variant for r in runs))
    baseline = baseline or names[0]
    if baseline not in names:
        own = [n for n in names if n.split("[", 1)[0] == baseline]
        if len(own) > 1:
            raise ConfigError(f"--baseline {baseline!r} has {len(own)} grid variants; name one of them "
                              f"({', '.join(own)})")
        if not own:
            raise ConfigError(f"--baseline {baseline!r} is not one of the compared variants ({', '.join(names)})")
        baseline = own[0]
    command = " ".join(["fedmoe-sim compare", f"--experiment {experiment}", f"--strategies {','.join(strategies)}",
                        f"--seeds {','.join(map(str, seeds))}",
                        *[f"--grid {a.text}" for a in grid],
                        f"--baseline {baseline}", f"--out {out}",
                        *[f"--set {k}={_show(v)}" for k, v in overrides.items()]])
    return Sweep(experiment, base, runs, baseline, out, command, notes)


def bind_sweep_dir(out: Path, base: RunConfig) -> None:
    """Create or reuse the sweep directory; refuse one made for another base config."""
    identity = _sweep_identity(base)
    manifest = out / SWEEP_FILE
    if manifest.exists():
        record = json.loads(manifest.read_text())
        recorded = record.get("base_config_hash")
        if recorded != identity and _recorded_identity(record) != identity:
            raise ConfigError(f"--out {out} holds a sweep of another config (hash {recorded}, this one {identity}); "
                              "choose a new directory")
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} exists and is not a fedmoe-sim sweep directory; choose a new directory")
    from fedmoe_sim.results.io import atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(manifest, {"base_config_hash": identity, "experiment": base.experiment,
                                 "base_config": json.loads(base.to_json())})


def _sweep_identity(base: RunConfig) -> str:
    """What binds a sweep directory: the base config without what compare varies or where files go."""
    return base.identity_hash(exclude=(*NOT_IDENTITY, "strategy", "seed"))


def _recorded_identity(record: Mapping[str, Any]) -> str | None:
    """The identity of the base config a sweep directory recorded, under today's keys (keys
    added since take their defaults, which are their no-op values): older directories were bound
    with another hash recipe, yet hold the same config."""
    from fedmoe_sim.config import config_from_json

    try:
        return _sweep_identity(config_from_json(json.dumps(record["base_config"])))
    except (KeyError, TypeError, ValueError):     # ConfigError is a ValueError: a key since removed, ...
        return None


def todo_runs(sweep: Sweep) -> list[PlannedRun]:
    """Runs without a finished summary of their config; unfinished ones continue from their checkpoint."""
    from fedmoe_sim.results import RunRecorder

    return [dataclasses.replace(r, cfg=dataclasses.replace(r.cfg, resume=True)) for r in sweep.runs
            if not RunRecorder.is_complete(Path(r.cfg.out), r.cfg.identity_hash())]


def load_summaries(sweep: Sweep) -> list[dict]:
    """Every run's summary.json, tagged with its variant and grid point (for tables and plots)."""
    out = []
    for r in sweep.runs:
        summary = json.loads((Path(r.cfg.out) / "summary.json").read_text())
        out.append({**summary, "variant": r.variant, "grid": r.point})
    return out


def tidy_runs(sweep: Sweep, summaries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per run (variant, strategy, seed, grid values, headline numbers): what a dataframe wants."""
    from fedmoe_sim.results.tables import run_metrics

    keys = list(dict.fromkeys(k for r in sweep.runs for k in r.point))
    metrics = [run_metrics(s) for s in summaries]
    names = list(dict.fromkeys(k for m in metrics for k in m))   # every run's columns: a run whose clients
    rows = []                                                   # hold no image of a domain has no acc/<domain>
    for r, m in zip(sweep.runs, metrics, strict=True):
        rows.append({"variant": r.variant, "strategy": r.strategy, "seed": r.seed, **{k: r.point.get(k) for k in keys},
                     **{k: m.get(k) for k in names}, "run_dir": r.cfg.out})
    return rows


def summarise_sweep(sweep: Sweep) -> tuple[list[dict], list[dict], str]:
    """Tables, plots, runs.csv and the report from the finished runs' records:
    (summaries, tidy rows, table markdown)."""
    from experiments.registry import get_method
    from fedmoe_sim.models.pfedmoe import GATE_GLOBAL, LABEL_ENTROPY
    from fedmoe_sim.results import plots, tables
    from fedmoe_sim.results.io import read_jsonl, write_csv_atomic

    summaries = load_summaries(sweep)
    check_identical_partitions(summaries, [r.cfg for r in sweep.runs])
    curves, byte_curves, domains, gates = {}, {}, {}, {}
    for r, summary in zip(sweep.runs, summaries):
        rounds = read_jsonl(Path(r.cfg.out) / "rounds.jsonl")
        curves.setdefault(r.variant, []).append(plots.accuracy_series(rounds, ACC_KEY))
        byte_curves.setdefault(r.variant, []).append(plots.accuracy_vs_bytes_series(rounds, ACC_KEY))
        for dom, metrics in summary.get("per_domain", {}).items():
            domains.setdefault(r.variant, {}).setdefault(dom, []).append(metrics["acc"])
        for row in summary.get("per_client", []):     # methods with a gate over experts (pFedMoE)
            if GATE_GLOBAL in row and LABEL_ENTROPY in row:
                gates.setdefault(r.variant, []).append((row[LABEL_ENTROPY], row[GATE_GLOBAL]))
    families = {r.variant: get_method(r.strategy).family for r in sweep.runs}
    table_md = tables.write_table(summaries, sweep.baseline, sweep.out)
    paths = [
        plots.plot_accuracy_vs_round(curves, sweep.out / "accuracy_vs_round.png", title=ROUND_TITLE, families=families),
        plots.plot_accuracy_vs_bytes(byte_curves, sweep.out / "accuracy_vs_bytes.png", families=families),
        plots.plot_per_domain_bars(domains, sweep.out / "per_domain.png", families=families),
    ]
    if gates:
        paths.append(plots.plot_gate_vs_heterogeneity(gates, sweep.out / "gate_vs_heterogeneity.png",
                                                      families=families))
    if any(r.point for r in sweep.runs):
        paths.append(plot_tradeoff(sweep, summaries, families))
    tidy = tidy_runs(sweep, summaries)
    write_csv_atomic(sweep.out / RUNS_CSV, tidy, list(tidy[0]))
    seeds = sorted({r.seed for r in sweep.runs})
    tables.write_report(sweep.out, table_md, [Path(p) for p in paths if p],
                        {"command": sweep.command, "seeds": seeds, "baseline": sweep.baseline,
                         "experiment": sweep.experiment})
    return summaries, tidy, table_md


def plot_tradeoff(sweep: Sweep, summaries: Sequence[Mapping[str, Any]], families: Mapping[str, str]) -> Path:
    """A grid's variants: final accuracy against server-bound bytes, per seed. Personalised
    accuracy (each client on its own split) where the run has it, else the mean accuracy."""
    from fedmoe_sim.results import plots
    from fedmoe_sim.results.tables import run_metrics

    metrics = [run_metrics(s) for s in summaries]
    personal = all(m.get("client_acc") is not None for m in metrics)
    points: dict[str, list[tuple[float, float]]] = {}
    for r, m in zip(sweep.runs, metrics, strict=True):
        points.setdefault(r.variant, []).append((m["bytes_up"] or 0.0, m["client_acc"] if personal else m["acc"]))
    y_label = "final accuracy, mean client on its own split (%)" if personal else "final mean accuracy (%)"
    return plots.plot_grid_tradeoff(points, sweep.out / "grid_tradeoff.png", families=families, y_label=y_label)


def _data_identity(cfg: RunConfig) -> str:
    """What the partitions depend on besides the seed: the data section and the client count."""
    flat = cfg.to_flat()
    return json.dumps({k: v for k, v in flat.items() if k.startswith("data.") or k == "federation.num_clients"},
                      sort_keys=True)


def check_identical_partitions(summaries: Sequence[Mapping[str, Any]], configs: Sequence[RunConfig] | None = None) -> None:
    """Runs of one seed on the same data config must have trained on the same partitions."""
    groups: dict[tuple, set[str]] = {}
    for i, s in enumerate(summaries):
        key = (s["seed"], _data_identity(configs[i]) if configs is not None else "")
        groups.setdefault(key, set()).add(s.get("data_fingerprint", ""))
    bad = {seed: fps for (seed, _), fps in groups.items() if len(fps) > 1}
    if bad:
        raise RuntimeError(f"runs of the same seed saw different partitions: {bad}; the sweep is not a fair comparison")

