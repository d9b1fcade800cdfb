"""Local-only client: trains its own expert across rounds and sends nothing.

The expert persists between rounds in the node's ClientStateStore (compact numpy
on disk, not Flower's context.state, which travels with messages); the task says
which round it must come from (see clients/_common.own_state).
"""

from __future__ import annotations

from flwr.app import Context

from clients._common import evaluate_all, keep_in, own_state, state_store, train_all
from fedmoe_sim import wire
from fedmoe_sim.workspace import Workspace


def train(ws: Workspace, task: wire.Task, context: Context) -> list[wire.ClientResult]:
    store = state_store(task, context)
    return train_all(ws, task, start=own_state(store, task), keep=keep_in(store, task))


def evaluate(ws: Workspace, task: wire.Task, context: Context) -> list[wire.ClientResult]:
    return evaluate_all(ws, task, state_of=own_state(state_store(task, context), task))
