"""FedGH client: the server's head over its own extractor; uploads its class-mean representations.

The upload is not a model part, so training runs with nothing to cut out of the
model, and the class means of the kept (trained) state are attached afterwards.
"""

from __future__ import annotations

import copy

from flwr.app import Context

from clients._common import keep_in, state_store
from clients._partial import train_keeping
from clients.local import evaluate  # noqa: F401  (the client's own model after its last training)
from fedmoe_sim import wire
from fedmoe_sim.aggregation.fedgh import CLASSES, COUNTS, MEANS, PROTOTYPES, class_mean_representations
from fedmoe_sim.models.pfedmoe import HEAD
from fedmoe_sim.workspace import Workspace


def train(ws: Workspace, task: wire.Task, context: Context) -> list[wire.ClientResult]:
    keep = keep_in(state_store(task, context), task)
    protos: dict[int, wire.State] = {}

    def keep_and_describe(cid: int, state: wire.State) -> None:
        keep(cid, state)
        model = ws.load(state, ws.family_of(cid))
        means, classes, counts = class_mean_representations(model, *ws.train_data(cid))
        protos[cid] = {MEANS: means, CLASSES: classes, COUNTS: counts}

    no_parts = copy.copy(task)
    no_parts.expect = ()
    results = train_keeping(ws, no_parts, context, HEAD, keep=keep_and_describe)
    for r in results:
        if r.error is None:
            r.parts[PROTOTYPES] = protos[r.client_id]
    return results

