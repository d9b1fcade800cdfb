"""The strategy interface our round loop drives; every method subclasses `Strategy`.

Why not Flower's `Strategy`: its hooks take and return Messages and one global
ArrayRecord, while ours are personalised (a part per client, peer-to-peer
transfers, state that stays on the client). Here a strategy only says what each
client gets and must send back (`wire.Outbox`) and what to do with the valid
replies (`wire.Unpacked`); `_federation` turns that into one message per node and
books the bytes. A round, as the loop runs it:

    configure_train -> (exchange) -> aggregate_train -> after_train(exchange)
    -> [every eval_every rounds and the last] configure_evaluate -> (exchange)
    -> aggregate_evaluate -> [last round] finish(exchange)

`after_train` and `finish` receive an `exchange(outbox) -> Unpacked` for extra
phases inside the round (FedMoE-DA's peer-to-peer sync) and after the last one
(MetaMoE's upload and unification); both are no-ops here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedmoe_sim import wire
from fedmoe_sim.aggregation.robust import aggregate
from fedmoe_sim.config import ConfigError, RunConfig
from fedmoe_sim.models.expert_model import EXPERT
from fedmoe_sim.results.tracking import check_logger
from fedmoe_sim.workspace import Workspace
from strategies._federation import Federation

Exchange = Callable[[wire.Outbox], wire.Unpacked]
Metrics = dict[str, float]


class Strategy:
    """Defaults: train and evaluate the sampled clients with nothing sent and nothing expected."""

    stateful = False    # clients keep state between rounds: every task tells them which round it is from
    transient = ("fed", "ws")   # attributes a checkpoint does not hold (rebuilt by __init__); all others it does
    flower_wire = False  # every phase sends one part to all and takes at most one back, nothing kept on the
                         # client: the method can speak Flower's standard layout (federation.wire = flower)

    def __init__(self, fed: Federation, ws: Workspace) -> None:
        self.fed, self.ws = fed, ws
        self.per_client: dict[int, Metrics] = {}     # the final model's per-client metrics (summary)

    @classmethod
    def check_config(cls, cfg: RunConfig, ws: Workspace) -> None:
        """Raise ValueError for a config this method cannot run (called at the edge, before Ray
        starts, through `check_method`)."""

    def expert_spec(self) -> dict[str, wire.PartSpec]:
        """The single-expert methods' reply: the expert part of the (one) model family."""
        return {EXPERT: wire.PartSpec.of(self.ws.model.part_spec(EXPERT))}

    def average(self, results: list[wire.ClientResult], part: str, previous: wire.State) -> wire.State:
        """`part` aggregated over the valid results by the run's rule (federation.aggregate)."""
        fed = self.fed.cfg.federation
        return average_part(results, part, previous, fed.aggregate, fed.trim_fraction)

    # -- checkpoints --------------------------------------------------------
    def checkpoint_state(self) -> dict[str, object]:
        """Every attribute but the transient ones: what the server knows after a round
        (experts, gates, plans, per-client numbers). `fedmoe_sim.checkpoint` refuses, by
        name, a value it cannot store, so new state is never dropped silently."""
        skip = {name for cls in type(self).__mro__ for name in getattr(cls, "transient", ())}
        return {k: v for k, v in vars(self).items() if k not in skip}

    def restore(self, state: dict[str, object]) -> None:
        for k, v in state.items():
            setattr(self, k, v)

    def outbox(self, phase: str, clients: list[int]) -> wire.Outbox:
        box = wire.Outbox(phase, list(clients))
        return self.fed.expect_state(box) if self.stateful else box

    # -- the round --------------------------------------------------------
    def configure_train(self, server_round: int) -> wire.Outbox:
        return self.outbox(wire.TRAIN, self.fed.train_cohort(server_round))

    def aggregate_train(self, server_round: int, got: wire.Unpacked) -> Metrics:
        return self.fed.train_metrics(got)

    def after_train(self, server_round: int, exchange: Exchange) -> Metrics:
        """Extra exchanges after training and before evaluation (no-op)."""
        return {}

    def configure_evaluate(self, server_round: int) -> wire.Outbox | None:
        return self.outbox(wire.EVALUATE, self.fed.eval_cohort(server_round))

    def aggregate_evaluate(self, server_round: int, got: wire.Unpacked) -> Metrics:
        self.per_client = {r.client_id: r.metrics for r in got.results}
        return self.fed.eval_metrics(self.per_client)

    def finish(self, server_round: int, exchange: Exchange) -> Metrics:
        """Steps after the last round, e.g. a one-shot upload and a server-side model (no-op)."""
        return {}


def check_method(strategy: type[Strategy], cfg: RunConfig, ws: Workspace | None) -> None:
    """Everything that must hold before a run of `strategy` starts: a message layout it speaks,
    a tracker (`log`) this environment can run, then its own `check_config` (every edge calls
    this, so no method can skip the first two)."""
    check_wire(strategy, cfg)
    check_logger(cfg.log)
    strategy.check_config(cfg, ws)


def check_wire(strategy: type[Strategy], cfg: RunConfig) -> None:
    """ConfigError (one line) when the run's message layout is one the method cannot speak."""
    if cfg.federation.wire == "flower" and not strategy.flower_wire:
        from experiments.registry import METHODS

        able = ", ".join(name for name, m in METHODS.items() if m.strategy.flower_wire)
        raise ConfigError(f"federation.wire must be fedmoe for strategy {cfg.strategy} (got 'flower'): Flower's "
                          f"standard layout carries one shared part per phase, which only {able} exchange")


def personalised_metrics(metrics: Metrics, per_client: dict[int, Metrics]) -> Metrics:
    """Beside the mean and the worst client: the spread of own-split accuracy over clients."""
    own = [m[wire.ACC_OWN] for m in per_client.values() if np.isfinite(m.get(wire.ACC_OWN, np.nan))]
    if own:
        metrics["client-eval/acc-own-std"] = float(np.std(own))
    return metrics


def average_part(results: list[wire.ClientResult], part: str, previous: wire.State, rule: str = "mean",
                 trim: float = 0.1) -> wire.State:
    """One part aggregated over the valid results that carry examples (example-weighted mean,
    or a coordinate-wise median / trimmed mean), or `previous` when none does (nobody valid,
    or every client empty): a round never fails on it."""
    weighted = [(r.part(part), r.metrics[wire.NUM_EXAMPLES]) for r in results if r.metrics[wire.NUM_EXAMPLES] > 0]
    if not weighted:
        return previous
    return aggregate([state for state, _ in weighted], [w for _, w in weighted], rule, trim)
