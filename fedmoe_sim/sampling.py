"""Who trains when, fixed in advance from the seed.

Fairness by construction (as FL-bench does): the per-round cohorts are a pure
function of (seed, number of clients, fraction, rounds), so every strategy
compared under one seed trains and evaluates exactly the same clients.
"""

from __future__ import annotations

import math

import numpy as np


def cohort_size(num_clients: int, fraction: float) -> int:
    return max(1, min(num_clients, int(math.ceil(fraction * num_clients))))


def client_schedule(num_clients: int, rounds: int, fraction: float, seed: int, stream: str = "train") -> list[list[int]]:
    """Sorted client ids sampled without replacement for rounds 1..rounds (index 0 = round 1)."""
    k = cohort_size(num_clients, fraction)
    rng = np.random.default_rng([seed, {"train": 1, "evaluate": 2}[stream]])
    schedule = []
    for _ in range(rounds):
        ids = np.arange(num_clients) if k == num_clients else rng.choice(num_clients, size=k, replace=False)
        schedule.append(sorted(int(i) for i in ids))
    return schedule


def shard(client_ids: list[int], num_nodes: int) -> list[list[int]]:
    """Split sorted client ids into at most num_nodes contiguous, balanced chunks (no empty chunk)."""
    if num_nodes < 1:
        raise ValueError(f"num_nodes must be >= 1 (got {num_nodes})")
    chunks = np.array_split(np.asarray(client_ids, dtype=int), min(num_nodes, max(len(client_ids), 1)))
    return [[int(c) for c in chunk] for chunk in chunks if len(chunk)]
