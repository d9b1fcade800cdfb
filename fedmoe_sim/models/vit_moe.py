"""MetaMoE's unified model for the ViT / CLIP vision backbone (DESIGN steps 5-8, images).

ViT and CLIP layers are pre-LN, as transformers writes them (ViTLayer, CLIPEncoderLayer):
    t = t + attn(ln1(t));   t = t + FFN(ln2(t)),   FFN = fc2(act(fc1(.)))
At every layer the FFN becomes the frozen FFN + K LoRA deltas mixed per token by a
context-aware router (moe.py) whose input is h = ln2(t), the hidden state entering
that FFN. Experts are the clients' PEFT LoRA A/B read from their expert states; the
scale alpha / r is PEFT's own (`scaling`) on the source model. Tokens: CLS + patches;
all are real, so no mask: every mean (router context c, pooled features) is over all
of a sample's own tokens, never over the batch.

As in text_moe.py, the layer loop is written once (`VitLayers`, each layer's FFN the
caller's, so FedMoE-DA's client MoE in client_moe_backbones.py runs it too) around
*structural copies* of the frozen modules whose tensors ARE the shared ones
(`frozen_vit`): nothing shared is modified, not even a train/eval flag, and no
frozen weight is duplicated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from fedmoe_sim.models.moe import (MoEFFN, TopKRouter, UnifiedMoE, check_expert_states, make_routers, mean_head,
                                   stack_lora)
from fedmoe_sim.models.text import _share_frozen
from fedmoe_sim.models.text_moe import unwrap_linear
from fedmoe_sim.models.vit import VitExpertModel, encoder_parts, layer_parts, resize_pixels


def frozen_vit(base: nn.Module) -> nn.ModuleDict:
    """What a layer loop around new FFNs needs from a (PEFT-wrapped or plain) ViTModel /
    CLIPVisionModel, as structural copies sharing the frozen tensors: the stem and final norm
    (`encoder_parts`); per layer ln1, attention, ln2, the FFN linears fc1 / fc2 (LoRA
    unwrapped) and the activation."""
    stem, layers, final, _ = encoder_parts(base)
    parts = [layer_parts(layer) for layer in layers]
    return _share_frozen(nn.ModuleDict({
        "stem": stem, "final": final,
        "ln1": nn.ModuleList(p[0] for p in parts),
        "attention": nn.ModuleList(p[1] for p in parts),
        "ln2": nn.ModuleList(p[2] for p in parts),
        "fc1": nn.ModuleList(unwrap_linear(p[3].fc1) for p in parts),
        "fc2": nn.ModuleList(unwrap_linear(p[3].fc2) for p in parts),
        "act": nn.ModuleList(p[3].activation_fn for p in parts),
    }))


FFN = Callable[[int, torch.Tensor], torch.Tensor]   # (layer, FFN input ln2(t) [B, T, D]) -> FFN output [B, T, D]


class VitLayers:
    """The pre-LN ViT/CLIP layer loop with each layer's FFN supplied by the caller (mixin for nn.Modules).

    The instance holds `stem`, `norms1`, `attentions`, `norms2` (from `frozen_vit`) and
    `image_size`. Per layer: t = t + attn(ln1(t)); t = t + ffn(i, ln2(t)). No mask: every
    token (CLS and patches) is real.
    """

    stem: nn.Module
    norms1: nn.ModuleList
    attentions: nn.ModuleList
    norms2: nn.ModuleList
    image_size: tuple[int, int]

    def _attend(self, t: torch.Tensor, ln1: nn.Module, attn: nn.Module) -> torch.Tensor:
        """t + attn(ln1(t)), `[B, T, D]` (no mask: every token is real)."""
        return t + attn(ln1(t))[0]

    def _encode(self, inputs: torch.Tensor, ffn: FFN) -> torch.Tensor:
        """Output tokens `[B, T, D]` before the final norm, layer i's FFN being `ffn(i, h)`."""
        t = self.stem(resize_pixels(inputs, self.image_size))
        for i, (ln1, attn, ln2) in enumerate(zip(self.norms1, self.attentions, self.norms2, strict=True)):
            t = self._attend(t, ln1, attn)
            t = t + ffn(i, ln2(t))
        return t


