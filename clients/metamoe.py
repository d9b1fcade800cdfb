"""MetaMoE client (also the unification baselines'): proxies, proxy-aligned training, upload.

train: on first use the client selects its proxies from the public pool (stored
with its state) and trains its expert on private data plus proxies with their
public labels (private only when metamoe.proxy_training is off). With
expert_per=client the expert stays on the node until the upload; with
expert_per=domain it starts from, and is uploaded to, its domain's expert.
upload (once, after the last round): the routing vectors and proxy indices the
server's method uses, plus the expert itself with expert_per=client. Nothing else
leaves the client.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Context

from clients._common import evaluate_all, train_all
from fedmoe_sim import wire
from fedmoe_sim.config import RunConfig
from fedmoe_sim.unification import PROXIES, ROUTING, pack_extras, routing_vectors, select_client_proxies
from fedmoe_sim.workspace import ClientStateStore, Workspace, parse_run_config


def _proxies(ws: Workspace, cfg: RunConfig, store: ClientStateStore, cid: int) -> np.ndarray:
    stored = store.load(cid, "proxies")
    if stored is None:
        stored = {"proxies": select_client_proxies(ws, cid, cfg.metamoe, cfg.seed)}
        store.save(cid, stored, "proxies")
    return stored["proxies"]


def _setup(task: wire.Task, context: Context) -> tuple[RunConfig, ClientStateStore, bool]:
    cfg = parse_run_config(task.run_config)
    return cfg, ClientStateStore.for_run(context.run_id, task.run_config), cfg.metamoe.expert_per == "client"


def train(ws: Workspace, task: wire.Task, context: Context) -> list[wire.ClientResult]:
    cfg, store, own = _setup(task, context)

    def data(cid: int):
        if cfg.metamoe.proxy_training:
            return ws.train_data_with_public(cid, _proxies(ws, cfg, store, cid))
        return None

    if own:
        return train_all(ws, task, start=store.load, keep=store.save, upload=False, data=data)
    return train_all(ws, task, start=lambda cid: task.global_state, keep=None, upload=True, data=data)


def upload(ws: Workspace, task: wire.Task, context: Context) -> list[wire.ClientResult]:
    """Only what the server asked for (`task.wants`): BTM, ModelSoup and oracle routing use
    the experts alone, BTX no routing vectors; nothing else is computed or sent."""
    cfg, store, own = _setup(task, context)
    want_routing = ROUTING in task.wants
    results = []
    for cid in task.client_ids:
        state = store.load(cid) if own else task.global_state
        need_proxies = PROXIES in task.wants or (want_routing and cfg.metamoe.routing_on_proxies)
        proxies = _proxies(ws, cfg, store, cid) if need_proxies else None
        routing = None
        if want_routing:
            ws.load(state)
            pool = ws.train_data_with_public(cid, proxies) if cfg.metamoe.routing_on_proxies else ws.train_data(cid)
            routing = routing_vectors(ws, pool[0])
        metrics = {wire.NUM_EXAMPLES: ws.splits[cid].num_train, wire.DOMAIN: ws.splits[cid].domain}
        expert = (state if state is not None else ws.initial_expert()) if own else None
        extras = pack_extras(routing, proxies if PROXIES in task.wants else None)
        results.append(wire.ClientResult(cid, metrics, expert, extras or None))
    return results


def evaluate(ws: Workspace, task: wire.Task, context: Context) -> list[wire.ClientResult]:
    _, store, own = _setup(task, context)
    return evaluate_all(ws, task, state_of=store.load if own else (lambda cid: task.global_state))
