"""Tiny shared data and models for the model tests: sklearn's digits (shipped offline) and a few sentences."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from fedmoe_sim.config import ModelConfig
from fedmoe_sim.data.base import Benchmark, Domain

PRETRAIN_STEPS = 300   # fewer than the default 1500 to keep tests fast; still > 90% clean accuracy


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Backbone cache in a temp dir: tests never read or write ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDMOE_SIM_CACHE", str(tmp_path_factory.mktemp("fedmoe-cache")))
        yield


@pytest.fixture(scope="session")
def digits_benchmark() -> Benchmark:
    """Clean digits: 1000 pretraining images, one domain with 100 train / 697 test images."""
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]       # [1797, 1, 8, 8] in [0, 1]
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm], y[perm]
    clean = Domain("clean", x[1000:1100], y[1000:1100], x[1100:], y[1100:])
    return Benchmark("digits-test", "image", 10, (clean,), pretrain_x=x[:1000], pretrain_y=y[:1000])


@pytest.fixture(scope="session")
def mixer_cfg() -> ModelConfig:
    return ModelConfig(backbone="mixer", pretrain_steps=PRETRAIN_STEPS, lora_rank=8)


SENTENCES = np.array([
    "the striker scored twice in the final",
    "stocks fell sharply after the earnings report",
    "the new phone has a brighter screen",
    "rain is expected across the north tomorrow",
], dtype=object)


@pytest.fixture(scope="session")
def text_benchmark() -> Benchmark:
    y = np.array([0, 1, 2, 0], dtype=np.int64)
    news = Domain("news", SENTENCES, y, SENTENCES[:2], y[:2])
    return Benchmark("text-test", "text", 3, (news,))


@pytest.fixture(scope="session")
def text_cfg() -> ModelConfig:
    return ModelConfig(backbone="minilm", lora_rank=8, max_length=24)
