"""The classic FL model: a small MLP trained whole (no frozen backbone).

For the speed benchmark's "tiny" workload and for classic baselines where the
whole model is the client's update: every weight is the "expert", so FedAvg on
it is plain FedAvg. `[B, C, H, W]` images are flattened.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedmoe_sim.models.expert_model import ExpertModel


class TinyMLPExpertModel(ExpertModel):
    """Linear(in, hidden) -> ReLU -> Linear(hidden, classes); all four tensors are the expert."""

    def __init__(self, in_features: int, hidden: int, num_classes: int, device: str | torch.device = "cpu"):
        super().__init__(num_classes)
        self.fc1 = nn.Linear(in_features, hidden, device=device)
        self.fc2 = nn.Linear(hidden, num_classes, device=device)
        self._register_expert({f"{m}.{p}": getattr(getattr(self, m), p) for m in ("fc1", "fc2") for p in ("weight", "bias")})
        self.reset_expert(0)

    def prepare(self, x) -> torch.Tensor:
        t = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        return t.reshape(t.shape[0], -1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(inputs)))

    @torch.no_grad()
    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """The hidden layer (there is no frozen backbone: these features move with training)."""
        return F.relu(self.fc1(inputs))
