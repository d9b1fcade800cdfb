"""pFedSim (Tan et al. 2023, "pFedSim: Similarity-Aware Model Aggregation Towards Personalized FL").

The model is a feature extractor and a classifier: here the digits mixer's LoRA expert
(the extractor; the frozen backbone is shared and never travels) and its head, made
trainable by model.train_head, which the method forces. Per round:
1. warm-up, the first floor(rounds * pfedsim.warmup) rounds: FedAvg of extractor and head
   together (`FedAvgStrategy`): every client gets the same model.
2. then, train: each sampled client gets its own personalised extractor (a per-client
   part), trains it with its own head, keeps both (stateful), and uploads both: the
   extractor to be mixed into its peers', the head because its rows are the similarity
   proxy. No head is ever sent down after the warm-up.
3. server: s_ij = max(0, mean_c cos(head_i[c], head_j[c])) between the round's clients;
   client i's next extractor = sum_j a_ij extractor_j, a = its row with its own entry 0.9999,
   w -> -log(1 - w), normalised; its own extractor when no peer has s > 0
   (`fedmoe_sim.aggregation.pfedsim`).
Evaluation: personalised accuracy on each client's own test split. In warm-up, FedAvg's
global model (what FL-bench evaluates then); afterwards each client's own model as its
last training left it, nothing sent (FL-bench: the client's parameters the server holds,
the same model).

FL-bench's (`src/server/pfedsim.py`) and the paper's: warm-up 0.5 of the rounds, the
identity start of the similarity matrix, pairs only between one round's clients, the
0.9999 own weight, the -log(1 - w) transform and the row-sum > 1 rule. Ours:
- the head stays on its client: FL-bench's server holds every client's whole model and
  sends it down with the mixed extractor, which also resets each head to the warm-up's
  global head when personalisation starts. Here a client continues from its own head as
  its last warm-up training left it (the pretrained head if it never trained); the server
  uses a round's heads for that round's similarities and keeps none;
- a client that has not uploaded since the warm-up counts with the warm-up's global
  extractor (as FL-bench, whose stored copies are set to the global model);
- a peer's similarity is capped at 0.9999 (FL-bench's s = 1 gives an infinite weight);
- LoRA factors are mixed tensor by tensor, A and B apart, as FedAvg averages them;
- a client whose update was rejected, or that trained on no examples, changes nothing.
"""

from __future__ import annotations

import numpy as np

from fedmoe_sim import wire
from fedmoe_sim.aggregation import pfedsim as ps
from fedmoe_sim.config import RunConfig
from fedmoe_sim.models.expert_model import EXPERT
from fedmoe_sim.models.mixer import HEAD, HEAD_WEIGHT
from fedmoe_sim.workspace import Workspace
from strategies._base import Metrics, Strategy, personalised_metrics
from strategies._federation import Federation
from strategies.fedavg import FedAvgStrategy


class PFedSimStrategy(FedAvgStrategy):
    transient = ("warmup_rounds",)   # from the config, rebuilt by __init__
    stateful = True                  # every client keeps its model (the head, personal after warm-up)
    flower_wire = False              # after warm-up each client gets its own extractor

    def __init__(self, fed: Federation, ws: Workspace) -> None:
        super().__init__(fed, ws)    # global_expert: the warm-up's FedAvg model (extractor and head)
        self.warmup_rounds = int(fed.cfg.federation.rounds * fed.cfg.pfedsim.warmup)
        self.extractors: dict[int, wire.State] = {}     # each client's latest uploaded extractor, after warm-up
        self.similarity = np.eye(fed.cfg.federation.num_clients)   # [N, N] s_ij, clients by id

    @classmethod
    def check_config(cls, cfg: RunConfig, ws: Workspace) -> None:
        super().check_config(cfg, ws)
        if not cfg.model.train_head:
            raise ValueError(f"strategy {cfg.strategy} needs a trainable personal classifier: model.train_head=true "
                             f"(got false)")

    def warming_up(self, server_round: int) -> bool:
        return server_round <= self.warmup_rounds

    def configure_train(self, server_round: int) -> wire.Outbox:
        if self.warming_up(server_round):
            return super().configure_train(server_round)
        box = self.outbox(wire.TRAIN, self.fed.train_cohort(server_round))
        warm = self.ws.model.split_parts(self.global_expert, [EXPERT])[EXPERT]
        for cid in box.clients:
            weights = ps.mixing_weights(self.similarity, cid)
            latest = {j: self.extractors.get(j, warm) for j in weights}
            box.send(cid, EXPERT, ps.personalised_extractor(weights, latest))
        box.expect = {p: wire.PartSpec.of(self.ws.model.part_spec(p)) for p in (EXPERT, HEAD)}
        return box

    def aggregate_train(self, server_round: int, got: wire.Unpacked) -> Metrics:
        if self.warming_up(server_round):
            return super().aggregate_train(server_round, got)
        metrics = self.fed.train_metrics(got)
        trained = [r for r in got.results if r.metrics[wire.NUM_EXAMPLES] > 0]
        self.extractors.update({r.client_id: r.part(EXPERT) for r in trained})
        heads = {r.client_id: r.part(HEAD)[HEAD_WEIGHT] for r in trained}    # [classes, D] each: the proxies
        self.similarity = ps.update_similarity(self.similarity, heads)
        mean = ps.mean_pair_similarity(self.similarity, [r.client_id for r in trained])
        if mean is not None:
            metrics["pfedsim/similarity"] = mean
        return metrics

    def configure_evaluate(self, server_round: int) -> wire.Outbox:
        if self.warming_up(server_round):
            return super().configure_evaluate(server_round)
        return Strategy.configure_evaluate(self, server_round)     # each client's own model: nothing sent

    def aggregate_evaluate(self, server_round: int, got: wire.Unpacked) -> Metrics:
        return personalised_metrics(super().aggregate_evaluate(server_round, got), self.per_client)
