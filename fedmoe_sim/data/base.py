"""In-memory benchmark containers shared by every loader and partitioner.

A benchmark is a set of domains (each with a private train pool and a held-out
test set), an optional public pool (labelled, mixing the domains with
out-of-domain data: MetaMoE's proxies come from it) and an optional
pretraining set for backbones built here. Inputs are numpy arrays: images as
float32 `[N, C, H, W]` in [0, 1], text as an object array of `str`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Domain:
    name: str
    x_train: np.ndarray   # [N, ...] private pool: clients of this domain draw from it
    y_train: np.ndarray   # [N] int64
    x_test: np.ndarray    # [M, ...] held-out test set of the domain
    y_test: np.ndarray    # [M] int64


@dataclass(frozen=True)
class Benchmark:
    name: str
    kind: str                       # "image" or "text"
    num_classes: int                # size of the shared label space
    domains: tuple[Domain, ...]
    public_x: np.ndarray | None = None       # [P, ...] public pool
    public_y: np.ndarray | None = None       # [P] its own labels
    public_source: np.ndarray | None = None  # [P] domain index, or -1 for out-of-domain
    pretrain_x: np.ndarray | None = None     # base distribution for backbone pretraining
    pretrain_y: np.ndarray | None = None
    class_names: tuple[str, ...] = ()

    @property
    def domain_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.domains)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.domains[0].x_train.shape[1:])


@dataclass(frozen=True)
class ClientSplit:
    """One logical client's data: rows of its domain's (or the pooled) train pool.

    `partition.partition_indices` gives the same split as indices into the pooled pool.
    """

    client_id: int
    domain: int                    # index into Benchmark.domains (mixed partitions: the majority domain)
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray             # the client's own held-out split (personalised evaluation)
    y_test: np.ndarray

    @property
    def num_train(self) -> int:
        return int(len(self.y_train))


def check_domain_names(kind: str, names: tuple[str, ...], known, allowed) -> tuple[str, ...]:
    """`names` if every one is in `known` and none repeats; else ValueError naming the value
    and what is `allowed` (shown to the user as one line)."""
    for name in names:
        if name not in known:
            raise ValueError(f"unknown {kind} domain {name!r}; allowed: {', '.join(allowed)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{kind} domains must be distinct (got {', '.join(names)})")
    return names
