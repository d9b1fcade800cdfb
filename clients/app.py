"""The ClientApp (`clients.app:app`): one app for every method, dispatched by the run config.

It lives in an importable module on purpose: a ClientApp defined in `__main__` is
re-sent by value on every call in simulation and its per-process caches never hit.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients import flower_native
from clients._common import state_store
from experiments.registry import get_method
from fedmoe_sim import faults, interop, wire
from fedmoe_sim.workspace import get_workspace, parse_run_config

app = ClientApp()


def _handle(msg: Message, context: Context, evaluate: bool) -> Message:
    """The handler is the client module's function named by the task's phase ("train",
    "evaluate", or a method's own step such as MetaMoE's "upload"); Flower's evaluate
    messages only ever carry the evaluate phase. A message in Flower's standard layout (a Flower
    strategy's, or ours under federation.wire=flower) goes to `clients.flower_native`."""
    if interop.is_standard_task(msg.content):
        return flower_native.handle(msg, context, evaluate)
    task = wire.read_task(msg.content)
    if task.phase == wire.RELEASE:          # the run finished: its clients' stored state goes
        state_store(task, context).remove()
        return Message(wire.make_reply([]), reply_to=msg)
    cfg = parse_run_config(task.run_config)
    client = get_method(cfg.strategy).client
    phase = wire.EVALUATE if evaluate else task.phase
    handler = None if phase.startswith("_") else getattr(client, phase, None)
    if not callable(handler) or (evaluate and task.phase != wire.EVALUATE):
        raise ValueError(f"strategy {cfg.strategy} has no client phase {task.phase!r}")
    results = handler(get_workspace(cfg, context.node_config), task, context)   # node config: its own data-path
    if cfg.faults.any and task.phase == wire.TRAIN:
        results = faults.inject(cfg.faults, cfg.seed, task.server_round, results)
    return Message(wire.make_reply(results), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _handle(msg, context, evaluate=False)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _handle(msg, context, evaluate=True)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (placement = partition)."""
    node = context.node_config
    content = wire.make_node_info(int(node.get("partition-id", 0)), int(node.get("num-partitions", 1)))
    return Message(content, reply_to=msg)
