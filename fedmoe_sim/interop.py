"""Flower's standard message layout beside ours, both directions: the wire protocol's second dialect.

Why: Flower's built-in strategies (FedAvg, FedProx, FedAdam, FedTrimmedAvg, ...) and
ClientApps written for them exchange one model per node message. A task is an
ArrayRecord `arrays` and a ConfigRecord `config` (with `server-round`); a reply is
an ArrayRecord `arrays` (training only) and a MetricRecord `metrics` holding
`num-examples`. That layout has room for one logical client and one part per
message. This module converts it to and from ours (`wire`), so strategies keep
consuming `wire.Unpacked` and clients keep consuming `wire.Task`, and a reply in
the standard layout passes exactly the checks one of ours does (`wire.read_replies`:
finite numeric metrics, `num-examples` >= 0, parts against the strategy's spec,
rejections logged). Like `wire`, it is a protocol module and touches Flower records,
but only the ones `wire` imports: a Flower upgrade still meets the library at one place.

Where a Flower ServerApp gets what our clients need: `initial_arrays(cfg)` is the
model's trainable state (the FedAvg part `model`), `client_config(cfg)` a
ConfigRecord that carries the resolved run config to our clients (without it they
read Flower's run config, see clients/flower_native.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from fedmoe_sim import wire
from fedmoe_sim.config import ConfigError, RunConfig
from fedmoe_sim.wire import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict  # via wire: the one door to Flower

log = logging.getLogger(__name__)


# ------------------------------------------------------ a Flower ServerApp ----
def initial_arrays(cfg: RunConfig) -> ArrayRecord:
    """The trainable state our clients start from (every trainable tensor of the run's model,
    a function of the seed): `initial_arrays` for a Flower strategy's `start()`."""
    from fedmoe_sim.workspace import get_workspace

    ws = get_workspace(cfg)
    if len(ws.families) > 1:
        raise ConfigError(f"model.families must name one family for a Flower strategy, which averages one "
                          f"model (got {cfg.model.families!r})")
    return wire.to_record(ws.initial_expert())


def client_config(cfg: RunConfig) -> ConfigRecord:
    """A `train_config` / `evaluate_config` for a Flower strategy that gives our clients exactly
    this resolved config (bytes: Flower's logs mask them instead of printing the JSON)."""
    return ConfigRecord({wire.RUN_CONFIG: cfg.to_json().encode()})


# ------------------------------------------------------------ the client ----
def is_standard_task(content: RecordDict) -> bool:
    """A train/evaluate message without our `task` record: Flower's standard layout."""
    return wire.TASK not in content.config_records


def _named_or_only(records: Mapping, name: str):
    """The record `name`, else the only record there is (Flower's strategies may rename theirs:
    `arrayrecord_key`, `configrecord_key`), else None."""
    if name in records:
        return records[name]
    return next(iter(records.values())) if len(records) == 1 else None


def task_config(content: RecordDict) -> ConfigRecord:
    """A standard task's `config` (`server-round`, a strategy's own keys; empty if none)."""
    return _named_or_only(content.config_records, wire.STD_CONFIG) or ConfigRecord()


def task_run_config(content: RecordDict) -> str:
    """The resolved run config a standard task carries (`client_config`, or our ServerApp under
    federation.wire='flower'), "" if none."""
    value = task_config(content).get(wire.RUN_CONFIG, "")
    return value.decode() if isinstance(value, bytes) else str(value)


def read_flower_task(content: RecordDict, run_config: str, client_id: int, part: str, phase: str) -> wire.Task:
    """A standard task as our own task for one logical client: the received `arrays` are its
    part `part`, which a training phase must send back (the same keys as received)."""
    arrays = _named_or_only(content.array_records, wire.STD_ARRAYS)
    if not arrays:
        raise ValueError(f"a {phase} message in Flower's layout must carry the model's arrays "
                         f"(start from fedmoe_sim.interop.initial_arrays)")
    box = wire.Outbox(phase, [client_id], shared={part: wire.from_record(arrays)})
    if phase == wire.TRAIN:
        box.expect = {part: wire.PartSpec({})}   # a task names what is expected; the spec is the server's
    server_round = int(task_config(content).get(wire.STD_ROUND, 0))
    return wire.read_task(wire.make_task(run_config, server_round, box, [client_id]))


