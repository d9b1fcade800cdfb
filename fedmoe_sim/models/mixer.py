"""The digits backbone: a small MLP-mixer over 4x4 patches, pretrained here on clean digits.

DESIGN ("Data and models, offline first"): MetaMoE-style methods need a frozen
*pretrained* backbone so that zero-shot means something, and no hub is reachable.
So the backbone is pretrained on the benchmark's clean base digits, from seed 0
whatever the run seed (it plays the "public pretrained model"), and cached on
disk; the domains then shift away from that base. The expert is rank-r LoRA on
the channel FFN of every block (the transformer-FFN analogue); token mixing (the
attention analogue), the embedding, the norms and the head stay frozen, unless
model.train_head makes the head a second trainable part (a personal classifier
for pFedSim), which then starts from its pretrained weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedmoe_sim.config import ModelConfig
from fedmoe_sim.models.expert_model import EXPERT, ExpertModel
from fedmoe_sim.models.lora import LoRALinear, lora_disabled

HEAD = "head"    # part (model.train_head): the classifier, `head.weight` [classes, D] and `head.bias` [classes]
HEAD_WEIGHT = "head.weight"   # row c: class c's direction (pFedSim's similarity proxy)
PATCH = 4        # pixels per patch side
IMAGE = 8        # image side: 8x8 -> 4 tokens of 16 pixels per channel


def patchify(x: torch.Tensor) -> torch.Tensor:
    """`[B, C, 8, 8]` -> `[B, 4, C*16]`: row-major 4x4 patches, one token each."""
    b, c, h, w = x.shape
    g = h // PATCH
    x = x.reshape(b, c, g, PATCH, g, PATCH).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, g * g, c * PATCH * PATCH)


def random_translate(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by an independent random (dy, dx) in {-1, 0, 1}^2, zero fill.

    `[B, C, H, W]` -> same shape. The offsets come from `generator` (CPU), so the
    augmentation is reproducible and independent of the global RNG.
    """
    return translate(x, translation_offsets(x.shape[0], generator))


def translation_offsets(batch: int, generator: torch.Generator) -> torch.Tensor:
    """The draw `random_translate` makes: `[2, B]` in {0, 1, 2} (row, column shift + 1)."""
    return torch.randint(0, 3, (2, batch), generator=generator)


def translate(x: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """Shift image b by (offs[0, b] - 1, offs[1, b] - 1) pixels, zero fill. `[B, C, H, W]`."""
    b, _, h, w = x.shape
    offs = offs.to(x.device)
    padded = F.pad(x, (1, 1, 1, 1))
    rows = offs[0][:, None] + torch.arange(h, device=x.device)            # [B, H]
    cols = offs[1][:, None] + torch.arange(w, device=x.device)            # [B, W]
    bi = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


class FFN(nn.Module):
    """Channel MLP: Linear(D, 2D) -> GELU -> Linear(2D, D). The expert's LoRA goes on fc1, fc2."""

    def __init__(self, width: int):
        super().__init__()
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(h)))


