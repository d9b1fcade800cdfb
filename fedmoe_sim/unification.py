"""One-shot unification of client experts (MetaMoE, seed 000) and its baselines.

Client side: proxies (relevance + DPP, `fedmoe_sim.proxy`), the training pool
(private data plus proxies with their public labels: one label space) and the
routing vectors. Server side: group uploads into experts, build the unified MoE
(routers initialised from routing vectors, context-aware), fine-tune on the
proxy union, and evaluate on the domains' test sets in shuffled batches that mix
domains. The baselines (BTM ensemble, ModelSoup, oracle routing, BTX, zero-shot,
unrestricted) are other `combine` choices over the same experts.

Plain PyTorch/numpy: the strategies and clients only move records around it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedmoe_sim.aggregation import weighted_average
from fedmoe_sim.config import MetaMoEConfig
from fedmoe_sim.models.expert_model import ExpertModel
from fedmoe_sim.parts import ArraySpec, PartSpec
from fedmoe_sim.training import derive_seed
from fedmoe_sim.workspace import State, Workspace

PROXIES = "proxies"           # upload part (and its one key): int64 indices into the public pool
ROUTING = "routing"           # upload part: one routing vector per MoE layer


# ------------------------------------------------------------ client side ----
def select_client_proxies(ws: Workspace, cid: int, mcfg: MetaMoEConfig, seed: int) -> np.ndarray:
    """DESIGN steps 1-3 on the client's private train split (un-augmented, frozen backbone)."""
    from fedmoe_sim.proxy.select import select_proxies

    split, bench = ws.splits[cid], ws.benchmark
    if bench.public_x is None:
        raise ValueError(f"benchmark {bench.name!r} has no public pool: MetaMoE-style methods need one")
    sel = select_proxies(ws.model, split.x_train, bench.public_x, mcfg.candidates, mcfg.proxies,
                         seed=derive_seed(seed, "proxies", cid), use_dpp=mcfg.use_dpp,
                         probe_epochs=mcfg.relevance_epochs, probe_lr=mcfg.relevance_lr, fill=mcfg.dpp_fill)
    return np.asarray(sel.indices, dtype=np.int64)


def routing_vectors(ws: Workspace, inputs) -> list[np.ndarray]:
    """DESIGN step 5: per MoE layer, the mean FFN input (after its norm, through the loaded
    expert) over the valid tokens of every sample in `inputs`. `[D]` per layer."""
    from fedmoe_sim.models.moe import mean_routing_vectors

    return [np.asarray(v, dtype=np.float32) for v in mean_routing_vectors(ws.model, inputs, batch_size=256)]


def routing_part(routing: list[np.ndarray]) -> State:
    """The routing vectors as one part: key = MoE layer index ("0", "1", ...)."""
    return {str(i): np.asarray(v, dtype=np.float32) for i, v in enumerate(routing)}


def proxies_part(proxies: np.ndarray) -> State:
    return {PROXIES: np.asarray(proxies, dtype=np.int64)}


def upload_specs(routing_dims: list[int], parts: tuple[str, ...]) -> dict[str, PartSpec]:
    """The spec of the upload's non-expert parts the server asks for: one float32 routing
    vector `[D_l]` per MoE layer, and a 1-D int64 list of proxy indices."""
    specs = {}
    if ROUTING in parts:
        specs[ROUTING] = PartSpec({str(i): ArraySpec((d,), "float32") for i, d in enumerate(routing_dims)})
    if PROXIES in parts:
        specs[PROXIES] = PartSpec({PROXIES: ArraySpec((None,), "int64")})
    return specs


def unpack_upload(parts: dict[str, State]) -> tuple[list[np.ndarray], np.ndarray]:
    """(routing vectors in layer order, proxy ids); empty for the parts an upload left out."""
    routing = parts.get(ROUTING, {})
    proxies = parts.get(PROXIES, {}).get(PROXIES, np.zeros(0))
    return [routing[k] for k in sorted(routing, key=int)], np.asarray(proxies, dtype=np.int64)


def upload_problem(parts: dict[str, State], pool_size: int) -> str | None:
    """Why a client's upload cannot join the unification, or None. The wire already checked
    every part against `upload_specs` (names, shapes, dtypes, finite); this checks what only
    MetaMoE knows: proxy indices inside the public pool."""
    proxies = parts.get(PROXIES, {}).get(PROXIES)
    if proxies is not None and proxies.size and (int(proxies.min()) < 0 or int(proxies.max()) >= pool_size):
        return f"proxy index outside the public pool [0, {pool_size})"
    return None


def model_routing_dims(ws: Workspace) -> list[int]:
    """Width of each MoE layer's routing input, read off the server's own model on one public sample."""
    from fedmoe_sim.models.moe import routing_inputs

    hs, _ = routing_inputs(ws.model, ws.public_data(np.zeros(1, np.int64))[0])
    return [int(h.shape[-1]) for h in hs]


