"""Image transformer backbone: a transformers ViT, or a CLIP vision tower, frozen, offline.

`model.pretrained` = "" builds a ViTModel from `model.vit_*` with weights drawn from
seed 0 whatever the run seed: the shared "pretrained" stand-in, the same in every
process, as the digits mixer's pretrained state is (no hub is reachable here). A
directory loads its checkpoint with `local_files_only=True`: model_type "vit" ->
ViTModel, "clip" / "clip_vision_model" -> CLIPVisionModel (the vision tower of a
full CLIP checkpoint). Dropout is forced to 0, so train and eval modes agree.

As for MiniLM (text.py): the expert is PEFT LoRA on the FFN linears only
(`mlp.fc1`, `mlp.fc2` of every layer; never attention, embeddings or norms) plus
a trainable head, because no checkpoint ships a head for our labels. Every
VitExpertModel of a process shares the frozen tensors of one memoised backbone.

Inputs: `prepare` turns float32 `[N, C, H, W]` in [0, 1] into the checkpoint's
channels (1 -> 3 by repetition) and mean/std. The resize to the checkpoint's
image size happens per batch in the forward, not in `prepare`: a 5,600-image
pool at 224x224x3 would take 3.4 GB, and the trainer's +-1 pixel shifts should
act at the data's own resolution. Bilinear resizing is affine with weights
summing to 1, so normalising before or after it gives the same pixels.

Layouts: module names are transformers 5's (`ViTModel.layers[i].mlp.fc1`,
`CLIPVisionModel.encoder.layers[i].mlp.fc1`). Checkpoints stored in the 4.x key
layout (`encoder.layer.i.intermediate.dense`, hub ViTs) load through transformers'
own key conversion; a checkpoint that leaves any weight uninitialised is refused,
and under transformers 4.x the module layout is rejected rather than guessed at.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedmoe_sim.config import ModelConfig
from fedmoe_sim.models.expert_model import ExpertModel, capture_inputs
from fedmoe_sim.models.text import _public_name, register_peft_expert, wrap_ffn_lora

BACKBONE_SEED = 0   # the random-init backbone is the same for every run seed (DESIGN: one shared M0)

# Layer i's FFN linears (ViT: `layers.i.mlp.fc1`; CLIP: `encoder.layers.i.mlp.fc1`); PEFT full-matches
# module names, so attention (`attention.o_proj`, `self_attn.out_proj`) can never match.
FFN_TARGETS = r"(encoder\.)?layers\.\d+\.mlp\.fc[12]"

_CLIP_TYPES = ("clip", "clip_vision_model")
_DROPOUTS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "attention_dropout", "dropout")


@contextlib.contextmanager
def _quiet_hf() -> Iterator[None]:
    """Silence transformers' load reports (a full CLIP checkpoint lists every text weight as unused)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def _checkpoint_stats(path: Path, model_type: str) -> tuple[list[float], list[float]]:
    """Per-channel (mean, std) the checkpoint was trained with: its preprocessor_config.json,
    else transformers' defaults for the family (ViT: 0.5/0.5, CLIP: OpenAI's)."""
    from transformers.image_utils import (IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD, OPENAI_CLIP_MEAN,
                                          OPENAI_CLIP_STD)

    mean, std = ((OPENAI_CLIP_MEAN, OPENAI_CLIP_STD) if model_type in _CLIP_TYPES
                 else (IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD))
    proc = path / "preprocessor_config.json"
    if proc.is_file():
        spec = json.loads(proc.read_text())
        if not spec.get("do_normalize", True):
            return [0.0], [1.0]
        mean, std = spec.get("image_mean", mean), spec.get("image_std", std)
    return [float(v) for v in np.atleast_1d(mean)], [float(v) for v in np.atleast_1d(std)]


def load_vit(in_shape: tuple[int, int, int], cfg: ModelConfig,
             device: str = "cpu") -> tuple[nn.Module, tuple[list[float], list[float]] | None]:
    """(frozen ViTModel / CLIPVisionModel on `device`, the checkpoint's (mean, std) or None).

    Memoised per process: by (image shape, vit_*) for a random init, by path for a checkpoint.
    """
    if cfg.pretrained:
        return _load_checkpoint(cfg.pretrained, device)
    return _random_vit(tuple(in_shape), cfg.vit_width, cfg.vit_layers, cfg.vit_patch, device), None


