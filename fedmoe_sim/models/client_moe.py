"""A client-side MoE (FedMoE-DA, seed 001): every client runs E LoRA experts behind a gate per FFN.

DESIGN "FedMoE-DA": shared frozen backbone, then at each MoE layer a gate and E
experts. At each layer's FFN a gate Linear(D, E, no bias) reads the FFN input (the
hidden state after the norm that feeds the FFN), and E rank-r LoRA experts sit on the
FFN's two Linears, stacked along an expert axis (moe.py's layout: A `[E, r, in]`,
B `[E, out, r]`). The mixing maths is moe.py's `TopKRouter` + `MoEFFN`, reused as they
are; `GatedLoRAFFN` only pairs them and owns the tensors. Backbones (model.backbone):
"mixer-moe" here (the frozen pretrained digits mixer, fc1/fc2 of every block);
"minilm-moe" and "vit-moe" in client_moe_backbones.py (intermediate.dense/output.dense
of every BERT layer; mlp.fc1/mlp.fc2 of every ViT/CLIP layer), plus a trainable head.

Named parts (`ExpertModel._register_parts`), the same names on every backbone so the
strategy and client code never know which one runs: "gate" = `blocks.{l}.gate.weight`
`[E, D]` per layer (row m is expert m's FedMoE-DA proxy); "experts" =
`blocks.{l}.ffn.fc{1,2}.lora_{A,B}` with the expert axis first (fc1 = the FFN's first
Linear, D -> hidden; fc2 = its second, hidden -> D); and on the transformer backbones
"head" = `head.weight`, `head.bias` (no checkpoint ships a head for our labels; it stays
on the client unless a strategy sends it). The per-expert helpers below work on numpy
state dicts by these names alone (as `expert_state()` / `part_state()` give), so a
server needs no model instance and no backbone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedmoe_sim.config import ModelConfig
from fedmoe_sim.data.base import Benchmark
from fedmoe_sim.models.expert_model import ExpertModel
from fedmoe_sim.models.lora import lora_a_init_
from fedmoe_sim.models.mixer import HEAD, IMAGE, Mixer, MixerExpertModel, patchify
from fedmoe_sim.models.moe import MoEFFN, TopKRouter

GATE = "gate"           # part: every layer's gate weight (the proxies)
EXPERTS = "experts"     # part: every layer's stacked LoRA experts
# HEAD ("head", from mixer.py): the transformer backbones' trainable classifier
FCS = ("fc1", "fc2")
State = Mapping[str, np.ndarray]


# ---------------------------------------------------------------- state-dict naming (numpy, no model) ----
def gate_key(layer: int) -> str:
    return f"blocks.{layer}.gate.weight"


def expert_keys(layer: int) -> tuple[str, ...]:
    """The stacked LoRA tensors of one layer, sorted: `blocks.{l}.ffn.fc{1,2}.lora_{A,B}`."""
    return tuple(f"blocks.{layer}.ffn.{fc}.lora_{ab}" for fc in FCS for ab in "AB")


def layer_experts(state: State, layer: int) -> dict[str, np.ndarray]:
    """One layer's stacked experts `{name: [E, ...]}`: the per-client input of `fedmoe_da.apply_plan`."""
    return {k: state[k] for k in expert_keys(layer)}


def expert_tensors(state: State, layer: int, m: int) -> dict[str, np.ndarray]:
    """Expert m of layer l alone: `{name: state[name][m]}` copies (A `[r, in]`, B `[out, r]`)."""
    _check_expert_index(state, layer, m)
    return {k: np.array(state[k][m], copy=True) for k in expert_keys(layer)}


