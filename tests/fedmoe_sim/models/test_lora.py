"""LoRALinear: hand-checkable maths, frozen base, deterministic init."""

from __future__ import annotations

import torch
from torch import nn

from fedmoe_sim.models.lora import LoRALinear, lora_a_init_, lora_disabled


def _tiny() -> LoRALinear:
    base = nn.Linear(2, 2)
    with torch.no_grad():
        base.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        base.bias.copy_(torch.tensor([0.5, -0.5]))
    return LoRALinear(base, rank=1, alpha=2.0)          # scale = alpha / r = 2


def test_fresh_lora_equals_base_layer():
    layer = _tiny()
    x = torch.tensor([[1.0, 1.0]])
    torch.testing.assert_close(layer(x), torch.tensor([[1.5, 1.5]]))


def test_lora_adds_scaled_low_rank_update():
    layer = _tiny()
    with torch.no_grad():
        layer.lora_A.copy_(torch.tensor([[1.0, 0.0]]))   # A [r=1, in=2]: picks x0
        layer.lora_B.copy_(torch.tensor([[0.0], [3.0]])) # B [out=2, r=1]: writes to y1
    x = torch.tensor([[1.0, 1.0]])
    # y = W x + b + 2 * B A x = [1.5, 1.5] + 2 * [0, 3]
    torch.testing.assert_close(layer(x), torch.tensor([[1.5, 7.5]]))
    torch.testing.assert_close(layer.delta_weight(), torch.tensor([[0.0, 0.0], [6.0, 0.0]]))
    with lora_disabled(layer):
        torch.testing.assert_close(layer(x), torch.tensor([[1.5, 1.5]]))
    assert layer.enabled


def test_only_lora_tensors_are_trainable():
    layer = _tiny()
    assert {n for n, p in layer.named_parameters() if p.requires_grad} == {"lora_A", "lora_B"}


def test_lora_a_init_is_seeded_and_bounded():
    a1, a2 = torch.empty(8, 64), torch.empty(8, 64)
    lora_a_init_(a1, torch.Generator().manual_seed(3))
    lora_a_init_(a2, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a1, a2)
    assert a1.abs().max() <= 1 / 8 and a1.std() > 0.03  # U(-1/sqrt(64), 1/sqrt(64))
