"""Our client under Flower's own strategies (FedAvg, FedProx, FedAdam, FedTrimmedAvg, ...).

A message in Flower's standard layout (`arrays` + `config`, no `task` record) speaks
for one logical client: the node's own, its `partition-id` (node config, default 0).
Training loads `arrays` as the model's trainable part (FedAvg's part `model`),
trains that client as our FedAvg client does and replies `arrays` (the same keys)
and `metrics` (`num-examples`, train loss and accuracy); evaluation replies
`metrics` (`num-examples`, `eval-loss`, `acc-own`, `acc-domain`, `domain`). The
partition-id rules even behind our ServerApp under federation.wire = flower,
which labels clients by node order: a node's data is its own.

Where the run config comes from, first found wins:
1. the message's `config` record, key `run-config` (JSON): what our ServerApp sends
   under federation.wire = flower, and what `fedmoe_sim.interop.client_config(cfg)`
   gives a Flower ServerApp to pass as `train_config` / `evaluate_config`;
2. Flower's run config (`context.run_config`: pyproject's `[tool.flwr.app.config]`
   with `--run-config` overrides), read exactly as our ServerApp reads it.
The server must start from `fedmoe_sim.interop.initial_arrays(cfg)` of the same
config. Strategy-specific client duties are not ours: FedProx's `proximal-mu` is
ignored (a warning says so), so the client trains as FedAvg's does.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from flwr.app import Context, Message

from clients import fedavg
from fedmoe_sim import interop, wire
from fedmoe_sim.config import ConfigError, RunConfig
from fedmoe_sim.models.expert_model import WHOLE
from fedmoe_sim.workspace import get_workspace, parse_run_config

log = logging.getLogger(__name__)


def handle(msg: Message, context: Context, evaluate: bool) -> Message:
    cfg = run_config(msg, context)
    cid = int(context.node_config.get(wire.PARTITION_ID, 0))
    if not 0 <= cid < cfg.federation.num_clients:
        raise ConfigError(f"node partition-id {cid} is not a client of this run: federation.num_clients is "
                          f"{cfg.federation.num_clients} (ids 0..{cfg.federation.num_clients - 1})")
    if float(interop.task_config(msg.content).get("proximal-mu", 0.0) or 0.0) > 0:
        _warn_once("proximal-mu ignored: our client trains as FedAvg's does")
    task = interop.read_flower_task(msg.content, cfg.to_json(), cid, WHOLE, wire.EVALUATE if evaluate else wire.TRAIN)
    results = (fedavg.evaluate if evaluate else fedavg.train)(get_workspace(cfg, context.node_config), task, context)
    return Message(interop.make_flower_reply(results[0], WHOLE), reply_to=msg)


def run_config(msg: Message, context: Context) -> RunConfig:
    text = interop.task_run_config(msg.content)
    return parse_run_config(text) if text else _from_flower(tuple(sorted(context.run_config.items())))


@lru_cache(maxsize=8)
def _from_flower(items: tuple) -> RunConfig:
    from strategies.app import config_from_run_config

    return config_from_run_config(dict(items))


@lru_cache(maxsize=None)
def _warn_once(text: str) -> None:
    log.warning(text)
