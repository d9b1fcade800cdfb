"""The ExpertModel contract (on the mixer): expert-only state, in-place loads, seeded resets."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from fedmoe_sim.models import build_model


@pytest.fixture
def model(digits_benchmark, mixer_cfg):
    return build_model(digits_benchmark, mixer_cfg)


def test_expert_state_is_sorted_float32_copies(model):
    state = model.expert_state()
    assert list(state) == sorted(state)
    assert all(v.dtype == np.float32 for v in state.values())
    assert {k: (v.shape, "float32") for k, v in state.items()} == model.expert_spec()
    state[next(iter(state))][...] = 123.0                    # a copy: the model is untouched
    assert not np.any(model.expert_state()[next(iter(state))] == 123.0)


def test_load_expert_state_copies_in_place(model):
    params = {k: (id(p), p.data_ptr()) for k, p in model._expert.items()}
    rng = np.random.default_rng(0)
    state = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in model.expert_state().items()}
    model.load_expert_state(state)
    assert {k: (id(p), p.data_ptr()) for k, p in model._expert.items()} == params
    for k, v in model.expert_state().items():
        np.testing.assert_array_equal(v, state[k])


def test_load_expert_state_is_strict(model):
    state = model.expert_state()
    name = sorted(state)[0]
    pattern = re.escape(name)
    with pytest.raises(ValueError, match=pattern):
        model.load_expert_state({k: v for k, v in state.items() if k != name})
    with pytest.raises(ValueError, match="net.head.weight"):
        model.load_expert_state({**state, "net.head.weight": np.zeros((10, 64), np.float32)})
    with pytest.raises(ValueError, match=pattern + ".*shape"):
        model.load_expert_state({**state, name: np.zeros((1, 1), np.float32)})


def test_reset_expert_is_a_function_of_the_seed(model):
    model.reset_expert(5)
    a = model.expert_state()
    model.load_expert_state({k: np.ones_like(v) for k, v in a.items()})
    model.reset_expert(5)
    b = model.expert_state()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    model.reset_expert(6)
    c = model.expert_state()
    a_keys = [k for k in a if k.endswith("lora_A")]
    assert all(not np.array_equal(a[k], c[k]) for k in a_keys)
    assert all(not np.any(c[k]) for k in c if k.endswith("lora_B"))           # B = 0
    assert all(np.abs(c[k]).max() <= 1 / np.sqrt(c[k].shape[1]) for k in a_keys)


def test_no_backbone_tensor_is_in_the_expert_and_training_leaves_it_alone(model, digits_benchmark):
    before = model.backbone_state()
    assert not set(before) & set(model.expert_state())
    n_expert = sum(v.size for v in model.expert_state().values())
    n_all = sum(p.numel() for p in model.parameters())
    assert n_all == n_expert + sum(v.size for v in before.values())
    x = model.prepare(digits_benchmark.domains[0].x_train)
    y = torch.as_tensor(digits_benchmark.domains[0].y_train)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.backbone_state()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_index_selects_rows_of_tensors_and_dicts(model):
    t = torch.arange(10.0).reshape(5, 2)
    idx = torch.tensor([4, 0])
    torch.testing.assert_close(model.index(t, idx), torch.tensor([[8.0, 9.0], [0.0, 1.0]]))
    d = model.index({"input_ids": t.long(), "attention_mask": t.long()}, idx)
    assert d["input_ids"].tolist() == [[8, 9], [0, 1]] and d["attention_mask"].shape == (2, 2)


def test_models_of_one_process_share_nothing_trainable(digits_benchmark, mixer_cfg):
    a, b = build_model(digits_benchmark, mixer_cfg), build_model(digits_benchmark, mixer_cfg)
    a.load_expert_state({k: np.ones_like(v) for k, v in a.expert_state().items()})
    assert not any(np.any(v == 1.0) for v in b.expert_state().values())
    with torch.no_grad():
        a.net.head.weight.add_(1.0)                          # even frozen weights are per model
    assert not torch.equal(a.net.head.weight, b.net.head.weight)


def test_a_single_expert_model_has_one_part_holding_every_trainable_tensor(model):
    from fedmoe_sim.models.expert_model import EXPERT

    assert model.part_names == (EXPERT,)
    state = model.expert_state()
    assert model.part_spec(EXPERT) == model.expert_spec()
    assert set(model.part_state(EXPERT)) == set(state)
    assert model.split_parts(state, [EXPERT]) == {EXPERT: state}
    assert model.split_parts(state, []) == {}
    with pytest.raises(ValueError, match="no part 'gate'"):
        model.part_spec("gate")


def test_load_part_writes_one_part_only_and_is_strict(model):
    from fedmoe_sim.models.expert_model import EXPERT

    zero = {k: np.zeros_like(v) for k, v in model.part_state(EXPERT).items()}
    model.load_part(EXPERT, zero)
    assert all(not v.any() for v in model.part_state(EXPERT).values())
    with pytest.raises(ValueError, match="keys differ"):
        model.load_part(EXPERT, dict(list(zero.items())[:1]))
    first = next(iter(zero))
    with pytest.raises(ValueError, match="has shape"):
        model.load_part(EXPERT, {**zero, first: np.zeros((1, 1), np.float32)})
