"""FedMoE-DA's client MoE on the digits mixer: parts, frozen backbone, gradients, top-k routing, seeded init,
per-expert state helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedmoe_sim.aggregation.fedmoe_da import apply_plan, neighbour_plan
from fedmoe_sim.config import ModelConfig, TrainConfig
from fedmoe_sim.models.client_moe import (EXPERTS, GATE, build_client_moe, expert_keys, expert_proxy, expert_tensors,
                                          gate_key, gate_proxies, layer_experts, set_expert_tensors)
from fedmoe_sim.training import train_local

E = 4


@pytest.fixture
def model(digits_benchmark, mixer_cfg):
    return build_client_moe(digits_benchmark, mixer_cfg, num_experts=E, top_k=2)


def _random_experts(model, seed: int = 1, scale: float = 0.3) -> dict[str, np.ndarray]:
    """The model's state with every tensor random (B != 0: every expert changes the output)."""
    rng = np.random.default_rng(seed)
    return {k: rng.normal(0, scale, v.shape).astype(np.float32) for k, v in model.expert_state().items()}


def test_parts_are_exactly_the_trainable_tensors_and_disjoint(model, mixer_cfg):
    d, r, blocks = mixer_cfg.width, mixer_cfg.lora_rank, mixer_cfg.blocks
    gate, experts = model.part_spec(GATE), model.part_spec(EXPERTS)
    assert model.part_names == (GATE, EXPERTS) and not set(gate) & set(experts)
    assert gate == {gate_key(i): ((E, d), "float32") for i in range(blocks)}
    assert set(experts) == {k for i in range(blocks) for k in expert_keys(i)}
    assert experts["blocks.1.ffn.fc1.lora_A"] == ((E, r, d), "float32")
    assert experts["blocks.1.ffn.fc1.lora_B"] == ((E, 2 * d, r), "float32")
    assert experts["blocks.1.ffn.fc2.lora_A"] == ((E, r, 2 * d), "float32")
    assert experts["blocks.1.ffn.fc2.lora_B"] == ((E, d, r), "float32")
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in model._expert.values()} and len(trainable) == 5 * blocks
    assert model.expert_spec() == {**gate, **experts}
    assert (model.num_layers, model.num_experts, model.top_k) == (blocks, E, 2)


def test_backbone_stays_frozen_and_unchanged_after_local_training(model, digits_benchmark):
    dom = digits_benchmark.domains[0]
    x, y = model.prepare(dom.x_train[:48]), torch.as_tensor(dom.y_train[:48])
    backbone, before = model.backbone_state(), model.expert_state()
    train_local(model, x, y, TrainConfig(local_epochs=2, batch_size=16, lr=0.05), seed=3)
    after = model.backbone_state()
    assert set(after) == set(backbone) and all(np.array_equal(backbone[k], after[k]) for k in backbone)
    changed = {k for k, v in model.expert_state().items() if not np.array_equal(v, before[k])}
    assert changed == set(before)                         # every gate and every LoRA tensor trained


@pytest.mark.parametrize("top_k", [1, 2])
def test_gate_and_experts_both_get_gradient(digits_benchmark, mixer_cfg, top_k):
    model = build_client_moe(digits_benchmark, mixer_cfg, num_experts=E, top_k=top_k)
    model.load_expert_state(_random_experts(model))
    dom = digits_benchmark.domains[0]
    F.cross_entropy(model(model.prepare(dom.x_train[:32])), torch.as_tensor(dom.y_train[:32])).backward()
    for name, p in model._expert.items():                 # > float noise: k = 1 keeps the softmax weight
        assert p.grad is not None and p.grad.abs().max() > 1e-4, name
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_top_k_routes_exactly_k_experts_per_token(digits_benchmark, mixer_cfg, top_k):
    model = build_client_moe(digits_benchmark, mixer_cfg, num_experts=E, top_k=top_k)
    model.load_expert_state(_random_experts(model))
    x = model.prepare(digits_benchmark.domains[0].x_test[:20])
    with torch.no_grad():
        weights = model.routing_weights(x)
    assert [tuple(w.shape) for w in weights] == [(20, 4, E)] * model.num_layers
    for w in weights:
        assert ((w > 0).sum(-1) == top_k).all()
        if top_k >= 2:                                    # renormalised over the top k
            torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
        else:                                             # the un-renormalised softmax weight, < 1
            assert (w.sum(-1) < 1).all()
    assert len({tuple(np.flatnonzero(w)) for w in weights[0].reshape(-1, E).numpy()}) > 1   # routing varies


