"""Client partitions of a Benchmark's private train pools, through flwr-datasets partitioners.

Why flwr-datasets: its IID / Dirichlet / pathological partitioners are the
community's reference implementations, so our non-IID settings mean what
they mean elsewhere. They work on `datasets.Dataset`, so each call wraps an
in-memory table {"idx", "label"} whose "idx" points back into the pooled
numpy arrays (`pooled_train`); partitions are index arrays, never copies
of the data until `partition_clients` materialises them.

All indices are into the pooled train pool: domains' train arrays
concatenated in Benchmark.domains order. Everything is a pure function of
(benchmark, arguments, seed): every strategy sees the same clients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedmoe_sim.data.base import Benchmark, ClientSplit

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner

PARTITIONERS = ("by-domain", "iid", "dirichlet", "pathological")


@dataclass(frozen=True)
class ClientIndices:
    """One client's share as int64 indices into `pooled_train(benchmark)` (disjoint across clients)."""

    client_id: int
    domain: int
    train: np.ndarray
    test: np.ndarray


def pooled_labels(benchmark: Benchmark) -> tuple[np.ndarray, np.ndarray]:
    """Labels [N] and domain index [N] of the pooled train pool (no copy of the inputs)."""
    y = np.concatenate([d.y_train for d in benchmark.domains]).astype(np.int64)
    dom = np.concatenate([np.full(len(d.y_train), i, np.int64) for i, d in enumerate(benchmark.domains)])
    return y, dom


def pooled_train(benchmark: Benchmark) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All domains' train pools stacked in Benchmark.domains order: x [N, ...], y [N], domain [N]."""
    return (np.concatenate([d.x_train for d in benchmark.domains]), *pooled_labels(benchmark))


def _rng(seed: int, *tags: int) -> np.random.Generator:
    return np.random.default_rng([seed, *tags])


