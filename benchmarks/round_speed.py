"""Seconds per round of the whole server + client path, in one process (no Ray): the protocol's cost.

Runs FedAvg on digits-domains with 1,000 clients, 100 of them per round, on the
in-process grid (`experiments.inprocess`: every message serialised through
Flower's protobuf both ways, the real ClientApp, 2 nodes), for the tiny MLP and
the realistic mixer + LoRA workloads. Without Ray's scheduling it isolates what
our own message building, checking and bookkeeping cost per round. Best of 3
after a warm-up run. CPU seconds (this process) beside wall seconds: on a shared
machine they drift less than wall time.

    .venv/bin/python benchmarks/round_speed.py [--vectorise]

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

from experiments.catalogue import build_config
from experiments.inprocess import run_inprocess
from fedmoe_sim.workspace import get_workspace

WORKLOADS = {"tiny": {"model.backbone": "tiny-mlp", "model.width": 128, "train.local_epochs": 1}, "realistic": {}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectorise", action="store_true", help="simulation.vectorise=true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    out, cpu_out = {}, {}
    for name, extra in WORKLOADS.items():
        cfg = build_config("digits-domains", {
            "strategy": "fedavg", "federation.num_clients": 1000, "federation.fraction_train": 0.1,
            "federation.fraction_evaluate": 0.02, "federation.rounds": 4,
            **({"simulation.vectorise": True} if args.vectorise else {}), **extra})
        get_workspace(cfg)
        run_inprocess([cfg])                       # warm-up: pretraining cache, data, kernels
        times, cpu = [], []
        for _ in range(3):
            t, c = time.perf_counter(), time.process_time()
            run_inprocess([cfg])
            times.append((time.perf_counter() - t) / cfg.federation.rounds)
            cpu.append((time.process_time() - c) / cfg.federation.rounds)
        out[name] = round(min(times), 4)
        cpu_out[name] = round(min(cpu), 4)
        print(f"{name}: {out[name]:.4f} s per round, {cpu_out[name]:.4f} CPU s per round "
              f"(100 of 1000 clients, best of 3)", flush=True)
    print(json.dumps({"benchmark": "round_speed", "vectorise": args.vectorise, "seconds_per_round": out,
                      "cpu_seconds_per_round": cpu_out}))


if __name__ == "__main__":
    main()
