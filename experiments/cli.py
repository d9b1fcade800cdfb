"""`fedmoe-sim`: run, compare, list and show experiments; a thin layer over experiments/api.py.

Every user mistake (unknown name, bad value, missing file) ends in one line on
stderr naming the value and what is allowed, and exit code 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from fedmoe_sim.config import ConfigError, RunConfig, flatten, known_keys, parse_assignments, resolve_config
from fedmoe_sim.results import RunRecorder, RunSummary
from fedmoe_sim.checkpoint import CHECKPOINT

EXIT_USAGE = 2


class UsageError(Exception):
    """Raised for bad command-line input; printed as one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage + message; we want one line
        raise UsageError(message)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", default="digits-domains", help="catalogue entry (fedmoe-sim experiments)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key (fedmoe-sim show NAME lists them); repeatable")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fedmoe-sim", description="Federated mixtures of experts on Flower.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    sub.required = True

    run = sub.add_parser("run", help="run one strategy on one experiment in a Flower simulation")
    _common(run)
    run.add_argument("--strategy", help="method name (fedmoe-sim strategies)")
    run.add_argument("--clients", type=int, help="number of logical clients (federation.num_clients)")
    run.add_argument("--rounds", type=int, help="server rounds (federation.rounds)")
    run.add_argument("--seed", type=int, help="seed for data, partitions, sampling and training")
    run.add_argument("--out", help="run directory for config.json, rounds.csv, summary.json")
    run.add_argument("--gpus-per-worker", type=float, dest="gpus_per_worker",
                     help="Ray GPU share per simulated worker (simulation.gpus_per_worker): a scheduling hint, "
                          "not a VRAM cap; 0.25 packs 4 workers on one GPU")
    run.add_argument("--workers", type=int, help="simulated SuperNodes (simulation.num_workers; 0 = one per core)")
    run.add_argument("--faults", help="inject client faults in training: crash=P,hang=P,corrupt=P,slow=P "
                                      "(probabilities per client and round; slow_s=SECONDS)")
    run.add_argument("--resume", metavar="DIR", help="continue the killed run in DIR from its last checkpoint "
                                                     "(its recorded config; other options must agree with it)")
    run.add_argument("--log", choices=["tensorboard"], help="also write TensorBoard event files (docs/tracking.md)")
    run.add_argument("--quiet", action="store_true", help="no progress lines")

    sub.add_parser("experiments", help="list the experiment catalogue")
    sub.add_parser("strategies", help="list the registered strategies")
    show = sub.add_parser("show", help="print an experiment's resolved config")
    show.add_argument("name")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    cmp = sub.add_parser("compare", help="run strategies x grid points x seeds; tables with 95%% CIs and "
                                         "p-values, plots, report")
    cmp.add_argument("--experiment", default="digits-domains", help="catalogue entry (fedmoe-sim experiments)")
    cmp.add_argument("--strategies", default="", help="comma list (default: the experiment's own list)")
    cmp.add_argument("--seeds", default="0,1,2", help="comma list of seeds (default 0,1,2)")
    cmp.add_argument("--grid", action="append", default=[], metavar="[STRATEGY,...:]KEY=V1,V2,...",
                     help="vary a config key (repeatable: the cartesian product, crossed with strategies and seeds); "
                          "STRATEGY,...: limits it to those strategies")
    cmp.add_argument("--baseline", default="", help="variant the paired differences refer to (default: the first)")
    cmp.add_argument("--out", default="", help="sweep directory (default results/compare-<experiment>)")
    cmp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    cmp.add_argument("--log", choices=["tensorboard"], help="also write TensorBoard event files for every run")
    cmp.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def run_overrides(args: argparse.Namespace) -> dict[str, object]:
    values: dict[str, object] = dict(parse_assignments(args.overrides))
    for flag, key in (("strategy", "strategy"), ("clients", "federation.num_clients"), ("rounds", "federation.rounds"),
                      ("seed", "seed"), ("out", "out"), ("gpus_per_worker", "simulation.gpus_per_worker"),
                      ("workers", "simulation.num_workers")):
        value = getattr(args, flag, None)
        if value is not None:
            values[key] = value
    if getattr(args, "faults", None):
        from fedmoe_sim.faults import parse_faults
        values.update(parse_faults(args.faults))
    if getattr(args, "log", None):
        values["log"] = args.log
    return values


