"""Server-side plumbing every strategy shares: cohorts, node placement, messages, bytes.

No method logic lives here. A strategy asks for "train messages for round r
carrying this global state" and "the valid client results of these replies";
this module decides which logical clients go to which node, counts every tensor
byte per logical client in the ledger, and drops malformed updates.
"""

from __future__ import annotations

import logging
import time

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedmoe_sim import wire
from fedmoe_sim.config import RunConfig
from fedmoe_sim.metrics import summarise_evaluation, summarise_training
from fedmoe_sim.sampling import client_schedule, shard

log = logging.getLogger(__name__)


class Federation:
    def __init__(self, cfg: RunConfig, domain_names: tuple[str, ...]) -> None:
        self.cfg = cfg
        self.domain_names = domain_names
        self.ledger = wire.ByteLedger()
        self.run_config = cfg.to_json()
        fed = cfg.federation
        self.train_schedule = client_schedule(fed.num_clients, fed.rounds, fed.fraction_train, cfg.seed, "train")
        self.eval_schedule = client_schedule(fed.num_clients, fed.rounds + 1, fed.fraction_evaluate, cfg.seed, "evaluate")
        self.nodes: list[int] = []
        self.node_of_client: dict[int, int] = {}
        self.last_eval: dict[int, dict[str, float]] = {}
        self.rejected_total = 0

    # -- nodes --------------------------------------------------------------
    def connect(self, grid: Grid) -> None:
        """Wait for nodes (deployment: they join over time); map clients to nodes if pinned."""
        fed = self.cfg.federation
        needed = fed.num_clients if fed.placement == "partition" else 1
        deadline = time.monotonic() + fed.round_timeout
        while True:
            self.nodes = sorted(grid.get_node_ids())
            if len(self.nodes) >= needed or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if len(self.nodes) < needed:
            raise RuntimeError(
                f"only {len(self.nodes)} node(s) connected within {fed.round_timeout:.0f}s; "
                f"placement={fed.placement} needs {needed}"
            )
        if fed.placement == "partition":
            self._map_partitions(grid)

    def _map_partitions(self, grid: Grid) -> None:
        msgs = [Message(RecordDict(), node, MessageType.QUERY) for node in self.nodes]
        replies = grid.send_and_receive(msgs, timeout=self.cfg.federation.round_timeout)
        for reply in replies:
            if reply.has_error():
                continue
            pid, _ = wire.read_node_info(reply)
            self.node_of_client[pid] = reply.metadata.src_node_id
        missing = sorted(set(range(self.cfg.federation.num_clients)) - set(self.node_of_client))
        if missing:
            raise RuntimeError(f"no node holds partition-id {missing[:5]}; placement=partition needs one node per client")

    def placement(self, client_ids: list[int]) -> dict[int, list[int]]:
        """node id -> logical clients it handles this time."""
        if self.cfg.federation.placement == "partition":
            out: dict[int, list[int]] = {}
            for cid in client_ids:
                out.setdefault(self.node_of_client[cid], []).append(cid)
            return out
        return dict(zip(self.nodes, shard(client_ids, len(self.nodes)), strict=False))

    # -- messages -----------------------------------------------------------
    def train_cohort(self, server_round: int) -> list[int]:
        return self.train_schedule[server_round - 1]

    def eval_cohort(self, server_round: int) -> list[int]:
        return self.eval_schedule[server_round]

    def messages(self, server_round: int, message_type: str, client_ids: list[int], state: wire.State | None,
                 phase: str = "train") -> list[Message]:
        return self.grouped_messages(server_round, message_type, [(client_ids, state)], phase)

    def grouped_messages(self, server_round: int, message_type: str, groups: list[tuple[list[int], wire.State | None]],
                         phase: str = "train", wants: tuple[str, ...] = ()) -> list[Message]:
        """One message per (node, group): clients of one group receive the same state (e.g. their domain's expert)."""
        out = []
        for client_ids, state in groups:
            nbytes = wire.state_nbytes(state) if state is not None else 0
            for node, cids in self.placement(sorted(client_ids)).items():
                for cid in cids:
                    self.ledger.add(server_round, wire.DOWN, cid, nbytes)
                content = wire.make_task(self.run_config, cids, server_round, state, phase, wants)
                out.append(Message(content, node, message_type))
        return out

    def collect(self, server_round: int, replies, spec, asked: list[int]) -> wire.Unpacked:
        """Valid per-client results; upload bytes of accepted and rejected states alike are counted."""
        got = wire.read_replies(list(replies), spec, expected=set(asked))
        for cid, nbytes in got.uploaded.items():
            self.ledger.add(server_round, wire.UP, cid, nbytes)
        self.rejected_total += len(got.rejected)
        return got

    # -- metrics ------------------------------------------------------------
    def train_metrics(self, got: wire.Unpacked) -> dict[str, float]:
        out = {f"client-train/{k}": v for k, v in summarise_training({r.client_id: r.metrics for r in got.results}).items()}
        out["client-train/rejected"] = float(len(got.rejected))
        return out

    def eval_metrics(self, got: wire.Unpacked) -> dict[str, float]:
        self.last_eval = {r.client_id: r.metrics for r in got.results}
        summary = summarise_evaluation(self.last_eval, self.domain_names)
        return {f"client-eval/{k}": v for k, v in summary.items()}
