"""MetaMoE's unified model for the MiniLM text backbone (DESIGN steps 5-8, text).

At every BERT layer the FFN (intermediate.dense -> GELU -> output.dense, then the
layer's residual + LayerNorm, as BERT does) becomes the frozen FFN + K LoRA deltas
mixed per token by a context-aware router (moe.py) whose input is the hidden state
entering that FFN (attention output after its LayerNorm). Experts are the clients'
PEFT LoRA A/B read from their expert states; scale = alpha / r from the model's
PEFT config.

The layer loop (embeddings -> per layer: attention, FFN) is written once here,
in `BertLayers`, around *structural copies* of the frozen MiniLM modules whose
tensors ARE the shared ones (`frozen_bert`): nothing shared is modified, not even
a train/eval flag or a hook, and no frozen weight is duplicated in memory. The
FFN of each layer is the caller's, so FedMoE-DA's client MoE (client_moe_backbones.py)
runs the same loop with its gated experts.

Padding is masked out of every mean: the router context c, the pooled features.
Columns past a batch's longest sentence are dropped first (as `TextExpertModel.pooled`
does), so a sentence gives the same logits alone and in a padded batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from fedmoe_sim.models.expert_model import capture_inputs
from fedmoe_sim.models.moe import (MoEFFN, TopKRouter, UnifiedMoE, check_expert_states, make_routers, mean_head,
                                   stack_lora)
from fedmoe_sim.models.text import TextExpertModel, _share_frozen

Batch = dict[str, torch.Tensor]   # input_ids, attention_mask `[B, L]`


def _trimmed(inputs: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) without the columns past the longest sentence, `[B, L']`."""
    mask = inputs["attention_mask"]
    length = max(int(mask.sum(dim=1).max()), 1)
    return inputs["input_ids"][:, :length], mask[:, :length]


def masked_token_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each sample's mean over its own valid tokens: `h [B, L, D]`, `mask [B, L]` -> `[B, D]`."""
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def _layers(model: TextExpertModel) -> nn.ModuleList:
    return model.bert.get_base_model().encoder.layer


def unwrap_linear(module: nn.Module) -> nn.Module:
    """The frozen Linear under PEFT's LoRA wrapper (`get_base_layer`), or `module` itself if unwrapped."""
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module


def frozen_bert(base: nn.Module) -> nn.ModuleDict:
    """What a layer loop around new FFNs needs from a (PEFT-wrapped or plain) BertModel, as
    structural copies sharing the frozen tensors: embeddings; per layer the attention block,
    the FFN linears `fc1` = intermediate.dense and `fc2` = output.dense (LoRA unwrapped),
    the activation and the FFN's output LayerNorm `norm`."""
    layers = base.encoder.layer
    return _share_frozen(nn.ModuleDict({
        "embeddings": base.embeddings,
        "attention": nn.ModuleList(layer.attention for layer in layers),
        "fc1": nn.ModuleList(unwrap_linear(layer.intermediate.dense) for layer in layers),
        "fc2": nn.ModuleList(unwrap_linear(layer.output.dense) for layer in layers),
        "act": nn.ModuleList(layer.intermediate.intermediate_act_fn for layer in layers),
        "norm": nn.ModuleList(layer.output.LayerNorm for layer in layers),
    }))


FFN = Callable[[int, torch.Tensor], torch.Tensor]   # (layer, FFN input [B, L, D]) -> FFN output [B, L, D]


