"""pFedSim client: FedAvg's global model in warm-up; afterwards its personalised extractor over its own head.

The client keeps its whole trained model (extractor and head) in its node's
ClientStateStore every round, warm-up included, so that after the warm-up its head
is its own (the server never sends one) and it has a model to be evaluated on. What
the server sent replaces the matching tensors of the stored model before training:
the whole model in warm-up, the extractor afterwards. It uploads what the task
expects: the whole model in warm-up, extractor and head afterwards.
"""

from __future__ import annotations

from flwr.app import Context

from clients._common import evaluate_all, state_store, with_server_part
from clients._partial import train_keeping
from fedmoe_sim import wire
from fedmoe_sim.models.expert_model import EXPERT, WHOLE
from fedmoe_sim.workspace import Workspace


def train(ws: Workspace, task: wire.Task, context: Context) -> list[wire.ClientResult]:
    return train_keeping(ws, task, context, WHOLE if WHOLE in task.expect else EXPERT)


def evaluate(ws: Workspace, task: wire.Task, context: Context) -> list[wire.ClientResult]:
    """Warm-up: the global model the task carries; afterwards the client's own stored model."""
    return evaluate_all(ws, task, state_of=with_server_part(ws, task, state_store(task, context), WHOLE))
