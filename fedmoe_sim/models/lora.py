"""A minimal LoRA wrapper for `nn.Linear`, used for the digits mixer's FFN.

Why not PEFT here: the mixer is tiny (a client step is ~1 ms), so PEFT's per-layer
Python dispatch (adapter dicts, dropout modules, dtype casts, hooks) is a large
share of the step, and its parameter names carry `base_model.model` / `.default`
decorations. This module is ~40 lines, has stable names (`<layer>.lora_A`,
`<layer>.lora_B`) and the same maths and init as PEFT. Transformer backbones
(text.py) use PEFT itself.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


class LoRALinear(nn.Module):
    """y = W x + b + (alpha / r) * B A x, with W, b frozen and only A, B trainable.

    A `[r, in]`, B `[out, r]`. B starts at 0, so a fresh expert leaves the
    pretrained layer unchanged (the LoRA paper's init). `enabled = False` gives
    the frozen layer alone (used for backbone features).
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1 (got {rank})")
        self.base = base.requires_grad_(False)
        w = base.weight
        self.lora_A = nn.Parameter(torch.zeros(rank, base.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=w.dtype, device=w.device))
        self.scale = alpha / rank
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.enabled:
            y = y + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale
        return y

    def delta_weight(self) -> torch.Tensor:
        """The dense update (alpha / r) * B A, `[out, in]` (for merging and tests)."""
        return self.scale * self.lora_B @ self.lora_A


def lora_a_init_(a: torch.Tensor, generator: torch.Generator) -> None:
    """Kaiming-uniform (a = sqrt(5)) init of a LoRA A `[r, in]`: U(-1/sqrt(in), 1/sqrt(in)).

    Same distribution as PEFT's default; drawn on CPU from `generator` and copied,
    so the result does not depend on the device or on the global RNG.
    """
    bound = 1.0 / math.sqrt(a.shape[-1])
    values = torch.empty(a.shape, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
    with torch.no_grad():
        a.copy_(values)


@contextlib.contextmanager
def lora_disabled(module: nn.Module) -> Iterator[None]:
    """Run `module` with every LoRALinear inside it bypassed (frozen base only)."""
    layers = [m for m in module.modules() if isinstance(m, LoRALinear)]
    previous = [m.enabled for m in layers]
    for m in layers:
        m.enabled = False
    try:
        yield
    finally:
        for m, was in zip(layers, previous, strict=True):
            m.enabled = was