class TokenMixing(nn.Module):
    """Pre-norm residual MLP across the 4 tokens (per channel): the mixer's attention analogue."""

    def __init__(self, width: int, tokens: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(tokens, 4 * tokens)
        self.fc2 = nn.Linear(4 * tokens, tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x).transpose(1, 2)                      # [B, D, T]
        return x + self.fc2(F.gelu(self.fc1(h))).transpose(1, 2)


class MixerBlock(nn.Module):
    """Channel FFN first, then token mixing; both pre-norm residual. `[B, T, D]` -> `[B, T, D]`."""

    def __init__(self, width: int, tokens: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.ffn = FFN(width)
        self.mix = TokenMixing(width, tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(x + self.ffn(self.norm1(x)))


class Mixer(nn.Module):
    """Patch embedding -> blocks -> LayerNorm -> mean over tokens -> head. `[B, C, 8, 8]` -> `[B, classes]`."""

    def __init__(self, in_channels: int, width: int, blocks: int, num_classes: int):
        super().__init__()
        tokens = (IMAGE // PATCH) ** 2
        self.embed = nn.Linear(in_channels * PATCH * PATCH, width)
        self.blocks = nn.ModuleList(MixerBlock(width, tokens) for _ in range(blocks))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, C, 8, 8]` -> `[B, D]` mean-pooled final tokens (every token is real: no mask)."""
        t = self.embed(patchify(x))
        for block in self.blocks:
            t = block(t)
        return self.norm(t).mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(x))


class MixerExpertModel(ExpertModel):
    """Pretrained frozen Mixer + rank-r LoRA on every block's fc1 and fc2 (the expert).

    Expert names: `blocks.{i}.ffn.fc{1,2}.lora_{A,B}` (A `[r, in]`, B `[out, r]`),
    4 tensors per block. The head is pretrained with the backbone and frozen; with
    model.train_head it is the part "head" (`head.weight`, `head.bias`), reset to the
    pretrained weights, so the initial model is the same with or without it.
    """

    def __init__(self, backbone_state: dict[str, torch.Tensor], in_channels: int, num_classes: int,
                 cfg: ModelConfig, device: str | torch.device = "cpu"):
        super().__init__(num_classes)
        self.in_shape = (in_channels, IMAGE, IMAGE)
        with torch.device("meta"):  # no init draws: every weight comes from the pretrained state
            self.net = Mixer(in_channels, cfg.width, cfg.blocks, num_classes)
        self.net.load_state_dict({k: v.clone() for k, v in backbone_state.items()}, assign=True)
        for block in self.net.blocks:
            block.ffn.fc1 = LoRALinear(block.ffn.fc1, cfg.lora_rank, cfg.lora_alpha)
            block.ffn.fc2 = LoRALinear(block.ffn.fc2, cfg.lora_rank, cfg.lora_alpha)
        self.to(device)
        named = {}
        for i, block in enumerate(self.net.blocks):
            for fc in ("fc1", "fc2"):
                layer = getattr(block.ffn, fc)
                named[f"blocks.{i}.ffn.{fc}.lora_A"] = layer.lora_A
                named[f"blocks.{i}.ffn.{fc}.lora_B"] = layer.lora_B
        if cfg.train_head:
            head = self.net.head
            tensors = {HEAD_WEIGHT: head.weight, "head.bias": head.bias}
            self._head_init = {k: p.detach().cpu().numpy().copy() for k, p in tensors.items()}
            self._register_parts({EXPERT: named, HEAD: tensors})
        else:
            self._head_init = {}
            self._register_expert(named)
        self.reset_expert(0)

    def reset_expert(self, seed: int) -> None:
        """LoRA as `ExpertModel.reset_expert` (its draws come first in sorted-name order, so they
        do not depend on the head option); a trainable head goes back to its pretrained weights."""
        super().reset_expert(seed)
        if self._head_init:
            self.load_part(HEAD, self._head_init)

    def prepare(self, x) -> torch.Tensor:
        t = torch.as_tensor(x, dtype=torch.float32)
        if t.ndim != 4 or tuple(t.shape[1:]) != self.in_shape:
            raise ValueError(f"mixer inputs must be [N, {', '.join(map(str, self.in_shape))}] (got {list(t.shape)})")
        return t.to(self.device)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net(inputs)

    @torch.no_grad()
    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Frozen-backbone pooled features `[B, D]` (LoRA bypassed, no grad)."""
        with lora_disabled(self.net):
            return self.net.pooled(inputs)

    def ffn_inputs(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        """Per block, the FFN input after its norm, `[B, T, D]`, with the expert applied.

        MetaMoE's routing vectors (DESIGN step 5) are means of these over tokens and samples.
        """
        out = []
        t = self.net.embed(patchify(inputs))
        for block in self.net.blocks:
            h = block.norm1(t)
            out.append(h)
            t = block.mix(t + block.ffn(h))
        return out