def test_same_seed_same_init_and_a_fresh_moe_is_the_backbone(model, digits_benchmark, mixer_cfg):
    other = build_client_moe(digits_benchmark, mixer_cfg, num_experts=E, top_k=2)
    model.reset_expert(11)
    other.reset_expert(11)
    a, b = model.expert_state(), other.expert_state()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    other.reset_expert(12)
    assert not any(np.array_equal(a[k], v) for k, v in other.expert_state().items() if not k.endswith("lora_B"))
    assert all(not v.any() for k, v in a.items() if k.endswith("lora_B"))
    gate = a[gate_key(0)]                                 # orthogonal rows of norm 1/sqrt(3): distinct routing
    np.testing.assert_allclose(gate @ gate.T, np.eye(E) / 3, atol=1e-6)
    assert all(not np.allclose(a["blocks.0.ffn.fc1.lora_A"][0], a["blocks.0.ffn.fc1.lora_A"][m]) for m in (1, 2, 3))
    x = model.prepare(digits_benchmark.domains[0].x_test[:16])
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net.head(model.features(x)))


def test_init_does_not_touch_the_global_rng(digits_benchmark, mixer_cfg):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    build_client_moe(digits_benchmark, mixer_cfg, num_experts=E).reset_expert(5)
    torch.testing.assert_close(torch.rand(3), expected)


def test_per_expert_helpers_round_trip(model):
    state, new = model.expert_state(), _random_experts(model, seed=4)
    one = expert_tensors(new, 1, 2)
    assert sorted(one) == sorted(expert_keys(1)) and one["blocks.1.ffn.fc2.lora_B"].shape == (64, 8)
    written = set_expert_tensors(state, 1, 2, one)
    for k in state:
        for m in range(E):
            expect = new[k][m] if (k in one and m == 2) else state[k][m]
            np.testing.assert_array_equal(written[k][m], expect)
    assert all(np.array_equal(v, model.expert_state()[k]) for k, v in state.items())   # input untouched
    model.load_expert_state(written)
    for k, v in expert_tensors(model.expert_state(), 1, 2).items():
        np.testing.assert_array_equal(v, one[k])
    np.testing.assert_array_equal(expert_proxy(new, 2, 3), new[gate_key(2)][3])
    with pytest.raises(ValueError, match=r"expert index must be in \[0, 4\)"):
        expert_tensors(state, 0, E)
    with pytest.raises(ValueError, match="one expert is"):
        set_expert_tensors(state, 0, 0, {k: np.zeros(3, np.float32) for k in expert_keys(0)})


def test_a_plan_round_trips_through_client_states(model):
    """Server: stack gates -> plan; clients: mix their layer's experts -> load. Identical gates = per-expert mean."""
    states = [_random_experts(model, seed=s) for s in range(3)]
    for s in states[1:]:
        s[gate_key(0)] = states[0][gate_key(0)]
    plan = neighbour_plan(gate_proxies(states, 0), top_p=2, tau=1.0, layer=0)
    mixed = apply_plan(plan, [layer_experts(s, 0) for s in states])
    merged = {**states[1], **mixed[1]}
    model.load_expert_state(merged)
    key = "blocks.0.ffn.fc1.lora_A"
    np.testing.assert_allclose(model.expert_state()[key], np.mean([s[key] for s in states], axis=0), atol=1e-6)


def test_bad_settings_are_refused(digits_benchmark, mixer_cfg):
    with pytest.raises(ValueError, match=r"model.moe_top_k must be <= model.moe_experts \(2\)"):
        build_client_moe(digits_benchmark, mixer_cfg, num_experts=2, top_k=3)
    with pytest.raises(ValueError, match="model.moe_experts must be >= 1"):
        build_client_moe(digits_benchmark, mixer_cfg, num_experts=0)
    with pytest.raises(ValueError, match="one with a client MoE"):
        build_client_moe(digits_benchmark, ModelConfig(backbone="tiny-mlp"))
