"""Benchmark-only shim: run the tiny MLP (64-128-10) through our unmodified framework.

fedmoe_sim.models.build_model knows only the mixer and MiniLM backbones, so
importing this module wraps it: a config carrying `_workloads.TINY_MARKER`
gets `TinyMLPExpert` (every weight is the "expert"), any other config the
real model. Our ClientApp, Workspace, wire format and strategies are used as
they are. `app` below is our ClientApp's handlers re-registered from this
module, so that every Ray worker that unpickles it imports (and so applies)
the shim; nothing else differs from `clients.app:app`.

The framework change this emulates: `model.backbone = "tiny-mlp"` in
fedmoe_sim/config.py (ModelConfig) and one branch in build_model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from torch import nn

import fedmoe_sim.models as _models
from _workloads import is_tiny
from clients import app as _ours
from fedmoe_sim.models.expert_model import ExpertModel


class TinyMLP(nn.Module):
    """The plain model (a) and (c) train: Linear(64, 128) -> ReLU -> Linear(128, 10) on flat 8x8 digits."""

    def __init__(self, in_features: int = 64, hidden: int = 128, num_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


def flat_inputs(x) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float32)
    return t.reshape(t.shape[0], -1)


class TinyMLPExpert(ExpertModel):
    """TinyMLP under our ExpertModel contract: all four tensors are the expert."""

    def __init__(self, in_features: int, hidden: int, num_classes: int):
        super().__init__(num_classes)
        self.net = TinyMLP(in_features, hidden, num_classes)
        self._register_expert(dict(self.net.named_parameters()))
        self.reset_expert(0)

    def prepare(self, x) -> torch.Tensor:
        return flat_inputs(x)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net(inputs)

    @torch.no_grad()
    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        return F.relu(self.net.fc1(inputs))


_real_build_model = getattr(_models.build_model, "__wrapped__", _models.build_model)


def build_model(benchmark, cfg, device="cpu"):
    if is_tiny(cfg):
        in_features = 1
        for d in benchmark.input_shape:
            in_features *= d
        return TinyMLPExpert(in_features, cfg.width, benchmark.num_classes).to(device)
    return _real_build_model(benchmark, cfg, device)


build_model.__wrapped__ = _real_build_model
_models.build_model = build_model  # Workspace imports it from fedmoe_sim.models at call time


# Our ClientApp's handlers, registered from this module (see the module docstring).
app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _ours._handle(msg, context, "train")


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _ours._handle(msg, context, "evaluate")


@app.query()
def query(msg: Message, context: Context) -> Message:
    return _ours.query(msg, context)
