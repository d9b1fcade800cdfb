"""MoE building blocks: top-k routing over LoRA experts of one frozen FFN.

Used to unify client experts into one model (MetaMoE step 6, BTX): at each MoE
layer, expert k = the frozen FFN with client k's LoRA; a router picks experts per
token. Expert LoRAs are stacked: A `[K, r, in]`, B `[K, out, r]`.

Gradient to the router (DESIGN "defects we must not copy"): with top-1 and the
selected weight renormalised to 1, the output does not depend on the router's
logits, so router (and lambda) never train. The default here keeps the
un-renormalised softmax weight of each selected expert (the router gets gradient
through it); `renormalize=True` is offered for top-k >= 2, and tests document
that top-1 + renormalize gives exactly zero router gradient.

All K experts are computed densely for every token and the unselected ones get
weight 0: exact, and cheap for the few, small LoRA experts here (sparse dispatch
would only pay off for large K or full-size experts).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedmoe_sim.models.expert_model import ExpertModel
from fedmoe_sim.models.mixer import patchify


class TopKRouter(nn.Module):
    """Linear(D, E, no bias) -> softmax -> keep the top-k. `[..., D]` -> (weights, probs), each `[..., E]`.

    weights: the selected experts' softmax probabilities (renormalised to sum 1 only
    if `renormalize`), 0 elsewhere. probs: the full softmax (for balance losses, logs).
    """

    def __init__(self, d_model: int, num_experts: int, top_k: int = 1, renormalize: bool = False):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, {num_experts}] (got {top_k})")
        self.gate = nn.Linear(d_model, num_experts, bias=False)
        self.top_k, self.renormalize = top_k, renormalize

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = torch.softmax(self.gate(h), dim=-1)
        top = probs.topk(self.top_k, dim=-1)
        vals = top.values
        if self.renormalize:
            vals = vals / vals.sum(dim=-1, keepdim=True)
        return torch.zeros_like(probs).scatter(-1, top.indices, vals), probs


class LoRAMoELinear(nn.Module):
    """Frozen Linear + K LoRA deltas: y = base(x) + sum_k w_k * (alpha/r) B_k A_k x.

    A `[K, r, in]`, B `[K, out, r]` are trainable copies of the experts' LoRAs.
    """

    def __init__(self, base: nn.Linear, lora_A: torch.Tensor, lora_B: torch.Tensor, scale: float):
        super().__init__()
        if lora_A.ndim != 3 or lora_B.ndim != 3 or lora_A.shape[0] != lora_B.shape[0]:
            raise ValueError(f"stacked LoRA must be A [K, r, in], B [K, out, r] "
                             f"(got {list(lora_A.shape)}, {list(lora_B.shape)})")
        self.base = base.requires_grad_(False)
        self.lora_A = nn.Parameter(lora_A.detach().clone().to(base.weight))
        self.lora_B = nn.Parameter(lora_B.detach().clone().to(base.weight))
        self.scale = float(scale)

    @property
    def num_experts(self) -> int:
        return self.lora_A.shape[0]

    def deltas(self, x: torch.Tensor, per_expert: bool = False) -> torch.Tensor:
        """Every expert's delta `[..., K, out]`; x is `[..., in]` (shared) or `[..., K, in]` (per expert)."""
        u = torch.einsum("...ki,kri->...kr" if per_expert else "...i,kri->...kr", x, self.lora_A)
        return self.scale * torch.einsum("...kr,kor->...ko", u, self.lora_B)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """`x [..., in]`, `weights [..., K]` -> `[..., out]`."""
        return self.base(x) + torch.einsum("...k,...ko->...o", weights, self.deltas(x))