@functools.lru_cache(maxsize=4)
def _random_vit(in_shape: tuple[int, int, int], width: int, layers: int, patch: int, device: str) -> nn.Module:
    from transformers import ViTConfig, ViTModel

    c, h, w = in_shape
    heads = max(1, width // 32)                       # heads of width 32 (at least one)
    if h % patch or w % patch:
        raise ValueError(f"model.vit_patch must divide the image size {h}x{w} (got {patch})")
    if width % heads:
        raise ValueError(f"model.vit_width must split into {heads} attention heads of width 32 or more, "
                         f"i.e. be < 64 or a multiple of {heads} (got {width})")
    config = ViTConfig(image_size=h if h == w else (h, w), patch_size=patch, num_channels=c, hidden_size=width,
                       num_hidden_layers=layers, num_attention_heads=heads,
                       intermediate_size=2 * width, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    with torch.random.fork_rng(devices=[]):           # HF's init draws from the global RNG
        torch.manual_seed(BACKBONE_SEED)
        base = ViTModel(config, add_pooling_layer=False)
    return _frozen(base, device)


@functools.lru_cache(maxsize=4)
def _load_checkpoint(pretrained: str, device: str) -> tuple[nn.Module, tuple[list[float], list[float]]]:
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import CLIPVisionConfig, CLIPVisionModel, ViTConfig, ViTModel

    path = Path(pretrained)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model.pretrained: no checkpoint directory with a config.json at {pretrained!r}")
    model_type = json.loads((path / "config.json").read_text()).get("model_type", "")
    if model_type == "vit":
        config_cls, model_cls, kw = ViTConfig, ViTModel, {"add_pooling_layer": False}
    elif model_type in _CLIP_TYPES:
        config_cls, model_cls, kw = CLIPVisionConfig, CLIPVisionModel, {}
    else:
        raise ValueError(f"model.pretrained must hold a vit, clip or clip_vision_model checkpoint "
                         f"(got model_type {model_type!r} in {pretrained!r})")
    with _quiet_hf():
        config = config_cls.from_pretrained(pretrained, local_files_only=True)
        for name in _DROPOUTS:
            if hasattr(config, name):
                setattr(config, name, 0.0)
        base, info = model_cls.from_pretrained(pretrained, config=config, local_files_only=True,
                                               output_loading_info=True, **kw)
    missing = sorted(info.get("missing_keys", ()))
    if missing:           # would silently be random weights: the report above was silenced
        raise ValueError(f"model.pretrained {pretrained!r} has no weights for {len(missing)} backbone tensors "
                         f"(first: {missing[0]!r})")
    return _frozen(base, device), _checkpoint_stats(path, model_type)


def _frozen(base: nn.Module, device: str) -> nn.Module:
    base.requires_grad_(False).eval().to(device)
    encoder_parts(base)                                # fail now on an unknown module layout
    return base


def encoder_parts(base: nn.Module) -> tuple[nn.Module, nn.ModuleList, nn.Module, str]:
    """(stem, layers, final norm, layer-name prefix) of a ViTModel or CLIPVisionModel.

    stem: pixels `[B, C, H, W]` -> tokens `[B, 1 + P, D]` (CLS first; CLIP: + pre_layrnorm).
    Each layer is pre-LN: t = t + attn(ln1(t)); t = t + mlp(ln2(t)) (see `layer_parts`).
    final norm: applied to every output token before pooling (ViT: `layernorm`, already in
    its last_hidden_state; CLIP: `post_layernorm`, which CLIP applies to the CLS token only).
    """
    layers = getattr(base, "layers", None)
    if isinstance(layers, nn.ModuleList) and hasattr(base, "layernorm"):
        stem, final, prefix = base.embeddings, base.layernorm, "layers"
    elif hasattr(base, "post_layernorm") and isinstance(getattr(base.encoder, "layers", None), nn.ModuleList):
        layers = base.encoder.layers
        stem, final, prefix = nn.Sequential(base.embeddings, base.pre_layrnorm), base.post_layernorm, "encoder.layers"
    else:
        raise ValueError(f"unsupported {type(base).__name__} module layout: model.backbone=vit expects transformers "
                         "5's ViTModel.layers[i].mlp or CLIPVisionModel.encoder.layers[i].mlp")
    layer_parts(layers[0])
    return stem, layers, final, prefix


def layer_parts(layer: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
    """(ln1, attention, ln2, mlp) of a ViTLayer / CLIPEncoderLayer; mlp = fc1 -> activation_fn -> fc2."""
    if hasattr(layer, "layernorm_after"):
        parts = layer.layernorm_before, layer.attention, layer.layernorm_after, layer.mlp
    elif hasattr(layer, "layer_norm2"):
        parts = layer.layer_norm1, layer.self_attn, layer.layer_norm2, layer.mlp
    else:
        raise ValueError(f"unsupported transformer layer {type(layer).__name__} for model.backbone=vit")
    if not all(hasattr(parts[3], a) for a in ("fc1", "fc2", "activation_fn")):
        raise ValueError(f"unsupported FFN {type(parts[3]).__name__} for model.backbone=vit (needs fc1, fc2)")
    return parts


def resize_pixels(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`[B, C, H, W]` -> `[B, C, *size]` (bilinear, antialiased when shrinking); unchanged if it fits."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def load_vit_inputs(model: nn.Module, in_shape: tuple[int, ...], cfg: ModelConfig, device: torch.device,
                    backbone: str) -> nn.Module:
    """Load the ViT/CLIP backbone for images of `in_shape` and set what `VitExpertModel.prepare`
    reads on `model` (in_shape, image_size, channels, normalisation); returns the backbone."""
    if len(in_shape) != 3:
        raise ValueError(f"model.backbone={backbone} needs images [C, H, W] (got input shape {tuple(in_shape)})")
    model.in_shape = tuple(int(s) for s in in_shape)
    base, stats = load_vit(model.in_shape, cfg, str(device))
    size = base.config.image_size
    model.image_size = (size, size) if isinstance(size, int) else tuple(size)
    model.channels = int(base.config.num_channels)
    if model.in_shape[0] not in (1, model.channels):
        raise ValueError(f"images with {model.in_shape[0]} channels cannot feed a {model.channels}-channel "
                         f"backbone (model.pretrained={cfg.pretrained!r})")
    mean, std = stats or ([0.0], [1.0])             # random init: the [0, 1] pixels as they are
    model._mean, model._std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
    return base


class VitExpertModel(ExpertModel):
    """Frozen ViT/CLIP + FFN LoRA (PEFT) + trainable head. Inputs: prepared images `[B, C', H, W]`.

    Expert names: `vit.<layer prefix>.{i}.mlp.fc{1,2}.lora_{A,B}.weight` (A `[r, in]`,
    B `[out, r]`), `head.weight` `[classes, D]`, `head.bias`. Pooled feature: mean over
    all output tokens (CLS and patches) after the final norm, `[B, D]`.
    """

    def __init__(self, in_shape: tuple[int, ...], num_classes: int, cfg: ModelConfig,
                 device: str | torch.device = "cpu"):
        super().__init__(num_classes)

        dev = torch.device(device)
        base = load_vit_inputs(self, in_shape, cfg, dev, "vit")
        self.is_clip = hasattr(base, "post_layernorm")
        self.vit, self.head = wrap_ffn_lora(base, cfg, FFN_TARGETS, num_classes, dev)
        register_peft_expert(self, "vit", self.vit, self.head)

    def _backbone_name(self, module_path: str) -> str:
        return _public_name(module_path)

    def prepare(self, x) -> torch.Tensor:
        """`[N, C, H, W]` in [0, 1] -> `[N, C', H, W]` normalised for the backbone, on its device."""
        t = torch.as_tensor(np.asarray(x), dtype=torch.float32)
        if t.ndim != 4 or tuple(t.shape[1:]) != self.in_shape:
            raise ValueError(f"vit inputs must be [N, {', '.join(map(str, self.in_shape))}] (got {list(t.shape)})")
        t = t.to(self.device)
        if t.shape[1] != self.channels:
            t = t.expand(-1, self.channels, -1, -1)     # grey -> RGB
        return ((t - self._mean.to(t)) / self._std.to(t)).contiguous()

    def base_model(self) -> nn.Module:
        """This model's structural copy of the backbone, LoRA-wrapped (tensors shared with the process)."""
        return self.vit.get_base_model()

    def pooled(self, inputs: torch.Tensor) -> torch.Tensor:
        """Mean over all tokens of the final-normed last hidden states, `[B, D]`."""
        hidden = self.vit(pixel_values=resize_pixels(inputs, self.image_size)).last_hidden_state  # [B, T, D]
        if self.is_clip:                                  # ViT's last_hidden_state is already normed
            hidden = self.base_model().post_layernorm(hidden)
        return hidden.mean(dim=1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(inputs))

    @torch.no_grad()
    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Frozen-backbone pooled features `[B, D]` (LoRA disabled, no grad, not normalised)."""
        with self.vit.disable_adapter():
            return self.pooled(inputs)

    def ffn_inputs(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        """Per layer the FFN input after its norm (ViT layernorm_after, CLIP layer_norm2), `[B, T, D]`,
        with the loaded expert applied: MetaMoE's routing vectors (DESIGN step 5) average these.

        Read with forward pre-hooks on this model's own `fc1` modules, removed before returning.
        """
        _, layers, _, _ = encoder_parts(self.base_model())
        return capture_inputs([layer_parts(layer)[3].fc1 for layer in layers], lambda: self.pooled(inputs))
