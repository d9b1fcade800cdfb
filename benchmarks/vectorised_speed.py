"""Client training throughput: one after another against vectorised (fedmoe_sim.vectorised), one process.

Trains 200 logical clients of digits-domains once (one round's local training, the
benchmark's 10 local epochs) through `Workspace.train_clients`, with
simulation.vectorise off and on, for each model that can be vectorised, and
checks the two give the same experts (max abs difference). No Flower, no Ray:
this is the client-side work a worker does per message.

    .venv/bin/python benchmarks/vectorised_speed.py [--quick] [--device cpu|cuda]

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time

import numpy as np
import torch

from experiments.catalogue import build_config
from fedmoe_sim.workspace import Workspace

CELLS = [(1, 1000), (8, 200), (60, 200)]          # (images per client, clients in the federation)
BACKBONES = ("mixer", "tiny-mlp", "mixer-moe")


def measure(backbone: str, images: int, total: int, clients: int, gpus: float) -> dict:
    base = build_config("digits-domains", {
        "federation.num_clients": total, "data.samples_per_client": images if total == 200 else 0,
        "model.backbone": backbone, "model.width": 128 if backbone == "tiny-mlp" else 64,
        "simulation.gpus_per_worker": gpus})
    times, results = {}, {}
    for vec in (False, True):
        cfg = dataclasses.replace(base, simulation=dataclasses.replace(base.simulation, vectorise=vec))
        ws = Workspace(cfg)
        cids = list(range(clients))
        ws.train_clients(cids[:4], 1, [None] * 4)        # warm-up (kernels, caches)
        t = time.perf_counter()
        results[vec] = ws.train_clients(cids, 1, [None] * clients)
        if torch.cuda.is_available() and gpus > 0:
            torch.cuda.synchronize()
        times[vec] = time.perf_counter() - t
    diff = max(float(np.abs(a[0][k] - b[0][k]).max()) for a, b in zip(results[False], results[True], strict=True)
               for k in a[0])
    return {"backbone": backbone, "images_per_client": images, "clients": clients,
            "one_by_one_s": round(times[False], 4), "vectorised_s": round(times[True], 4),
            "speedup": round(times[False] / times[True], 2), "max_abs_diff": diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="50 clients, the mixer only")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    gpus = 1.0 if args.device == "cuda" else 0.0
    torch.set_num_threads(1)
    clients = 50 if args.quick else 200
    rows = []
    for images, total in CELLS:
        for backbone in (("mixer",) if args.quick else BACKBONES):
            row = measure(backbone, images, total, clients, gpus)
            rows.append(row)
            print(f"{backbone:9s} {images:2d} images x {clients} clients: one by one {row['one_by_one_s']:.2f} s, "
                  f"vectorised {row['vectorised_s']:.2f} s, x{row['speedup']:.1f}, max diff {row['max_abs_diff']:.1e}",
                  flush=True)
    print(json.dumps({"benchmark": "vectorised_speed", "device": args.device, "torch_threads": 1,
                      "torch": torch.__version__, "python": platform.python_version(), "cells": rows,
                      "same_result": all(r["max_abs_diff"] < 1e-5 for r in rows)}))


if __name__ == "__main__":
    main()