def set_expert_tensors(state: State, layer: int, m: int, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A new state with expert m of layer l replaced by `tensors` (as `expert_tensors` gives).

    `state` is not modified; only the arrays written are copied (others are shared).
    """
    _check_expert_index(state, layer, m)
    keys = expert_keys(layer)
    if sorted(tensors) != sorted(keys):
        raise ValueError(f"expert tensors of layer {layer} must be exactly {list(keys)} (got {sorted(tensors)})")
    out = dict(state)
    for k in keys:
        if np.shape(tensors[k]) != np.shape(state[k])[1:]:
            raise ValueError(f"{k!r}: one expert is {list(np.shape(state[k])[1:])}, got {list(np.shape(tensors[k]))}")
        out[k] = np.array(state[k], copy=True)
        out[k][m] = tensors[k]
    return out


def expert_proxy(state: State, layer: int, m: int) -> np.ndarray:
    """Expert m's FedMoE-DA proxy at layer l: row m of that layer's gate weight, `[D]` (a copy)."""
    _check_expert_index(state, layer, m)
    return np.array(state[gate_key(layer)][m], copy=True)


def gate_proxies(states: Sequence[State], layer: int) -> np.ndarray:
    """Clients' gates of layer l stacked: `[N, E, D]`, the input of `fedmoe_da.neighbour_plan`."""
    return np.stack([np.asarray(s[gate_key(layer)]) for s in states])


def _check_expert_index(state: State, layer: int, m: int) -> None:
    key = gate_key(layer)
    if key not in state:
        raise ValueError(f"state has no layer {layer} (no {key!r})")
    e = np.shape(state[key])[0]
    if not 0 <= m < e:
        raise ValueError(f"expert index must be in [0, {e}) (got {m})")


# ---------------------------------------------------------------- the MoE FFN ----
class GatedLoRAFFN(nn.Module):
    """A frozen FFN (fc1 -> act -> fc2) as a top-k mixture of E LoRA experts with its own gate.

    `[..., D]` (the FFN input after its norm) -> `[..., D]`. Routing is TopKRouter's:
    softmax over the gate logits, keep the top k. With k >= 2 the kept weights are
    renormalised to sum 1, so the output is exactly sum_k w_k FFN_k(h) and the gate still
    gets gradient through the ratios. With k = 1 renormalising would make the weight a
    constant 1 and cut the gate off, so the un-renormalised softmax weight p is kept:
    out = FFN(h) + p (FFN_m(h) - FFN(h)), as moe.py does. The router's context lambda
    is unused (context off) and stays frozen. Tensors start at 0; the owner initialises
    them (`reset_client_moe`). Note: while every B = 0 all experts equal the
    FFN, so the gate's gradient is 0 until the experts' B moves (after the first step).
    """

    def __init__(self, fc1: nn.Linear, fc2: nn.Linear, num_experts: int, top_k: int, rank: int, alpha: float,
                 act: Callable[[torch.Tensor], torch.Tensor] = F.gelu):
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1 (got {num_experts})")
        with torch.random.fork_rng(devices=[]):  # nn.Linear's init draw must not move the global RNG
            self.router = TopKRouter(fc1.in_features, num_experts, top_k, renormalize=top_k >= 2)
        self.router.to(fc1.weight.device)
        zeros = {f"{fc}.lora_{ab}": torch.zeros((num_experts, *shape), device=fc1.weight.device)
                 for fc, lin in (("fc1", fc1), ("fc2", fc2))
                 for ab, shape in (("A", (rank, lin.in_features)), ("B", (lin.out_features, rank)))}
        self.moe = MoEFFN(fc1, fc2, zeros, alpha / rank, act)

    def trainable(self) -> dict[str, nn.Parameter]:
        """Local names -> Parameters: `gate.weight` and `fc{1,2}.lora_{A,B}`."""
        return {"gate.weight": self.router.gate.weight,
                **{f"{fc}.lora_{ab}": getattr(lin, f"lora_{ab}")
                   for fc, lin in (("fc1", self.moe.lin1), ("fc2", self.moe.lin2)) for ab in "AB"}}

    def route(self, h: torch.Tensor) -> torch.Tensor:
        """Per-token expert weights `[..., E]`: exactly k non-zero."""
        return self.router(h)[0]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.moe(h, self.route(h))


# ---------------------------------------------------------------- the client model ----
def reset_client_moe(named: Mapping[str, nn.Parameter], seed: int) -> None:
    """Re-initialise a client MoE's trainable tensors from `seed` alone, drawn in sorted-name order on CPU.

    LoRA A: PEFT's U(-1/sqrt(in), 1/sqrt(in)), an independent draw per expert; B = 0, so
    the MoE starts exactly at the backbone. Gate `[E, D]`: orthonormal rows (QR of a
    seeded Gaussian, signs fixed by R's diagonal) scaled to 1/sqrt(3), the expected row
    norm of nn.Linear's default init. Distinct A's and orthogonal gate rows break the
    symmetry between experts (each routes a different direction and gets a different
    B gradient); and a client's own proxies start at cosine exactly 0, so FedMoE-DA
    does not mix a client's experts together before they have learnt anything.
    Head (`head.weight` `[classes, D]`, `head.bias`): nn.Linear's U(-1/sqrt(D), 1/sqrt(D)).
    """
    gen = torch.Generator().manual_seed(int(seed))
    for name in sorted(named):
        p = named[name]
        with torch.no_grad():
            if name.endswith("gate.weight"):
                e, d = p.shape
                q, r = torch.linalg.qr(torch.randn(d, e, generator=gen, dtype=torch.float64))
                p.copy_(((q * torch.sign(torch.diagonal(r))).T / math.sqrt(3.0)).to(torch.float32))
            elif name.endswith("lora_A"):
                lora_a_init_(p, gen)
            elif name.endswith("lora_B"):
                p.zero_()
            elif name in ("head.weight", "head.bias"):
                bound = 1.0 / math.sqrt(named["head.weight"].shape[1])
                p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=gen))
            else:  # a programming error: a trainable tensor without an init rule
                raise RuntimeError(f"no init rule for {name!r}")


