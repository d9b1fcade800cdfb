"""CNN-1..5: the heterogeneous model families of the FedGH / pFedMoE experiments.

Why these five: pFedMoE (seed 002) has no public code, but its authors' FedGH
code (`Models/CNNs.py`) defines the families its model-heterogeneous setting
uses, and client i gets CNN-((i mod 5) + 1) (DESIGN "FedMoE / pFedMoE"). Each
family is conv 5x5 16 -> ReLU -> max-pool 2 -> conv 5x5 32 (16 for CNN-2) ->
ReLU -> max-pool 2 -> flatten -> FC1 (2000 / 2000 / 1000 / 800 / 500) -> ReLU
-> FC2 500 -> ReLU: the feature extractor, whose 500-wide output is the
representation; the head is Linear(500, classes). Every family has the same
representation width, which is what lets FedGH, LG-FedAvg and pFedMoE share a
head or mix representations across families.

Input geometry: the published sizes assume CIFAR's [3, 32, 32] (no padding:
32 -> 28 -> 14 -> 10 -> 5, flatten 32*5*5). Our offline digits are [1, 8, 8],
where two unpadded 5x5 convs do not fit (8 -> 4 -> 2 -> conv fails). The rule
(ours): use the published geometry (padding 0) whenever it fits the input, else
"same" padding 2, so each conv keeps the size and only the pools shrink it (8 ->
8 -> 4 -> 4 -> 2, flatten 32*2*2). "Same" padding changes no layer width, only
the flatten size, so FC1 and FC2 keep the published widths; it also keeps the
border pixels, which carry digit strokes on an 8x8 image. The flatten size is
derived from the input shape, so e.g. 28x28 MNIST gets LeNet's unpadded 4x4.

No BatchNorm anywhere: its running statistics are buffers, not parameters, so
they would not travel or persist through `expert_state` (FedGH's CNNs have none).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

from fedmoe_sim.models.expert_model import ExpertModel

NUM_FAMILIES = 5
FC1_WIDTHS = {1: 2000, 2: 2000, 3: 1000, 4: 800, 5: 500}   # FedGH Models/CNNs.py
CONV2_FILTERS = {1: 32, 2: 16, 3: 32, 4: 32, 5: 32}         # CNN-2 is the narrow-conv family
CONV1_FILTERS = 16
KERNEL = 5
REPR_DIM = 500                                              # FC2 width: the representation
HOMOGENEOUS_FAMILY = 5  # FedAvg's shared model and pFedMoE's global expert (the smallest)

InputShape = tuple[int, int, int]  # (channels, height, width) of one image


def family_for_client(client_id: int, num_families: int = NUM_FAMILIES) -> int:
    """CNN family of client `client_id` (0-based): (i mod 5) + 1, as in FedGH's setup."""
    if client_id < 0:
        raise ValueError(f"client_id must be >= 0 (got {client_id})")
    if not 1 <= num_families <= NUM_FAMILIES:
        raise ValueError(f"num_families must be in [1, {NUM_FAMILIES}] (got {num_families})")
    return client_id % num_families + 1


def _check_family(family: int) -> None:
    if family not in FC1_WIDTHS:
        raise ValueError(f"CNN family must be one of {sorted(FC1_WIDTHS)} (got {family})")


def _after_stages(size: int, padding: int) -> int:
    """Spatial size after two (conv 5x5 -> max-pool 2) stages; 0 when it does not fit."""
    for _ in range(2):
        size = (size + 2 * padding - (KERNEL - 1)) // 2
        if size < 1:
            return 0
    return size


def conv_padding(input_shape: InputShape) -> int:
    """0 (the published geometry) when it fits `input_shape`, else 2 ("same" 5x5 convs)."""
    _, h, w = input_shape
    return 0 if min(_after_stages(h, 0), _after_stages(w, 0)) >= 1 else 2


