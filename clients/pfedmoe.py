"""pFedMoE client: the server's global expert over its own local expert, gate and head; uploads the global expert."""

from __future__ import annotations

from flwr.app import Context

import numpy as np
import torch

from clients._common import evaluate_all, own_state, state_store
from clients._partial import train_keeping
from fedmoe_sim import wire
from fedmoe_sim.models.pfedmoe import GATE_GLOBAL, GLOBAL, LABEL_ENTROPY
from fedmoe_sim.workspace import Workspace



def train(ws: Workspace, task: wire.Task, context: Context) -> list[wire.ClientResult]:
    return train_keeping(ws, task, context, GLOBAL)



def evaluate(ws: Workspace, task: wire.Task, context: Context) -> list[wire.ClientResult]:
    """The client's own model after its last training, and what its gate learned: the mean
    a_G over its own test split (a_F = 1 - a_G), so a user can see when the global expert is used."""
    def gate(cid: int) -> dict[str, float]:
        with torch.no_grad():
            weights = ws.model_of(cid).gate_weights(ws.test_data(cid)[0])
        _, counts = np.unique(ws.splits[cid].y_train, return_counts=True)
        share = counts / counts.sum()
        out = {LABEL_ENTROPY: float(-(share * np.log2(share)).sum())}   # the client's label heterogeneity
        return {**out, GATE_GLOBAL: float(weights[:, 0].mean())} if len(weights) else out
    return evaluate_all(ws, task, state_of=own_state(state_store(task, context), task), extra=gate)
