"""FedAvg client: start from the server's global expert, train, send the expert back."""

from __future__ import annotations

from flwr.app import Context

from clients._common import evaluate_all, from_server, train_all
from fedmoe_sim import wire
from fedmoe_sim.models.expert_model import WHOLE
from fedmoe_sim.workspace import Workspace


def train(ws: Workspace, task: wire.Task, context: Context) -> list[wire.ClientResult]:
    return train_all(ws, task, start=from_server(task, WHOLE))


def evaluate(ws: Workspace, task: wire.Task, context: Context) -> list[wire.ClientResult]:
    return evaluate_all(ws, task, state_of=from_server(task, WHOLE))