class CNNExtractor(nn.Module):
    """One family's feature extractor: `[B, C, H, W]` images -> `[B, 500]` representations."""

    def __init__(self, family: int, input_shape: InputShape, padding: int | None = None,
                 device: str | torch.device = "cpu"):
        super().__init__()
        _check_family(family)
        if len(input_shape) != 3 or min(input_shape) < 1:
            raise ValueError(f"input_shape must be (channels, height, width) >= 1 (got {input_shape})")
        pad = conv_padding(input_shape) if padding is None else int(padding)
        if pad < 0:
            raise ValueError(f"padding must be >= 0 (got {padding})")
        c, h, w = (int(s) for s in input_shape)
        out_h, out_w = _after_stages(h, pad), _after_stages(w, pad)
        if min(out_h, out_w) < 1:
            raise ValueError(f"input {h}x{w} is too small for CNN-{family} with padding {pad}: two "
                             f"(conv {KERNEL}x{KERNEL} -> max-pool 2) stages leave nothing to flatten "
                             f"(needs at least 4x4 with padding 2, 16x16 with padding 0)")
        self.family, self.input_shape, self.padding = family, (c, h, w), pad
        c2 = CONV2_FILTERS[family]
        self.flat_dim = c2 * out_h * out_w
        self.conv1 = skip_init(nn.Conv2d, c, CONV1_FILTERS, KERNEL, padding=pad, device=device)
        self.conv2 = skip_init(nn.Conv2d, CONV1_FILTERS, c2, KERNEL, padding=pad, device=device)
        self.fc1 = skip_init(nn.Linear, self.flat_dim, FC1_WIDTHS[family], device=device)
        self.fc2 = skip_init(nn.Linear, FC1_WIDTHS[family], REPR_DIM, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc2(F.relu(self.fc1(x.flatten(1)))))


def named_params(prefix: str, module: nn.Module) -> dict[str, nn.Parameter]:
    """`module`'s parameters under public names `prefix.<path>` (the attribute path: stable)."""
    return {f"{prefix}.{k}": p for k, p in module.named_parameters()}


def seeded_default_init_(model: nn.Module, named: Mapping[str, nn.Parameter], seed: int) -> None:
    """PyTorch's default init of each layer, drawn from `seed` alone (never the global RNG).

    Conv2d / Linear weight and bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in =
    in_channels * kh * kw (what kaiming_uniform_(a=sqrt(5)) gives; the base class's
    `shape[-1]` rule would use kw alone for a conv kernel). LayerNorm: weight 1, bias 0.
    Tensors are drawn in sorted-name order from one CPU generator, so the same seed
    gives the same numbers on every device and for every placement of clients. Layers
    are built with `skip_init` so that construction draws nothing from the global RNG.
    """
    owner = {id(p): m for m in model.modules() for p in m.parameters(recurse=False)}
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for name in sorted(named):
            p = named[name]
            layer = owner[id(p)]
            if isinstance(layer, nn.LayerNorm):
                p.fill_(1.0 if p is layer.weight else 0.0)
            elif isinstance(layer, (nn.Linear, nn.Conv2d)):
                bound = 1.0 / math.sqrt(layer.weight[0].numel())
                p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=gen))
            else:  # a programming error: a layer type this rule does not cover
                raise TypeError(f"no default init rule for {name!r} ({type(layer).__name__})")


def prepare_images(x: np.ndarray, input_shape: InputShape, device: torch.device) -> torch.Tensor:
    """numpy `[N, C, H, W]` -> float32 tensor on `device`; refuses any other image shape."""
    t = torch.as_tensor(np.asarray(x), dtype=torch.float32, device=device)
    if t.dim() != 4 or tuple(t.shape[1:]) != tuple(input_shape):
        raise ValueError(f"images must be [N, {', '.join(map(str, input_shape))}] (got {list(t.shape)})")
    return t


class HeteroCNNModel(ExpertModel):
    """One client's CNN-k trained whole: parts "extractor" (CNN-k, 500 wide) and "head".

    Why parts: Standalone keeps both; LG-FedAvg averages "head" (same keys and shapes
    for every family) and keeps the heterogeneous extractor; FedGH replaces "head"
    with the server's global head; FedAvg's homogeneous model is family 5 with both
    parts averaged. Nothing is frozen: `backbone_state()` is empty.
    """

    # each client draws its own start (a shared head arrives from the server before training;
    # FedAvg starts from the server's whole model, never from a client's draw)
    private_parts = ("extractor", "head")

    def __init__(self, family: int, input_shape: InputShape, num_classes: int, padding: int | None = None,
                 device: str | torch.device = "cpu", seed: int = 0):
        super().__init__(num_classes)
        self.family = family
        self.extractor = CNNExtractor(family, input_shape, padding, device)
        self.head = skip_init(nn.Linear, REPR_DIM, num_classes, device=device)
        self._register_parts({"extractor": named_params("extractor", self.extractor),
                              "head": named_params("head", self.head)})
        self.reset_expert(seed)

    def prepare(self, x: np.ndarray) -> torch.Tensor:
        return prepare_images(x, self.extractor.input_shape, self.device)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.extractor(inputs))

    @torch.no_grad()
    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """The extractor's `[B, 500]` representation (what FedGH averages per class)."""
        return self.extractor(inputs)

    def reset_expert(self, seed: int) -> None:
        seeded_default_init_(self, self._expert, seed)
