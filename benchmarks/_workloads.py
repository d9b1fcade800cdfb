"""The workloads of benchmarks/sim_speed.py, defined once for (a) loop, (b) ours and (c) naive.

Every mode trains the same clients on the same data with the same
`fedmoe_sim.training.train_local`, so the modes differ only in how the work
is driven (a plain loop, our simulation, a one-message-per-client Flower app).

- realistic: the digits-domains experiment as shipped: frozen pretrained
  mixer (width 64, 3 blocks) + rank-8 LoRA expert (9,216 floats), 10 local
  epochs, batch 16, SGD momentum + clipping, +-1 px augmentation. With 1,000
  clients the 4 x 500 private images give every client 1 training image (and
  1 test image), i.e. 10 SGD steps per client per round (~15 ms on one core);
  with 100 clients, 16 training images, again 10 steps of one batch.
- tiny: `model.backbone = "tiny-mlp"`, an MLP 64-128-10 on the flattened 8x8
  digits (all 9,610 weights trained and uploaded), 1 local epoch, no
  augmentation.
- smallest: the smallest configuration our framework runs unmodified: the
  realistic model with 1 local epoch (1 SGD step per client at 1,000 clients).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from experiments.catalogue import build_config
from fedmoe_sim.config import RunConfig
from fedmoe_sim.sampling import cohort_size

EXPERIMENT = "digits-domains"


@dataclass(frozen=True)
class Workload:
    name: str
    label: str
    overrides: dict
    tiny_mlp: bool = False     # the classic whole-model MLP (every weight is uploaded)


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("realistic", "mixer + rank-8 LoRA expert, 10 local epochs (digits-domains defaults)", {}),
        Workload("tiny", "MLP 64-128-10, 1 local epoch, no augmentation",
                 {"model.backbone": "tiny-mlp", "model.width": 128, "train.local_epochs": 1, "train.augment": False},
                 tiny_mlp=True),
        Workload("smallest", "mixer + rank-8 LoRA expert, 1 local epoch (smallest unmodified config)",
                 {"train.local_epochs": 1}),
    )
}


@lru_cache(maxsize=64)
def workload_config(workload: str, num_clients: int, cohort: int, strategy: str = "fedavg", rounds: int = 5,
                    out: str = "", seed: int = 0) -> RunConfig:
    """The RunConfig of one benchmark cell. Only the last round evaluates (20 clients at most)."""
    w = WORKLOADS[workload]
    values = {
        **w.overrides,
        "strategy": strategy,
        "seed": seed,
        "out": out,
        "federation.num_clients": num_clients,
        "federation.fraction_train": cohort / num_clients,
        "federation.rounds": rounds,
        "federation.eval_every": rounds + 1,               # only the last round evaluates
        "federation.fraction_evaluate": min(20, num_clients) / num_clients,
    }
    cfg = build_config(EXPERIMENT, values)
    got = cohort_size(num_clients, cfg.federation.fraction_train)
    if got != cohort:
        raise ValueError(f"fraction {cohort}/{num_clients} samples {got} clients, not {cohort}")
    return cfg
