"""What every method's client does per logical client: train from a start state, or evaluate.

Methods differ only in where the start state comes from (the server's global
expert, or the client's own stored expert) and what they upload; they pass
those two choices here instead of copying the loop.
"""

from __future__ import annotations

from collections.abc import Callable

from fedmoe_sim import wire
from fedmoe_sim.workspace import State, Workspace

StartFn = Callable[[int], State | None]
KeepFn = Callable[[int, State], None]
DataFn = Callable[[int], tuple]


def train_all(ws: Workspace, task: wire.Task, start: StartFn, keep: KeepFn | None, upload: bool,
              data: DataFn | None = None) -> list[wire.ClientResult]:
    """Train each logical client of the task; `data(cid)` overrides its training pool."""
    results = []
    for cid in task.client_ids:
        state, stats, n = ws.train_client(cid, task.server_round, start(cid), data(cid) if data else None)
        if keep is not None:
            keep(cid, state)
        metrics = {wire.NUM_EXAMPLES: n, wire.TRAIN_LOSS: stats.loss, wire.TRAIN_ACC: stats.accuracy}
        results.append(wire.ClientResult(cid, metrics, state if upload else None))
    return results


def evaluate_all(ws: Workspace, task: wire.Task, state_of: StartFn) -> list[wire.ClientResult]:
    results = []
    for cid in task.client_ids:
        ev = ws.evaluate_client(cid, state_of(cid))
        metrics = {
            wire.NUM_EXAMPLES: ev.num_examples,
            wire.EVAL_LOSS: ev.loss,
            wire.ACC_OWN: ev.acc_own,
            wire.ACC_DOMAIN: ev.acc_domain,
            wire.DOMAIN: ev.domain,
        }
        results.append(wire.ClientResult(cid, metrics))
    return results
