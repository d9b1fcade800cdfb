"""FedAvg (McMahan et al. 2017) over the expert: the classic baseline.

Uploaded: every sampled client's whole trainable model (its expert; the backbone
is frozen and shared, so it never travels). Server: example-weighted average.
Flower's built-in FedAvg requires identical ArrayRecord keys in every reply and
one client per message; ours reads many logical clients per reply and drops
malformed updates instead of failing the round.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmoe_sim import wire
from fedmoe_sim.aggregation import weighted_average
from fedmoe_sim.workspace import Workspace
from strategies._federation import Federation


class FedAvgStrategy(Strategy):
    uploads_expert = True

    def __init__(self, fed: Federation, ws: Workspace) -> None:
        self.fed = fed
        self.spec = ws.model.expert_spec()
        self._initial = ws.initial_expert()

    def initial_arrays(self) -> ArrayRecord:
        return wire.to_record(self._initial)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        cohort = self.fed.train_cohort(server_round)
        return self.fed.messages(server_round, MessageType.TRAIN, cohort, wire.from_record(arrays))

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        got = self.fed.collect(server_round, replies, self.spec, self.fed.train_cohort(server_round))
        metrics = MetricRecord(self.fed.train_metrics(got))
        if not got.results:
            return None, metrics  # nobody valid: keep the previous global expert
        states = [r.state for r in got.results]
        weights = [r.metrics[wire.NUM_EXAMPLES] for r in got.results]
        return wire.to_record(weighted_average(states, weights)), metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        cohort = self.fed.eval_cohort(server_round)
        return self.fed.messages(server_round, MessageType.EVALUATE, cohort, wire.from_record(arrays))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        got = self.fed.collect(server_round, replies, None, self.fed.eval_cohort(server_round))
        return MetricRecord(self.fed.eval_metrics(got))

    def summary(self) -> None:
        """Flower hook; our loop logs progress itself."""
