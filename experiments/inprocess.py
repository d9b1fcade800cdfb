"""An in-process grid: the real ServerApp loop and the real ClientApp, no Ray, no network.

Why: strategies need fast tests of their rounds (seconds, not a Ray start-up), and
the protocol must be exercised as it is on the wire. Every message is serialised
to Flower's protobuf and back in both directions, handed to `clients.app.app` with
the node's own Context (node config, state), and a handler that raises becomes an
error reply, as Flower's runtimes do. Nodes are numbered 1..N; each may get its own
node config (a separate `state-dir` stands in for a separate machine's disk).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from functools import partial
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedmoe_sim.config import RunConfig
from fedmoe_sim.progress import SweepProgress
from fedmoe_sim.results import RunSummary

RUN_ID = 1
SERVER_NODE = 0


def _wire_copy(msg: Message) -> Message:
    """What the other side receives: the message through Flower's serialisation."""
    return message_from_proto(message_to_proto(msg))


class InProcessGrid(Grid):
    """`num_nodes` SuperNodes in this process; `deliveries` records (node, phase, client ids)."""

    def __init__(self, num_nodes: int, node_configs: list[dict] | None = None, client_app=None) -> None:
        from clients.app import app

        self.client_app = client_app or app
        self.node_ids = list(range(1, num_nodes + 1))
        configs = node_configs or [{} for _ in self.node_ids]
        self.contexts = {node: Context(RUN_ID, node, dict(cfg), RecordDict(), {})
                         for node, cfg in zip(self.node_ids, configs, strict=True)}
        self._inbox: dict[str, Message] = {}
        self.deliveries: list[tuple[int, str, tuple[int, ...]]] = []
        self._run = Run.create_empty(RUN_ID)

    # -- the Grid interface ---------------------------------------------------
    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            self._inbox[msg.metadata.message_id] = _wire_copy(msg)
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = []
        for mid in list(message_ids):
            msg = self._inbox.pop(mid, None)
            if msg is None:
                continue
            replies.append(_wire_copy(self._handle(msg.metadata.dst_node_id, msg)))
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    # -- a node ---------------------------------------------------------------
    def _handle(self, node: int, msg: Message) -> Message:
        from fedmoe_sim import wire

        content = msg.content
        if wire.TASK in content.config_records:
            task = content.config_records[wire.TASK]
            ids = task[wire.CLIENT_IDS]
            self.deliveries.append((node, str(task[wire.PHASE]), tuple(ids if isinstance(ids, list) else [ids])))
        with _identity(node):
            try:
                return self.client_app(msg, self.contexts[node])
            except Exception as exc:  # what Flower's runtime does with a failing ClientApp
                return Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)


class _identity:
    """Flower stamps new Messages with the running task's identity: be that node meanwhile."""

    def __init__(self, node: int) -> None:
        self.node = node

    def __enter__(self) -> None:
        self.saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = RUN_ID, self.node, next(_TASKS)

    def __exit__(self, *exc) -> None:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = self.saved


_TASKS = itertools.count(1)


def run_inprocess(cfgs: list[RunConfig], grid: InProcessGrid | None = None, num_nodes: int = 2,
                  sweep: SweepProgress | None = None) -> list[RunSummary]:
    """Run configs one after another on an in-process grid (the server side is `run_server`);
    run i reports to `sweep.run(i, ...)` (None: no progress output)."""
    from experiments.registry import get_method
    from strategies._loop import run_server

    grid = grid or InProcessGrid(num_nodes)
    out = []
    for i, cfg in enumerate(cfgs):
        progress = partial(sweep.run, i) if sweep is not None else None
        with _identity(SERVER_NODE):
            out.append(run_server(grid, cfg, get_method(cfg.strategy), progress))
    return out
