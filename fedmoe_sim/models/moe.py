"""MoE building blocks: context-aware top-k routing over LoRA experts of one frozen FFN.

Used to unify client experts into one model (MetaMoE steps 6-8, BTX): at each MoE
layer, expert k = the frozen FFN with client k's LoRA; a router picks experts per
token. Expert LoRAs are stacked: A `[K, r, in]`, B `[K, out, r]`.

Context-aware router (DESIGN step 7): the router sees z~ = (1 - lambda) z_t + lambda c,
z_t `[B, T, D]` the token's FFN input after its norm, c `[B, D]` the mean of the SAME
sample's frozen-backbone (M0, no expert) hidden states at that layer over its own
tokens. Never a batch mean: the public code's batch-averaged context leaks the domain
of single-domain test batches into the router. lambda is one scalar per layer, clamped
to [0, 1] in the forward (straight-through: the gradient ignores the clamp, so a
lambda at 0 or 1 can still move back in), and `clamp_lambdas_()` clamps the raw
parameter in place after each optimiser step, so the raw value never drifts outside
[0, 1], where the gradient would push on a value the forward does not use.
`context=False` fixes lambda at 0 (the "no context router" ablation, FlexOlmo-style).

Gradient to the router (DESIGN "defects we must not copy"): with top-1 and the
selected weight renormalised to 1, the output does not depend on the router's
logits, so router and lambda never train. The default keeps the un-renormalised
softmax weight of each selected expert (router and lambda get gradient through
it); `renormalize=True` is offered for top-k >= 2, and tests document that top-1 +
renormalize gives exactly zero router gradient. Routing is the same in train and
eval mode, so what is fine-tuned is exactly what is evaluated.

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
from fedmoe_sim.models.mixer import MixerExpertModel, patchify


class TopKRouter(nn.Module):
    """Linear(D, E, no bias) on z~ -> softmax -> keep the top-k. `[..., D]` -> (weights, probs), each `[..., E]`.

    weights: the selected experts' softmax probabilities (renormalised to sum 1 only
    if `renormalize`), 0 elsewhere. probs: the full softmax (for balance losses, logs).
    `lam` `[1]` (shape [1], not [], so it survives Flower's ArrayRecord unchanged) is
    used only if `context`; it trains only if `context and train_lambda`.
    """

    def __init__(self, d_model: int, num_experts: int, top_k: int = 1, renormalize: bool = False,
                 context: bool = False, lambda_init: float = 0.3, train_lambda: bool = True,
                 straight_through: bool = False):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, {num_experts}] (got {top_k})")
        if not 0.0 <= lambda_init <= 1.0:
            raise ValueError(f"lambda_init must be in [0, 1] (got {lambda_init})")
        self.gate = nn.Linear(d_model, num_experts, bias=False)
        self.lam = nn.Parameter(torch.full((1,), float(lambda_init)), requires_grad=context and train_lambda)
        self.top_k, self.renormalize, self.straight_through = top_k, renormalize, straight_through
        self.context, self.train_lambda = bool(context), bool(train_lambda)

    def lambda_value(self) -> torch.Tensor:
        """The lambda the forward uses, `[1]`: clamp(lam, 0, 1), or 0 without context.

        Straight-through clamp: the value is clamped, the gradient passes as if it were
        not. torch.clamp's gradient is 0 AT the bounds too, so a lambda that
        `clamp_lambdas_()` put on 0 or 1 would otherwise never move again.
        """
        if not self.context:
            return torch.zeros_like(self.lam)
        return self.lam + (self.lam.clamp(0.0, 1.0) - self.lam).detach()

    def mix(self, h: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """z~ = (1 - lambda) h + lambda c: `h [B, T, D]`, per-sample `context [B, D]` -> `[B, T, D]`."""
        if not self.context:
            return h
        if context is None:
            raise ValueError("a context-aware router needs the per-sample context c [B, D]")
        lam = self.lambda_value()
        return (1.0 - lam) * h + lam * context.unsqueeze(-2)

    def forward(self, h: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        probs = torch.softmax(self.gate(self.mix(h, context)), dim=-1)
        top = probs.topk(self.top_k, dim=-1)
        vals = top.values
        if self.straight_through:
            # forward: the selected experts at full strength (weights sum to 1, as a top-1
            # MoE deploys); backward: the gradient of their softmax probabilities, so the
            # router and lambda still learn (plain renormalised top-1 would give them none)
            vals = (vals / vals.sum(dim=-1, keepdim=True)).detach() + vals - vals.detach()
        elif self.renormalize:
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

    def base_forward(self, h: torch.Tensor) -> torch.Tensor:
        """The frozen FFN alone (M0), `[..., D]` -> `[..., D]`: used for the router's context."""
        return self.lin2.base(self.act(self.lin1.base(h)))

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


class UnifiedMoE(nn.Module):
    """What every unified model (MoEMixer, TextMoE) offers its trainer and the wire.

    Subclasses hold `routers` (one TopKRouter per MoE layer) and `ffns` (MoEFFN per
    layer), and call `_freeze_all_but_trainable()` at the end of `__init__`.
    Trainable = router gates, stacked LoRAs, lambdas (if context and train_lambda),
    plus any `extra` parameters (the text head): exactly what step 8 fine-tunes, and
    exactly what `trainable_state()` ships to clients to evaluate the unified model
    (the frozen backbone is already there; a frozen lambda is rebuilt from the config).
    """

    routers: nn.ModuleList
    ffns: nn.ModuleList

    def _freeze_all_but_trainable(self, extra: Sequence[nn.Parameter] = ()) -> None:
        self.requires_grad_(False)
        for ffn in self.ffns:
            for name, p in ffn.named_parameters():
                p.requires_grad_("lora_" in name)
        for router in self.routers:
            router.gate.weight.requires_grad_(True)
            router.lam.requires_grad_(router.context and router.train_lambda)
        for p in extra:
            p.requires_grad_(True)

    def uses_context(self) -> bool:
        return any(r.context for r in self.routers)

    def lambdas(self) -> list[float]:
        """Per MoE layer, the lambda the forward uses (clamped to [0, 1]; 0 without context)."""
        return [float(r.lambda_value().detach()) for r in self.routers]

    @torch.no_grad()
    def clamp_lambdas_(self) -> None:
        """Clamp the raw lambdas into [0, 1] in place: call after every optimiser step."""
        for r in self.routers:
            r.lam.clamp_(0.0, 1.0)

    def trainable_state(self) -> dict[str, np.ndarray]:
        """Float32 numpy copies of exactly the trainable tensors, sorted by name."""
        return {k: p.detach().to("cpu", torch.float32).numpy().copy()
                for k, p in sorted(self.named_parameters()) if p.requires_grad}

    def load_trainable_state(self, state: dict[str, np.ndarray]) -> None:
        """Copy `state` (from `trainable_state()` of an MoE built alike) in place; strict on keys and shapes."""
        params = {k: p for k, p in self.named_parameters() if p.requires_grad}
        missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        if missing or unexpected:
            raise ValueError(f"trainable state does not match the MoE: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]} (built with other context/train_lambda?)")
        for k, p in params.items():
            if tuple(np.shape(state[k])) != tuple(p.shape):
                raise ValueError(f"trainable state key {k!r} has shape {tuple(np.shape(state[k]))}, "
                                 f"expected {tuple(p.shape)}")
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(torch.as_tensor(np.asarray(state[k])))


    @torch.no_grad()
    def warm_start_from(self, old: UnifiedMoE) -> None:
        """Start from a fine-tuned MoE with fewer experts (experts that join late, ours).

        Every trainable tensor of `old` is copied in; where the expert axis (dim 0 of the
        router gates and stacked LoRAs) grew from K to K', the first K slices are copied
        and the K' - K new experts keep their fresh values (their own LoRAs, router rows
        from their routing vectors): build this MoE with the old experts first, in order.
        """
        mine = {k: p for k, p in self.named_parameters() if p.requires_grad}
        theirs = {k: p for k, p in old.named_parameters() if p.requires_grad}
        if set(mine) != set(theirs):
            raise ValueError(f"cannot warm-start: trainable tensors differ ({sorted(set(mine) ^ set(theirs))[:3]})")
        for k, p in mine.items():
            q = theirs[k]
            if q.shape == p.shape:
                p.copy_(q)
            elif q.ndim == p.ndim and q.shape[1:] == p.shape[1:] and q.shape[0] < p.shape[0]:
                p[:q.shape[0]].copy_(q)
            else:
                raise ValueError(f"cannot warm-start {k!r}: shape {tuple(q.shape)} -> {tuple(p.shape)}")


class MoEMixer(UnifiedMoE):
    """The digits Mixer with every block's FFN a K-expert LoRA MoE with its own router.

    Frozen: a copy of the source backbone (embedding, norms, token mixing, head).
    `[B, C, 8, 8]` -> logits `[B, classes]`.
    """

    def __init__(self, net: nn.Module, ffns: Sequence[MoEFFN], routers: Sequence[TopKRouter]):
        super().__init__()
        self.embed, self.norm, self.head = net.embed, net.norm, net.head
        self.norms1 = nn.ModuleList(b.norm1 for b in net.blocks)
        self.mixes = nn.ModuleList(b.mix for b in net.blocks)
        self.ffns, self.routers = nn.ModuleList(ffns), nn.ModuleList(routers)
        self._freeze_all_but_trainable()

    @torch.no_grad()
    def contexts(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per block, c `[B, D]`: each sample's mean over its own 4 tokens of M0's normed FFN input.

        M0 = the frozen backbone with no expert (base FFNs), so c depends only on the
        sample itself, never on the batch or on the experts being trained.
        """
        t = self.embed(patchify(x))
        out = []
        for norm1, ffn, mix in zip(self.norms1, self.ffns, self.mixes, strict=True):
            h = norm1(t)
            out.append(h.mean(dim=1))
            t = mix(t + ffn.base_forward(h))
        return out

    def forward(self, x: torch.Tensor, return_probs: bool = False):
        """Logits `[B, classes]`; with `return_probs`, also each layer's router probs `[B, T, K]`."""
        ctx = self.contexts(x) if self.uses_context() else [None] * len(self.routers)
        t = self.embed(patchify(x))
        probs = []
        for norm1, ffn, router, mix, c in zip(self.norms1, self.ffns, self.routers, self.mixes, ctx, strict=True):
            h = norm1(t)
            w, p = router(h, c)
            probs.append(p)
            t = mix(t + ffn(h, w))
        logits = self.head(self.norm(t).mean(dim=1))
        return (logits, probs) if return_probs else logits


def make_routers(d: int, k: int, layers: int, router_init: Sequence[np.ndarray] | None, seed: int,
                 device: torch.device, **router_kw) -> list[TopKRouter]:
    """One router per layer. router_init: per layer a `[K, D]` array whose rows are the
    experts' routing vectors, copied as is (MetaMoE step 6); None = U(-1/sqrt(D), 1/sqrt(D))
    from `seed` (BTX's fresh router)."""
    if router_init is not None and len(router_init) != layers:
        raise ValueError(f"router_init needs one [K, D] array per MoE layer ({layers}), got {len(router_init)}")
    gen = torch.Generator().manual_seed(int(seed))
    routers = []
    for i in range(layers):
        if router_init is None:
            w = torch.empty(k, d).uniform_(-1 / math.sqrt(d), 1 / math.sqrt(d), generator=gen)
        else:
            w = torch.as_tensor(np.asarray(router_init[i], dtype=np.float32))
            if tuple(w.shape) != (k, d):
                raise ValueError(f"router_init[{i}] must be [{k}, {d}] (got {list(w.shape)})")
        router = TopKRouter(d, k, **router_kw).to(device)
        with torch.no_grad():
            router.gate.weight.copy_(w)
        routers.append(router)
    return routers


def stack_lora(expert_states: Sequence[dict[str, np.ndarray]], names: dict[str, str],
               device: torch.device) -> dict[str, torch.Tensor]:
    """One layer's expert LoRAs stacked: {"fc1.lora_A": [K, r, in], ...}; `names` maps
    "fc1"/"fc2" to an expert-state key with `{ab}` standing for A or B."""
    return {f"{fc}.lora_{ab}": torch.as_tensor(np.stack([st[key.format(ab=ab)] for st in expert_states]), device=device)
            for fc, key in names.items() for ab in ("A", "B")}


def mean_head(expert_states: Sequence[dict[str, np.ndarray]], d: int, num_classes: int,
              device: torch.device) -> nn.Linear:
    """The unified model's head for backbones whose head is part of the expert (text, ViT):
    the mean of the experts' heads, trainable; each expert trained its own head with its
    LoRA on its domain, so no single one fits all and their mean is the soup-style start."""
    head = nn.Linear(d, num_classes, device=device)
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(np.mean([st["head.weight"] for st in expert_states], axis=0)))
        head.bias.copy_(torch.as_tensor(np.mean([st["head.bias"] for st in expert_states], axis=0)))
    return head


def check_expert_states(model: ExpertModel, expert_states: Sequence[dict[str, np.ndarray]]) -> None:
    if not expert_states:
        raise ValueError("an MoE needs at least one expert state")
    spec = model.expert_spec()
    for i, st in enumerate(expert_states):
        if set(st) != set(spec):
            raise ValueError(f"expert state {i} does not match the model's expert tensors")


def build_moe_from_experts(model: ExpertModel, expert_states: Sequence[dict[str, np.ndarray]],
                           router_init: Sequence[np.ndarray] | None = None, top_k: int = 1,
                           renormalize: bool = False, seed: int = 0, context: bool = True,
                           lambda_init: float = 0.3, train_lambda: bool = True,
                           straight_through: bool = False) -> MoEMixer:
    """Unify K digits experts (MixerExpertModel expert states) into one MoEMixer.

    router_init: see `make_routers`. context / lambda_init / train_lambda: the
    context-aware router (DESIGN step 7; `context=False` = lambda fixed at 0).
    """
    net = getattr(model, "net", None)
    if net is None or not hasattr(net, "blocks"):
        raise ValueError("build_moe_from_experts needs a mixer ExpertModel (model.backbone=mixer)")
    check_expert_states(model, expert_states)
    net = copy.deepcopy(net)        # the MoE owns its frozen modules: independent of `model`
    dev = model.device
    ffns = []
    for i, block in enumerate(net.blocks):
        fc1, fc2 = block.ffn.fc1, block.ffn.fc2                   # LoRALinear: .base is frozen
        stacked = stack_lora(expert_states, {fc: f"blocks.{i}.ffn.{fc}.lora_{{ab}}" for fc in ("fc1", "fc2")}, dev)
        ffns.append(MoEFFN(fc1.base, fc2.base, stacked, fc1.scale))
    routers = make_routers(net.blocks[0].ffn.fc1.base.in_features, len(expert_states), len(net.blocks),
                           router_init, seed, dev, top_k=top_k, renormalize=renormalize, context=context,
                           lambda_init=lambda_init, train_lambda=train_lambda, straight_through=straight_through)
    return MoEMixer(net, ffns, routers)


# ------------------------------------------------ routing vectors (client side) ----
def routing_inputs(model: ExpertModel, inputs) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per MoE layer the FFN input after its norm, `[B, T, D]`, WITH the loaded expert
    applied (what the client's own expert routes on), and the valid-token mask `[B, T]`
    (bool; mixer and ViT: every token valid; text: the attention mask, columns trimmed)."""
    from fedmoe_sim.models.vit import VitExpertModel

    if isinstance(model, (MixerExpertModel, VitExpertModel)):
        hs = model.ffn_inputs(inputs)
        return hs, torch.ones(hs[0].shape[:2], dtype=torch.bool, device=hs[0].device)
    from fedmoe_sim.models.text import TextExpertModel

    if isinstance(model, TextExpertModel):
        from fedmoe_sim.models.text_moe import text_ffn_inputs

        return text_ffn_inputs(model, inputs)
    raise TypeError(f"routing_inputs supports the mixer, MiniLM and ViT expert models (got {type(model).__name__})")


@torch.no_grad()
def mean_routing_vectors(model: ExpertModel, inputs, batch_size: int = 256) -> list[np.ndarray]:
    """MetaMoE step 5: per MoE layer e_p `[D]` = mean of `routing_inputs` over every valid
    token of every sample (padding masked; each real token counts once, whatever its batch).

    Batched to bound memory; sums in float64 so the batch size does not change the result.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    n = int((inputs["input_ids"] if isinstance(inputs, dict) else inputs).shape[0])
    if n == 0:
        raise ValueError("mean_routing_vectors needs at least one sample")
    sums: list[torch.Tensor] | None = None
    count = 0.0
    for start in range(0, n, batch_size):
        hs, mask = routing_inputs(model, ExpertModel.index(inputs, torch.arange(start, min(start + batch_size, n))))
        m = mask.unsqueeze(-1).to(torch.float64)                      # [B, T, 1]
        part = [(h.to(torch.float64) * m).sum(dim=(0, 1)) for h in hs]
        sums = part if sums is None else [s + p for s, p in zip(sums, part, strict=True)]
        count += float(m.sum())
    if count == 0:
        raise ValueError("mean_routing_vectors: the inputs have no valid token")
    return [(s / count).to(torch.float32).cpu().numpy() for s in sums]
