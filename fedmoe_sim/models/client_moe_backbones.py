"""FedMoE-DA's client MoE on the transformer backbones: frozen MiniLM ("minilm-moe") and ViT/CLIP ("vit-moe").

The same model as mixer-moe (client_moe.py): at every layer a gate Linear(D, E, no
bias) reads the FFN input and E rank-r LoRA experts sit on the FFN's two Linears,
mixed top-k per token by moe.py (`GatedLoRAFFN`). Part and tensor names are
mixer-moe's ("gate" `blocks.{l}.gate.weight`, "experts" `blocks.{l}.ffn.fc{1,2}.lora_{A,B}`),
so FedMoE-DA's server, its client and the numpy helpers of client_moe.py run unchanged.
- MiniLM: the FFN input is the attention block's output (after its LayerNorm); fc1 =
  intermediate.dense (384 -> 1536), fc2 = output.dense (1536 -> 384); then BERT's
  residual + LayerNorm. The layer loop is text_moe's `BertLayers`: padding is masked
  in attention and in the pooled mean, columns past the longest sentence are dropped.
- ViT/CLIP (pre-LN): the FFN input is ln2(t); fc1 / fc2 = mlp.fc1 / mlp.fc2; the loop is
  vit_moe's `VitLayers`; pooled = mean over all tokens after the final norm.
Both add a third part, "head" (`head.weight` `[classes, D]`, `head.bias`), trainable:
neither backbone ships a head for our labels, and a frozen random head would leave the
experts fitting an arbitrary projection (as text.py argues). FedMoE-DA never sends it:
it stays on the client, a personal classifier.

LoRA is moe.py's stacked layout, not PEFT (the E experts of a Linear are one `[E, r, in]`
tensor, as the helpers slice them); the scale alpha / r is PEFT's default, so one expert
means what a TextExpertModel / VitExpertModel LoRA means. The frozen modules are
structural copies of the process's one memoised backbone (`load_minilm`, `load_vit`)
sharing its tensors: build on the device and never `.to()` the model.
"""

from __future__ import annotations

import torch
from torch import nn

from fedmoe_sim.config import ModelConfig
from fedmoe_sim.models.client_moe import ClientMoEModel, GatedLoRAFFN, check_moe_size
from fedmoe_sim.models.text import TextExpertModel, load_minilm
from fedmoe_sim.models.text_moe import Batch, BertLayers, _trimmed, frozen_bert, masked_token_mean
from fedmoe_sim.models.vit import VitExpertModel, load_vit_inputs
from fedmoe_sim.models.vit_moe import VitLayers, frozen_vit


def _gated_ffns(frozen: nn.ModuleDict, cfg: ModelConfig, num_experts: int, top_k: int) -> nn.ModuleList:
    """One `GatedLoRAFFN` per layer around the frozen fc1 / act / fc2 of `frozen` (frozen_bert / frozen_vit)."""
    return nn.ModuleList(GatedLoRAFFN(fc1, fc2, num_experts, top_k, cfg.lora_rank, cfg.lora_alpha, act=act)
                         for fc1, fc2, act in zip(frozen["fc1"], frozen["fc2"], frozen["act"], strict=True))