def check_moe_size(num_experts: int, top_k: int, width: int, width_name: str) -> None:
    """One-line errors for E and k before anything is built (the gate init needs E <= D)."""
    if not 1 <= num_experts <= width:
        raise ValueError(f"num_experts must be in [1, {width_name} = {width}] (got {num_experts}): "
                         f"the gate init needs orthogonal rows")
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be in [1, num_experts = {num_experts}] (got {top_k})")


class ClientMoEModel(ExpertModel):
    """What every backbone's client MoE shares: parts, sizes, the seeded init.

    Subclasses hold one `GatedLoRAFFN` per layer (`gated_ffns()`, in layer order) and call
    `_register_client_moe(head)` at the end of `__init__` (head: a trainable classifier, or
    None when the backbone's head is pretrained and frozen).
    """

    top_k: int

    def gated_ffns(self) -> list[GatedLoRAFFN]:
        raise NotImplementedError

    def _register_client_moe(self, head: nn.Linear | None = None) -> None:
        gates, experts = {}, {}
        for i, ffn in enumerate(self.gated_ffns()):
            for name, p in ffn.trainable().items():
                if name == "gate.weight":
                    gates[gate_key(i)] = p
                else:
                    experts[f"blocks.{i}.ffn.{name}"] = p
        parts = {GATE: gates, EXPERTS: experts}
        if head is not None:
            parts[HEAD] = {f"head.{k}": p for k, p in head.named_parameters()}
        self._register_parts(parts)
        self.reset_expert(0)

    @property
    def num_layers(self) -> int:
        return len(self.gated_ffns())

    @property
    def num_experts(self) -> int:
        return self.gated_ffns()[0].router.gate.out_features

    def reset_expert(self, seed: int) -> None:
        """`reset_client_moe` on every trainable tensor. Use one seed for every client (the
        shared initial model) so that expert m starts alike everywhere and proxies are
        comparable across clients."""
        reset_client_moe(self._expert, seed)


class MixerMoEModel(ClientMoEModel):
    """Frozen pretrained Mixer with every block's FFN a `GatedLoRAFFN` (E experts, top-k).

    Parts "gate" and "experts" (module docstring); everything else (embedding, norms,
    token mixing, head, the FFNs' base weights) is the frozen backbone. Inputs as
    MixerExpertModel: `[B, C, 8, 8]` -> logits `[B, classes]`.
    """

    def __init__(self, backbone_state: dict[str, torch.Tensor], in_channels: int, num_classes: int,
                 cfg: ModelConfig, num_experts: int = 4, top_k: int = 2, device: str | torch.device = "cpu"):
        super().__init__(num_classes)
        check_moe_size(num_experts, top_k, cfg.width, "model.width")
        self.in_shape = (in_channels, IMAGE, IMAGE)
        self.top_k = int(top_k)
        with torch.device("meta"):  # no init draws: every backbone weight comes from the pretrained state
            self.net = Mixer(in_channels, cfg.width, cfg.blocks, num_classes)
        self.net.load_state_dict({k: v.clone() for k, v in backbone_state.items()}, assign=True)
        for block in self.net.blocks:
            block.ffn = GatedLoRAFFN(block.ffn.fc1, block.ffn.fc2, num_experts, top_k, cfg.lora_rank, cfg.lora_alpha)
        self.to(device)
        self._register_client_moe()

    prepare = MixerExpertModel.prepare   # the same input contract and checks as the single-expert mixer

    def gated_ffns(self) -> list[GatedLoRAFFN]:
        return [block.ffn for block in self.net.blocks]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net(inputs)

    @torch.no_grad()
    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Frozen-backbone pooled features `[B, D]`: base FFNs, no gate, no expert."""
        t = self.net.embed(patchify(inputs))
        for block in self.net.blocks:
            t = block.mix(t + block.ffn.moe.base_forward(block.norm1(t)))
        return self.net.norm(t).mean(dim=1)

    def routing_weights(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        """Per layer, the expert weights each token got in the forward, `[B, T, E]` (k non-zero per token)."""
        out = []
        t = self.net.embed(patchify(inputs))
        for block in self.net.blocks:
            h = block.norm1(t)
            w = block.ffn.route(h)
            out.append(w)
            t = block.mix(t + block.ffn.moe(h, w))
        return out


def build_client_moe(benchmark: Benchmark, cfg: ModelConfig, num_experts: int = 4, top_k: int = 2,
                     device: str | torch.device = "cpu") -> ClientMoEModel:
    """FedMoE-DA's client model for `benchmark` on cfg.backbone (mixer, minilm or vit, or
    their "-moe" names): `build_model` with the backbone's client MoE."""
    import dataclasses

    from fedmoe_sim.config import client_moe_backbone
    from fedmoe_sim.models import build_model

    moe_cfg = dataclasses.replace(cfg, backbone=client_moe_backbone(cfg.backbone), moe_experts=num_experts,
                                  moe_top_k=top_k)
    return build_model(benchmark, moe_cfg, device)
