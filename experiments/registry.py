"""Explicit method registry: name -> (strategy class, client module). No discovery by string matching."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import clients.fedavg
import clients.local
from fedmoe_sim.config import ConfigError
from strategies.fedavg import FedAvgStrategy
from strategies.local import LocalStrategy


@dataclass(frozen=True)
class Method:
    name: str
    strategy: type          # constructed as strategy(Federation, Workspace)
    client: ModuleType      # has train(ws, task, context) and evaluate(ws, task, context)
    description: str


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("fedavg", FedAvgStrategy, clients.fedavg, "FedAvg over the expert (whole trainable model), one global model"),
        Method("local", LocalStrategy, clients.local, "Local-only: each client trains its own expert, nothing is shared"),
    )
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown strategy {name!r}; allowed: {', '.join(METHODS)}") from None
