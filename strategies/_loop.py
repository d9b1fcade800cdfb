"""The round loop, written once for every method.

Why not Flower's `Strategy.start()`: it blocks in `send_and_receive` until every
reply is in, so it cannot show clients done or an ETA while a round runs, and a
side effect (recording, checkpoints) would mean copying it. This loop calls the
hooks of `strategies._base.Strategy` in a fixed order (see there), always with a
timeout, pulls replies as they arrive (progress), and hands every round's metrics
to the results recorder.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from functools import partial

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedmoe_sim import wire
from fedmoe_sim.config import RunConfig
from fedmoe_sim.progress import Progress, format_seconds
from fedmoe_sim.results import RunRecorder, RunSummary
from fedmoe_sim.workspace import get_workspace
from strategies._federation import Federation

log = logging.getLogger(__name__)

POLL_SECONDS = 0.005  # our own pull interval: Flower's default 0.1 s quantises short rounds


def push_pull(grid: Grid, messages: Iterable[Message], timeout: float, progress: Progress | None = None,
              server_round: int = 0, phase: str = "") -> list[Message]:
    """Push, then pull replies until all are in or `timeout` passes; late nodes are dropped."""
    messages = list(messages)
    asked = sum(wire.clients_in(m) for m in messages)
    pending = set(grid.push_messages(messages))
    replies: list[Message] = []
    done = 0
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        got = list(grid.pull_messages(list(pending)))
        for msg in got:
            pending.discard(msg.metadata.reply_to_message_id)
            done += wire.clients_in(msg)
        replies.extend(got)
        if progress is not None and got:
            progress.update(server_round, phase, done, asked)
        if pending:
            time.sleep(POLL_SECONDS)
    if pending:
        log.warning("round %d %s: %d of %d node(s) did not reply within %.0fs; going on without them",
                    server_round, phase, len(pending), len(messages), timeout)
    return replies


def warm_up(grid: Grid, timeout: float) -> None:
    """Ask every node once before the first run, so worker start-up (imports, actor
    creation) is not billed to the first run's wall time and rounds."""
    nodes = list(grid.get_node_ids())
    push_pull(grid, [Message(RecordDict(), node, MessageType.QUERY) for node in nodes], timeout)


def run_server(grid: Grid, cfg: RunConfig, method, progress_prefix: str = "", show_progress: bool = True) -> RunSummary:
    """Run `method` (an experiments.registry.Method) for cfg.federation.rounds rounds."""
    t_start = time.monotonic()
    ws = get_workspace(cfg)
    fed = Federation(cfg, ws.benchmark.domain_names)
    strategy = method.strategy(fed, ws)
    recorder = RunRecorder(cfg.out, json.loads(cfg.to_json()), cfg.identity_hash()) if cfg.out else None
    fed.connect(grid)
    rounds, timeout = cfg.federation.rounds, cfg.federation.round_timeout
    progress = Progress(rounds, prefix=progress_prefix, enabled=show_progress)

    def exchange(outbox: wire.Outbox, server_round: int) -> wire.Unpacked:
        replies = push_pull(grid, fed.messages(server_round, outbox), timeout, progress, server_round, outbox.phase)
        return fed.collect(server_round, replies, outbox)

    def evaluate(server_round: int) -> dict[str, float]:
        outbox = strategy.configure_evaluate(server_round)
        return {} if outbox is None else strategy.aggregate_evaluate(server_round, exchange(outbox, server_round))

    last: dict[str, float] = {}
    if rounds == 0:
        last = {"round": 0, **evaluate(0)}
        last.update(strategy.finish(0, partial(exchange, server_round=0)))
        _record(recorder, fed, last, t_start)
    for server_round in range(1, rounds + 1):
        step = partial(exchange, server_round=server_round)
        got = step(strategy.configure_train(server_round))
        row: dict[str, float] = {"round": server_round, **strategy.aggregate_train(server_round, got)}
        row.update(strategy.after_train(server_round, step))
        if server_round % cfg.federation.eval_every == 0 or server_round == rounds:
            row.update(evaluate(server_round))
        if server_round == rounds:
            row.update(strategy.finish(server_round, step))
        _record(recorder, fed, row, t_start)
        last = row
        acc = row.get("acc-mean")
        progress.round_done(server_round, len(fed.train_cohort(server_round)),
                            f"acc {100 * acc:.1f}%" if acc is not None else "")
    summary = _summary(cfg, last, fed, strategy.per_client, ws.data_fingerprint, time.monotonic() - t_start)
    if recorder is not None:
        recorder.ledger(fed.ledger.rows())   # once: rewriting it every round grows with rounds x clients
        recorder.finish(summary)
    log.info("run finished in %s", format_seconds(summary.wall_s))
    return summary


def _record(recorder: RunRecorder | None, fed: Federation, row: dict[str, float], t_start: float) -> None:
    rnd = int(row["round"])
    acc = row.get("server-eval/acc-mean", row.get("client-eval/acc-mean"))
    if acc is not None:
        row["acc-mean"] = acc   # this round's headline: the final model's evaluation where there is one
    row["bytes-up"] = fed.ledger.round_total(rnd, wire.UP)
    row["bytes-down"] = fed.ledger.round_total(rnd, wire.DOWN)
    row["bytes-p2p"] = fed.ledger.round_total(rnd, wire.P2P)
    row["wall-s"] = round(time.monotonic() - t_start, 3)
    if recorder is not None:
        recorder.round(row)


def _summary(cfg: RunConfig, last: dict[str, float], fed: Federation, per_client: dict[int, dict[str, float]],
             fingerprint: str, wall_s: float) -> RunSummary:
    """The run's final record: last round's metrics, per domain, per client, byte totals."""
    where = "server-eval" if "server-eval/acc-mean" in last else "client-eval"   # the final model's evaluation
    per_domain = {name: {"acc": last[f"{where}/acc/{name}"]}
                  for name in fed.domain_names if f"{where}/acc/{name}" in last}
    final = {k: v for k, v in last.items() if k != "wall-s"}
    final["acc-mean"] = last.get(f"{where}/acc-mean", float("nan"))
    per_client = [{"client": cid, **metrics} for cid, metrics in sorted(per_client.items())]
    return RunSummary(
        strategy=cfg.strategy, experiment=cfg.experiment, seed=cfg.seed, config_hash=cfg.identity_hash(),
        rounds=cfg.federation.rounds, final=final,
        per_domain=per_domain, per_client=per_client, bytes_up=fed.ledger.total(wire.UP),
        bytes_down=fed.ledger.total(wire.DOWN), bytes_p2p=fed.ledger.total(wire.P2P), wall_s=round(wall_s, 3),
        data_fingerprint=fingerprint,
    )
