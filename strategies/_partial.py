"""One part held by the server and given to every client; every other part stays on its client.

The shape pFedMoE (the global expert) and LG-FedAvg (the head) share, and FedGH
(the head, made on the server from class means) builds on. Per round:
1. train: every sampled client gets the server's copy of the part, puts it over its
   own stored state (first time: its family's initial state), trains its whole
   model, keeps all of it (stateful), and uploads what `upload_spec` names: by
   default that part alone.
2. aggregate: by default the sample-count weighted average of the uploaded part.
3. evaluate: each client's own model as its last local training left it, on its own
   test split (personalised accuracy: mean, worst client, spread over clients);
   nothing is sent. That is the authors' protocol (LipingYi/FedGH, FedGH_mh.py:
   "evaluate trained local model" right after local training; the evaluation of
   the received global part before training is commented out). It matters for
   pFedMoE: swapping the latest average in would judge a gate and head trained
   with the client's own copy of the global expert on another one. A client that
   has not trained yet (partial participation) is judged on its initial model;
   their code counts it as 0.
The client half is `clients/_partial.py`. The part must have one spec (keys,
shapes) in every model family, or it could not be averaged: `check_config`
refuses a config where it has not, in one line.
"""

from __future__ import annotations

from fedmoe_sim import wire
from fedmoe_sim.config import RunConfig
from fedmoe_sim.workspace import Workspace
from strategies._base import Metrics, Strategy, personalised_metrics
from strategies._federation import Federation


def shared_part_spec(cfg: RunConfig, ws: Workspace, part: str) -> wire.PartSpec:
    """The spec `part` has in every model family of the run; ValueError (one line) if a family
    lacks it or two families disagree."""
    specs = {}
    for family, model in ws.models.items():
        if part not in model.part_names:
            raise ValueError(f"strategy {cfg.strategy} shares part {part!r} across clients, but model family "
                             f"{family!r} has no such part (its parts: {', '.join(model.part_names)})")
        specs[family] = model.part_spec(part)
    first, *rest = specs
    for family in rest:
        if specs[family] != specs[first]:
            raise ValueError(f"strategy {cfg.strategy} shares part {part!r} across clients, but it differs between "
                             f"model families {first!r} and {family!r}; use families whose {part!r} part matches")
    return wire.PartSpec.of(specs[first])


class SharedPartStrategy(Strategy):
    """Subclasses name `part`; override `upload_spec` and `aggregate_train` when the upload is
    not the part itself (FedGH)."""

    stateful = True
    part = ""                # the one model part the server holds and sends

    def __init__(self, fed: Federation, ws: Workspace) -> None:
        super().__init__(fed, ws)
        # every family starts from the same seed; the server's first copy is the first family's
        self.shared = ws.model.split_parts(ws.initial_expert(), [self.part])[self.part]

    @classmethod
    def check_config(cls, cfg: RunConfig, ws: Workspace) -> None:
        shared_part_spec(cfg, ws, cls.part)

    def upload_spec(self) -> dict[str, wire.PartSpec]:
        return {self.part: wire.PartSpec.of(self.ws.model.part_spec(self.part))}

    def configure_train(self, server_round: int) -> wire.Outbox:
        box = self.outbox(wire.TRAIN, self.fed.train_cohort(server_round))
        box.shared[self.part] = self.shared
        box.expect = self.upload_spec()
        return box

    def aggregate_train(self, server_round: int, got: wire.Unpacked) -> Metrics:
        self.shared = self.average(got.results, self.part, self.shared)
        return self.fed.train_metrics(got)

    def aggregate_evaluate(self, server_round: int, got: wire.Unpacked) -> Metrics:
        return personalised_metrics(super().aggregate_evaluate(server_round, got), self.per_client)