def _fresh_head(width: int, num_classes: int, device: torch.device) -> nn.Linear:
    """The trainable head; its values come from `reset_client_moe`, so its construction must not move the global RNG."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        return nn.Linear(width, num_classes, device=device)


class TextClientMoEModel(BertLayers, ClientMoEModel):
    """Frozen all-MiniLM-L6-v2 with every layer's FFN a `GatedLoRAFFN`, plus a trainable head.

    Inputs: dict(input_ids, attention_mask) `[B, L]` (`prepare`, as TextExpertModel) ->
    logits `[B, classes]`.
    """

    def __init__(self, num_classes: int, cfg: ModelConfig, num_experts: int = 4, top_k: int = 2,
                 device: str | torch.device = "cpu"):
        super().__init__(num_classes)
        dev = torch.device(device)
        base, self.tokenizer = load_minilm(str(dev))
        width = base.config.hidden_size
        check_moe_size(num_experts, top_k, width, "MiniLM's width")
        self.top_k, self.max_length = int(top_k), cfg.max_length
        frozen = frozen_bert(base)
        self.embeddings, self.attentions, self.norms = frozen["embeddings"], frozen["attention"], frozen["norm"]
        self.config = base.config                 # the HF config: read only, for the attention mask
        self.ffns = _gated_ffns(frozen, cfg, num_experts, top_k)
        self.head = _fresh_head(width, num_classes, dev)
        self._register_client_moe(self.head)

    prepare = TextExpertModel.prepare   # the same tokenisation (padded to max_length) as the single-expert model

    def gated_ffns(self) -> list[GatedLoRAFFN]:
        return list(self.ffns)

    def forward(self, inputs: Batch) -> torch.Tensor:
        ids, mask = _trimmed(inputs)
        return self.head(masked_token_mean(self._encode(ids, mask, lambda i, h: self.ffns[i](h)), mask))

    @torch.no_grad()
    def features(self, inputs: Batch) -> torch.Tensor:
        """Frozen-encoder masked-mean features `[B, D]`: base FFNs, no gate, no expert."""
        ids, mask = _trimmed(inputs)
        return masked_token_mean(self._encode(ids, mask, lambda i, h: self.ffns[i].moe.base_forward(h)), mask)

    def routing_weights(self, inputs: Batch) -> list[torch.Tensor]:
        """Per layer the expert weights of every token, `[B, L', E]` (k non-zero per token; L' = the
        longest sentence; padded positions are routed too, but attention and pooling ignore them)."""
        ids, mask = _trimmed(inputs)
        out = []

        def ffn(i: int, h: torch.Tensor) -> torch.Tensor:
            out.append(self.ffns[i].route(h))
            return self.ffns[i].moe(h, out[-1])

        self._encode(ids, mask, ffn)
        return out


class VitClientMoEModel(VitLayers, ClientMoEModel):
    """Frozen ViT/CLIP vision tower with every layer's FFN a `GatedLoRAFFN`, plus a trainable head.

    Inputs: images prepared as VitExpertModel does (`[B, C', H, W]`, the checkpoint's
    channels and normalisation; resized to its image size per batch) -> logits `[B, classes]`.
    """

    def __init__(self, in_shape: tuple[int, ...], num_classes: int, cfg: ModelConfig, num_experts: int = 4,
                 top_k: int = 2, device: str | torch.device = "cpu"):
        super().__init__(num_classes)
        dev = torch.device(device)
        base = load_vit_inputs(self, in_shape, cfg, dev, "vit-moe")      # what `prepare` reads
        width = base.config.hidden_size
        check_moe_size(num_experts, top_k, width, "the ViT width")
        self.top_k = int(top_k)
        frozen = frozen_vit(base)
        self.stem, self.final = frozen["stem"], frozen["final"]
        self.norms1, self.attentions, self.norms2 = frozen["ln1"], frozen["attention"], frozen["ln2"]
        self.ffns = _gated_ffns(frozen, cfg, num_experts, top_k)
        self.head = _fresh_head(width, num_classes, dev)
        self._register_client_moe(self.head)

    prepare = VitExpertModel.prepare

    def gated_ffns(self) -> list[GatedLoRAFFN]:
        return list(self.ffns)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.final(self._encode(inputs, lambda i, h: self.ffns[i](h))).mean(dim=1))

    @torch.no_grad()
    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Frozen-backbone pooled features `[B, D]`: base FFNs, no gate, no expert."""
        return self.final(self._encode(inputs, lambda i, h: self.ffns[i].moe.base_forward(h))).mean(dim=1)

    def routing_weights(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        """Per layer the expert weights of every token (CLS and patches), `[B, T, E]`, k non-zero per token."""
        out = []

        def ffn(i: int, h: torch.Tensor) -> torch.Tensor:
            out.append(self.ffns[i].route(h))
            return self.ffns[i].moe(h, out[-1])

        self._encode(inputs, ffn)
        return out
