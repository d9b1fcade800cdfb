"""pFedMoE (seed 002): one client's heterogeneous mixture of two experts.

Per client (DESIGN "FedMoE / pFedMoE"): a private heterogeneous local expert F
(the CNN-k extractor of the client's own model), a shared homogeneous global
expert G (the CNN-5 extractor by default; the only part uploaded and averaged),
a private per-sample gate, and the client's private head. The gate weighs the
two 500-wide representations, R = a_G * G(x) + a_F * F(x), and the head maps R
to logits. One cross-entropy trains all four parts end to end, so plain
`train_local` is the whole local step.

Gate (from the paper's text as summarised; no official code): flattened raw
input `[B, d]` -> normalisation -> Linear(d, m) -> sigmoid -> Linear(m, 2) ->
softmax over (global, local). Deviations, ours:
- LayerNorm stands in for the paper's SwitchNorm: SwitchNorm mixes batch, layer
  and instance statistics; its batch branch needs running-statistic buffers.
- The paper's batch norm after the sigmoid is left out. Its running statistics
  are buffers, which `expert_state` does not carry, so a client's gate would
  silently lose them between rounds; and in training mode it would make one
  sample's gate weights depend on the rest of its batch. The sigmoid already
  bounds the hidden layer to (0, 1), which is the scale batch norm would fix.
- m (`gate_hidden`) is not published: configurable, default 64.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils import skip_init

from fedmoe_sim.models.cnn import (
    HOMOGENEOUS_FAMILY,
    REPR_DIM,
    CNNExtractor,
    InputShape,
    named_params,
    prepare_images,
    seeded_default_init_,
)
from fedmoe_sim.models.expert_model import ExpertModel

GLOBAL, LOCAL, GATE, HEAD = "global", "local", "gate", "head"   # part names
LABEL_ENTROPY = "label-entropy"   # evaluation metric: entropy (bits) of a client's training labels
GATE_GLOBAL = "gate-global"   # evaluation metric: a client's mean gate weight on the global expert (its test split)
DEFAULT_GATE_HIDDEN = 64  # m: not published (ours)


class TwoExpertGate(nn.Module):
    """`[B, C, H, W]` raw images -> `[B, 2]` softmax weights (column 0: global, 1: local)."""

    def __init__(self, in_features: int, hidden: int, device: str | torch.device = "cpu"):
        super().__init__()
        if hidden < 1:
            raise ValueError(f"gate hidden width must be >= 1 (got {hidden})")
        self.norm = skip_init(nn.LayerNorm, in_features, device=device)   # stand-in for SwitchNorm
        self.fc1 = skip_init(nn.Linear, in_features, hidden, device=device)
        self.fc2 = skip_init(nn.Linear, hidden, 2, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.sigmoid(self.fc1(self.norm(x.flatten(1))))
        return torch.softmax(self.fc2(h), dim=-1)


class PFedMoEModel(ExpertModel):
    """Local expert (CNN-`local_family`) + global expert (CNN-`global_family`) + gate + head.

    Parts: "global" (what is uploaded; same keys and shapes for every client that
    shares `input_shape` and `global_family`, whatever its local family), "local",
    "gate" and "head" (private). Tensor names are `global_expert.*`,
    `local_expert.*`, `gate.*` and `head.*`. No buffers: `backbone_state()` is empty.
    """

    private_parts = (LOCAL, GATE, HEAD)   # each client's own draw; the global expert starts common

    def __init__(self, local_family: int, input_shape: InputShape, num_classes: int,
                 global_family: int = HOMOGENEOUS_FAMILY, gate_hidden: int = DEFAULT_GATE_HIDDEN,
                 padding: int | None = None, device: str | torch.device = "cpu", seed: int = 0):
        super().__init__(num_classes)
        self.local_family, self.global_family = local_family, global_family
        self.global_expert = CNNExtractor(global_family, input_shape, padding, device)
        self.local_expert = CNNExtractor(local_family, input_shape, padding, device)
        self.gate = TwoExpertGate(int(np.prod(input_shape)), gate_hidden, device)
        self.head = skip_init(nn.Linear, REPR_DIM, num_classes, device=device)
        self._register_parts({GLOBAL: named_params("global_expert", self.global_expert),
                              LOCAL: named_params("local_expert", self.local_expert),
                              GATE: named_params("gate", self.gate),
                              HEAD: named_params("head", self.head)})
        self.reset_expert(seed)

    def prepare(self, x: np.ndarray) -> torch.Tensor:
        return prepare_images(x, self.global_expert.input_shape, self.device)

    def gate_weights(self, inputs: torch.Tensor) -> torch.Tensor:
        """`[B, 2]` per-sample weights (a_G, a_F), each row summing to 1."""
        return self.gate(inputs)

    def mixed_representation(self, inputs: torch.Tensor) -> torch.Tensor:
        """R = a_G * G(x) + a_F * F(x): `[B, 500]`, with gradient to the gate and both experts."""
        a = self.gate(inputs)
        return a[:, :1] * self.global_expert(inputs) + a[:, 1:] * self.local_expert(inputs)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.mixed_representation(inputs))

    @torch.no_grad()
    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """The mixed representation R `[B, 500]` that the head sees."""
        return self.mixed_representation(inputs)

    def reset_expert(self, seed: int) -> None:
        """PyTorch's default per-layer init from `seed` alone (see `seeded_default_init_`).

        Names are drawn in sorted order (gate, global_expert, head, local_expert) and
        the gate's size does not depend on the local family, so clients built from the
        same seed start with the same global expert whatever their local family. In a
        run, each client's private parts come from its own seed (`Workspace.initial_state`).
        """
        seeded_default_init_(self, self._expert, seed)
