"""ViT MoE (models/vit_moe.py): equivalence with one expert, gradients, per-sample routing, frozen sharing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedmoe_sim.config import MetaMoEConfig, ModelConfig
from fedmoe_sim.data.base import Benchmark, Domain
from fedmoe_sim.models import VitMoE, build_model, build_vit_moe_from_experts, mean_routing_vectors
from fedmoe_sim.unification import Expert, build_unified

VIT = ModelConfig(backbone="vit", vit_width=32, vit_layers=2, vit_patch=4, lora_rank=4, lora_alpha=8.0)
LAYERS = 2


@pytest.fixture(scope="module")
def model(digits_benchmark):
    return build_model(digits_benchmark, VIT)


@pytest.fixture(scope="module")
def x(digits_benchmark, model):
    return model.prepare(digits_benchmark.domains[0].x_train[:6])


def _states(model, k: int) -> list[dict[str, np.ndarray]]:
    """k random experts: LoRA B != 0, so each one changes the encoder (seeded)."""
    out = []
    for seed in range(k):
        rng = np.random.default_rng(20 + seed)
        out.append({n: rng.normal(0, 0.2, v.shape).astype(np.float32) for n, v in model.expert_state().items()})
    return out


def test_one_expert_vit_moe_equals_the_expert_model(model, x):
    (state,) = _states(model, 1)
    model.load_expert_state(state)
    moe = build_vit_moe_from_experts(model, [state], None, top_k=1, renormalize=True)
    with torch.no_grad():
        assert not torch.allclose(model(x), model.head(model.features(x)), atol=1e-3)   # the expert matters
        torch.testing.assert_close(moe(x), model(x), atol=1e-4, rtol=0)


def test_only_routers_loras_lambdas_and_head_train(model):
    moe = build_vit_moe_from_experts(model, _states(model, 2), None)
    names = sorted(n for n, p in moe.named_parameters() if p.requires_grad)
    assert len(names) == LAYERS * 6 + 2                                   # 4 LoRAs + gate + lambda per layer, head
    assert all(n.startswith("head.") or "lora_" in n or n.endswith(("gate.weight", ".lam")) for n in names)
    assert tuple(moe.ffns[0].lin1.lora_A.shape) == (2, 4, 32) and tuple(moe.ffns[0].lin2.lora_B.shape) == (2, 32, 4)
    assert moe.ffns[0].lin1.scale == pytest.approx(8.0 / 4)
    assert list(moe.trainable_state()) == names
    assert moe.lambdas() == pytest.approx([0.3] * LAYERS)


def test_head_is_the_mean_of_the_experts_heads(model):
    states = _states(model, 3)
    moe = build_vit_moe_from_experts(model, states, None)
    np.testing.assert_allclose(moe.head.weight.detach().numpy(), np.mean([s["head.weight"] for s in states], 0),
                               atol=1e-7)


def test_router_and_lambda_get_gradient(model, x):
    moe = build_vit_moe_from_experts(model, _states(model, 2), None, top_k=1)
    F.cross_entropy(moe(x), torch.arange(6) % 3).backward()
    assert max(float(r.gate.weight.grad.abs().max()) for r in moe.routers) > 0
    assert max(float(r.lam.grad.abs().max()) for r in moe.routers) > 0


def test_an_image_is_the_same_alone_and_in_a_mixed_batch(digits_benchmark, model):
    moe = build_vit_moe_from_experts(model, _states(model, 2), None, lambda_init=0.8).eval()
    dom = digits_benchmark.domains[0]
    mixed = model.prepare(np.concatenate([dom.x_train[:5], 1.0 - dom.x_train[5:10]]))   # two "domains"
    with torch.no_grad():
        together = moe(mixed)
        for i in (0, 7):
            torch.testing.assert_close(together[i], moe(mixed[i:i + 1])[0], atol=1e-5, rtol=0)
        for c_batch, c_alone in zip(moe.contexts(mixed), moe.contexts(mixed[7:8]), strict=True):
            torch.testing.assert_close(c_batch[7], c_alone[0], atol=1e-5, rtol=0)


def test_context_is_the_token_mean_of_m0_ffn_inputs(model, x):
    moe = build_vit_moe_from_experts(model, _states(model, 2), None)
    model.load_expert_state(_states(model, 3)[2])                         # the model's own expert is ignored
    with model.vit.disable_adapter(), torch.no_grad():                   # M0: the ViT without any expert
        hs = model.ffn_inputs(x)
    for c, h in zip(moe.contexts(x), hs, strict=True):
        torch.testing.assert_close(c, h.mean(dim=1), atol=1e-5, rtol=0)


def test_the_moe_shares_but_never_changes_the_frozen_backbone(model, x):
    model.load_expert_state(_states(model, 1)[0])
    model.eval()
    with torch.no_grad():
        before = model(x)
    moe = build_vit_moe_from_experts(model, _states(model, 2), None)
    q = "layers.0.attention.q_proj.weight"
    assert moe.attentions[0].q_proj.weight is model.base_model().get_parameter(q)      # no copy
    moe.train()
    opt = torch.optim.SGD([p for p in moe.parameters() if p.requires_grad], lr=0.1)
    F.cross_entropy(moe(x), torch.arange(6) % 3).backward()
    opt.step()
    moe.clamp_lambdas_()
    assert not any(m.training for m in model.modules())                  # moe.train() flipped only its own copies
    with torch.no_grad():
        torch.testing.assert_close(model(x), before)
        fresh = build_vit_moe_from_experts(model, _states(model, 2), None)
        fresh.load_trainable_state(moe.trainable_state())
        torch.testing.assert_close(fresh(x), moe(x))


def test_build_unified_dispatches_to_the_vit_moe(model, x):
    states = _states(model, 2)
    experts = []
    for i, st in enumerate(states):
        model.load_expert_state(st)
        experts.append(Expert(f"c{i}", i, st, mean_routing_vectors(model, x), np.arange(3), 1.0))
    moe = build_unified(model, experts, MetaMoEConfig(), seed=0)
    assert isinstance(moe, VitMoE)
    np.testing.assert_allclose(moe.routers[1].gate.weight.detach().numpy(), np.stack([e.routing[1] for e in experts]))


def test_clip_vision_moe_with_one_expert_equals_the_expert_model(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(7)
    CLIPVisionModel(CLIPVisionConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64)).save_pretrained(tmp_path)
    xs = np.random.default_rng(0).random((5, 3, 8, 8), dtype=np.float32)
    y = np.arange(5) % 2
    bench = Benchmark("rgb8", "image", 2, (Domain("d", xs, y, xs, y),))
    clip = build_model(bench, ModelConfig(backbone="vit", pretrained=str(tmp_path), lora_rank=4))
    (state,) = _states(clip, 1)
    clip.load_expert_state(state)
    moe = build_vit_moe_from_experts(clip, [state], None, renormalize=True)
    inputs = clip.prepare(xs)
    with torch.no_grad():
        torch.testing.assert_close(moe(inputs), clip(inputs), atol=1e-4, rtol=0)


def test_needs_a_vit_expert_model(digits_benchmark, mixer_cfg):
    mixer = build_model(digits_benchmark, mixer_cfg)
    with pytest.raises(ValueError, match="needs a VitExpertModel"):
        build_vit_moe_from_experts(mixer, [mixer.expert_state()])
