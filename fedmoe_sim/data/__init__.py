"""Data layer: benchmarks (offline digits/text, real torchvision/folder/HF) and client partitions.

`load_benchmark` and `client_splits` are the two entry points the apps use;
both are pure functions of the config and seed (callers cache per process).
"""

from __future__ import annotations

import math

from fedmoe_sim.config import DataConfig
from fedmoe_sim.data.base import Benchmark, ClientSplit, Domain
from fedmoe_sim.data.digits import load_digits_domains
from fedmoe_sim.data.partition import ClientIndices, partition_clients, partition_indices, pooled_train
from fedmoe_sim.data.real import load_hf, load_imagefolder, load_torchvision
from fedmoe_sim.data.text import load_text_domains

__all__ = [
    "Benchmark", "ClientIndices", "ClientSplit", "Domain", "client_splits", "load_benchmark",
    "load_digits_domains", "load_hf", "load_imagefolder", "load_text_domains", "load_torchvision",
    "partition_clients", "partition_indices", "pooled_train",
]


def load_benchmark(data_cfg: DataConfig, seed: int) -> Benchmark:
    """The benchmark named by `data_cfg.benchmark` (DataConfig has already validated the name).

    The data never depend on `seed` except through the text generator: digits use a
    fixed base split, and real datasets without a test split are cut with split_seed 0,
    so the test sets stay the same across run seeds (seeds vary partitions instead).
    """
    kind = data_cfg.benchmark
    if kind == "digits-domains":
        return load_digits_domains(data_cfg.domain_list, seed=seed, pool=data_cfg.digits_pool)
    if kind == "text-domains":
        return load_text_domains(data_cfg.domain_list, seed=seed)
    if kind == "torchvision":
        return load_torchvision(data_cfg.name, data_cfg.root, download=data_cfg.download)
    if kind == "imagefolder":
        return load_imagefolder(data_cfg.root)
    if kind == "hf":
        return load_hf(data_cfg.name or data_cfg.root)
    raise ValueError(f"unknown data.benchmark {kind!r}")  # unreachable after DataConfig validation


def client_splits(benchmark: Benchmark, data_cfg: DataConfig, num_clients: int, seed: int) -> list[ClientSplit]:
    """`partition_clients` with the partitioner settings taken from the DataConfig.

    `data.samples_per_client` counts training examples (DESIGN: 60 private images
    per client); the client's own test split comes on top of it.
    """
    cap = data_cfg.samples_per_client
    if cap:
        cap = math.ceil(cap / (1 - data_cfg.test_fraction))
    return partition_clients(
        benchmark, num_clients, data_cfg.partitioner, seed, alpha=data_cfg.alpha,
        classes_per_client=data_cfg.classes_per_client, samples_per_client=cap,
        test_fraction=data_cfg.test_fraction,
    )
