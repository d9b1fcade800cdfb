"""MoE layer: top-k and context-aware routing, LoRA-expert mixtures against manual loops, router and
lambda gradients, per-sample invariance, trainable state, routing vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedmoe_sim.models import build_model, build_moe_from_experts
from fedmoe_sim.models.lora import LoRALinear, lora_disabled
from fedmoe_sim.models.moe import LoRAMoELinear, MoEFFN, TopKRouter, mean_routing_vectors, routing_inputs


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
    assert len(trainable) == 6 * mixer_cfg.blocks                      # 4 stacked LoRAs + gate + lambda per block
    assert all("lora_" in n or n.endswith(("gate.weight", ".lam")) for n in trainable)
    assert list(moe.trainable_state()) == trainable
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


# ---------------------------------------------------------------- context-aware router (DESIGN step 7) ----
def test_context_mixing_formula_by_hand():
    """2 tokens, D = K = 2, gate = I (logits = z~), lambda = 0.5, c = [2, 4]."""
    router = TopKRouter(2, 2, top_k=1, context=True, lambda_init=0.5)
    with torch.no_grad():
        router.gate.weight.copy_(torch.eye(2))
    h = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])                     # [B=1, T=2, D=2]
    c = torch.tensor([[2.0, 4.0]])                                   # [B=1, D=2]
    z = router.mix(h, c)
    torch.testing.assert_close(z, torch.tensor([[[1.5, 2.0], [1.0, 2.5]]]))   # 0.5 h + 0.5 c
    weights, probs = router(h, c)
    torch.testing.assert_close(probs, torch.softmax(z, -1))
    p1 = 1 / (1 + np.exp(-0.5))                                      # softmax([1.5, 2])[1] = sigmoid(0.5)
    torch.testing.assert_close(weights, torch.tensor([[[0.0, p1], [0.0, 1 / (1 + np.exp(-1.5))]]]),
                               check_dtype=False)
    with pytest.raises(ValueError, match="context"):
        router(h)


def _mixer_moe(model, n_experts: int = 2, **kw):
    """An MoE of `n_experts` random experts (B != 0, so every expert changes the output)."""
    states = []
    for seed in range(n_experts):
        rng = np.random.default_rng(100 + seed)
        states.append({k: rng.normal(0, 0.3, v.shape).astype(np.float32) for k, v in model.expert_state().items()})
    d = model.net.blocks[0].norm1.normalized_shape[0]
    routing = [np.random.default_rng(7).normal(0, 1, (n_experts, d)).astype(np.float32)] * len(model.net.blocks)
    return build_moe_from_experts(model, states, routing, **kw)


def _digits(bench, n: int = 32):
    d = bench.domains[0]
    return torch.as_tensor(d.x_test[:n]), torch.as_tensor(d.y_test[:n])


def _grads(moe, x, y) -> tuple[float, float]:
    """(max |grad| over router gates, over lambdas) after one cross-entropy backward."""
    moe.zero_grad(set_to_none=True)
    F.cross_entropy(moe(x), y).backward()
    gate = max(float(r.gate.weight.grad.abs().max()) if r.gate.weight.grad is not None else 0.0 for r in moe.routers)
    lam = max(float(r.lam.grad.abs().max()) if r.lam.grad is not None else 0.0 for r in moe.routers)
    return gate, lam


def test_router_and_lambda_get_gradient_top1_unrenormalised(digits_benchmark, mixer_cfg):
    model = build_model(digits_benchmark, mixer_cfg)
    x, y = _digits(digits_benchmark)
    gate, lam = _grads(_mixer_moe(model, top_k=1), x, y)
    assert gate > 1e-4 and lam > 1e-6
    # the public code's top-1 renormalised path: neither trains (float rounding only)
    gate_r, lam_r = _grads(_mixer_moe(model, top_k=1, renormalize=True), x, y)
    assert gate_r < 1e-4 * gate and lam_r < 1e-4 * lam


def test_predictions_ignore_batch_size_and_domain_mix(digits_benchmark, mixer_cfg):
    """A shuffled batch mixing rot90 and inverted digits gives each sample its batch-of-1 logits."""
    model = build_model(digits_benchmark, mixer_cfg)
    moe = _mixer_moe(model, n_experts=3, lambda_init=0.7).eval()
    x, _ = _digits(digits_benchmark, 16)
    mixed = torch.cat([torch.rot90(x, 1, dims=(2, 3)), 1.0 - x])   # two "domains"
    mixed = mixed[torch.randperm(len(mixed), generator=torch.Generator().manual_seed(3))]
    with torch.no_grad():
        batch = moe(mixed)
        alone = torch.cat([moe(mixed[i:i + 1]) for i in range(len(mixed))])
        torch.testing.assert_close(batch, alone, atol=1e-5, rtol=0)
        # ... and the context does matter, so the check above is not vacuous
        no_ctx = _mixer_moe(model, n_experts=3, context=False).eval()
        assert (no_ctx(mixed) - batch).abs().max() > 1e-3


def test_context_is_each_samples_own_m0_token_mean(digits_benchmark, mixer_cfg):
    model = build_model(digits_benchmark, mixer_cfg)
    moe = _mixer_moe(model)
    x, _ = _digits(digits_benchmark, 5)
    with lora_disabled(model.net), torch.no_grad():                # M0: the backbone with no expert
        expected = [h.mean(dim=1) for h in model.ffn_inputs(x)]
    for c, e in zip(moe.contexts(x), expected, strict=True):
        torch.testing.assert_close(c, e, atol=1e-6, rtol=0)


def test_without_context_lambda_is_inert(digits_benchmark, mixer_cfg):
    model = build_model(digits_benchmark, mixer_cfg)
    moe = _mixer_moe(model, context=False)
    x, y = _digits(digits_benchmark)
    before = moe(x).detach()
    with torch.no_grad():
        for r in moe.routers:
            r.lam.fill_(0.9)
    torch.testing.assert_close(moe(x).detach(), before)
    assert moe.lambdas() == [0.0] * mixer_cfg.blocks
    gate, _ = _grads(moe, x, y)
    assert gate > 0 and all(r.lam.grad is None for r in moe.routers)
    assert not any(k.endswith(".lam") for k in moe.trainable_state())
    frozen_lam = _mixer_moe(model, train_lambda=False)             # context on, lambda fixed at its init
    assert frozen_lam.lambdas() == pytest.approx([0.3] * mixer_cfg.blocks)
    assert not any(k.endswith(".lam") for k in frozen_lam.trainable_state())


def test_lambda_stays_in_unit_interval_after_a_step_that_pushes_it_out(digits_benchmark, mixer_cfg):
    """Forward clamps (clamp(lam, 0, 1)); `clamp_lambdas_()` clamps the raw parameter in place.

    torch.clamp alone has zero gradient at the bounds: the forward's straight-through
    clamp keeps a lambda sitting on 0 or 1 trainable (last assert).
    """
    model = build_model(digits_benchmark, mixer_cfg)
    moe = _mixer_moe(model, lambda_init=0.5)
    x, y = _digits(digits_benchmark)
    _grads(moe, x, y)
    lam = moe.routers[0].lam
    opt = torch.optim.SGD([lam], lr=10.0 / float(lam.grad.abs()))   # a step of 10: far out of [0, 1]
    opt.step()
    assert not 0.0 <= float(lam.detach()) <= 1.0
    assert all(0.0 <= v <= 1.0 for v in moe.lambdas())
    with torch.no_grad():
        out_raw = moe(x)
    moe.clamp_lambdas_()
    assert float(lam.detach()) in (0.0, 1.0) and moe.lambdas()[0] == float(lam.detach())
    with torch.no_grad():
        torch.testing.assert_close(moe(x), out_raw)                # the forward already used the clamped value
    _grads(moe, x, y)
    assert float(lam.grad.abs()) > 0                               # at the boundary it can still move back in


def test_trainable_state_round_trips_and_is_strict(digits_benchmark, mixer_cfg):
    model = build_model(digits_benchmark, mixer_cfg)
    trained, fresh = _mixer_moe(model), _mixer_moe(model)
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(0.01)
    state = trained.trainable_state()
    assert all(v.dtype == np.float32 for v in state.values()) and state["routers.0.lam"].shape == (1,)
    fresh.load_trainable_state(state)
    x, _ = _digits(digits_benchmark, 8)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), trained(x))
    with pytest.raises(ValueError, match="missing"):
        _mixer_moe(model, context=False).load_trainable_state(state)
    with pytest.raises(ValueError, match="shape"):
        fresh.load_trainable_state({**state, "routers.0.lam": np.zeros(2, np.float32)})


# ---------------------------------------------------------------- routing vectors (DESIGN step 5) ----
def test_mixer_routing_vectors_are_token_means_through_the_expert(digits_benchmark, mixer_cfg):
    model = build_model(digits_benchmark, mixer_cfg)
    model.load_expert_state({k: np.full_like(v, 0.05) for k, v in model.expert_state().items()})
    x, _ = _digits(digits_benchmark, 10)
    hs, mask = routing_inputs(model, x)
    assert mask.shape == (10, 4) and bool(mask.all())
    vecs = mean_routing_vectors(model, x, batch_size=3)              # batches of 3, 3, 3, 1
    assert [v.shape for v in vecs] == [(mixer_cfg.width,)] * mixer_cfg.blocks
    with torch.no_grad():
        for v, h in zip(vecs, model.ffn_inputs(x), strict=True):
            np.testing.assert_allclose(v, h.mean(dim=(0, 1)).numpy(), atol=1e-6)


def test_warm_start_keeps_the_tuned_experts_and_adds_the_late_one(digits_benchmark, mixer_cfg):
    """Experts that join late: the grown MoE starts from the tuned one (first K slices of every
    expert-indexed tensor, lambdas) and the joiner keeps its own LoRA and routing-vector row."""
    model = build_model(digits_benchmark, mixer_cfg)
    old = _mixer_moe(model, n_experts=2)
    with torch.no_grad():                                  # stands in for fine-tuning
        for p in old.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p)).clamp_(max=1.0)
    tuned, fresh = old.trainable_state(), _mixer_moe(model, n_experts=3).trainable_state()
    grown = _mixer_moe(model, n_experts=3)
    grown.warm_start_from(old)
    got = grown.trainable_state()
    expert_axis = [k for k in got if got[k].shape != tuned[k].shape]
    assert expert_axis and all(k.endswith(("gate.weight", "lora_A", "lora_B")) for k in expert_axis)
    for k, v in got.items():
        if k in expert_axis:
            np.testing.assert_array_equal(v[:2], tuned[k])
            np.testing.assert_array_equal(v[2:], fresh[k][2:])
        else:
            np.testing.assert_array_equal(v, tuned[k])     # lambdas
    with pytest.raises(ValueError, match="trainable tensors differ"):
        _mixer_moe(model, n_experts=3, context=False).warm_start_from(old)
    with pytest.raises(ValueError, match="cannot warm-start"):
        _mixer_moe(model, n_experts=2).warm_start_from(grown)     # shrinking is not joining
