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
import random
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedmoe_sim import checkpoint, wire
from fedmoe_sim.checkpoint import CHECKPOINT
from fedmoe_sim.config import RunConfig
from fedmoe_sim.progress import Progress, format_seconds
from fedmoe_sim.results import RunRecorder, RunSummary
from fedmoe_sim.workspace import get_workspace
from strategies._base import check_wire
from strategies._federation import Federation

log = logging.getLogger(__name__)

POLL_SECONDS = 0.005        # our pull interval against a SuperLink (a pull is an RPC); Flower's 0.1 s
LOCAL_POLL_SECONDS = 0.001  # ... against the simulation's in-memory grid (a pull is a dict lookup)
RELEASE_TIMEOUT_S = 30.0   # at most this long for the nodes to drop a finished run's client state


def push_pull(grid: Grid, messages: Iterable[Message], timeout: float, progress: Progress | None = None,
              server_round: int = 0, phase: str = "", quorum: float = 1.0, straggler_s: float = 0.0) -> list[Message]:
    """Push, then pull replies until all are in or `timeout` passes; late nodes are dropped.

    `quorum` < 1: once that share of the asked logical clients has answered, wait at most
    `straggler_s` more seconds for the rest (a dead node then costs seconds, not the whole
    timeout). Who makes it in then depends on timing: keep the default 1 in simulations
    whose numbers must reproduce."""
    messages = list(messages)
    asked = sum(wire.clients_in(m) for m in messages)
    poll = poll_seconds(grid)
    pending = set(grid.push_messages(messages))
    replies: list[Message] = []
    done = 0
    if progress is not None:
        progress.update(server_round, phase, done, asked)   # the phase shows from the push, not the first reply
    deadline = time.monotonic() + timeout
    quorum_met = quorum >= 1         # the default waits for everyone: no earlier deadline to set
    while pending and time.monotonic() < deadline:
        got = list(grid.pull_messages(list(pending)))
        for msg in got:
            pending.discard(msg.metadata.reply_to_message_id)
            done += wire.clients_in(msg)
        replies.extend(got)
        if not quorum_met and done >= quorum * asked:
            quorum_met = True
            deadline = min(deadline, time.monotonic() + straggler_s)
        if progress is not None and got:
            progress.update(server_round, phase, done, asked)
        if pending:
            time.sleep(poll)
    if pending:
        log.warning("round %d %s: %d of %d node(s) did not reply within %.0fs; going on without them",
                    server_round, phase, len(pending), len(messages), timeout)
    return replies


def poll_seconds(grid: Grid) -> float:
    """How long to wait between pulls: a reply that lands in the simulation's in-memory LinkState
    waits at most 1 ms (short rounds are mostly such waits); a SuperLink is asked every 5 ms."""
    try:
        from flwr.superlink.grid import InMemoryGrid
    except ImportError:          # a Flower without it has no in-memory grid to be fast on
        return POLL_SECONDS
    return LOCAL_POLL_SECONDS if isinstance(grid, InMemoryGrid) else POLL_SECONDS


def warm_up(grid: Grid, timeout: float) -> None:
    """Ask every node once before the first run, so worker start-up (imports, actor
    creation) is not billed to the first run's wall time and rounds."""
    nodes = list(grid.get_node_ids())
    push_pull(grid, [Message(RecordDict(), node, MessageType.QUERY) for node in nodes], timeout)


