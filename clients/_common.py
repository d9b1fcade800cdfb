"""What every method's client does per logical client: train from a start state, or evaluate.

Methods differ in where a client's start state comes from (the server's part, or
the client's own stored state), what persists on the client, and the data it
trains on; they pass those choices here instead of copying the loop. What a
client sends back is never its choice: exactly the parts the task expects.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context

from fedmoe_sim import wire
from fedmoe_sim.workspace import ClientStateStore, MissingStateError, State, Workspace, parse_run_config

StartFn = Callable[[int], State | None]
KeepFn = Callable[[int, State], None]
DataFn = Callable[[int], tuple]


def state_store(task: wire.Task, context: Context) -> ClientStateStore:
    """The node's store for this run: the node's own `state-dir` (node config), else the run's
    federation.state_dir, else the system temp dir (every simulated node of one machine)."""
    cfg = parse_run_config(task.run_config)
    base = str(context.node_config.get("state-dir", "")) or cfg.federation.state_dir
    return ClientStateStore.for_run(task.state_key or str(context.run_id), cfg.identity_hash(), base)


def own_state(store: ClientStateStore, task: wire.Task) -> StartFn:
    """A stateful client's own state: none before its first accepted training, else the stored
    one, which must be at least as recent as the server says (`MissingStateError` otherwise)."""
    def load(cid: int) -> State | None:
        at_least = int(task.plan(cid).get(wire.STATE_ROUND, 0))
        return store.load(cid, at_least=at_least) if at_least > 0 else None
    return load


def keep_in(store: ClientStateStore, task: wire.Task) -> KeepFn:
    """Save this round's state; keep the versions the server may still ask for (the one it
    accepted last, and the one its last checkpoint names), drop older ones."""
    def keep(cid: int, state: State) -> None:
        plan = task.plan(cid)
        store.save(cid, state, server_round=task.server_round,
                   keep=(int(plan.get(wire.STATE_ROUND, 0)), int(plan.get(wire.STATE_PIN, 0))))
    return keep


def _missing(cid: int, exc: MissingStateError) -> wire.ClientResult:
    return wire.ClientResult(cid, {}, error=str(exc), error_kind=wire.MISSING_STATE)


def per_client(task: wire.Task, work: Callable[[int], wire.ClientResult]) -> list[wire.ClientResult]:
    """`work(cid)` for every client of the task; a client whose state is missing reports it
    (the server stops the run with the reason) instead of failing its node's other clients."""
    results = []
    for cid in task.client_ids:
        try:
            results.append(work(cid))
        except MissingStateError as exc:
            results.append(_missing(cid, exc))
    return results


def _gather(task: wire.Task, state_of: StartFn) -> tuple[dict[int, State | None], dict[int, wire.ClientResult]]:
    """Every client's starting state, and the replies of those whose state is missing."""
    states: dict[int, State | None] = {}
    missing: dict[int, wire.ClientResult] = {}
    for cid in task.client_ids:
        try:
            states[cid] = state_of(cid)
        except MissingStateError as exc:
            missing[cid] = _missing(cid, exc)
    return states, missing


def train_all(ws: Workspace, task: wire.Task, start: StartFn, keep: KeepFn | None = None,
              data: DataFn | None = None) -> list[wire.ClientResult]:
    """Train each logical client of the task (together when simulation.vectorise is on);
    `data(cid)` overrides its training pool."""
    starts, out = _gather(task, start)
    cids = list(starts)
    trained = ws.train_clients(cids, task.server_round, list(starts.values()), [data(c) for c in cids] if data else None)
    for cid, (state, stats, n) in zip(cids, trained, strict=True):
        if keep is not None:
            keep(cid, state)
        metrics = {wire.NUM_EXAMPLES: n, wire.TRAIN_LOSS: stats.loss, wire.TRAIN_ACC: stats.accuracy}
        out[cid] = wire.ClientResult(cid, metrics, ws.model_of(cid).split_parts(state, task.expect))
    return [out[cid] for cid in task.client_ids]


def evaluate_all(ws: Workspace, task: wire.Task, state_of: StartFn,
                 extra: Callable[[int], dict[str, float]] | None = None) -> list[wire.ClientResult]:
    """Evaluate each client's model (together when simulation.vectorise is on and no `extra`);
    `extra(cid)` adds a method's own numbers, called while the client's state is still loaded
    in its family's model."""
    def result(cid: int, ev, more: dict[str, float]) -> wire.ClientResult:
        return wire.ClientResult(cid, {
            wire.NUM_EXAMPLES: ev.num_examples,
            wire.EVAL_LOSS: ev.loss,
            wire.ACC_OWN: ev.acc_own,
            wire.ACC_DOMAIN: ev.acc_domain,
            wire.DOMAIN: ev.domain,
            **more,
        })

    if extra is not None or not ws.cfg.simulation.vectorise:
        return per_client(task, lambda cid: result(cid, ws.evaluate_client(cid, state_of(cid)),
                                                   extra(cid) if extra is not None else {}))
    states, out = _gather(task, state_of)
    cids = list(states)
    for cid, ev in zip(cids, ws.evaluate_clients(cids, list(states.values())), strict=True):
        out[cid] = result(cid, ev, {})
    return [out[cid] for cid in task.client_ids]


def from_server(task: wire.Task, part: str) -> StartFn:
    """Start from the part the server sent this client."""
    return lambda cid: task.part(cid, part)


def with_server_part(ws: Workspace, task: wire.Task, store: ClientStateStore, part: str) -> StartFn:
    """Start = the client's stored state (its `initial_state` before its first training)
    with `part` replaced by the server's copy when the task carries one."""
    own = own_state(store, task)

    def start(cid: int) -> wire.State | None:
        state = own(cid)
        shared = task.part(cid, part)
        if shared is None:
            return state
        return {**(state if state is not None else ws.initial_state(cid)), **shared}
    return start
