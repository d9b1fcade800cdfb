"""FedMoE-DA (seed 001, arXiv 2411.02115): domain-aware, fine-grained aggregation of client experts.

Every client runs an MoE on the shared frozen backbone (model.backbone=mixer-moe,
minilm-moe or vit-moe: at each FFN a gate over E LoRA experts, top-k). Per round:
1. train: each client starts from its own experts (and the server's gate, unless
   the gate is personal), trains gate and experts on its own data, and sends its
   gate to the server. Its experts are uploaded only for the simulation's relay
   (booked as relay, not as client -> server bytes).
2. plan (server, every I rounds, reused in between): each expert's proxy is its
   row of its layer's gate; cosine similarity over all (client, expert) pairs of
   a layer; each expert keeps itself plus its P most similar experts, weighted by
   softmax(similarity / tau) (`fedmoe_sim.aggregation.fedmoe_da`).
3. sync (after_train): each client gets its plan and, peer to peer, the experts of
   other clients its plan names (booked once as P2P, source -> receiver), and forms
   its personalised experts. An expert whose neighbour did not answer this round
   stays as it was (counted in `sync/kept-experts`).
4. gate: FedAvg over the clients' gates (fedmoe_da.gate=fedavg) or kept personal.
Evaluation: personalised accuracy on each client's own test split.
No official code is public: P = 5, tau = 1, I = 5, E = 4, top-2 are our defaults.
"""

from __future__ import annotations

from fedmoe_sim import wire
from fedmoe_sim.aggregation import fedmoe_da as da
from fedmoe_sim.config import CLIENT_MOE_BACKBONES, RunConfig
from fedmoe_sim.models.client_moe import EXPERTS, GATE, expert_keys, gate_proxies
from fedmoe_sim.workspace import Workspace
from strategies._base import Exchange, Metrics, Strategy, personalised_metrics
from strategies._federation import Federation
from strategies.fedavg import FedAvgStrategy

SYNC = "sync"                         # the phase after training: plans out, experts peer to peer


class FedMoEDAStrategy(Strategy):
    transient = ("dcfg",)   # config, rebuilt by __init__
    stateful = True

    def __init__(self, fed: Federation, ws: Workspace) -> None:
        super().__init__(fed, ws)
        self.dcfg = fed.cfg.fedmoe_da
        self.gate = ws.model.split_parts(ws.initial_expert(), [GATE])[GATE]
        self.plans: list[da.NeighbourPlan] = []
        self.plan_ids: list[int] = []          # client id of each plan position
        self.experts: dict[int, wire.State] = {}
        self.last_gate: dict[int, wire.State] = {}   # personal gates: each client's gate as it last sent it

    @classmethod
    def check_config(cls, cfg: RunConfig, ws: Workspace) -> None:
        FedAvgStrategy.check_config(cfg, ws)
        if len(cfg.model.family_list) != 1 or cfg.model.family_list[0] not in CLIENT_MOE_BACKBONES:
            raise ValueError(f"strategy {cfg.strategy} needs the client MoE for every client: model.backbone="
                             f"{' or '.join(CLIENT_MOE_BACKBONES)} and no other model.families "
                             f"(got {', '.join(cfg.model.family_list)})")

    def _specs(self, *parts: str, relay: tuple[str, ...] = ()) -> dict[str, wire.PartSpec]:
        return {p: wire.PartSpec.of(self.ws.model.part_spec(p), relay=p in relay) for p in parts}

    def _with_gate(self, box: wire.Outbox) -> wire.Outbox:
        if self.dcfg.gate == "fedavg":
            box.shared[GATE] = self.gate
        return box

    def configure_train(self, server_round: int) -> wire.Outbox:
        box = self._with_gate(self.outbox(wire.TRAIN, self.fed.train_cohort(server_round)))
        box.expect = self._specs(GATE, EXPERTS, relay=(EXPERTS,)) if self.dcfg.top_p > 0 else self._specs(GATE)
        return box

    def aggregate_train(self, server_round: int, got: wire.Unpacked) -> Metrics:
        metrics = self.fed.train_metrics(got)
        if not got.results:
            return metrics
        gates = [r.part(GATE) for r in got.results]
        proxies = gates
        if self.dcfg.proxy == "update":    # what this round's local data did to each gate row
            started = {r.client_id: self.gate if self.dcfg.gate == "fedavg" else self.last_gate.get(r.client_id, self.gate)
                       for r in got.results}
            proxies = [{k: g[k] - started[r.client_id][k] for k in g} for r, g in zip(got.results, gates, strict=True)]
        if self.dcfg.gate == "personal":
            self.last_gate.update({r.client_id: g for r, g in zip(got.results, gates, strict=True)})
        if self.dcfg.gate == "fedavg":
            self.gate = self.average(got.results, GATE, self.gate)
        self.experts = {r.client_id: r.part(EXPERTS) for r in got.results if EXPERTS in r.parts}
        if self.dcfg.top_p > 0 and (not self.plans or da.plan_due(server_round, self.dcfg.every)):
            layers = self.ws.model.num_layers
            self.plans = da.neighbour_plans([gate_proxies(proxies, layer) for layer in range(layers)],
                                            self.dcfg.top_p, self.dcfg.tau, same_client=self.dcfg.same_client,
                                            min_similarity=self.dcfg.min_similarity)
            self.plan_ids = [r.client_id for r in got.results]
            metrics["plan/refreshed"] = 1.0
        return metrics

    def after_train(self, server_round: int, exchange: Exchange) -> Metrics:
        """The plan to each client; the peers' experts it names, peer to peer."""
        if not self.plans:
            return {}
        box = self.outbox(SYNC, [c for c in self.plan_ids if c in self.experts])
        sliced: dict[da.Fetch, wire.State] = {}     # one object per expert: a message carries it once
        missing = 0
        for cid in box.clients:
            plan = da.client_plan(self.plans, self.plan_ids.index(cid), self.plan_ids)
            box.send(cid, da.PLAN, plan)
            for peer, layer, m in da.plan_fetches(plan, cid):
                if peer not in self.experts:
                    missing += 1                    # the peer did not answer this round
                    continue
                key = (peer, layer, m)
                if key not in sliced:
                    sliced[key] = {k: self.experts[peer][k][m] for k in expert_keys(layer)}
                box.send(cid, da.peer_part(key), sliced[key], source=peer)
        got = exchange(box)
        kept = sum(r.metrics.get(da.KEPT_EXPERTS, 0.0) for r in got.results)
        return {"sync/transfers": float(len(box.sources)), "sync/missing-peers": float(missing),
                "sync/kept-experts": kept, "sync/rejected": float(len(got.rejected))}

    def configure_evaluate(self, server_round: int) -> wire.Outbox:
        return self._with_gate(self.outbox(wire.EVALUATE, self.fed.eval_cohort(server_round)))

    def aggregate_evaluate(self, server_round: int, got: wire.Unpacked) -> Metrics:
        return personalised_metrics(super().aggregate_evaluate(server_round, got), self.per_client)