def check_out_dir(out: Path, cfg: RunConfig) -> None:
    """A run directory may be reused only by the same config (a rerun); never mix results."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory")
    recorded = out / "config.json"
    if recorded.exists():
        old = json.loads(recorded.read_text()).get("config_hash")
        if old != cfg.identity_hash():
            raise ConfigError(f"--out {out} holds a run of another config (hash {old}, this one "
                              f"{cfg.identity_hash()}); choose a new directory")
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} exists and is not a fedmoe-sim run directory; choose a new directory")
    if not cfg.resume and (out / CHECKPOINT).exists() and not (out / "summary.json").exists():
        raise ConfigError(f"--out {out} holds an unfinished run with a checkpoint; continue it with --resume {out}, "
                          "or choose a new directory")


def prepare_run(cfg: RunConfig) -> None:
    """Fail fast in this process on what would otherwise fail inside Ray workers (data, model, out dir)."""
    from experiments.registry import get_method
    from fedmoe_sim.workspace import get_workspace
    from strategies._base import check_method

    method = get_method(cfg.strategy)
    if cfg.out:
        check_out_dir(Path(cfg.out), cfg)
    try:
        ws = get_workspace(cfg)  # builds data + model once; the in-process server reuses it
        check_method(method.strategy, cfg, ws)
    except (ValueError, FileNotFoundError) as exc:  # unknown domain, missing dataset root, ...
        raise ConfigError(str(exc)) from None


def cmd_run(args: argparse.Namespace) -> int:
    from experiments.api import run_config
    from experiments.catalogue import build_config

    if args.resume:
        cfg = recorded_config(Path(args.resume), run_overrides(args), args.out)
        if RunRecorder.is_complete(Path(cfg.out), cfg.identity_hash()):
            print(f"{cfg.out} is already complete; nothing to resume")
    else:
        cfg = build_config(args.experiment, run_overrides(args))
    summary = RunSummary.from_dict(run_config(cfg, progress=not args.quiet))
    print(headline(summary))
    if cfg.out:
        print(f"results in {cfg.out}/ (config.json, rounds.csv, rounds.jsonl, ledger.csv, summary.json)")
    return 0


def recorded_config(out: Path, overrides: dict[str, object], out_flag: str | None = None) -> RunConfig:
    """The config recorded in the run directory, with resume on; overrides given beside
    --resume must leave its identity unchanged (checked by check_out_dir)."""
    recorded = out / "config.json"
    if not recorded.is_file():
        raise ConfigError(f"--resume {out}: no fedmoe-sim run there (no config.json)")
    try:
        base = flatten(json.loads(recorded.read_text())["config"])
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"--resume {out}: config.json is unreadable ({exc})") from None
    if out_flag is not None and Path(out_flag) != out:
        raise ConfigError(f"--resume {out} and --out {out_flag} name different directories")
    return resolve_config(base, {**overrides, "out": str(out), "resume": True})


def headline(summary) -> str:
    """One line a user reads after a run: accuracy, worst client, bytes, time."""
    final = summary.final
    acc = final.get("acc-mean", float("nan"))
    worst = final.get("client-eval/worst-client-acc", float("nan"))
    mib = 1024 * 1024
    return (f"{summary.strategy} seed {summary.seed}: mean accuracy {100 * acc:.1f}% over domains, "
            f"worst client {100 * worst:.1f}%, up {summary.bytes_up / mib:.2f} MiB, "
            f"down {summary.bytes_down / mib:.2f} MiB, {summary.wall_s:.1f} s")


def cmd_experiments(args: argparse.Namespace) -> int:
    from experiments.catalogue import EXPERIMENTS

    width = max(len(n) for n in EXPERIMENTS)
    for name, exp in EXPERIMENTS.items():
        print(f"{name:<{width}}  {exp.description}")
    return 0


def cmd_strategies(args: argparse.Namespace) -> int:
    from experiments.registry import METHODS

    width = max(len(n) for n in METHODS)
    for name, m in METHODS.items():
        print(f"{name:<{width}}  {m.description}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from experiments.catalogue import build_config

    cfg = build_config(args.name, parse_assignments(args.overrides))
    flat = cfg.to_flat()
    types = known_keys()
    width = max(len(k) for k in flat)
    for key, value in flat.items():
        print(f"{key:<{width}} = {json.dumps(value)}  # {getattr(types[key], '__name__', types[key])}")
    return 0


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--{what} must be a comma list of integers (got {text!r})") from None
    if not values or len(set(values)) != len(values):
        raise ConfigError(f"--{what} must list distinct integers (got {text!r})")
    return values


def cmd_compare(args: argparse.Namespace) -> int:
    from experiments.api import compare
    from experiments.compare import GridAxis

    overrides = parse_assignments(args.overrides)
    if args.log:
        overrides["log"] = args.log
    result = compare(args.experiment, [s.strip() for s in args.strategies.split(",") if s.strip()],
                     _int_list(args.seeds, "seeds"), grid=[GridAxis.parse(g) for g in args.grid],
                     baseline=args.baseline, out=args.out, overrides=overrides, progress=not args.quiet)
    print(result.table_md)
    print(f"\ntables, plots and report in {result.out}/ (table.md, table.csv, runs.csv, report.md, *.png)")
    return 0


COMMANDS = {"run": cmd_run, "compare": cmd_compare, "experiments": cmd_experiments, "strategies": cmd_strategies,
            "show": cmd_show}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except (UsageError, ConfigError) as exc:
        print(f"fedmoe-sim: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fedmoe-sim: interrupted; finished runs are kept, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
