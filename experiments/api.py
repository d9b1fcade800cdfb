"""Run and compare from Python (a notebook, a script): the records the CLI writes, as values.

The CLI (`fedmoe-sim run`, `fedmoe-sim compare`) is a thin layer over these two
functions, so both paths validate the same way (ConfigError, one line, on a bad
name, key or value) and write the same directories:

    from experiments import api
    summary = api.run("fedavg", "digits-quick", seed=0, out="runs/fedavg", overrides={"federation.rounds": 3})
    result = api.compare("digits-quick", strategies=["fedavg", "local"], seeds=[0, 1],
                         grid={"train.lr": [0.05, 0.1]}, out="results/lr-sweep")
    print(result.table_md)        # the table compare prints
    result.runs                   # one dict per run: variant, strategy, seed, grid values, numbers
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.compare import GridAxis

Grid = Mapping[str, Sequence[Any]] | Sequence[str | GridAxis]


@dataclass
class Comparison:
    """What `compare` wrote, read back: every run's summary, the tidy per-run rows, the table."""

    out: Path
    baseline: str
    summaries: list[dict[str, Any]]    # summary.json of every run, with "variant" and "grid" added
    runs: list[dict[str, Any]]         # tidy: one row per run (also out/runs.csv)
    table: list[dict[str, Any]]        # one row per variant: means, CI half-widths, paired diff (also out/table.csv)
    table_md: str                      # the markdown table with its legend (also out/table.md)

    def to_pandas(self):
        """The tidy per-run rows as a DataFrame (pandas comes with `datasets`)."""
        import pandas as pd

        return pd.DataFrame(self.runs)


def _axes(grid: Grid | None) -> list[GridAxis]:
    """`{"[STRATEGY,...:]KEY": [values]}`, or `--grid` strings, or GridAxis objects."""
    if not grid:
        return []
    if isinstance(grid, Mapping):
        axes = []
        for head, values in grid.items():
            values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
            if not values:
                from fedmoe_sim.config import ConfigError
                raise ConfigError(f"grid {head!r} has no values")
            axes.append(GridAxis.of(head, values))
        return axes
    return [a if isinstance(a, GridAxis) else GridAxis.parse(a) for a in grid]


def run(strategy: str = "fedavg", experiment: str = "digits-domains", *, seed: int = 0, out: str | Path = "",
        overrides: Mapping[str, Any] | None = None, faults: str = "", log: str = "",
        progress: bool = True) -> dict[str, Any]:
    """One strategy on one experiment in a Flower simulation; returns its summary (summary.json).

    `overrides`: any config keys (`fedmoe-sim show NAME`), typed values or strings;
    `faults`: as `--faults` (e.g. "crash=0.1,hang=0.05"); `log="tensorboard"` adds event files.
    """
    from experiments.catalogue import build_config
    from fedmoe_sim.faults import parse_faults

    values: dict[str, Any] = {**(overrides or {}), "strategy": strategy, "seed": seed, "out": str(out)}
    if faults:
        values.update(parse_faults(faults))
    if log:
        values["log"] = log
    return run_config(build_config(experiment, values), progress)


def resume(run_dir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Continue the killed run in `run_dir` from its last checkpoint (its recorded config);
    a finished run is returned as it is."""
    from experiments.cli import recorded_config

    return run_config(recorded_config(Path(run_dir), {}), progress)


def run_config(cfg, progress: bool = True) -> dict[str, Any]:
    """Run a resolved RunConfig (skipping a finished resume) and return its summary dict."""
    from experiments.cli import prepare_run
    from experiments.runner import run_simulation
    from fedmoe_sim.results import RunRecorder, read_summary

    if cfg.resume and RunRecorder.is_complete(Path(cfg.out), cfg.identity_hash()):
        return read_summary(cfg.out)
    prepare_run(cfg)
    return run_simulation(cfg, show_progress=progress).to_dict()


def compare(experiment: str = "digits-domains", strategies: Sequence[str] = (), seeds: Sequence[int] = (0, 1, 2), *,
            grid: Grid | None = None, baseline: str = "", out: str | Path = "",
            overrides: Mapping[str, Any] | None = None, log: str = "", progress: bool = True,
            say: Callable[[str], Any] | None = print) -> Comparison:
    """Strategies x grid points x seeds on identical partitions; resumable (finished runs are kept,
    unfinished ones continue from their checkpoints). Writes table.md/.csv, runs.csv, plots and
    report.md under `out` (default results/compare-EXPERIMENT) and returns them. `progress`: the
    per-round display; `say`: where the sweep's one-line notes go (None: nowhere)."""
    from experiments import compare as sweeps
    from experiments.cli import prepare_run
    from experiments.runner import run_many
    from fedmoe_sim.progress import SweepProgress
    from fedmoe_sim.results import tables

    overrides = {**(overrides or {}), **({"log": log} if log else {})}
    sweep = sweeps.plan_sweep(experiment, strategies, seeds, _axes(grid), baseline, out, overrides)
    sweeps.bind_sweep_dir(sweep.out, sweep.base)
    todo = sweeps.todo_runs(sweep)
    say = say or (lambda _: None)
    say(f"compare {experiment}: {len(sweep.runs)} runs of {len(sweep.variants)} variants "
        f"({len(sweep.runs) - len(todo)} already complete, {len(todo)} to run)")
    for note in sweep.notes:
        say(f"note: {note}")
    for r in todo:
        prepare_run(r.cfg)
    if todo:
        with SweepProgress([f"{r.variant} seed {r.seed}" for r in todo], done_before=len(sweep.runs) - len(todo),
                           enabled=progress) as bar:
            run_many([r.cfg for r in todo], bar)
    summaries, tidy, table_md = sweeps.summarise_sweep(sweep)
    rows, domains = tables.build_table(summaries, sweep.baseline)
    table, _ = tables.table_csv(rows, domains)
    return Comparison(sweep.out, sweep.baseline, summaries, tidy, table, table_md)
