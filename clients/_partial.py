"""Client half of `strategies/_partial.py`: train from the server's part over the client's own state.

A client's whole trained model (every part, its trained copy of the server's part
included) stays in its node's ClientStateStore between rounds: it is what the
client is evaluated on (`clients.local.evaluate`: its own state). Each training
task replaces the server's part with the copy it carries. What the client sends
back is what the task expects (`clients._common.train_all`).
"""

from __future__ import annotations

from flwr.app import Context

from clients._common import KeepFn, keep_in, state_store, train_all, with_server_part
from fedmoe_sim import wire
from fedmoe_sim.workspace import Workspace


def train_keeping(ws: Workspace, task: wire.Task, context: Context, part: str,
                  keep: KeepFn | None = None) -> list[wire.ClientResult]:
    """Train from `with_server_part`; keep the whole trained state (or hand it to `keep`)."""
    store = state_store(task, context)
    return train_all(ws, task, start=with_server_part(ws, task, store, part), keep=keep or keep_in(store, task))
