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

from clients._common import evaluate_all, from_server, keep_in, own_state, per_client, state_store, train_all
from fedmoe_sim import wire
from fedmoe_sim.config import RunConfig
from fedmoe_sim.models.expert_model import EXPERT
from fedmoe_sim.unification import PROXIES, ROUTING, proxies_part, routing_part, routing_vectors, select_client_proxies
from fedmoe_sim.workspace import ClientStateStore, Workspace, parse_run_config


def _proxies(ws: Workspace, cfg: RunConfig, store: ClientStateStore, cid: int) -> np.ndarray:
    """Selected on first use and stored: a function of the seed and the client's data, so a
    node that lacks the stored copy recomputes the same indices."""
    stored = store.load(cid, "proxies")
    if stored is None:
        stored = {"proxies": select_client_proxies(ws, cid, cfg.metamoe, cfg.seed)}
        store.save(cid, stored, "proxies")
    return stored["proxies"]


def _setup(task: wire.Task, context: Context) -> tuple[RunConfig, ClientStateStore, bool]:
    cfg = parse_run_config(task.run_config)
    return cfg, state_store(task, context), cfg.metamoe.expert_per == "client"


def _start(task: wire.Task, store: ClientStateStore, own: bool):
    """One-shot mode: the client's own expert; per-domain mode: the domain expert the server sent."""
    return own_state(store, task) if own else from_server(task, EXPERT)


def train(ws: Workspace, task: wire.Task, context: Context) -> list[wire.ClientResult]:
    cfg, store, own = _setup(task, context)

    def data(cid: int):
        if cfg.metamoe.proxy_training:
            return ws.train_data_with_public(cid, _proxies(ws, cfg, store, cid))
        return None

    return train_all(ws, task, start=_start(task, store, own), keep=keep_in(store, task) if own else None, data=data)


def upload(ws: Workspace, task: wire.Task, context: Context) -> list[wire.ClientResult]:
    """Exactly the parts the server expects (BTM, ModelSoup and oracle routing use the experts
    alone, BTX no routing vectors); nothing else is computed or sent."""
    cfg, store, own = _setup(task, context)
    start = _start(task, store, own)
    want_routing = ROUTING in task.expect

    def work(cid: int) -> wire.ClientResult:
        state = start(cid)
        need_proxies = PROXIES in task.expect or (want_routing and cfg.metamoe.routing_on_proxies)
        proxies = _proxies(ws, cfg, store, cid) if need_proxies else None
        parts: wire.Parts = {}
        if want_routing:
            ws.load(state)
            pool = ws.train_data_with_public(cid, proxies) if cfg.metamoe.routing_on_proxies else ws.train_data(cid)
            parts[ROUTING] = routing_part(routing_vectors(ws, pool[0]))
        if PROXIES in task.expect:
            parts[PROXIES] = proxies_part(proxies)
        if EXPERT in task.expect:
            parts[EXPERT] = state if state is not None else ws.initial_expert()
        return wire.ClientResult(cid, {wire.NUM_EXAMPLES: ws.splits[cid].num_train, wire.DOMAIN: ws.splits[cid].domain},
                                 parts)

    return per_client(task, work)


def evaluate(ws: Workspace, task: wire.Task, context: Context) -> list[wire.ClientResult]:
    _, store, own = _setup(task, context)
    return evaluate_all(ws, task, state_of=_start(task, store, own))