class MoEFFN(nn.Module):
    """Per-token mixture of K LoRA experts of one frozen FFN (fc1 -> act -> fc2).

    Expert k: FFN_k(h) = fc2_k(act(fc1_k(h))), both linears carrying LoRA k. Output:
    FFN(h) + sum_k w_k (FFN_k(h) - FFN(h)), i.e. base + weighted expert deltas. With
    weights summing to 1 this is exactly sum_k w_k FFN_k(h) (BTX/MetaMoE); with
    un-renormalised top-k weights it keeps the frozen FFN whole and only shrinks
    the expert deltas, instead of shrinking the pretrained FFN output too.
    """

    def __init__(self, fc1: nn.Linear, fc2: nn.Linear, lora: dict[str, torch.Tensor], scale: float,
                 act: Callable[[torch.Tensor], torch.Tensor] = F.gelu):
        super().__init__()
        self.lin1 = LoRAMoELinear(fc1, lora["fc1.lora_A"], lora["fc1.lora_B"], scale)
        self.lin2 = LoRAMoELinear(fc2, lora["fc2.lora_A"], lora["fc2.lora_B"], scale)
        self.act = act

    def expert_outputs(self, h: torch.Tensor) -> torch.Tensor:
        """FFN_k(h) for every expert, `[..., K, D]` (reference path for tests and analysis)."""
        ak = self.act(self.lin1.base(h).unsqueeze(-2) + self.lin1.deltas(h))
        return self.lin2.base(ak) + self.lin2.deltas(ak, per_expert=True)

    def forward(self, h: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """`h [..., D]` (FFN input after its norm), `weights [..., K]` -> `[..., D]`."""
        z = self.lin1.base(h)                                          # [..., H]
        a = self.act(z)
        ak = self.act(z.unsqueeze(-2) + self.lin1.deltas(h))           # [..., K, H]
        # sum_k w_k (fc2_k(a_k) - fc2(a)) = W2 sum_k w_k (a_k - a) + sum_k w_k delta2_k(a_k); biases cancel
        mixed = torch.einsum("...k,...kh->...h", weights, ak - a.unsqueeze(-2))
        expert = torch.einsum("...k,...kd->...d", weights, self.lin2.deltas(ak, per_expert=True))
        return self.lin2.base(a) + F.linear(mixed, self.lin2.base.weight) + expert


class MoEMixer(nn.Module):
    """The digits Mixer with every block's FFN a K-expert LoRA MoE with its own router.

    Trainable: routers and stacked LoRAs (what MetaMoE/BTX fine-tune on proxies);
    everything else frozen (a copy of the source backbone). `[B, C, 8, 8]` -> logits.
    """

    def __init__(self, net: nn.Module, ffns: Sequence[MoEFFN], routers: Sequence[TopKRouter]):
        super().__init__()
        self.embed, self.norm, self.head = net.embed, net.norm, net.head
        self.norms1 = nn.ModuleList(b.norm1 for b in net.blocks)
        self.mixes = nn.ModuleList(b.mix for b in net.blocks)
        self.ffns, self.routers = nn.ModuleList(ffns), nn.ModuleList(routers)
        self.requires_grad_(False)
        for m in [*self.ffns, *self.routers]:
            for name, p in m.named_parameters():
                p.requires_grad_("lora_" in name or name.startswith("gate"))

    def forward(self, x: torch.Tensor, return_probs: bool = False):
        """Logits `[B, classes]`; with `return_probs`, also each layer's router probs `[B, T, K]`."""
        t = self.embed(patchify(x))
        probs = []
        for norm1, ffn, router, mix in zip(self.norms1, self.ffns, self.routers, self.mixes, strict=True):
            h = norm1(t)
            w, p = router(h)
            probs.append(p)
            t = mix(t + ffn(h, w))
        logits = self.head(self.norm(t).mean(dim=1))
        return (logits, probs) if return_probs else logits


def build_moe_from_experts(model: ExpertModel, expert_states: Sequence[dict[str, np.ndarray]],
                           router_init: Sequence[np.ndarray] | None = None, top_k: int = 1,
                           renormalize: bool = False, seed: int = 0) -> MoEMixer:
    """Unify K digits experts (MixerExpertModel expert states) into one MoEMixer.

    router_init: per block a `[K, D]` array whose rows are the experts' routing
    vectors (MetaMoE: router rows = e_p as is); None = U(-1/sqrt(D), 1/sqrt(D)) from `seed`.
    """
    net = getattr(model, "net", None)
    if net is None or not hasattr(net, "blocks"):
        raise ValueError("build_moe_from_experts needs a mixer ExpertModel (model.backbone=mixer)")
    if not expert_states:
        raise ValueError("build_moe_from_experts needs at least one expert state")
    spec = model.expert_spec()
    for i, st in enumerate(expert_states):
        if set(st) != set(spec):
            raise ValueError(f"expert state {i} does not match the model's expert tensors")
    if router_init is not None and len(router_init) != len(net.blocks):
        raise ValueError(f"router_init needs one [K, D] array per block ({len(net.blocks)}), got {len(router_init)}")
    net = copy.deepcopy(net)        # the MoE owns its frozen modules: independent of `model`
    k = len(expert_states)
    gen = torch.Generator().manual_seed(int(seed))
    dev = model.device
    ffns, routers = [], []
    for i, block in enumerate(net.blocks):
        fc1, fc2 = block.ffn.fc1, block.ffn.fc2                   # LoRALinear: .base is frozen
        stacked = {                                           # "fc1.lora_A" -> [K, r, in], ...
            f"{fc}.lora_{ab}": torch.as_tensor(np.stack([st[f"blocks.{i}.ffn.{fc}.lora_{ab}"] for st in expert_states]),
                                               device=dev)
            for fc in ("fc1", "fc2") for ab in ("A", "B")}
        ffns.append(MoEFFN(fc1.base, fc2.base, stacked, fc1.scale))
        router = TopKRouter(fc1.base.in_features, k, top_k, renormalize).to(dev)
        d = fc1.base.in_features
        if router_init is None:
            w = torch.empty(k, d).uniform_(-1 / math.sqrt(d), 1 / math.sqrt(d), generator=gen)
        else:
            w = torch.as_tensor(np.asarray(router_init[i], dtype=np.float32))
            if tuple(w.shape) != (k, d):
                raise ValueError(f"router_init[{i}] must be [{k}, {d}] (got {list(w.shape)})")
        with torch.no_grad():
            router.gate.weight.copy_(w)
        routers.append(router)
    return MoEMixer(net, ffns, routers)
