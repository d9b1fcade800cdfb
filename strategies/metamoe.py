"""MetaMoE (seed 000, arXiv 2605.14289): one-shot unification of domain experts via proxies.

1. Rounds 1..R, expert training: each client selects proxies from the public
   pool (relevance probe + relevance-weighted DPP) and trains its LoRA expert on
   private data plus proxies. expert_per=client: local, nothing uploaded until
   the end (the paper's one-shot setting); expert_per=domain: the clients of a
   domain train one expert by FedAvg (many clients per domain, ours).
2. Upload: proxy indices, routing vectors and (per client) the expert.
3. Server: unified MoE (router rows = routing vectors, context-aware router),
   fine-tuned on the proxy union, evaluated per domain in mixed-domain batches.
   With metamoe.late_domains (ours, DESIGN "beyond the paper"), those domains'
   experts join a first unification of the others: the tuned MoE grows by them
   and is fine-tuned again; both models are evaluated.

Deviations from the public code, on purpose (DESIGN): the router and lambda are
trained through the un-renormalised top-1 weight (the public code's renormalised
top-1 gives them no gradient); the context is per sample (never batch-averaged);
padding is masked in every mean. Ours, not the paper's: when the DPP kernel's rank
(<= feature width; 64 for the digits mixer) is below m, the remaining proxy slots
are filled by relevance (metamoe.dpp_fill). The baselines subclass this and change `combine`
and the config values that define them (`forced`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid

from fedmoe_sim import unification as uni
from fedmoe_sim import wire
from fedmoe_sim.aggregation import weighted_average
from fedmoe_sim.workspace import Workspace
from strategies._federation import Federation
from strategies.fedavg import FedAvgStrategy

Exchange = Callable[[list[Message], str], list[Message]]
log = logging.getLogger(__name__)


class MetaMoEStrategy(FedAvgStrategy):
    forced: dict = {}          # config values that define a variant (ablations, baselines)
    router_init = "routing"    # router rows from routing vectors ("random": BTX)
    needs_experts = True       # zero-shot skips the upload
    wants: tuple[str, ...] = (uni.PROXIES, uni.ROUTING)   # what else the upload must carry (only what combine uses)

    def __init__(self, fed: Federation, ws: Workspace) -> None:
        super().__init__(fed, ws)
        self.ws, self.mcfg = ws, fed.cfg.metamoe
        self.per_domain = self.mcfg.expert_per == "domain"
        self.domain_of = {s.client_id: s.domain for s in ws.splits}
        self.domain_state = {d: self._initial for d in set(self.domain_of.values())}

    # -- phase 1: expert training (per client, or FedAvg per domain) ---------
    def _groups(self, cohort: list[int]) -> list[tuple[list[int], wire.State | None]]:
        if not self.per_domain:
            return [(cohort, None)]
        return [([c for c in cohort if self.domain_of[c] == d], state)
                for d, state in sorted(self.domain_state.items()) if any(self.domain_of[c] == d for c in cohort)]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return self.fed.grouped_messages(server_round, MessageType.TRAIN, self._groups(self.fed.train_cohort(server_round)))

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        got = self.fed.collect(server_round, replies, self.spec, self.fed.train_cohort(server_round))
        if self.per_domain:
            for d in self.domain_state:
                mine = [r for r in got.results if self.domain_of[r.client_id] == d and r.state is not None]
                if mine:
                    self.domain_state[d] = weighted_average([r.state for r in mine],
                                                            [r.metrics[wire.NUM_EXAMPLES] for r in mine])
        return None, MetricRecord(self.fed.train_metrics(got))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return self.fed.grouped_messages(server_round, MessageType.EVALUATE, self._groups(self.fed.eval_cohort(server_round)))

    # -- phases 2-3: upload, unify, evaluate --------------------------------
    def finish(self, grid: Grid, server_round: int, exchange: Exchange) -> dict[str, float]:
        experts: list[uni.Expert] = []
        rejected = 0
        if self.needs_experts:
            everyone = list(range(self.fed.cfg.federation.num_clients))
            msgs = self.fed.grouped_messages(server_round, MessageType.TRAIN, self._groups(everyone), phase="upload",
                                             wants=self.wants)
            got = self.fed.collect(server_round, exchange(msgs, "upload"), self.spec if not self.per_domain else None, everyone)
            experts = self.experts_from(self.valid_uploads(got))
            rejected = len(got.rejected)
            if not experts:
                raise RuntimeError(f"no valid expert upload to unify ({len(got.rejected)} rejected; see the log)")
        seed = self.fed.cfg.seed
        late = uni.late_domain_ids(self.ws.benchmark.domain_names, self.mcfg.late_domains)
        early = [e for e in experts if e.domain not in late]
        joiners = [e for e in experts if e.domain in late]
        before: dict[str, float] = {}
        if early and joiners:
            # experts that join late: unify the early ones, then grow that model by the joiners
            first = self.combine(early)
            before = uni.mixed_domain_accuracy(first.predict, self.ws, seed, domain_aware=first.domain_aware)
            before.update(first.metrics or {})     # its routing, lambdas and fine-tuning loss too
            combined = self.combine(early + joiners, warm=first)
        else:
            combined = self.combine(experts)
        metrics = uni.mixed_domain_accuracy(combined.predict, self.ws, seed, domain_aware=combined.domain_aware)
        metrics.update({f"before-join/{k}": v for k, v in before.items()})
        metrics.update(combined.metrics or {})
        per_client = uni.client_accuracy(combined.predict, self.ws, combined.domain_aware)
        own = [m["acc-own"] for m in per_client.values()]
        metrics["worst-client-acc"] = min(own) if own else float("nan")
        metrics["rejected-uploads"] = float(rejected)
        self.fed.last_eval = per_client     # the final model's per-client numbers, not the experts'
        return {f"server-eval/{k}": v for k, v in metrics.items()}

    def valid_uploads(self, got: wire.Unpacked) -> wire.Unpacked:
        """Drop (and log) uploads the unification cannot use; the rest go on."""
        dims, pool = uni.model_routing_dims(self.ws), len(self.ws.benchmark.public_y)
        kept = []
        for r in got.results:
            reason = uni.upload_problem(r, dims, pool, need_expert=not self.per_domain, wants=self.wants)
            if reason is None:
                kept.append(r)
            else:
                log.warning("rejected upload of client %d: %s", r.client_id, reason)
                got.rejected[r.client_id] = reason
                self.fed.rejected_total += 1
        got.results = kept
        return got

    def experts_from(self, got: wire.Unpacked) -> list[uni.Expert]:
        if not self.per_domain:
            return [uni.Expert(f"client-{r.client_id}", int(r.metrics[wire.DOMAIN]), r.state, *uni.unpack_extras(r.extras),
                               r.metrics[wire.NUM_EXAMPLES]) for r in got.results]
        parts: dict[int, list] = {}
        for r in got.results:
            routing, proxies = uni.unpack_extras(r.extras)
            parts.setdefault(int(r.metrics[wire.DOMAIN]), []).append((r.metrics[wire.NUM_EXAMPLES], routing, proxies))
        names = self.ws.benchmark.domain_names
        return [uni.domain_expert(names[d], d, self.domain_state[d], p) for d, p in sorted(parts.items())]

    def combine(self, experts: list[uni.Expert], warm: uni.Combined | None = None) -> uni.Combined:
        """Unified MoE fine-tuned on the proxy union (DESIGN steps 6-8). `warm`: an earlier
        unification of `experts`' first members, whose fine-tuned tensors it starts from."""
        seed = self.fed.cfg.seed
        moe = uni.build_unified(self.ws.model, experts, self.mcfg, seed, self.router_init)
        if warm is not None:
            moe.warm_start_from(warm.predict)
        x, y = self.finetune_data(experts)
        metrics = {"finetune-loss": uni.finetune(moe, x, y, self.mcfg, seed), "finetune-examples": float(len(y))}
        metrics.update({f"lambda/{i}": float(lam) for i, lam in enumerate(moe.lambdas())})
        metrics.update(uni.routing_to_own_domain(moe, [e.domain for e in experts], self.ws))
        return uni.Combined(moe, metrics=metrics)

    def finetune_data(self, experts: list[uni.Expert]):
        return self.ws.public_data(uni.proxy_union(experts))