class BertLayers:
    """MiniLM's layer loop with each layer's FFN supplied by the caller (mixin for nn.Modules).

    The instance holds `embeddings`, `attentions`, `norms` (from `frozen_bert`) and `config`
    (the HF config, read only, for the attention mask). Per layer, as BertLayer does with
    dropout off: h = attention block (self-attention, output dense, residual, LayerNorm),
    the FFN input; t = LayerNorm(ffn(i, h) + h) (BertOutput).
    """

    embeddings: nn.Module
    attentions: nn.ModuleList
    norms: nn.ModuleList
    config: object

    def _embed(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token embeddings `[B, L, D]` and the attention mask in the form the attention modules expect."""
        from transformers.masking_utils import create_bidirectional_mask

        t = self.embeddings(input_ids=ids)
        return t, create_bidirectional_mask(config=self.config, inputs_embeds=t, attention_mask=mask)

    def _encode(self, ids: torch.Tensor, mask: torch.Tensor, ffn: FFN) -> torch.Tensor:
        """Last hidden states `[B, L, D]` of ids/mask `[B, L]`, layer i's FFN being `ffn(i, h)`."""
        t, attn_mask = self._embed(ids, mask)
        for i, (attn, norm) in enumerate(zip(self.attentions, self.norms, strict=True)):
            h = attn(t, attn_mask)[0]
            t = norm(ffn(i, h) + h)
        return t


def text_ffn_inputs(model: TextExpertModel, inputs: Batch) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per layer the input of `intermediate.dense` (attention output after its LayerNorm),
    `[B, L', D]`, with the loaded expert applied, and the valid-token mask `[B, L']` (bool).

    Read with forward pre-hooks on the model's own PEFT modules (per-instance copies,
    never the shared ones), removed before returning. L' = longest sentence in the batch.
    """
    captured = capture_inputs([layer.intermediate.dense for layer in _layers(model)], lambda: model.pooled(inputs))
    return captured, inputs["attention_mask"][:, :captured[0].shape[1]].bool()


class TextMoE(BertLayers, UnifiedMoE):
    """Frozen MiniLM with a K-expert LoRA MoE FFN per layer, a router per layer and a head.

    Trainable: routers, stacked LoRAs, lambdas, head. forward(dict(input_ids,
    attention_mask) `[B, L]`) -> logits `[B, classes]`. With context, a forward costs
    one extra no-grad encoder pass (M0, for c). Build it on the source model's device
    and never `.to()` it: that would move the frozen tensors it shares with every
    TextExpertModel in the process.
    """

    def __init__(self, frozen: nn.ModuleDict, config, ffns: Sequence[MoEFFN], routers: Sequence[TopKRouter],
                 head: nn.Linear):
        super().__init__()
        self.embeddings, self.attentions, self.norms = frozen["embeddings"], frozen["attention"], frozen["norm"]
        self.config = config                   # the HF config: read only, for the attention mask
        self.ffns, self.routers, self.head = nn.ModuleList(ffns), nn.ModuleList(routers), head
        self._freeze_all_but_trainable(extra=list(head.parameters()))

    @torch.no_grad()
    def _contexts(self, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        out = []

        def base(i: int, h: torch.Tensor) -> torch.Tensor:
            out.append(masked_token_mean(h, mask))
            return self.ffns[i].base_forward(h)

        self._encode(ids, mask, base)
        return out

    def contexts(self, inputs: Batch) -> list[torch.Tensor]:
        """Per layer c `[B, D]`: each sentence's masked mean of M0's (no expert) hidden state
        entering that layer's FFN. Depends on the sentence alone, never on the batch."""
        return self._contexts(*_trimmed(inputs))

    def forward(self, inputs: Batch, return_probs: bool = False):
        """Logits `[B, classes]`; with `return_probs`, also each layer's router probs `[B, L', K]`."""
        ids, mask = _trimmed(inputs)
        ctx = self._contexts(ids, mask) if self.uses_context() else [None] * len(self.routers)
        probs = []

        def moe(i: int, h: torch.Tensor) -> torch.Tensor:
            w, p = self.routers[i](h, ctx[i])
            probs.append(p)
            return self.ffns[i](h, w)

        logits = self.head(masked_token_mean(self._encode(ids, mask, moe), mask))
        return (logits, probs) if return_probs else logits


def _lora_scale(model: TextExpertModel) -> float:
    cfg = model.bert.peft_config["default"]
    if getattr(cfg, "rank_pattern", None) or getattr(cfg, "alpha_pattern", None):
        raise ValueError("TextMoE assumes one LoRA rank and alpha for every layer")
    return cfg.lora_alpha / (cfg.r ** 0.5 if getattr(cfg, "use_rslora", False) else cfg.r)


def build_text_moe_from_experts(model: TextExpertModel, expert_states: Sequence[dict[str, np.ndarray]],
                                router_init: Sequence[np.ndarray] | None = None, top_k: int = 1,
                                renormalize: bool = False, seed: int = 0, context: bool = True,
                                lambda_init: float = 0.3, train_lambda: bool = True,
                                straight_through: bool = False) -> TextMoE:
    """Unify K text experts (TextExpertModel expert states) into one TextMoE.

    router_init: per layer `[K, D]` routing vectors as rows (None: random from `seed`).
    Head = the mean of the experts' heads, trainable: each expert trained its own head
    with its LoRA on its domain's labels in the shared label space, so no single head
    fits every expert's features; their mean is the soup-style start that step 8 tunes.
    """
    if not isinstance(model, TextExpertModel):
        raise ValueError("build_text_moe_from_experts needs a TextExpertModel (model.backbone=minilm)")
    check_expert_states(model, expert_states)
    base = model.bert.get_base_model()
    layers, dev = base.encoder.layer, model.device
    frozen = frozen_bert(base)
    scale = _lora_scale(model)
    ffns = []
    for i in range(len(layers)):
        stacked = stack_lora(expert_states, {fc: f"bert.encoder.layer.{i}.{name}.dense.lora_{{ab}}.weight"
                                             for fc, name in (("fc1", "intermediate"), ("fc2", "output"))}, dev)
        ffns.append(MoEFFN(frozen["fc1"][i], frozen["fc2"][i], stacked, scale, act=frozen["act"][i]))
    d = base.config.hidden_size
    routers = make_routers(d, len(expert_states), len(layers), router_init, seed, dev, top_k=top_k,
                           renormalize=renormalize, context=context, lambda_init=lambda_init,
                           train_lambda=train_lambda, straight_through=straight_through)
    return TextMoE(frozen, base.config, ffns, routers, mean_head(expert_states, d, model.num_classes, dev))
