"""Local-only: every client trains its own expert on its own data; nothing is shared.

The lower bound of collaboration. Uploaded: nothing (bytes up = 0); the server
only schedules rounds and collects metrics. Each client's expert persists on its
node between rounds (see clients/local.py).
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid

from strategies.fedavg import FedAvgStrategy


class LocalStrategy(FedAvgStrategy):
    """FedAvg's scheduling and evaluation, minus the global model."""

    uploads_expert = False

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return self.fed.messages(server_round, MessageType.TRAIN, self.fed.train_cohort(server_round), None)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        got = self.fed.collect(server_round, replies, self.spec, self.fed.train_cohort(server_round))
        return None, MetricRecord(self.fed.train_metrics(got))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return self.fed.messages(server_round, MessageType.EVALUATE, self.fed.eval_cohort(server_round), None)
