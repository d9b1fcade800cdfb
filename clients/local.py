"""Local-only client: trains its own expert across rounds and uploads nothing.

The expert persists between rounds in a per-run ClientStateStore on the node's
disk (compact numpy, not Flower's context.state, which travels with messages).
"""

from __future__ import annotations

from flwr.app import Context

from clients._common import evaluate_all, train_all
from fedmoe_sim import wire
from fedmoe_sim.workspace import ClientStateStore, Workspace


def train(ws: Workspace, task: wire.Task, context: Context) -> list[wire.ClientResult]:
    store = ClientStateStore.for_run(context.run_id, task.run_config)
    return train_all(ws, task, start=store.load, keep=store.save, upload=False)


def evaluate(ws: Workspace, task: wire.Task, context: Context) -> list[wire.ClientResult]:
    store = ClientStateStore.for_run(context.run_id, task.run_config)
    return evaluate_all(ws, task, state_of=store.load)
