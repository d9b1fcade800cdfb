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

from fedmoe_sim import unification as uni
from fedmoe_sim import wire
from fedmoe_sim.config import RunConfig
from fedmoe_sim.models.expert_model import EXPERT
from fedmoe_sim.workspace import Workspace
from strategies._base import Exchange, Metrics, Strategy
from strategies._federation import Federation
from strategies.fedavg import FedAvgStrategy

log = logging.getLogger(__name__)
UPLOAD = "upload"     # the client phase after the last round


class MetaMoEStrategy(Strategy):
    transient = ("mcfg",)   # config, rebuilt by __init__
    forced: dict = {}          # config values that define a variant (ablations, baselines)
    router_init = "routing"    # router rows from routing vectors ("random": BTX)
    needs_experts = True       # zero-shot skips the upload
    upload_parts: tuple[str, ...] = (uni.PROXIES, uni.ROUTING)   # beside the expert: only what combine uses

    def __init__(self, fed: Federation, ws: Workspace) -> None:
        super().__init__(fed, ws)
        self.mcfg = fed.cfg.metamoe
        self.per_domain = self.mcfg.expert_per == "domain"
        self.stateful = not self.per_domain       # one-shot: each expert stays on its client until the upload
        self._initial = ws.initial_expert()
        self.domain_of = {s.client_id: s.domain for s in ws.splits}
        self.domain_state = {d: self._initial for d in set(self.domain_of.values())}

    @classmethod
    def check_config(cls, cfg: RunConfig, ws: Workspace) -> None:
        FedAvgStrategy.check_config(cfg, ws)
        uni.late_domain_ids(ws.benchmark.domain_names, cfg.metamoe.late_domains)

    # -- phase 1: expert training (per client, or FedAvg per domain) ---------
    def _outbox(self, phase: str, clients: list[int]) -> wire.Outbox:
        """expert_per=domain: each client gets its domain's expert (one copy per node message)."""
        box = self.outbox(phase, clients)
        if self.per_domain:
            for cid in clients:
                box.send(cid, EXPERT, self.domain_state[self.domain_of[cid]])
        return box

    def configure_train(self, server_round: int) -> wire.Outbox:
        box = self._outbox(wire.TRAIN, self.fed.train_cohort(server_round))
        if self.per_domain:
            box.expect = self.expert_spec()
        return box

    def aggregate_train(self, server_round: int, got: wire.Unpacked) -> Metrics:
        if self.per_domain:
            for d in self.domain_state:
                mine = [r for r in got.results if self.domain_of[r.client_id] == d]
                self.domain_state[d] = self.average(mine, EXPERT, self.domain_state[d])
        return self.fed.train_metrics(got)

    def configure_evaluate(self, server_round: int) -> wire.Outbox:
        return self._outbox(wire.EVALUATE, self.fed.eval_cohort(server_round))

    # -- phases 2-3: upload, unify, evaluate --------------------------------
    def finish(self, server_round: int, exchange: Exchange) -> Metrics:
        experts: list[uni.Expert] = []
        rejected = 0
        if self.needs_experts:
            box = self._outbox(UPLOAD, list(range(self.fed.cfg.federation.num_clients)))
            dims = uni.model_routing_dims(self.ws) if uni.ROUTING in self.upload_parts else []   # a forward pass
            box.expect = uni.upload_specs(dims, self.upload_parts)
            if not self.per_domain:
                box.expect.update(self.expert_spec())
            got = self.valid_uploads(exchange(box))
            experts = self.experts_from(got)
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
        self.per_client = per_client     # the final model's per-client numbers, not the experts'
        return {f"server-eval/{k}": v for k, v in metrics.items()}

    def valid_uploads(self, got: wire.Unpacked) -> wire.Unpacked:
        """Drop (and log) uploads the unification cannot use; the rest go on."""
        pool = len(self.ws.benchmark.public_y)
        kept = []
        for r in got.results:
            reason = uni.upload_problem(r.parts, pool)
            if reason is None:
                kept.append(r)
            else:
                log.warning("rejected upload of client %d: %s", r.client_id, reason)
                got.rejected[r.client_id] = reason
        got.results = kept
        return got

    def experts_from(self, got: wire.Unpacked) -> list[uni.Expert]:
        if not self.per_domain:
            return [uni.Expert(f"client-{r.client_id}", self.domain_of[r.client_id], r.part(EXPERT),
                               *uni.unpack_upload(r.parts), r.metrics[wire.NUM_EXAMPLES]) for r in got.results]
        parts: dict[int, list] = {}
        for r in got.results:
            routing, proxies = uni.unpack_upload(r.parts)
            parts.setdefault(self.domain_of[r.client_id], []).append((r.metrics[wire.NUM_EXAMPLES], routing, proxies))
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
