"""Measure a proposed speed-up of BENCHMARKS_sim.md before anyone writes it for real.

Runs (b), our simulation, for FedAvg as is (v0) and with the prototype of
benchmarks/_speedups.py (v4: one partial sum per node), alternating per cell in
ONE simulation started the way experiments.runner.run_many starts it:
  .venv/bin/python benchmarks/prototype_speedups.py [--cells tiny:200,realistic:500] [--loop]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _speedups  # noqa: E402  (installs the switchable patch in this process)
import sim_speed  # noqa: E402
from _speedups import BASE_TIMEOUT, VARIANTS, variant_of  # noqa: E402
from _workloads import workload_config  # noqa: E402


def main() -> int:
    from flwr.simulation import run_simulation

    from experiments.flower_patches import shorten_message_pickup
    from experiments.runner import backend_config, num_nodes, quiet_flower
    from strategies.app import make_server_app

    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", default="tiny:200,smallest:200,realistic:200,tiny:500,realistic:500")
    ap.add_argument("--variants", default="0,4")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--total", type=int, default=1000)
    ap.add_argument("--loop", action="store_true", help="also time (a), the plain loop, per cell")
    args = ap.parse_args()
    variants = [int(v) for v in args.variants.split(",")]
    cells = [(w, int(c), args.total) for w, c in (x.split(":") for x in args.cells.split(","))]
    out = Path(tempfile.mkdtemp(prefix="prototype-"))
    runs, cfgs = [], []
    for cell in cells:
        for v in variants:
            cfg = workload_config(cell[0], cell[2], cell[1], "fedavg", args.rounds, str(out / f"{cell[0]}-{cell[1]}-v{v}"))
            cfg = dataclasses.replace(cfg, federation=dataclasses.replace(cfg.federation, round_timeout=BASE_TIMEOUT + v))
            runs.append((cell, v))
            cfgs.append(cfg)
    started = []

    def mark(i, cfg):
        _speedups.set_variant(variant_of(cfg))
        started.append(time.monotonic())
        sim_speed.log(f"{runs[i][0]} {VARIANTS[variant_of(cfg)]}")
        return ""

    quiet_flower()
    shorten_message_pickup()      # as run_many does
    summaries: list = []
    mon = sim_speed.TreeRSS()
    with mon:
        run_simulation(server_app=make_server_app(cfgs, mark, False, summaries), client_app=_speedups.app,
                       num_supernodes=num_nodes(cfgs[0]), backend_config=backend_config(cfgs[0]))
        loop = {}
        if args.loop:
            for cell in cells:
                spans = sim_speed.run_loop(workload_config(cell[0], cell[2], cell[1], "fedavg", args.rounds))
                loop[cell] = (sim_speed.steady([b - a for a, b in spans]), mon.foreign_share((spans[1][0], spans[-2][1])))
    result = {}
    print(f"\nseconds per round, median of rounds 2..{args.rounds - 1} (ext = other processes' CPU share)")
    for (cell, v), cfg, summary, t0 in zip(runs, cfgs, summaries, started, strict=True):
        rows = [json.loads(x) for x in (Path(cfg.out) / "rounds.jsonl").read_text().splitlines() if x]
        wall = [0.0] + [float(r["wall-s"]) for r in rows]
        s = sim_speed.steady([b - a for a, b in zip(wall, wall[1:])])
        ext = mon.foreign_share((t0 + wall[1], t0 + wall[-2]))
        acc = rows[-1].get("acc-mean", rows[-1].get("client-eval/acc-mean"))
        base = result.get((cell, 0))
        result[(cell, v)] = s
        a = loop.get(cell)
        print(f"{cell[0]:9s} {cell[1]:4d}/{cell[2]}  {VARIANTS[v]:10s} {s:7.3f} s"
              + (f"  x{base / s:4.2f} vs v0" if base else "          ")
              + (f"  b/a {s / a[0]:5.2f}" if a else "")
              + f"  bytes-up {summary.bytes_up}  acc {'-' if acc is None else f'{acc:.3f}'}"
              + f"  ext {100 * (ext or 0):.0f}%")
    for cell, (a, ext) in loop.items():
        print(f"(a) loop {cell[0]:9s} {cell[1]:4d}/{cell[2]}  {a:7.3f} s  ext {100 * (ext or 0):.0f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
