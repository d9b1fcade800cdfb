"""Digits Mixer: patches, augmentation, the expert split and build_model's checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmoe_sim.config import ModelConfig
from fedmoe_sim.data.base import Benchmark, Domain
from fedmoe_sim.models import build_model
from fedmoe_sim.models.mixer import patchify, random_translate


def test_patchify_makes_four_row_major_4x4_tokens():
    x = torch.arange(64.0).reshape(1, 1, 8, 8)
    tokens = patchify(x)                                   # [1, 4, 16]
    assert tokens.shape == (1, 4, 16)
    torch.testing.assert_close(tokens[0, 0, :4], torch.tensor([0.0, 1, 2, 3]))        # top-left, row 0
    torch.testing.assert_close(tokens[0, 1, :4], torch.tensor([4.0, 5, 6, 7]))        # top-right
    torch.testing.assert_close(tokens[0, 2, :4], torch.tensor([32.0, 33, 34, 35]))    # bottom-left
    torch.testing.assert_close(tokens[0, 0, 4:8], torch.tensor([8.0, 9, 10, 11]))     # top-left, row 1


def test_random_translate_moves_each_image_by_at_most_one_pixel():
    x = torch.zeros(200, 1, 8, 8)
    x[:, 0, 4, 4] = 1.0
    out = random_translate(x, torch.Generator().manual_seed(0))
    pos = out[:, 0].flatten(1).argmax(1)
    rows, cols = pos // 8, pos % 8
    assert out.sum() == 200                                   # the pixel stays inside
    assert set(rows.tolist()) == {3, 4, 5} and set(cols.tolist()) == {3, 4, 5}
    again = random_translate(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, again)


def test_expert_is_exactly_the_ffn_lora(digits_benchmark, mixer_cfg):
    model = build_model(digits_benchmark, mixer_cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"net.{k}" for k in model.expert_spec()}
    assert len(trainable) == 4 * mixer_cfg.blocks
    assert all(".ffn.fc" in k and "lora_" in k for k in model.expert_spec())
    assert model.expert_spec()["blocks.0.ffn.fc1.lora_A"] == ((8, 64), "float32")
    assert model.expert_spec()["blocks.0.ffn.fc1.lora_B"] == ((128, 8), "float32")


def test_fresh_expert_is_the_pretrained_backbone(digits_benchmark, mixer_cfg):
    model = build_model(digits_benchmark, mixer_cfg)
    x = model.prepare(digits_benchmark.domains[0].x_test[:32])
    model.reset_expert(7)                                   # B = 0: no change yet
    feats = model.features(x)
    with torch.no_grad():
        torch.testing.assert_close(model.net.pooled(x), feats)
    assert feats.shape == (32, mixer_cfg.width) and not feats.requires_grad


def test_features_ignore_the_expert(digits_benchmark, mixer_cfg):
    model = build_model(digits_benchmark, mixer_cfg)
    x = model.prepare(digits_benchmark.domains[0].x_test[:16])
    before, logits_before = model.features(x), model(x).detach()
    state = {k: np.full_like(v, 0.05) for k, v in model.expert_state().items()}
    model.load_expert_state(state)
    torch.testing.assert_close(model.features(x), before)
    assert not torch.allclose(model(x), logits_before)


def test_ffn_inputs_give_one_normed_hidden_per_block(digits_benchmark, mixer_cfg):
    model = build_model(digits_benchmark, mixer_cfg)
    x = model.prepare(digits_benchmark.domains[0].x_test[:5])
    hs = model.ffn_inputs(x)
    assert [tuple(h.shape) for h in hs] == [(5, 4, mixer_cfg.width)] * mixer_cfg.blocks
    torch.testing.assert_close(hs[0], model.net.blocks[0].norm1(model.net.embed(patchify(x))))


def test_prepare_rejects_wrong_shapes(digits_benchmark, mixer_cfg):
    model = build_model(digits_benchmark, mixer_cfg)
    with pytest.raises(ValueError, match=r"\[N, 1, 8, 8\]"):
        model.prepare(np.zeros((2, 1, 28, 28), dtype=np.float32))


def test_build_model_checks_the_benchmark(digits_benchmark, text_benchmark, mixer_cfg):
    with pytest.raises(ValueError, match="image benchmark"):
        build_model(text_benchmark, mixer_cfg)
    d = digits_benchmark.domains[0]
    mnist_sized = Domain(d.name, np.zeros((2, 1, 28, 28), np.float32), d.y_train[:2], d.x_test, d.y_test)
    big = Benchmark("big", "image", 10, (mnist_sized,), pretrain_x=digits_benchmark.pretrain_x,
                    pretrain_y=digits_benchmark.pretrain_y)
    with pytest.raises(ValueError, match="8, 8"):
        build_model(big, mixer_cfg)
    no_pretrain = Benchmark("np", "image", 10, digits_benchmark.domains)
    with pytest.raises(ValueError, match="pretrain"):
        build_model(no_pretrain, mixer_cfg)
    with pytest.raises(ValueError, match="text benchmark"):
        build_model(digits_benchmark, ModelConfig(backbone="minilm"))


def test_build_model_leaves_global_rng_alone(digits_benchmark, mixer_cfg):
    build_model(digits_benchmark, mixer_cfg)              # warm the memo
    state = torch.get_rng_state()
    build_model(digits_benchmark, mixer_cfg).reset_expert(3)
    assert torch.equal(state, torch.get_rng_state())