class VitMoE(VitLayers, UnifiedMoE):
    """Frozen ViT/CLIP with a K-expert LoRA MoE FFN per layer, a router per layer and a head.

    Trainable: routers, stacked LoRAs, lambdas, head. forward(prepared images `[B, C, H, W]`,
    as `VitExpertModel.prepare` gives them) -> logits `[B, classes]`. With context, a
    forward costs one extra no-grad encoder pass (M0, for c). Build it on the source
    model's device and never `.to()` it: that would move the frozen tensors it shares
    with every VitExpertModel in the process.
    """

    def __init__(self, frozen: nn.ModuleDict, image_size: tuple[int, int], ffns: Sequence[MoEFFN],
                 routers: Sequence[TopKRouter], head: nn.Linear):
        super().__init__()
        self.stem, self.final = frozen["stem"], frozen["final"]
        self.norms1, self.attentions, self.norms2 = frozen["ln1"], frozen["attention"], frozen["ln2"]
        self.image_size = tuple(image_size)
        self.ffns, self.routers, self.head = nn.ModuleList(ffns), nn.ModuleList(routers), head
        self._freeze_all_but_trainable(extra=list(head.parameters()))

    @torch.no_grad()
    def contexts(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        """Per layer c `[B, D]`: each image's mean over its own tokens of M0's (no expert)
        hidden state entering that layer's FFN. Depends on the image alone, never on the batch."""
        out = []

        def base(i: int, h: torch.Tensor) -> torch.Tensor:
            out.append(h.mean(dim=1))
            return self.ffns[i].base_forward(h)

        self._encode(inputs, base)
        return out

    def forward(self, inputs: torch.Tensor, return_probs: bool = False):
        """Logits `[B, classes]`; with `return_probs`, also each layer's router probs `[B, T, K]`."""
        ctx = self.contexts(inputs) if self.uses_context() else [None] * len(self.routers)
        probs = []

        def moe(i: int, h: torch.Tensor) -> torch.Tensor:
            w, p = self.routers[i](h, ctx[i])
            probs.append(p)
            return self.ffns[i](h, w)

        logits = self.head(self.final(self._encode(inputs, moe)).mean(dim=1))
        return (logits, probs) if return_probs else logits


def _lora_scale(fcs: Sequence[nn.Module]) -> float:
    """PEFT's alpha / r (or alpha / sqrt(r) with rsLoRA) of the FFN LoRA layers: one value for all."""
    scales = {float(fc.scaling["default"]) for fc in fcs}
    if len(scales) != 1:
        raise ValueError(f"VitMoE assumes one LoRA scale for every FFN linear (got {sorted(scales)})")
    return scales.pop()


def build_vit_moe_from_experts(model: VitExpertModel, expert_states: Sequence[dict[str, np.ndarray]],
                               router_init: Sequence[np.ndarray] | None = None, top_k: int = 1,
                               renormalize: bool = False, seed: int = 0, context: bool = True,
                               lambda_init: float = 0.3, train_lambda: bool = True,
                               straight_through: bool = False) -> VitMoE:
    """Unify K image experts (VitExpertModel expert states) into one VitMoE.

    router_init: per layer `[K, D]` routing vectors as rows (None: random from `seed`).
    Head = the mean of the experts' heads, trainable (as for text: each expert trained
    its own head with its LoRA, so their mean is the soup-style start that step 8 tunes).
    """
    if not isinstance(model, VitExpertModel):
        raise ValueError("build_vit_moe_from_experts needs a VitExpertModel (model.backbone=vit)")
    check_expert_states(model, expert_states)
    _, layers, _, prefix = encoder_parts(model.base_model())
    mlps = [layer_parts(layer)[3] for layer in layers]
    dev = model.device
    frozen = frozen_vit(model.base_model())
    scale = _lora_scale([fc for m in mlps for fc in (m.fc1, m.fc2)])
    ffns = []
    for i in range(len(layers)):
        stacked = stack_lora(expert_states, {fc: f"vit.{prefix}.{i}.mlp.{fc}.lora_{{ab}}.weight"
                                             for fc in ("fc1", "fc2")}, dev)
        ffns.append(MoEFFN(frozen["fc1"][i], frozen["fc2"][i], stacked, scale, act=frozen["act"][i]))
    d = model.head.in_features
    routers = make_routers(d, len(expert_states), len(layers), router_init, seed, dev, top_k=top_k,
                           renormalize=renormalize, context=context, lambda_init=lambda_init,
                           train_lambda=train_lambda, straight_through=straight_through)
    return VitMoE(frozen, model.image_size, ffns, routers, mean_head(expert_states, d, model.num_classes, dev))
