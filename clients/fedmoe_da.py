"""FedMoE-DA client: trains its MoE (gate + experts), then forms personalised experts from its plan.

State on the client between rounds: its whole MoE (gate and experts), in the
node's ClientStateStore. The server's gate, when it sends one, replaces the
client's own gate before training and evaluation.
"""

from __future__ import annotations

from flwr.app import Context

from clients._common import (evaluate_all, keep_in, own_state, per_client, state_store, train_all,
                             with_server_part)
from fedmoe_sim import wire
from fedmoe_sim.aggregation.fedmoe_da import KEPT_EXPERTS, PLAN, peer_parts, personalise
from fedmoe_sim.models.client_moe import GATE, layer_experts
from fedmoe_sim.workspace import Workspace, parse_run_config


def train(ws: Workspace, task: wire.Task, context: Context) -> list[wire.ClientResult]:
    store = state_store(task, context)
    return train_all(ws, task, start=with_server_part(ws, task, store, GATE), keep=keep_in(store, task))


def sync(ws: Workspace, task: wire.Task, context: Context) -> list[wire.ClientResult]:
    store = state_store(task, context)
    own, keep = own_state(store, task), keep_in(store, task)
    mix = parse_run_config(task.run_config).fedmoe_da.mix

    def work(cid: int) -> wire.ClientResult:
        state = own(cid)
        plan = task.part(cid, PLAN)
        layers = ws.model_of(cid).num_layers
        mixed, kept = personalise([layer_experts(state, layer) for layer in range(layers)], plan, cid,
                                  peer_parts(task.parts(cid)), mix)
        state = {**state, **{k: v for layer in mixed for k, v in layer.items()}}
        keep(cid, state)
        return wire.ClientResult(cid, {wire.NUM_EXAMPLES: ws.splits[cid].num_train, KEPT_EXPERTS: float(kept)})

    return per_client(task, work)


def evaluate(ws: Workspace, task: wire.Task, context: Context) -> list[wire.ClientResult]:
    return evaluate_all(ws, task, state_of=with_server_part(ws, task, state_store(task, context), GATE))