def make_flower_reply(result: wire.ClientResult, part: str) -> RecordDict:
    """One logical client's result in the standard layout: its part as `arrays` (if it has one)
    and its metrics (`num-examples` and our own names) as `metrics`."""
    if result.error is not None:
        raise RuntimeError(f"client {result.client_id}: {result.error}")   # the runtime makes it an error reply
    content = RecordDict({wire.STD_METRICS: MetricRecord({k: float(v) for k, v in result.metrics.items()})})
    state = result.part(part)
    if state is not None:
        content[wire.STD_ARRAYS] = wire.to_record(state)
    return content


# ------------------------------------------------------------ our server ----
def node_per_client(nodes: list[int], num_clients: int) -> dict[int, int]:
    """Client i -> the i-th node by node id: a node in the standard layout cannot be asked for
    its partition-id, so the order of node ids fixes which logical client each one is."""
    if len(nodes) < num_clients:
        raise RuntimeError(f"federation.wire='flower' needs one node per client: {len(nodes)} node(s) for "
                           f"federation.num_clients={num_clients}")
    return {cid: node for cid, node in enumerate(sorted(nodes)[:num_clients])}


def to_flower_task(run_config: str, server_round: int, outbox: wire.Outbox, client_ids: list[int]) -> RecordDict:
    """The standard task for one node: its one client's one part as `arrays`, the round and our
    phase (and the resolved run config, which our own ClientApp reads) in `config`."""
    if len(client_ids) != 1:
        raise ValueError(f"the standard layout carries one client per message (got {len(client_ids)})")
    parts = outbox.parts_of(client_ids[0])
    if len(parts) > 1 or len(outbox.expect) > 1 or outbox.plans.get(client_ids[0]):
        raise ValueError(f"phase {outbox.phase!r} sends parts {sorted(parts)}, expects {sorted(outbox.expect)} "
                         f"and plans {sorted(outbox.plans.get(client_ids[0], {}))}: the standard layout carries "
                         f"one part each way and no plan")
    arrays = wire.to_record(next(iter(parts.values()))) if parts else ArrayRecord()
    config = ConfigRecord({wire.STD_ROUND: int(server_round), wire.PHASE: outbox.phase,
                           wire.RUN_CONFIG: run_config.encode()})
    return RecordDict({wire.STD_ARRAYS: arrays, wire.STD_CONFIG: config})


def as_fedmoe_replies(replies: Iterable[Message], outbox: wire.Outbox,
                      asked_of: Mapping[int, set[int]]) -> list[Message]:
    """Standard replies renamed, in place, into our layout for `wire.read_replies`, which then
    judges them as it judges ours. A node speaks for the one client it was asked about; its
    one ArrayRecord is the phase's one expected part, its one MetricRecord (or the one named
    `metrics`) the client's metrics. Anything else keeps its own name, so the checks reject it
    as an unexpected part (an upload where none is expected included)."""
    expected = next(iter(outbox.expect), "")   # to_flower_task allows at most one
    out = []
    for msg in replies:
        if msg.has_error():
            out.append(msg)
            continue
        cids = asked_of.get(msg.metadata.src_node_id, set())
        if len(cids) != 1:
            log.warning("ignored a reply from node %d, which was asked about no client", msg.metadata.src_node_id)
            continue
        (cid,) = cids
        content, renamed = msg.content, RecordDict()
        arrays, metrics = content.array_records, content.metric_records
        for name, record in arrays.items():
            part = expected if expected and len(arrays) == 1 else name
            renamed[f"{wire.UP_PREFIX}{cid}/{part}"] = record
        metric = next(iter(metrics.values())) if len(metrics) == 1 else metrics.get(wire.STD_METRICS)
        if metric is not None:
            renamed[f"{wire.METRICS_PREFIX}{cid}"] = metric
        msg.content = renamed
        out.append(msg)
    return out
