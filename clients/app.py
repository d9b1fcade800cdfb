"""The ClientApp (`clients.app:app`): one app for every method, dispatched by the run config.

It lives in an importable module on purpose: a ClientApp defined in `__main__` is
re-sent by value on every call in simulation and its per-process caches never hit.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from experiments.registry import get_method
from fedmoe_sim import wire
from fedmoe_sim.workspace import get_workspace, parse_run_config

app = ClientApp()


def _handle(msg: Message, context: Context, phase: str) -> Message:
    """`phase` is the handler name: "evaluate", or for train messages the task's phase
    ("train", or a method's own step such as MetaMoE's "upload")."""
    task = wire.read_task(msg.content)
    cfg = parse_run_config(task.run_config)
    handler = getattr(get_method(cfg.strategy).client, phase if phase == "evaluate" else task.phase)
    results = handler(get_workspace(cfg), task, context)
    return Message(wire.make_reply(results), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _handle(msg, context, "train")


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _handle(msg, context, "evaluate")


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (placement = partition)."""
    node = context.node_config
    content = wire.make_node_info(int(node.get("partition-id", 0)), int(node.get("num-partitions", 1)))
    return Message(content, reply_to=msg)
