"""`fedmoe-sim`: run, list and show experiments (compare lives in experiments/compare.py).

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
from fedmoe_sim.results import RunRecorder, RunSummary, read_summary
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
    run.add_argument("--quiet", action="store_true", help="no progress lines")

    sub.add_parser("experiments", help="list the experiment catalogue")
    sub.add_parser("strategies", help="list the registered strategies")
    show = sub.add_parser("show", help="print an experiment's resolved config")
    show.add_argument("name")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    from experiments.compare import add_compare_parser
    add_compare_parser(sub)
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
    from experiments.catalogue import build_config
    from experiments.runner import run_simulation

    cfg = resume_config(args) if args.resume else build_config(args.experiment, run_overrides(args))
    if cfg.resume and RunRecorder.is_complete(Path(cfg.out), cfg.identity_hash()):
        print(f"{cfg.out} is already complete; nothing to resume")
        print(headline(RunSummary.from_dict(read_summary(cfg.out))))
        return 0
    prepare_run(cfg)
    summary = run_simulation(cfg, show_progress=not args.quiet)
    print(headline(summary))
    if cfg.out:
        print(f"results in {cfg.out}/ (config.json, rounds.csv, rounds.jsonl, ledger.csv, summary.json)")
    return 0


def resume_config(args: argparse.Namespace) -> RunConfig:
    """The config recorded in the run directory, with resume on; options given beside
    --resume must leave its identity unchanged (checked by check_out_dir)."""
    out = Path(args.resume)
    recorded = out / "config.json"
    if not recorded.is_file():
        raise ConfigError(f"--resume {out}: no fedmoe-sim run there (no config.json)")
    try:
        base = flatten(json.loads(recorded.read_text())["config"])
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"--resume {out}: config.json is unreadable ({exc})") from None
    if args.out is not None and Path(args.out) != out:
        raise ConfigError(f"--resume {out} and --out {args.out} name different directories")
    return resolve_config(base, {**run_overrides(args), "out": str(out), "resume": True})


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


COMMANDS = {"run": cmd_run, "experiments": cmd_experiments, "strategies": cmd_strategies, "show": cmd_show}


def main(argv: list[str] | None = None) -> int:
    from experiments.compare import cmd_compare

    COMMANDS["compare"] = cmd_compare
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
