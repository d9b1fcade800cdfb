"""Server-side plumbing every strategy shares: cohorts, node placement, messages, bytes, state rounds.

No method logic lives here. A strategy hands over an `Outbox` (what each client of
a phase gets, what it must send back); this module decides which logical clients
go to which node (one message per node), books every tensor byte per logical
client, part and direction, and drops malformed replies.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import numpy as np
from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedmoe_sim import faults, interop, wire
from fedmoe_sim.aggregation.robust import finite_median, outliers_above, update_floors, update_norms
from fedmoe_sim.config import RunConfig
from fedmoe_sim.metrics import summarise_evaluation, summarise_training
from fedmoe_sim.sampling import client_schedule, shard

log = logging.getLogger(__name__)



class StateLostError(RuntimeError):
    """A client's persistent state is not where its node looked: never a silent restart."""


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
        self.trained_round: dict[int, int] = {}   # client -> round of its last accepted training
        self.pinned_round: dict[int, int] = {}    # the same at the last checkpoint: clients keep that version
        self.state_key = uuid.uuid4().hex[:16]    # names the clients' state store; a resumed run keeps it
        self.events: dict[str, Any] = {}          # this round's injected / rejected / missed (the record)
        self.flower_wire = fed.wire == "flower"   # Flower's standard layout (fedmoe_sim.interop), one client per node

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
        if self.flower_wire:
            self.node_of_client = interop.node_per_client(self.nodes, self.cfg.federation.num_clients)
            return
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

    # -- cohorts ------------------------------------------------------------
    def train_cohort(self, server_round: int) -> list[int]:
        return self.train_schedule[server_round - 1]

    def eval_cohort(self, server_round: int) -> list[int]:
        return self.eval_schedule[server_round]

    def expect_state(self, outbox: wire.Outbox) -> wire.Outbox:
        """Tell each client of a stateful method which round its stored state must come from,
        so a node that cannot find it reports that instead of starting again."""
        for cid in outbox.clients:
            outbox.plan(cid, **{wire.STATE_ROUND: self.trained_round.get(cid, 0),
                                wire.STATE_PIN: self.pinned_round.get(cid, 0)})
        return outbox

    def release_messages(self) -> list[Message]:
        """One message per node after a finished run: drop the run's client-state store (nodes
        speaking Flower's standard layout keep none of ours and get nothing)."""
        if self.flower_wire:
            return []
        box = wire.Outbox(wire.RELEASE, [])
        return [Message(wire.make_task(self.run_config, 0, box, [], self.state_key), node, MessageType.TRAIN)
                for node in self.nodes]

    # -- the record -----------------------------------------------------------
    def begin_round(self, server_round: int) -> None:
        self.events = {"round": server_round, "rejected": {}, "missed": {}}
        if self.cfg.faults.any:
            self.events["injected"] = faults.injected(self.cfg.faults, self.cfg.seed, server_round,
                                                      self.train_cohort(server_round))

    def event_counts(self) -> dict[str, float]:
        """This round's numbers for rounds.jsonl: what was injected, rejected and missed."""
        out = {f"faults/{kind}": float(len(cids)) for kind, cids in self.events.get("injected", {}).items()}
        out["rejected-updates"] = float(sum(len(v) for v in self.events["rejected"].values()))
        out["missed-clients"] = float(sum(len(v["clients"]) for v in self.events["missed"].values()))
        return out

    # -- messages -----------------------------------------------------------
    def messages(self, server_round: int, outbox: wire.Outbox) -> list[Message]:
        """One message per node; every part booked once per logical client that receives it
        (down from the server, or P2P from the client the strategy named as its source)."""
        message_type = MessageType.EVALUATE if outbox.phase == wire.EVALUATE else MessageType.TRAIN
        out = []
        for node, cids in self.placement(sorted(outbox.clients)).items():
            for cid in cids:
                for part, state in outbox.parts_of(cid).items():
                    source = outbox.sources.get((cid, part))
                    if source is None:
                        self.ledger.add(server_round, wire.DOWN, cid, wire.state_nbytes(state), part)
                    else:
                        self.ledger.add(server_round, wire.P2P, cid, wire.state_nbytes(state), part, peer=source)
            content = (interop.to_flower_task(self.run_config, server_round, outbox, cids) if self.flower_wire
                       else wire.make_task(self.run_config, server_round, outbox, cids, self.state_key))
            out.append(Message(content, node, message_type))
        return out

    def collect(self, server_round: int, replies, outbox: wire.Outbox) -> wire.Unpacked:
        """Valid per-client results; the bytes of accepted and rejected parts alike are booked."""
        replies = list(replies)
        asked_of = {node: set(cids) for node, cids in self.placement(sorted(outbox.clients)).items()}
        if self.flower_wire:
            replies = interop.as_fedmoe_replies(replies, outbox, asked_of)
        got = wire.read_replies(replies, outbox.expect, outbox.clients, asked_of)
        self.screen(got, outbox)
        self._note(outbox, got, asked_of, replies)
        for (cid, part), nbytes in got.uploaded.items():
            spec = outbox.expect.get(part)
            self.ledger.add(server_round, wire.RELAY if spec is not None and spec.relay else wire.UP, cid, nbytes, part)
        if got.lost_state:
            cid, why = sorted(got.lost_state.items())[0]
            raise StateLostError(
                f"round {server_round}: client {cid}'s persistent state is missing ({why}); {len(got.lost_state)} "
                f"client(s) affected. Every node must reach the client's state: keep federation.placement=partition "
                f"(each client on its own SuperNode), or set federation.state_dir (or the node-config state-dir) to a "
                f"directory all nodes share (on a Ray cluster only the latter: any worker may get any message)")
        if outbox.phase == wire.TRAIN:
            for r in got.results:
                self.trained_round[r.client_id] = server_round
        return got

    def screen(self, got: wire.Unpacked, outbox: wire.Outbox) -> None:
        """Reject, beside the malformed, the outliers every method must not average: a
        num-examples far above the round's median, and a part whose update (from what this
        client was sent, else from zero) is far longer than the round's median update and
        longer than the part it was sent (`update_floors`), or is not finite."""
        fed = self.cfg.federation
        bad: dict[int, str] = {}
        counts = [r.metrics[wire.NUM_EXAMPLES] for r in got.results]
        for i in outliers_above(counts, fed.max_examples_ratio):
            bad[got.results[i].client_id] = (f"num-examples {counts[i]:g} is above {fed.max_examples_ratio:g}x "
                                             f"the round's median ({float(np.median(counts)):g})")
        for part in sorted(outbox.expect):
            holders = [r for r in got.results if part in r.parts]
            sent = [outbox.parts_of(r.client_id).get(part) for r in holders]
            norms = update_norms([r.parts[part] for r in holders], sent)
            floors = update_floors(sent)
            median = finite_median(norms)
            for i in outliers_above(norms, fed.norm_bound, floors):
                bad.setdefault(holders[i].client_id, f"{part} update norm is not finite ({norms[i]})"
                               if not np.isfinite(norms[i]) else
                               f"{part} update norm {norms[i]:.3g} is above {fed.norm_bound:g}x the round's median "
                               f"({median:.3g}) and above the norm of the part it was sent ({floors[i]:.3g})")
        for cid, reason in sorted(bad.items()):
            log.warning("rejected update of client %d: %s", cid, reason)
        got.rejected.update(bad)
        got.results = [r for r in got.results if r.client_id not in bad]

    def _note(self, outbox: wire.Outbox, got: wire.Unpacked, asked_of: dict[int, set[int]], replies: list) -> None:
        """Book this phase's rejections and the clients (and nodes) that never answered."""
        if not self.events:
            self.begin_round(0)
        if got.rejected:
            self.events["rejected"][outbox.phase] = {int(c): why for c, why in sorted(got.rejected.items())}
        answered = {r.client_id for r in got.results} | set(got.rejected)
        missed = sorted(set(outbox.clients) - answered)
        if missed:
            replied = {m.metadata.src_node_id for m in replies if not m.has_error()}   # an error reply: no answer
            nodes = sorted(int(n) for n in asked_of if n not in replied)
            self.events["missed"][outbox.phase] = {"clients": missed, "nodes": nodes}
            log.warning("%s: %d client(s) did not answer (%s)%s", outbox.phase, len(missed),
                        ", ".join(map(str, missed[:10])) + (" ..." if len(missed) > 10 else ""),
                        f"; node(s) {nodes} sent no reply" if nodes else "")

    # -- checkpoint -------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        """What a resumed run needs from the federation (the schedules are derived from the seed)."""
        return {"trained_round": dict(self.trained_round), "state_key": self.state_key,
                "ledger": self.ledger.to_arrays()}

    def restore(self, state: dict[str, Any]) -> None:
        self.trained_round = {int(k): int(v) for k, v in state["trained_round"].items()}
        self.pinned_round = dict(self.trained_round)
        self.state_key = str(state["state_key"])
        self.ledger = wire.ByteLedger.from_arrays(state["ledger"])

    def pin(self) -> None:
        """A checkpoint was written: clients may drop state versions older than it needs."""
        self.pinned_round = dict(self.trained_round)

    # -- metrics ------------------------------------------------------------
    def train_metrics(self, got: wire.Unpacked) -> dict[str, float]:
        out = {f"client-train/{k}": v for k, v in summarise_training({r.client_id: r.metrics for r in got.results}).items()}
        out["client-train/rejected"] = float(len(got.rejected))
        return out

    def eval_metrics(self, per_client: dict[int, dict[str, float]]) -> dict[str, float]:
        summary = summarise_evaluation(per_client, self.domain_names)
        return {f"client-eval/{k}": v for k, v in summary.items()}
