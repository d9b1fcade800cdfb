"""Prototype of the one speed-up of BENCHMARKS_sim.md not yet in the code, as a switchable monkeypatch.

v4 partial: FedAvg nodes reply with one example-weighted float64 partial sum
(plus per-client metrics and a per-client finiteness flag) instead of one
expert ArrayRecord per logical client; the server adds the partials, divides
once, and still books the expert's bytes per logical client in the ledger.

(v1 views, v2 decode and v3 tick, measured with earlier versions of this module,
landed in fedmoe_sim/wire.py and experiments/flower_patches.py.)

Used by benchmarks/prototype_speedups.py. Importing this module installs the
patch (switched off) in the driver and, through `app`, in every worker; the
variant travels in `federation.round_timeout` (600 + v), a value no round
reaches, and `set_variant` switches the driver side.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients import app as ours
from fedmoe_sim import wire
from fedmoe_sim.workspace import get_workspace, parse_run_config
from strategies.fedavg import FedAvgStrategy

VARIANTS = {0: "v0 as is", 4: "v4 partial"}
BASE_TIMEOUT = 600.0
PARTIAL, WEIGHT = "partial-sum", "partial-weight"
_current = 0          # the variant of the run in progress (driver process)


def set_variant(v: int) -> None:
    global _current
    _current = v


def variant_of(cfg) -> int:
    return int(round(cfg.federation.round_timeout - BASE_TIMEOUT))


def _handle(msg: Message, context: Context, phase: str) -> Message:
    """Worker: from v4, one example-weighted sum per node for FedAvg training."""
    task = wire.read_task(msg.content)
    cfg = parse_run_config(task.run_config)
    if variant_of(cfg) < 4 or phase != "train" or cfg.strategy != "fedavg":
        return ours._handle(msg, context, phase)
    import clients.fedavg

    results = clients.fedavg.train(get_workspace(cfg), task, context)
    content = RecordDict()
    acc, total = None, 0.0
    for r in results:
        finite = all(np.isfinite(a).all() for a in r.state.values())
        content[f"{wire.METRICS_PREFIX}{r.client_id}"] = MetricRecord(
            {**{k: float(v) for k, v in r.metrics.items()}, "finite": float(finite)})
        if not finite:
            continue
        w = float(r.metrics[wire.NUM_EXAMPLES])
        if acc is None:
            acc = {k: np.zeros(a.shape, np.float64) for k, a in r.state.items()}
        for k, a in r.state.items():
            acc[k] += w * a
        total += w
    if acc is not None:
        content[PARTIAL] = wire.to_record(acc)
        content[WEIGHT] = MetricRecord({"weight": total})
    return Message(content, reply_to=msg)


_real_aggregate_train = FedAvgStrategy.aggregate_train


def aggregate_train(self, server_round, replies):
    """Server: from v4, add the nodes' partial sums (a real version would also check their spec)."""
    if _current < 4 or type(self) is not FedAvgStrategy:
        return _real_aggregate_train(self, server_round, replies)
    acc, total = None, 0.0
    results, rejected = [], {}
    expert_bytes = sum(int(np.prod(shape)) * 4 for shape, _ in self.spec.values())
    for msg in replies:
        if msg.has_error():
            continue
        c = msg.content
        metrics, arrays = c.metric_records, c.array_records
        for name, rec in metrics.items():
            if name.startswith(wire.METRICS_PREFIX):
                cid = int(name[len(wire.METRICS_PREFIX):])
                self.fed.ledger.add(server_round, wire.UP, cid, expert_bytes)
                m = {k: float(v) for k, v in rec.items()}
                if m.pop("finite", 1.0):
                    results.append(wire.ClientResult(cid, m))
                else:
                    rejected[cid] = "non-finite values"
        if PARTIAL in arrays:
            part = wire.from_record(arrays[PARTIAL])
            if acc is None:
                acc = {k: np.zeros(a.shape, np.float64) for k, a in part.items()}
            for k, a in part.items():
                acc[k] += a
            total += float(metrics[WEIGHT]["weight"])
    got = wire.Unpacked(results=sorted(results, key=lambda r: r.client_id), rejected=rejected)
    train_metrics = MetricRecord(self.fed.train_metrics(got))
    if acc is None or total <= 0:
        return None, train_metrics
    return wire.to_record({k: (a / total).astype(np.float32) for k, a in acc.items()}), train_metrics


FedAvgStrategy.aggregate_train = aggregate_train   # switched by set_variant; inert at v0

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _handle(msg, context, "train")


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return ours._handle(msg, context, "evaluate")


@app.query()
def query(msg: Message, context: Context) -> Message:
    return ours.query(msg, context)
