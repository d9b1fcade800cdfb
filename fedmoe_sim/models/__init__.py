"""Models: frozen shared backbones with one trainable expert, and MoE building blocks.

`build_model(benchmark, cfg)` is the one entry point clients and servers use. It is
cheap after the first call in a process (backbone weights are memoised), so a
worker can build once and reuse the model for many logical clients through
`load_expert_state` / `reset_expert`.
"""

from __future__ import annotations

import numpy as np
import torch

from fedmoe_sim.config import ModelConfig
from fedmoe_sim.data.base import Benchmark
from fedmoe_sim.models.expert_model import ExpertModel
from fedmoe_sim.models.lora import LoRALinear, lora_disabled
from fedmoe_sim.models.mixer import MixerExpertModel, random_translate
from fedmoe_sim.models.moe import (LoRAMoELinear, MoEFFN, MoEMixer, TopKRouter, UnifiedMoE, build_moe_from_experts,
                                   mean_routing_vectors, routing_inputs)
from fedmoe_sim.models.text_moe import TextMoE, build_text_moe_from_experts, text_ffn_inputs
from fedmoe_sim.models.tiny import TinyMLPExpertModel
from fedmoe_sim.models.vit import VitExpertModel
from fedmoe_sim.models.vit_moe import VitMoE, build_vit_moe_from_experts

__all__ = [
    "ExpertModel", "LoRALinear", "LoRAMoELinear", "MixerExpertModel", "MoEFFN", "MoEMixer", "TextMoE", "TopKRouter",
    "UnifiedMoE", "VitExpertModel", "VitMoE", "build_model", "build_moe_from_experts", "build_text_moe_from_experts",
    "build_vit_moe_from_experts", "lora_disabled", "mean_routing_vectors", "random_translate", "routing_inputs",
    "text_ffn_inputs",
]


def build_model(benchmark: Benchmark, cfg: ModelConfig, device: str | torch.device = "cpu") -> ExpertModel:
    """Frozen shared backbone + one trainable expert (reset from seed 0) for `benchmark`.

    "mixer": image benchmarks with 8x8 inputs; the backbone is pretrained on
    `benchmark.pretrain_x/y` (cached). "minilm": text benchmarks. "vit": image
    benchmarks of any [C, H, W]; a transformers ViT from seed 0, or the ViT/CLIP
    checkpoint in the local directory `cfg.pretrained`. "mixer-moe", "minilm-moe",
    "vit-moe": the same frozen backbone with a gate and model.moe_experts LoRA experts
    (top model.moe_top_k) per FFN, FedMoE-DA's client model (`models.client_moe`).
    "cnn-k" (k = 1..5): FedGH's CNN-k trained whole, parts extractor and head; "pfedmoe-k":
    pFedMoE's two-expert model with local expert CNN-k and global expert CNN-5 (both: image
    benchmarks of any [C, H, W]; the conv padding follows the input size, see `models.cnn`).
    """
    if cfg.backbone in ("mixer", "mixer-moe"):
        state = _pretrained_mixer(benchmark, cfg)
        if cfg.backbone == "mixer":
            return MixerExpertModel(state, benchmark.input_shape[0], benchmark.num_classes, cfg, device)
        from fedmoe_sim.models.client_moe import MixerMoEModel

        return MixerMoEModel(state, benchmark.input_shape[0], benchmark.num_classes, cfg, cfg.moe_experts,
                             cfg.moe_top_k, device)
    if cfg.backbone == "minilm":
        _need_text(benchmark, cfg)
        from fedmoe_sim.models.text import TextExpertModel

        return TextExpertModel(benchmark.num_classes, cfg, device)
    if cfg.backbone == "minilm-moe":
        _need_text(benchmark, cfg)
        from fedmoe_sim.models.client_moe_backbones import TextClientMoEModel

        return TextClientMoEModel(benchmark.num_classes, cfg, cfg.moe_experts, cfg.moe_top_k, device)
    if cfg.backbone == "vit":
        return VitExpertModel(_image_shape(benchmark, cfg), benchmark.num_classes, cfg, device)
    if cfg.backbone == "vit-moe":
        from fedmoe_sim.models.client_moe_backbones import VitClientMoEModel

        return VitClientMoEModel(_image_shape(benchmark, cfg), benchmark.num_classes, cfg, cfg.moe_experts,
                                 cfg.moe_top_k, device)
    if cfg.backbone == "tiny-mlp":
        if benchmark.kind != "image":
            raise ValueError(f"model.backbone=tiny-mlp needs an image benchmark (got {benchmark.name}: {benchmark.kind})")
        return TinyMLPExpertModel(int(np.prod(benchmark.input_shape)), cfg.width, benchmark.num_classes, device)
    kind, _, k = cfg.backbone.partition("-")
    if kind in ("cnn", "pfedmoe") and k in ("1", "2", "3", "4", "5"):
        shape = _image_shape(benchmark, cfg)
        if kind == "cnn":
            from fedmoe_sim.models.cnn import HeteroCNNModel

            return HeteroCNNModel(int(k), shape, benchmark.num_classes, device=device)
        from fedmoe_sim.models.pfedmoe import PFedMoEModel

        return PFedMoEModel(int(k), shape, benchmark.num_classes, gate_hidden=cfg.gate_hidden, device=device)
    raise ValueError(f"model.backbone must be one of mixer, minilm, vit, tiny-mlp, mixer-moe, minilm-moe, vit-moe, "
                     f"cnn-1..5, pfedmoe-1..5 (got {cfg.backbone!r})")


def _need_text(benchmark: Benchmark, cfg: ModelConfig) -> None:
    if benchmark.kind != "text":
        raise ValueError(f"model.backbone={cfg.backbone} needs a text benchmark "
                         f"(got {benchmark.name}: kind {benchmark.kind})")


def _image_shape(benchmark: Benchmark, cfg: ModelConfig) -> tuple[int, int, int]:
    """The benchmark's `[C, H, W]`, or one clear ValueError for a model that needs images."""
    if benchmark.kind != "image" or len(benchmark.input_shape) != 3:
        raise ValueError(f"model.backbone={cfg.backbone} needs an image benchmark with [C, H, W] inputs "
                         f"(got {benchmark.name}: kind {benchmark.kind}, shape {benchmark.input_shape})")
    return tuple(int(s) for s in benchmark.input_shape)


def _pretrained_mixer(benchmark: Benchmark, cfg: ModelConfig) -> dict:
    """The frozen mixer backbone's weights (pretrained once, cached), after checking the benchmark fits."""
    if benchmark.kind != "image" or len(benchmark.input_shape) != 3 or benchmark.input_shape[1:] != (8, 8):
        raise ValueError(f"model.backbone={cfg.backbone} needs an image benchmark with [C, 8, 8] inputs "
                         f"(got {benchmark.name}: kind {benchmark.kind}, shape {benchmark.input_shape})")
    if benchmark.pretrain_x is None or benchmark.pretrain_y is None:
        raise ValueError(f"model.backbone={cfg.backbone} needs pretraining data "
                         f"(benchmark {benchmark.name} has no pretrain_x/y)")
    from fedmoe_sim.models.pretrain import pretrained_mixer_state

    return pretrained_mixer_state(benchmark.pretrain_x, benchmark.pretrain_y, cfg.width, cfg.blocks,
                                  benchmark.num_classes, cfg.pretrain_steps)
