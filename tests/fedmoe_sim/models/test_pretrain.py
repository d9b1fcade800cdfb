"""Backbone pretraining: accurate on clean digits, deterministic, cached atomically on disk."""

from __future__ import annotations

import time

import numpy as np
import torch

from fedmoe_sim.models import build_model
from fedmoe_sim.models import pretrain
from fedmoe_sim.models.pretrain import cache_dir, cache_key, clear_memo, pretrain_mixer, pretrained_mixer_state


def test_pretrained_backbone_reads_clean_digits(digits_benchmark, mixer_cfg):
    t0 = time.perf_counter()
    model = build_model(digits_benchmark, mixer_cfg)
    seconds = time.perf_counter() - t0
    test = digits_benchmark.domains[0]
    model.eval()
    with torch.no_grad():
        acc = float((model(model.prepare(test.x_test)).argmax(1).numpy() == test.y_test).mean())
    print(f"\nclean-digit accuracy {acc:.3f} after {mixer_cfg.pretrain_steps} steps ({seconds:.1f} s incl. build)")
    assert acc > 0.90


def test_pretraining_is_deterministic(digits_benchmark):
    x, y = digits_benchmark.pretrain_x, digits_benchmark.pretrain_y
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    try:
        torch.set_num_threads(2)                              # the caller's thread count does not matter
        a = pretrain_mixer(x, y, width=32, blocks=2, num_classes=10, steps=20)
        assert torch.get_num_threads() == 2                   # and is restored
        torch.set_num_threads(1)
        b = pretrain_mixer(x, y, width=32, blocks=2, num_classes=10, steps=20)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(rng, torch.get_rng_state())           # seeds are its own, global RNG untouched
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_disk_cache_round_trips_and_names_the_recipe(digits_benchmark):
    x, y = digits_benchmark.pretrain_x, digits_benchmark.pretrain_y
    first = pretrained_mixer_state(x, y, width=16, blocks=1, num_classes=10, steps=10)
    key = cache_key(x, y, width=16, blocks=1, num_classes=10, steps=10)
    files = list(cache_dir().glob(f"mixer-w16-b1-s10-{key}.pt"))
    assert len(files) == 1
    assert not list(cache_dir().glob("*.tmp"))               # the atomic write left no temp file
    clear_memo()
    second = pretrained_mixer_state(x, y, width=16, blocks=1, num_classes=10, steps=10)      # now from disk
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert pretrained_mixer_state(x, y, width=16, blocks=1, num_classes=10, steps=10) is second   # and memoised


def test_cache_key_tracks_data_and_settings(digits_benchmark):
    x, y = digits_benchmark.pretrain_x, digits_benchmark.pretrain_y
    base = cache_key(x, y, 64, 3, 10, 100)
    y2 = y.copy()
    y2[0] = (y2[0] + 1) % 10
    assert len({base, cache_key(x, y, 64, 3, 10, 101), cache_key(x, y, 32, 3, 10, 100),
                cache_key(x, y, 64, 2, 10, 100), cache_key(x, y, 64, 3, 11, 100),
                cache_key(x, y2, 64, 3, 10, 100)}) == 6
    assert cache_key(x.copy(), y.copy(), 64, 3, 10, 100) == base


def test_damaged_cache_file_is_retrained(digits_benchmark):
    x, y = digits_benchmark.pretrain_x, digits_benchmark.pretrain_y
    key = cache_key(x, y, width=8, blocks=1, num_classes=10, steps=5)
    path = cache_dir() / f"mixer-w8-b1-s5-{key}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a checkpoint")
    clear_memo()
    state = pretrained_mixer_state(x, y, width=8, blocks=1, num_classes=10, steps=5)
    assert np.isfinite(state["head.weight"].numpy()).all()
    assert pretrain._load(path) is not None                  # overwritten with a good file
