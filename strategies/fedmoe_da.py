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
   its personalised experts.
4. gate: FedAvg over the clients' gates (fedmoe_da.gate=fedavg) or kept personal.
Evaluation: personalised accuracy on each client's own test split.
No official code is public: P = 5, tau = 1, I = 5, E = 4, top-2 are our defaults.

Peers that do not answer (ours; docs/protocol.md, "FedMoE-DA: a peer that does not answer"):
- A plan covers the clients whose training the server accepted in the round it was
  computed, and only experts uploaded in the current round are ever served: no
  expert from an earlier round travels.
- A plan is reused only while the round's sampled cohort is the one it was computed
  for. A round with another cohort (partial participation, federation.fraction_train
  < 1) recomputes it from its own gates, so a plan never names a client that was not
  asked this round.
- A named peer that was asked but failed this round's training (crashed, timed out,
  rejected) has no expert to give: every expert whose set names it stays as this
  round's local training left it (the other weights are not renormalised). Counted per
  round: `sync/missing-peers` (distinct peers), `sync/missing-fetches`,
  `sync/kept-experts` (what the clients kept), logged as a warning and recorded under
  `sync` in events.jsonl. The round goes on.
- A client that answers but is not in the reused plan (it failed the round the plan
  was computed) gets no plan: its experts stay as trained (`sync/unplanned-clients`).
"""

from __future__ import annotations

import logging

from fedmoe_sim import wire
from fedmoe_sim.aggregation import fedmoe_da as da
from fedmoe_sim.config import CLIENT_MOE_BACKBONES, RunConfig
from fedmoe_sim.models.client_moe import EXPERTS, GATE, expert_keys, gate_proxies
from fedmoe_sim.workspace import Workspace
from strategies._base import Exchange, Metrics, Strategy, personalised_metrics
from strategies._federation import Federation
from strategies.fedavg import FedAvgStrategy

SYNC = "sync"                         # the phase after training: plans out, experts peer to peer

log = logging.getLogger(__name__)


class FedMoEDAStrategy(Strategy):
    transient = ("dcfg",)   # config, rebuilt by __init__
    stateful = True

    def __init__(self, fed: Federation, ws: Workspace) -> None:
        super().__init__(fed, ws)
        self.dcfg = fed.cfg.fedmoe_da
        self.gate = ws.model.split_parts(ws.initial_expert(), [GATE])[GATE]
        self.plans: list[da.NeighbourPlan] = []
        self.plan_ids: list[int] = []          # client id of each plan position
        self.plan_cohort: list[int] = []       # the sampled cohort of the round the plan was computed in
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
        self.experts = {}                  # this round's uploads only: an earlier round's expert is never served
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
        cohort = list(self.fed.train_cohort(server_round))
        if self.dcfg.top_p > 0 and (not self.plans or da.plan_due(server_round, self.dcfg.every)
                                    or cohort != self.plan_cohort):
            layers = self.ws.model.num_layers
            self.plans = da.neighbour_plans([gate_proxies(proxies, layer) for layer in range(layers)],
                                            self.dcfg.top_p, self.dcfg.tau, same_client=self.dcfg.same_client,
                                            min_similarity=self.dcfg.min_similarity)
            self.plan_ids = [r.client_id for r in got.results]
            self.plan_cohort = cohort
            metrics["plan/refreshed"] = 1.0
        return metrics

    def after_train(self, server_round: int, exchange: Exchange) -> Metrics:
        """The plan to each client; the peers' experts it names, peer to peer. A named peer
        without an expert this round is counted, and the experts that need it stay as they were."""
        if not self.plans:
            return {}
        box = self.outbox(SYNC, [c for c in self.plan_ids if c in self.experts])
        unplanned = sorted(set(self.experts) - set(self.plan_ids))
        sliced: dict[da.Fetch, wire.State] = {}     # one object per expert: a message carries it once
        missing: set[int] = set()
        missed_fetches = 0
        for cid in box.clients:
            plan = da.client_plan(self.plans, self.plan_ids.index(cid), self.plan_ids)
            box.send(cid, da.PLAN, plan)
            for peer, layer, m in da.plan_fetches(plan, cid):
                if peer not in self.experts:        # asked this round (same cohort) but its training failed
                    missing.add(peer)
                    missed_fetches += 1
                    continue
                key = (peer, layer, m)
                if key not in sliced:
                    sliced[key] = {k: self.experts[peer][k][m] for k in expert_keys(layer)}
                box.send(cid, da.peer_part(key), sliced[key], source=peer)
        got = exchange(box) if box.clients else wire.Unpacked([])
        kept = sum(r.metrics.get(da.KEPT_EXPERTS, 0.0) for r in got.results)
        if missing or unplanned:
            log.warning("round %d sync: peer(s) %s named in plans did not answer (%d expert fetches not served, "
                        "%d experts kept as they were); client(s) %s not in the reused plan kept their experts",
                        server_round, sorted(missing), missed_fetches, int(kept), unplanned)
            self.fed.events["sync"] = {"missing-peers": sorted(missing), "missing-fetches": missed_fetches,
                                       "kept-experts": int(kept), "unplanned-clients": unplanned}
        return {"sync/transfers": float(len(box.sources)), "sync/missing-peers": float(len(missing)),
                "sync/missing-fetches": float(missed_fetches), "sync/kept-experts": kept,
                "sync/unplanned-clients": float(len(unplanned)), "sync/rejected": float(len(got.rejected))}

    def configure_evaluate(self, server_round: int) -> wire.Outbox:
        return self._with_gate(self.outbox(wire.EVALUATE, self.fed.eval_cohort(server_round)))

    def aggregate_evaluate(self, server_round: int, got: wire.Unpacked) -> Metrics:
        return personalised_metrics(super().aggregate_evaluate(server_round, got), self.per_client)