# ------------------------------------------------------------ server side ----
@dataclass
class Expert:
    """One expert of the unified model: a client's (or a domain's federated) expert."""

    name: str
    domain: int
    state: State
    routing: list[np.ndarray]   # [D] per MoE layer
    proxies: np.ndarray         # public-pool indices its clients selected
    weight: float               # examples behind it


def domain_expert(name: str, domain: int, state: State, parts: list[tuple[float, list[np.ndarray], np.ndarray]]) -> Expert:
    """Merge a domain's clients (weight, routing vectors, proxies): example-weighted routing
    vectors, union of proxies."""
    weights = [w for w, _, _ in parts]
    layers = len(parts[0][1])
    routing = [np.average(np.stack([r[i] for _, r, _ in parts]), axis=0, weights=weights).astype(np.float32)
               for i in range(layers)]
    proxies = np.unique(np.concatenate([p for _, _, p in parts]))
    return Expert(name, domain, state, routing, proxies, float(sum(weights)))


def late_domain_ids(domain_names: list[str], spec: str) -> set[int]:
    """Domain ids named in `metamoe.late_domains` (comma list); at least one domain must stay early."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in domain_names]
    if unknown:
        raise ValueError(f"unknown domain {unknown[0]!r} in metamoe.late_domains; allowed: {', '.join(domain_names)}")
    if names and set(names) >= set(domain_names):
        raise ValueError(f"metamoe.late_domains={spec!r} leaves no domain for the first unification; "
                         f"name at most {len(domain_names) - 1} of {', '.join(domain_names)}")
    return {domain_names.index(n) for n in names}


def proxy_union(experts: list[Expert]) -> np.ndarray:
    return np.unique(np.concatenate([e.proxies for e in experts])) if experts else np.zeros(0, np.int64)


def build_unified(model: ExpertModel, experts: list[Expert], mcfg: MetaMoEConfig, seed: int,
                  router_init: str = "routing", context: bool | None = None) -> nn.Module:
    """DESIGN steps 6-7: base FFN + each expert's LoRA delta per layer; router rows = the
    routing vectors as is (`router_init="routing"`) or random (BTX); context-aware router
    with learnable lambda unless `context` (default: mcfg.context_router) is off."""
    from fedmoe_sim.models import build_moe_from_experts, build_text_moe_from_experts, build_vit_moe_from_experts
    from fedmoe_sim.models.text import TextExpertModel
    from fedmoe_sim.models.vit import VitExpertModel

    use_context = mcfg.context_router if context is None else context
    rows = None
    if router_init == "routing":
        rows = [np.stack([e.routing[i] for e in experts]) for i in range(len(experts[0].routing))]
    build = (build_text_moe_from_experts if isinstance(model, TextExpertModel)
             else build_vit_moe_from_experts if isinstance(model, VitExpertModel) else build_moe_from_experts)
    return build(model, [e.state for e in experts], rows, top_k=min(mcfg.top_k, len(experts)),
                 seed=derive_seed(seed, "router-init"), context=use_context, lambda_init=mcfg.lambda_init,
                 train_lambda=use_context, straight_through=mcfg.straight_through)


def finetune(moe: nn.Module, inputs, labels: torch.Tensor, mcfg: MetaMoEConfig, seed: int) -> float:
    """DESIGN step 8: routers, LoRAs and lambdas on (proxy) data, SGD momentum 0.9; returns the last loss.

    Lambdas are clamped back into [0, 1] after every step.
    """
    params = [p for p in moe.parameters() if p.requires_grad]
    n = int(labels.shape[0])
    if mcfg.finetune_epochs == 0 or n == 0 or not params:
        return float("nan")
    opt = torch.optim.SGD(params, lr=mcfg.finetune_lr, momentum=0.9)
    gen = torch.Generator().manual_seed(derive_seed(seed, "finetune"))
    moe.train()
    last = float("nan")
    for _ in range(mcfg.finetune_epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, mcfg.finetune_batch):
            idx = order[start:start + mcfg.finetune_batch]
            loss = F.cross_entropy(moe(ExpertModel.index(inputs, idx)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if hasattr(moe, "clamp_lambdas_"):
                moe.clamp_lambdas_()
            total += float(loss.detach()) * len(idx)
        last = total / n
    moe.eval()
    return last


Predict = Callable[[object], torch.Tensor]   # prepared inputs -> logits or probabilities [B, C]


@torch.no_grad()
def mixed_domain_accuracy(predict: Predict, ws: Workspace, seed: int, batch_size: int = 256,
                          domain_aware: bool = False) -> dict[str, float]:
    """Accuracy per domain on the held-out test sets, evaluated in shuffled batches that mix
    all domains (a batch never reveals its domain). `domain_aware=True` passes the true domain
    of each sample to `predict(inputs, domains)` (oracle routing baseline only)."""
    bench = ws.benchmark
    parts = [ws.domain_test(d) for d in range(len(bench.domains))]
    doms = torch.cat([torch.full((len(y),), d, dtype=torch.long) for d, (_, y) in enumerate(parts)])
    labels = torch.cat([y for _, y in parts])
    inputs = concat_inputs([x for x, _ in parts])
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(derive_seed(seed, "eval-order")))
    correct = torch.zeros(len(labels), dtype=torch.bool)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = ExpertModel.index(inputs, idx)
        out = predict(batch, doms[idx]) if domain_aware else predict(batch)
        correct[idx] = (out.argmax(1) == labels[idx].to(out.device)).cpu()
    result = {f"acc/{name}": float(correct[doms == d].float().mean()) for d, name in enumerate(bench.domain_names)}
    result["acc-mean"] = float(np.mean([result[f"acc/{n}"] for n in bench.domain_names]))
    return result


@torch.no_grad()
def routing_to_own_domain(moe: nn.Module, expert_domains: list[int], ws: Workspace,
                          batch_size: int = 256) -> dict[str, float]:
    """Why a unified model wins or loses: per domain, the share of its test tokens whose
    top-1 expert belongs to that domain, counted at every MoE layer (token-layer pairs).
    Padding is masked out; 1.0 = the router separates the domains perfectly (what oracle
    routing does); `routing-own` is the mean over domains."""
    owner = torch.as_tensor(expert_domains)
    out = {}
    for d, name in enumerate(ws.benchmark.domain_names):
        x, _ = ws.domain_test(d)
        n = len(x["input_ids"]) if isinstance(x, dict) else len(x)
        hits = total = 0.0
        for start in range(0, n, batch_size):
            batch = ExpertModel.index(x, torch.arange(start, min(start + batch_size, n)))
            _, probs = moe(batch, return_probs=True)
            for p in probs:                                          # [B, T, K] per MoE layer
                if isinstance(batch, dict):
                    valid = batch["attention_mask"][:, :p.shape[1]].to(p.device).bool()
                else:
                    valid = torch.ones(p.shape[:2], dtype=torch.bool, device=p.device)
                own = owner.to(p.device)[p.argmax(-1)] == d
                hits += float((own & valid).sum())
                total += float(valid.sum())
        out[f"routing-own/{name}"] = hits / max(total, 1.0)
    out["routing-own"] = float(np.mean(list(out.values())))
    return out


@torch.no_grad()
def client_accuracy(predict: Predict, ws: Workspace, domain_aware: bool = False) -> dict[int, dict[str, float]]:
    """What each client would measure on its own held-out split with the final model
    (computed where the splits are: the simulation's server). Keys as client evaluation."""
    out = {}
    for split in ws.splits:
        x, y = ws.test_data(split.client_id)
        if len(y) == 0:
            continue
        logits = predict(x, torch.full((len(y),), split.domain, dtype=torch.long)) if domain_aware else predict(x)
        out[split.client_id] = {"acc-own": float((logits.argmax(1) == y).float().mean()),
                                "num-examples": float(len(y)), "domain": float(split.domain)}
    return out


@dataclass
class Combined:
    """A unification result: how it predicts, and what else to report (fine-tuning loss, lambdas)."""

    predict: Callable
    domain_aware: bool = False      # the oracle baseline needs each sample's true domain
    metrics: dict[str, float] | None = None


def concat_inputs(xs):
    """Concatenate prepared inputs (Tensors, or dicts of equally padded Tensors) along the batch."""
    if isinstance(xs[0], dict):
        return {k: torch.cat([x[k] for x in xs]) for k in xs[0]}
    return torch.cat(xs)


# ------------------------------------------------------- baseline combines ----
def ensemble_predict(model: ExpertModel, states: list[State]) -> Predict:
    """BTM: the mean of the experts' output distributions (each expert sees every input)."""
    def predict(inputs):
        probs = 0
        for st in states:
            model.load_expert_state(st)
            probs = probs + torch.softmax(model(inputs), dim=1)
        return probs / len(states)
    return predict


def soup_predict(model: ExpertModel, experts: list[Expert]) -> Predict:
    """ModelSoup: one model with the example-weighted average of the expert weights."""
    soup = weighted_average([e.state for e in experts], [e.weight for e in experts])

    def predict(inputs):
        model.load_expert_state(soup)
        return model(inputs)
    return predict


def oracle_predict(model: ExpertModel, experts: list[Expert],
                   fallback: State | None = None) -> Callable[[object, torch.Tensor], torch.Tensor]:
    """Separate experts with oracle routing: each sample goes to an expert of its true domain
    (the first, by name, when several clients share a domain in one-expert-per-client mode).
    A domain with no expert (all its uploads rejected, or not joined yet) gets `fallback`
    (the initial expert: what the backbone does without one)."""
    by_domain: dict[int, State] = {}
    for e in sorted(experts, key=lambda e: e.name):
        by_domain.setdefault(e.domain, e.state)

    def predict(inputs, domains: torch.Tensor):
        out = None
        for d in domains.unique().tolist():
            mask = domains == d
            state = by_domain.get(d, fallback)
            if state is None:
                raise ValueError(f"no expert for domain {d} and no fallback expert")
            model.load_expert_state(state)
            logits = model(ExpertModel.index(inputs, mask.nonzero().squeeze(1)))
            if out is None:
                out = torch.zeros(len(domains), logits.shape[1])
            out[mask] = logits
        return out
    return predict