def run_server(grid: Grid, cfg: RunConfig, method,
               progress: Callable[[int, int], Progress] | None = None) -> RunSummary:
    """Run `method` (an experiments.registry.Method) for cfg.federation.rounds rounds; with
    cfg.resume, from the run directory's last checkpoint (if it has one).

    `progress(total_rounds, first_round)` makes the run's `Progress` (e.g. `SweepProgress.run`
    bound to the run's index); it is called once the checkpoint says where the run starts, so a
    resumed run's ETA counts only the rounds run here. None: no progress output."""
    check_wire(method.strategy, cfg)   # also where no check_config ran first (the Python runner, tests)
    t_start = time.monotonic()
    ws = get_workspace(cfg)
    fed = Federation(cfg, ws.benchmark.domain_names)
    strategy = method.strategy(fed, ws)
    rounds, timeout = cfg.federation.rounds, cfg.federation.round_timeout
    saved = resume_point(cfg)
    first_round = 1
    last: dict[str, float] = {}
    if saved is not None:
        fed.restore(saved["federation"])
        strategy.restore(saved["strategy"])
        _set_rng(saved["rng"])
        first_round, last = int(saved["round"]) + 1, dict(saved["last"])
        t_start -= float(saved["wall_s"])
        log.info("resuming %s seed %d from its round-%d checkpoint", cfg.strategy, cfg.seed, first_round - 1)
    recorder = RunRecorder(cfg.out, json.loads(cfg.to_json()), cfg.identity_hash(), log=cfg.log,
                           resume_after=first_round - 1 if saved is not None else None) if cfg.out else None
    fed.connect(grid)
    run_progress = progress(rounds, first_round) if progress is not None else None
    last_checkpoint: float | None = None    # when this process last wrote one (None: not yet)

    def exchange(outbox: wire.Outbox, server_round: int) -> wire.Unpacked:
        replies = push_pull(grid, fed.messages(server_round, outbox), timeout, run_progress, server_round,
                            outbox.phase, cfg.federation.min_replies, cfg.federation.straggler_timeout)
        return fed.collect(server_round, replies, outbox)

    def evaluate(server_round: int) -> dict[str, float]:
        outbox = strategy.configure_evaluate(server_round)
        return {} if outbox is None else strategy.aggregate_evaluate(server_round, exchange(outbox, server_round))

    if rounds == 0:
        fed.begin_round(0)
        last = {"round": 0, **evaluate(0)}
        last.update(strategy.finish(0, partial(exchange, server_round=0)))
        _record(recorder, fed, last, t_start)
    for server_round in range(first_round, rounds + 1):
        fed.begin_round(server_round)
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
        if recorder is not None and server_round < rounds and checkpoint_due(cfg, server_round, last_checkpoint):
            save_checkpoint(cfg, server_round, fed, strategy, row, time.monotonic() - t_start, recorder)
            last_checkpoint = time.monotonic()
        acc = row.get("acc-mean")
        if run_progress is not None:
            run_progress.round_done(server_round, len(fed.train_cohort(server_round)),
                                    f"acc {100 * acc:.1f}%" if acc is not None else "")
    summary = _summary(cfg, last, fed, strategy.per_client, ws.data_fingerprint, time.monotonic() - t_start)
    if recorder is not None:
        recorder.ledger(fed.ledger.rows())   # once: rewriting it every round grows with rounds x clients
        recorder.finish(summary)
        (Path(cfg.out) / CHECKPOINT).unlink(missing_ok=True)   # summary.json now marks the run finished
    release = fed.release_messages()        # finished: no round or resume needs the clients' state again
    if release:
        done = [m for m in push_pull(grid, release, min(timeout, RELEASE_TIMEOUT_S)) if not m.has_error()]
        if len(done) < len(release):
            log.warning("%d of %d node(s) did not confirm deleting this run's client state (left in their "
                        "state directory, under %s-%s)", len(release) - len(done), len(release), fed.state_key,
                        cfg.identity_hash())
    log.info("run finished in %s", format_seconds(summary.wall_s))
    return summary


# -- checkpoints -------------------------------------------------------------
def resume_point(cfg: RunConfig) -> dict | None:
    """The checkpoint to continue from: only with cfg.resume and a checkpoint in cfg.out,
    which must be of this config (its hash) and not past the last round."""
    if not (cfg.resume and cfg.out and (Path(cfg.out) / CHECKPOINT).exists()):
        return None
    saved = checkpoint.load(Path(cfg.out) / CHECKPOINT)
    if saved.get("config_hash") != cfg.identity_hash():
        raise checkpoint.CheckpointError(f"{cfg.out}/{CHECKPOINT} is of another config (hash {saved.get('config_hash')}, "
                                         f"this one {cfg.identity_hash()})")
    if not 0 < int(saved["round"]) < cfg.federation.rounds:
        raise checkpoint.CheckpointError(f"{cfg.out}/{CHECKPOINT} is from round {saved['round']}, outside "
                                         f"1..{cfg.federation.rounds - 1}")
    return saved


def checkpoint_due(cfg: RunConfig, server_round: int, last: float | None) -> bool:
    """Every `checkpoint_every` rounds, but not within `checkpoint_min_s` seconds of the last one
    this process wrote (its first is always written): a killed run then redoes at most that much."""
    fed = cfg.federation
    if not fed.checkpoint_every or server_round % fed.checkpoint_every:
        return False
    return last is None or time.monotonic() - last >= fed.checkpoint_min_s


def save_checkpoint(cfg: RunConfig, server_round: int, fed: Federation, strategy, row: dict, wall_s: float,
                    recorder: RunRecorder) -> None:
    """Everything the next round depends on, in one atomic file; then let clients drop older
    state versions (the pin moves only once the checkpoint that needs it is on disk)."""
    recorder.sync()                      # the rounds a resume from this checkpoint keeps are on disk first
    checkpoint.save(Path(cfg.out) / CHECKPOINT, {
        "round": server_round, "config_hash": cfg.identity_hash(), "federation": fed.checkpoint_state(),
        "strategy": strategy.checkpoint_state(), "rng": _get_rng(), "last": row, "wall_s": wall_s})
    fed.pin()


def _get_rng() -> dict:
    """The process-global generators. Every draw of ours derives from the seed, so none should
    matter; kept so that one that does (a library's) still resumes exactly."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def _record(recorder: RunRecorder | None, fed: Federation, row: dict[str, float], t_start: float) -> None:
    rnd = int(row["round"])
    row.update(fed.event_counts())
    acc = row.get("server-eval/acc-mean", row.get("client-eval/acc-mean"))
    if acc is not None:
        row["acc-mean"] = acc   # this round's headline: the final model's evaluation where there is one
    row["bytes-up"] = fed.ledger.round_total(rnd, wire.UP)
    row["bytes-down"] = fed.ledger.round_total(rnd, wire.DOWN)
    row["bytes-p2p"] = fed.ledger.round_total(rnd, wire.P2P)
    row["wall-s"] = round(time.monotonic() - t_start, 3)
    if recorder is not None:
        recorder.round(row)
        recorder.event(fed.events)


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
