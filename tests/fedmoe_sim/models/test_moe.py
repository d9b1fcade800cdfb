"""MoE layer: top-k routing, LoRA-expert mixtures against manual loops, and router gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedmoe_sim.models import build_model, build_moe_from_experts
from fedmoe_sim.models.lora import LoRALinear
from fedmoe_sim.models.moe import LoRAMoELinear, MoEFFN, TopKRouter


def _router(logit_weights: torch.Tensor, top_k: int, renormalize: bool) -> TopKRouter:
    r = TopKRouter(logit_weights.shape[1], logit_weights.shape[0], top_k, renormalize)
    with torch.no_grad():
        r.gate.weight.copy_(logit_weights)
    return r


def test_top_k_keeps_the_largest_logits():
    router = _router(torch.eye(3), top_k=2, renormalize=False)     # logits = h
    h = torch.tensor([[[3.0, 1.0, 2.0], [0.0, 5.0, 4.0]]])           # [B=1, T=2, D=3]
    weights, probs = router(h)
    torch.testing.assert_close(probs, torch.softmax(h, -1))
    assert (weights > 0).tolist() == [[[True, False, True], [False, True, True]]]
    torch.testing.assert_close(weights[0, 0, 0], probs[0, 0, 0])     # un-renormalised: the softmax value
    renorm, _ = _router(torch.eye(3), top_k=2, renormalize=True)(h)
    torch.testing.assert_close(renorm.sum(-1), torch.ones(1, 2))
    p0 = probs[0, 0]
    torch.testing.assert_close(renorm[0, 0, 0], p0[0] / (p0[0] + p0[2]))


def test_top_k_must_fit_the_experts():
    with pytest.raises(ValueError, match="top_k"):
        TopKRouter(4, 2, top_k=3)


def _stacked(k: int, d_in: int, d_out: int, r: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, r, d_in, generator=g), torch.randn(k, d_out, r, generator=g)


def test_lora_moe_linear_equals_a_manual_loop():
    torch.manual_seed(0)
    base = nn.Linear(3, 2)
    a, b = _stacked(k=3, d_in=3, d_out=2, r=2, seed=1)
    layer = LoRAMoELinear(base, a, b, scale=0.5)
    x = torch.randn(4, 3)
    w = torch.tensor([[1.0, 0, 0], [0, 0.3, 0.7], [0.2, 0.2, 0.6], [0, 0, 0]])
    expected = torch.stack([
        base(x[t]) + sum(w[t, k] * 0.5 * (b[k] @ a[k] @ x[t]) for k in range(3)) for t in range(4)])
    torch.testing.assert_close(layer(x, w), expected)


def test_one_expert_moe_linear_is_that_lora():
    base = nn.Linear(3, 2)
    lora = LoRALinear(base, rank=2, alpha=4.0)
    with torch.no_grad():
        lora.lora_A.normal_()
        lora.lora_B.normal_()
    moe = LoRAMoELinear(base, lora.lora_A[None], lora.lora_B[None], scale=lora.scale)
    x = torch.randn(5, 3)
    torch.testing.assert_close(moe(x, torch.ones(5, 1)), lora(x))


def _ffn(k: int = 3, d: int = 4, seed: int = 0) -> tuple[MoEFFN, nn.Linear, nn.Linear, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    fc1, fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
    with torch.no_grad():
        for p in [*fc1.parameters(), *fc2.parameters()]:
            p.copy_(torch.randn(p.shape, generator=g))
    a1, b1 = _stacked(k, d, 2 * d, 2, seed + 1)
    a2, b2 = _stacked(k, 2 * d, d, 2, seed + 2)
    lora = {"fc1.lora_A": a1, "fc1.lora_B": b1, "fc2.lora_A": a2, "fc2.lora_B": b2}
    return MoEFFN(fc1, fc2, lora, scale=0.25), fc1, fc2, lora


def test_moe_ffn_equals_base_plus_weighted_expert_deltas():
    moe, fc1, fc2, lora = _ffn()
    h = torch.randn(2, 3, 4)                                         # [B, T, D]
    w = torch.softmax(torch.randn(2, 3, 3), -1) * torch.tensor([1.0, 0.0, 1.0])   # sparse, un-renormalised

    def ffn_k(x, k):                                                 # expert k with dense merged weights
        w1 = fc1.weight + 0.25 * lora["fc1.lora_B"][k] @ lora["fc1.lora_A"][k]
        w2 = fc2.weight + 0.25 * lora["fc2.lora_B"][k] @ lora["fc2.lora_A"][k]
        return F.linear(F.gelu(F.linear(x, w1, fc1.bias)), w2, fc2.bias)

    expected = torch.empty(2, 3, 4)
    for bi in range(2):
        for t in range(3):
            x = h[bi, t]
            base = fc2(F.gelu(fc1(x)))
            expected[bi, t] = base + sum(w[bi, t, k] * (ffn_k(x, k) - base) for k in range(3))
    torch.testing.assert_close(moe(h, w), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(moe.expert_outputs(h)[1, 2, 0], ffn_k(h[1, 2], 0), atol=1e-5, rtol=1e-5)


def test_moe_ffn_with_weights_summing_to_one_is_the_expert_mixture():
    moe, *_ = _ffn()
    h = torch.randn(5, 4)
    w = torch.softmax(torch.randn(5, 3), -1)
    mixture = torch.einsum("tk,tkd->td", w, moe.expert_outputs(h))
    torch.testing.assert_close(moe(h, w), mixture, atol=1e-5, rtol=1e-5)


def _router_grad(top_k: int, renormalize: bool) -> torch.Tensor:
    moe, *_ = _ffn()
    router = TopKRouter(4, 3, top_k, renormalize)
    with torch.no_grad():
        router.gate.weight.copy_(torch.randn(3, 4, generator=torch.Generator().manual_seed(9)))
    h = torch.randn(6, 4, generator=torch.Generator().manual_seed(10))
    w, _ = router(h)
    moe(h, w).square().sum().backward()
    return router.gate.weight.grad


def test_router_gets_gradient_with_top1_unrenormalised():
    assert _router_grad(top_k=1, renormalize=False).abs().max() > 1e-2


def test_router_gets_no_gradient_with_top1_renormalised():
    """The public MetaMoE code's defect (DESIGN): w / w.sum() == 1 cuts the router off.

    Analytically d(p/p)/dp = 0; autograd's division backward leaves float rounding (~1e-6)
    against an O(1) gradient on the un-renormalised path.
    """
    grad = _router_grad(top_k=1, renormalize=True)
    assert grad is None or grad.abs().max() < 1e-4 * _router_grad(top_k=1, renormalize=False).abs().max()


def test_router_gets_gradient_with_top2_renormalised():
    assert _router_grad(top_k=2, renormalize=True).abs().sum() > 1e-3


def test_one_expert_moe_mixer_equals_the_expert_model(digits_benchmark, mixer_cfg):
    model = build_model(digits_benchmark, mixer_cfg)
    model.load_expert_state({k: np.random.default_rng(1).normal(0, 0.1, v.shape).astype(np.float32)
                             for k, v in model.expert_state().items()})
    moe = build_moe_from_experts(model, [model.expert_state()], top_k=1)
    x = model.prepare(digits_benchmark.domains[0].x_test[:16])
    torch.testing.assert_close(moe(x), model(x), atol=1e-5, rtol=1e-5)


def test_moe_mixer_trains_only_routers_and_loras_and_leaves_its_source_alone(digits_benchmark, mixer_cfg):
    model = build_model(digits_benchmark, mixer_cfg)
    experts = []
    for seed in (1, 2):
        model.reset_expert(seed)
        experts.append(model.expert_state())
    d = mixer_cfg.width
    routing = [np.stack([np.ones(d), -np.ones(d)]).astype(np.float32)] * mixer_cfg.blocks
    moe = build_moe_from_experts(model, experts, router_init=routing, top_k=1)
    trainable = sorted(n for n, p in moe.named_parameters() if p.requires_grad)
    assert len(trainable) == 5 * mixer_cfg.blocks                      # 4 stacked LoRAs + 1 gate per block
    assert all("lora_" in n or n.endswith("gate.weight") for n in trainable)
    np.testing.assert_array_equal(moe.routers[0].gate.weight.detach().numpy(), routing[0])
    source = model.expert_state()
    x = model.prepare(digits_benchmark.domains[0].x_train[:32])
    logits, probs = moe(x, return_probs=True)
    assert logits.shape == (32, 10) and [tuple(p.shape) for p in probs] == [(32, 4, 2)] * mixer_cfg.blocks
    F.cross_entropy(logits, torch.as_tensor(digits_benchmark.domains[0].y_train[:32])).backward()
    assert all(moe.get_parameter(n).grad is not None for n in trainable)
    assert all(np.array_equal(source[k], v) for k, v in model.expert_state().items())
    with pytest.raises(ValueError, match="router_init"):
        build_moe_from_experts(model, experts, router_init=routing[:1])
