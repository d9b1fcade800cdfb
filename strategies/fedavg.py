"""FedAvg (McMahan et al. 2017) over the whole trainable model: the classic baseline.

With a single-expert model that is the expert; with FedMoE-DA's client MoE
(model.backbone=mixer-moe) it is every gate and expert: the FedAvg-MoE baseline.

Sent: the global expert, one copy per node message. Uploaded: every sampled
client's expert (its whole trainable model; the backbone is frozen and shared, so
it never travels). Server: example-weighted average. Flower's built-in FedAvg
needs one client per message and fails the round on a malformed reply; ours
reads many logical clients per reply and drops malformed updates instead.
"""

from __future__ import annotations

from fedmoe_sim import wire
from fedmoe_sim.config import RunConfig
from fedmoe_sim.models.expert_model import WHOLE
from fedmoe_sim.workspace import Workspace
from strategies._base import Metrics, Strategy
from strategies._federation import Federation


class FedAvgStrategy(Strategy):
    flower_wire = True   # one global model each way: also speaks Flower's standard layout (fedmoe_sim.interop)

    def __init__(self, fed: Federation, ws: Workspace) -> None:
        super().__init__(fed, ws)
        self.global_expert = ws.initial_expert()

    @classmethod
    def check_config(cls, cfg: RunConfig, ws: Workspace) -> None:
        if len(ws.families) > 1:
            raise ValueError(f"strategy {cfg.strategy} averages one model: model.families must name one family "
                             f"(got {cfg.model.families!r})")

    def configure_train(self, server_round: int) -> wire.Outbox:
        box = self.outbox(wire.TRAIN, self.fed.train_cohort(server_round))
        box.shared[WHOLE] = self.global_expert
        box.expect = {WHOLE: wire.PartSpec.of(self.ws.model.part_spec(WHOLE))}
        return box

    def aggregate_train(self, server_round: int, got: wire.Unpacked) -> Metrics:
        self.global_expert = self.average(got.results, WHOLE, self.global_expert)
        return self.fed.train_metrics(got)

    def configure_evaluate(self, server_round: int) -> wire.Outbox:
        box = self.outbox(wire.EVALUATE, self.fed.eval_cohort(server_round))
        box.shared[WHOLE] = self.global_expert
        return box
