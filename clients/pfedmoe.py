"""pFedMoE client: the server's global expert over its own local expert, gate and head; uploads the global expert."""

from __future__ import annotations

from flwr.app import Context

from clients._partial import train_keeping
from clients.local import evaluate  # noqa: F401  (the client's own model after its last training)
from fedmoe_sim import wire
from fedmoe_sim.models.pfedmoe import GLOBAL
from fedmoe_sim.workspace import Workspace


def train(ws: Workspace, task: wire.Task, context: Context) -> list[wire.ClientResult]:
    return train_keeping(ws, task, context, GLOBAL)