def _run_partitioner(partitioner: Partitioner, idx: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
    """Apply a flwr-datasets partitioner to pool rows `idx`; return each partition's pool indices."""
    from datasets import Dataset

    partitioner.dataset = Dataset.from_dict({"idx": idx.astype(np.int64), "label": labels.astype(np.int64)})
    return [np.asarray(partitioner.load_partition(p)["idx"], dtype=np.int64)
            for p in range(partitioner.num_partitions)]


def _too_few(num_clients: int, num_examples: int, where: str) -> ValueError:
    return ValueError(f"cannot give {num_clients} clients a non-empty partition of {num_examples} examples{where}")


def _shares(y: np.ndarray, dom: np.ndarray, num_clients: int, partitioner: str, seed: int,
            alpha: float, classes_per_client: int, names: tuple[str, ...]) -> list[tuple[int, np.ndarray]]:
    """(domain, pool indices) per client, before the size cap and the train/test cut (domain -1: mixed)."""
    # Imported here: flwr_datasets + datasets cost ~3 s, which `import fedmoe_sim.data` should not.
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    if partitioner == "by-domain":
        # Client c belongs to domain c % D; each domain's pool is shuffled (seeded), then
        # IidPartitioner cuts it into contiguous equal shards, one per client of that domain.
        shards: dict[int, list[np.ndarray]] = {}
        for d, name in enumerate(names):
            members = [c for c in range(num_clients) if c % len(names) == d]
            if not members:
                continue
            idx = _rng(seed, 0, d).permutation(np.flatnonzero(dom == d))
            if len(members) > len(idx):
                raise _too_few(len(members), len(idx), f" in domain {name!r}")
            shards[d] = _run_partitioner(IidPartitioner(len(members)), idx, y[idx])
        return [(c % len(names), shards[c % len(names)][c // len(names)]) for c in range(num_clients)]

    idx = _rng(seed, 0).permutation(len(y))
    if num_clients > len(idx):
        raise _too_few(num_clients, len(idx), "")
    if partitioner == "iid":
        parts = _run_partitioner(IidPartitioner(num_clients), idx, y[idx])
    elif partitioner == "dirichlet":
        # self_balancing stops feeding clients already above the mean size, and a minimum of 2
        # (1 when data is that scarce) lets every client keep a test example; flwr-datasets
        # resamples up to 10 times and then fails, which we turn into one line below.
        min_size = min(2, len(idx) // num_clients)
        part = DirichletPartitioner(num_clients, "label", alpha, min_partition_size=min_size,
                                    self_balancing=True, shuffle=True, seed=seed)
        try:
            parts = _run_partitioner(part, idx, y[idx])
        except ValueError as err:
            raise ValueError(f"dirichlet partition (alpha={alpha}) of {len(idx)} examples over {num_clients} "
                             f"clients left a client under {min_size} examples in 11 draws; "
                             f"raise data.alpha or lower the number of clients") from err
    elif partitioner == "pathological":
        # first-deterministic: client c always holds class c % C, so every class is used (as in
        # the paper that introduced the scheme); the other classes are drawn with the seed.
        part = PathologicalPartitioner(num_clients, "label", classes_per_client,
                                       class_assignment_mode="first-deterministic", shuffle=True, seed=seed)
        try:
            parts = _run_partitioner(part, idx, y[idx])
        except ValueError as err:
            raise ValueError(f"pathological partition ({classes_per_client} classes per client) of "
                             f"{len(idx)} examples over {num_clients} clients failed: {err}") from err
    else:
        raise ValueError(f"unknown partitioner {partitioner!r}; allowed: {', '.join(PARTITIONERS)}")
    return [(-1, p) for p in parts]  # mixed clients: domain set after the cap (partition_indices)


def partition_indices(benchmark: Benchmark, num_clients: int, partitioner: str, seed: int, *,
                      alpha: float = 0.5, classes_per_client: int = 2, samples_per_client: int = 0,
                      test_fraction: float = 0.2) -> list[ClientIndices]:
    """Index-level partition; see `partition_clients` for the rules."""
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1 (got {num_clients})")
    if partitioner not in PARTITIONERS:
        raise ValueError(f"unknown partitioner {partitioner!r}; allowed: {', '.join(PARTITIONERS)}")
    y, dom = pooled_labels(benchmark)
    shares = _shares(y, dom, num_clients, partitioner, seed, alpha, classes_per_client, benchmark.domain_names)
    out = []
    for c, (d, share) in enumerate(shares):
        if len(share) == 0:
            raise _too_few(num_clients, len(y), f" with partitioner {partitioner!r} (client {c} got none)")
        rng = _rng(seed, 1, c)
        if 0 < samples_per_client < len(share):
            share = rng.choice(share, size=samples_per_client, replace=False)
        share = rng.permutation(share)
        if d == -1:
            # A mixed client is reported under the majority domain of what it finally holds
            # (ties: lowest index), so per-domain tables still have a row for it.
            d = int(np.bincount(dom[share], minlength=len(benchmark.domains)).argmax())
        n_test = min(max(1, round(len(share) * test_fraction)), len(share) - 1) if len(share) >= 2 else 0
        out.append(ClientIndices(c, d, np.sort(share[n_test:]), np.sort(share[:n_test])))
    return out


def partition_clients(benchmark: Benchmark, num_clients: int, partitioner: str, seed: int, *,
                      alpha: float = 0.5, classes_per_client: int = 2, samples_per_client: int = 0,
                      test_fraction: float = 0.2) -> list[ClientSplit]:
    """Split the benchmark's private train pools into `num_clients` clients.

    partitioner:
    - "by-domain": client c holds data of domain c % D only; each domain's pool is
      split IID into equal disjoint shards among its clients (MetaMoE's setting).
    - "iid" / "dirichlet" (label skew, `alpha`) / "pathological" (`classes_per_client`
      classes each): over all domains pooled; ClientSplit.domain = the client's
      majority domain.
    samples_per_client > 0 caps a client's share (train + test together) at that
    many examples, drawn with the seed. Shares are disjoint before the cap, so when
    a pool holds fewer than clients x samples, clients get their whole (smaller,
    equal for by-domain/iid) disjoint shares instead: no example is ever duplicated.
    Each share is then cut into train/test by `test_fraction` (at least one test
    example when the share has >= 2). Raises ValueError (one line) if any client
    would get no data.
    """
    parts = partition_indices(benchmark, num_clients, partitioner, seed, alpha=alpha,
                              classes_per_client=classes_per_client,
                              samples_per_client=samples_per_client, test_fraction=test_fraction)
    x = np.concatenate([d.x_train for d in benchmark.domains])
    y, _ = pooled_labels(benchmark)
    return [ClientSplit(p.client_id, p.domain, x[p.train], y[p.train], x[p.test], y[p.test]) for p in parts]
