"""Local-only: every client trains its own expert on its own data; nothing is shared.

The lower bound of collaboration. Sent and uploaded: nothing (bytes = 0); the
server only schedules rounds and collects metrics. Each client's expert persists
between rounds in its node's state store (see clients/local.py); every task says
which round that state must come from, so a node that cannot reach it fails
loudly instead of starting again. Model families may differ between clients
(model.families): this is also the Standalone baseline of model-heterogeneous FL.
"""

from __future__ import annotations

from strategies._base import Strategy


class LocalStrategy(Strategy):
    stateful = True
