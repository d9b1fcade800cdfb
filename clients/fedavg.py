"""FedAvg client: start from the server's global expert, train, upload the expert."""

from __future__ import annotations

from flwr.app import Context

from clients._common import evaluate_all, train_all
from fedmoe_sim import wire
from fedmoe_sim.workspace import Workspace


def train(ws: Workspace, task: wire.Task, context: Context) -> list[wire.ClientResult]:
    return train_all(ws, task, start=lambda cid: task.global_state, keep=None, upload=True)


def evaluate(ws: Workspace, task: wire.Task, context: Context) -> list[wire.ClientResult]:
    return evaluate_all(ws, task, state_of=lambda cid: task.global_state)
