"""FedMoE-DA (seed 001): gate-proxy similarity -> per-expert neighbour mixing plan. Pure numpy.

The paper's step, per MoE layer (DESIGN "FedMoE-DA"; no official code, so every
rule below that the abstract does not fix is ours and is a parameter):
- proxy pi_{i,m} `[D]` = row m of client i's gate weight at that layer; the server
  sees only gates, `[N, E, D]` (clients, experts, width);
- r = cosine similarity between all (client, expert) pairs, `[N*E, N*E]`, flat index
  i*E + m;
- neighbours of (i, m) = itself + its P most similar OTHER experts; a = softmax(r / tau)
  over that set; personalised expert = sum a * theta (experts then travel peer to peer).

Our rules, and why:
- Experts of the same client may be neighbours (`same_client=True`): the abstract
  exploits "the correlation between intra-client expert models"; and mixing them is free
  (no transfer). `same_client=False` restricts neighbours to other clients.
- Only experts with r > `min_similarity` (default 0) are eligible, so orthogonal or
  opposed gates never mix: a gate row pointing away routes other tokens, and averaging
  it in would pull the expert toward another domain. `min_similarity=-inf` is the
  plain top-P rule. Eligible experts are ranked by r, ties by flat index (lowest first).
- A proxy of norm < ZERO_NORM has no direction (cosine undefined): its similarities are
  NaN, it keeps only itself and is nobody's neighbour, instead of a silent 0 or NaN weight.
- The set's weights are a softmax, so they are > 0 and sum to 1 (a convex combination),
  and the expert itself (r = 1, the maximum) always has the largest weight. Entries
  whose weight underflows to exactly 0 (tiny tau) are dropped: they would cost a
  transfer and add nothing. P = 0 leaves every expert exactly unchanged.

LoRA experts: `mix="factors"` (default) mixes A and B separately, tensor by tensor. It
is what FedAvg of LoRA adapters does (FedIT), it is linear, so a weight of 1 on oneself
is bit-exact and the plan's weights mean what they say per tensor, and it keeps each
expert's factor gauge, which matters because the client keeps training these factors.
Its error, sum a B * sum a A != sum a BA, is small while the mixed experts stay close
(they start from one shared init and are remixed every round). `mix="delta"` mixes the
products Delta W = B A exactly, then returns to rank r by truncated SVD (the best
rank-r approximation; the scale alpha/r is common to all experts, so it cancels):
A = V_r^T (orthonormal rows), B = U_r S_r, so A never collapses to 0 (a mixed
Delta W = 0 would otherwise zero both factors and kill the expert's gradient).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedmoe_sim.checkpoint import checkpointable

ZERO_NORM = 1e-12     # a proxy with a smaller L2 norm has no direction: cosine undefined
MIXES = ("factors", "delta")

Fetch = tuple[int, int, int]   # (peer client, layer, expert): one expert's tensors to fetch
PLAN = "plan"                  # the part a client's plan travels in (`client_plan`)
PEER_PREFIX = "peer/"          # a fetched expert's part: peer/<client>/<layer>/<expert>
KEPT_EXPERTS = "kept-experts"  # sync metric: experts left as they were (a neighbour's expert did not arrive)


def peer_part(fetch: Fetch) -> str:
    return PEER_PREFIX + "/".join(str(int(x)) for x in fetch)


def peer_parts(parts: Mapping[str, Mapping[str, np.ndarray]]) -> dict[Fetch, Mapping[str, np.ndarray]]:
    """The fetched experts among a client's parts, by (peer, layer, expert)."""
    out = {}
    for name, tensors in parts.items():
        if name.startswith(PEER_PREFIX):
            peer, layer, m = (int(x) for x in name[len(PEER_PREFIX):].split("/"))
            out[(peer, layer, m)] = tensors
    return out


def proxy_similarity(proxies: np.ndarray) -> np.ndarray:
    """Cosine between all (client, expert) proxies: `[N, E, D]` -> float64 `[N*E, N*E]`.

    Row/column i*E + m is expert m of client i; the diagonal is exactly 1, values are
    clipped to [-1, 1]; rows and columns of a zero-norm proxy are NaN (undefined).
    """
    flat = _check_proxies(proxies).reshape(-1, proxies.shape[-1])
    norms = np.linalg.norm(flat, axis=1)
    defined = norms >= ZERO_NORM
    unit = np.where(defined[:, None], flat / np.where(defined, norms, 1.0)[:, None], 0.0)
    sim = np.clip(unit @ unit.T, -1.0, 1.0)
    np.fill_diagonal(sim, 1.0)
    sim[~defined, :] = np.nan
    sim[:, ~defined] = np.nan
    return sim


@checkpointable
@dataclass(frozen=True, eq=False)
class NeighbourPlan:
    """One MoE layer's mixing plan, as a sparse matrix in COO form (flat index i*E + m).

    Entry k: personalised expert `target[k]` takes `weight[k]` of expert `source[k]`.
    Entries are grouped by ascending target; each target's first entry is itself; its
    weights are > 0 and sum to 1. Clients are positions 0..N-1 in the order of the
    proxies the plan was built from (the caller keeps the partition ids).
    """

    layer: int
    num_clients: int
    num_experts: int
    target: np.ndarray   # int64 [nnz]
    source: np.ndarray   # int64 [nnz]
    weight: np.ndarray   # float64 [nnz]

    def _rows(self, client: int, expert: int) -> slice:
        if not (0 <= client < self.num_clients and 0 <= expert < self.num_experts):
            raise ValueError(f"(client, expert) must be in [0, {self.num_clients}) x [0, {self.num_experts}) "
                             f"(got ({client}, {expert}))")
        t = client * self.num_experts + expert
        return slice(int(np.searchsorted(self.target, t, "left")), int(np.searchsorted(self.target, t, "right")))

    def neighbours(self, client: int, expert: int) -> list[tuple[int, int]]:
        """The (client, expert) pairs mixed into expert `expert` of `client`, itself first."""
        return [divmod(int(s), self.num_experts) for s in self.source[self._rows(client, expert)]]

    def weights(self, client: int, expert: int) -> np.ndarray:
        """Their weights a, float64, aligned with `neighbours(client, expert)`."""
        return self.weight[self._rows(client, expert)].copy()

    def mixing_matrix(self) -> np.ndarray:
        """Dense `[N*E, N*E]` matrix W with personalised = W @ experts (rows sum to 1)."""
        k = self.num_clients * self.num_experts
        out = np.zeros((k, k))
        out[self.target, self.source] = self.weight
        return out

    def fetches(self) -> list[tuple[Fetch, ...]]:
        """Per client, the (peer, layer, expert) it must receive: peers' experts its plan uses, sorted.

        Own experts never appear (they are already there); this is what travels peer to peer.
        """
        tc, sc = self.target // self.num_experts, self.source // self.num_experts
        out: list[set[Fetch]] = [set() for _ in range(self.num_clients)]
        for t, s, e in zip(tc.tolist(), sc.tolist(), (self.source % self.num_experts).tolist(), strict=True):
            if s != t:
                out[t].add((s, self.layer, e))
        return [tuple(sorted(f)) for f in out]


def neighbour_plan(proxies: np.ndarray, top_p: int, tau: float, *, layer: int = 0, same_client: bool = True,
                   min_similarity: float = 0.0) -> NeighbourPlan:
    """The FedMoE-DA plan of one MoE layer from its gate proxies `[N, E, D]`.

    top_p: neighbours besides itself (P), clamped to the experts available (N*E - 1, or
    (N-1)*E without same-client neighbours). tau > 0: softmax temperature over r.
    See the module docstring for the neighbour rule.
    """
    if isinstance(top_p, bool) or int(top_p) != top_p or top_p < 0:
        raise ValueError(f"top_p must be an integer >= 0 (got {top_p!r})")
    if not (isinstance(tau, (int, float, np.floating)) and math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a finite number > 0 (got {tau!r})")
    if math.isnan(min_similarity):
        raise ValueError("min_similarity must be a number or -inf (got nan)")
    sim = proxy_similarity(proxies)
    n, e = proxies.shape[:2]
    k = n * e
    defined = ~np.isnan(np.diag(sim))
    with np.errstate(invalid="ignore"):
        eligible = defined[:, None] & defined[None, :] & (sim > min_similarity)
    np.fill_diagonal(eligible, False)
    if not same_client:
        client = np.arange(k) // e
        eligible &= client[:, None] != client[None, :]
    p = min(int(top_p), k - 1)
    order = np.argsort(np.where(eligible, -sim, np.inf), axis=1, kind="stable")[:, :p]  # stable: ties by index
    targets, sources, weights = [], [], []
    for t in range(k):
        chosen = order[t][eligible[t, order[t]]]
        members = np.concatenate([[t], chosen]).astype(np.int64)
        r = sim[t, members]
        r[0] = 1.0                                 # itself: cos = 1 by definition (also for a zero proxy)
        z = r / float(tau)                         # z[0] = 1/tau is the maximum
        a = np.exp(z - z[0])
        a /= a.sum()
        keep = a > 0
        targets.append(np.full(int(keep.sum()), t, dtype=np.int64))
        sources.append(members[keep])
        weights.append(a[keep])
    return NeighbourPlan(int(layer), n, e, np.concatenate(targets), np.concatenate(sources), np.concatenate(weights))


def neighbour_plans(proxies: Sequence[np.ndarray], top_p: int, tau: float, **kw) -> list[NeighbourPlan]:
    """One plan per MoE layer; `proxies[l]` is layer l's `[N, E, D]`, and plan l gets `layer=l`."""
    return [neighbour_plan(p, top_p, tau, layer=layer, **kw) for layer, p in enumerate(proxies)]


def fetch_lists(plans: Sequence[NeighbourPlan]) -> list[tuple[Fetch, ...]]:
    """Per client, every (peer, layer, expert) its plans use, over all layers, sorted."""
    if not plans:
        return []
    n = plans[0].num_clients
    if any(p.num_clients != n for p in plans):
        raise ValueError("plans of one round must cover the same clients")
    return [tuple(sorted(f for p in plans for f in p.fetches()[i])) for i in range(n)]


def plan_due(server_round: int, every: int) -> bool:
    """Whether round `server_round` (1-based) recomputes the similarity: rounds 1, 1 + I, 1 + 2I, ...

    In between, the last plan is reused (the paper's refresh interval I = `every`).
    """
    if every < 1:
        raise ValueError(f"every must be >= 1 round (got {every})")
    if server_round < 1:
        raise ValueError(f"server_round must be >= 1 (got {server_round})")
    return (server_round - 1) % every == 0


def apply_plan(plan: NeighbourPlan, experts: Sequence[Mapping[str, np.ndarray]],
               mix: str = "factors") -> list[dict[str, np.ndarray]]:
    """Personalised experts of one layer: out[i][name][m] = sum_k a_k experts[j_k][name][n_k].

    experts[i]: client i's tensors of `plan.layer`, each stacked along the expert axis,
    `[E, ...]` (e.g. `blocks.{l}.ffn.fc1.lora_A` `[E, r, in]`). All reads are of the
    inputs (a synchronous step); inputs are not modified; dtypes are kept (float64
    accumulation). An expert whose only neighbour is itself is copied bit for bit. With
    `mix="delta"`, every `X.lora_A` `[E, r, in]` / `X.lora_B` `[E, out, r]` pair is mixed
    as B A and re-factored by truncated SVD; other tensors are mixed linearly.
    """
    if mix not in MIXES:
        raise ValueError(f"mix must be one of {', '.join(MIXES)} (got {mix!r})")
    keys = _check_experts(plan, experts)
    pairs = _lora_pairs(keys) if mix == "delta" else []
    out = [{name: np.array(s[name], copy=True) for name in keys} for s in experts]
    cuts = np.flatnonzero(np.diff(plan.target)) + 1
    for tgt, src, w in zip(np.split(plan.target, cuts), np.split(plan.source, cuts),
                           np.split(plan.weight, cuts), strict=True):
        i, m = divmod(int(tgt[0]), plan.num_experts)
        if len(src) == 1:                            # itself only (weight 1): stays as it is
            continue
        js, ns = src // plan.num_experts, src % plan.num_experts
        sources = [{name: experts[j][name][n] for name in keys} for j, n in zip(js, ns, strict=True)]
        for name, value in mix_expert(w, sources, pairs).items():
            out[i][name][m] = value
    return out


def mix_expert(weights: Sequence[float], sources: Sequence[Mapping[str, np.ndarray]],
               pairs: Sequence[tuple[str, str]] = ()) -> dict[str, np.ndarray]:
    """One personalised expert: sum_k a_k sources[k] per tensor (float64), except that each
    (A, B) in `pairs` (mix="delta") is mixed as sum_k a_k B_k A_k and re-factored to rank r."""
    paired = {name for pair in pairs for name in pair}
    out = {name: sum(a * src[name].astype(np.float64) for a, src in zip(weights, sources, strict=True))
           for name in sources[0] if name not in paired}
    for a_name, b_name in pairs:
        delta = sum(a * (src[b_name].astype(np.float64) @ src[a_name].astype(np.float64))
                    for a, src in zip(weights, sources, strict=True))
        out[a_name], out[b_name] = _refactor(delta, sources[0][a_name].shape[0])
    return out


# ---------------------------------------------------------------- one client's side of a plan ----
def client_plan(plans: Sequence[NeighbourPlan], position: int, client_ids: Sequence[int]) -> dict[str, np.ndarray]:
    """What the server sends client `client_ids[position]`: its rows of every layer's plan, with
    plan positions turned into client ids. Per layer l: `target/l` (its own expert m),
    `client/l` and `expert/l` (the neighbour), `weight/l`, ordered by target."""
    ids = np.asarray(client_ids, dtype=np.int64)
    out = {}
    for plan in plans:
        e = plan.num_experts
        rows = (plan.target // e) == position
        out[f"target/{plan.layer}"] = (plan.target[rows] % e).astype(np.int64)
        out[f"client/{plan.layer}"] = ids[plan.source[rows] // e]
        out[f"expert/{plan.layer}"] = (plan.source[rows] % e).astype(np.int64)
        out[f"weight/{plan.layer}"] = plan.weight[rows].astype(np.float64)
    return out


def plan_fetches(plan_part: Mapping[str, np.ndarray], own_id: int) -> list[Fetch]:
    """The (peer client, layer, expert) a client's plan part names, other than its own experts."""
    layers = sorted(int(k.split("/")[1]) for k in plan_part if k.startswith("target/"))
    return sorted({(int(c), layer, int(m)) for layer in layers
                   for c, m in zip(plan_part[f"client/{layer}"], plan_part[f"expert/{layer}"], strict=True)
                   if int(c) != own_id})


def personalise(layers: Sequence[Mapping[str, np.ndarray]], plan_part: Mapping[str, np.ndarray], own_id: int,
                peers: Mapping[Fetch, Mapping[str, np.ndarray]], mix: str = "factors",
                ) -> tuple[list[dict[str, np.ndarray]], int]:
    """A client's personalised experts from its own (`layers[l]`: stacked `[E, ...]` tensors of
    layer l) and the peers' experts it received (`peers[(client, l, m)]`: one expert's tensors).

    Returns (new layers, experts left as they were because a neighbour's expert did not
    arrive). Such an expert keeps its old tensors: a missing peer never fails the round,
    and the weights of the others are not silently renormalised.
    """
    if mix not in MIXES:
        raise ValueError(f"mix must be one of {', '.join(MIXES)} (got {mix!r})")
    out = [{name: np.array(t, copy=True) for name, t in layer.items()} for layer in layers]
    kept = 0
    for layer, own in enumerate(layers):
        if f"target/{layer}" not in plan_part:
            continue
        keys = sorted(own)
        pairs = _lora_pairs(keys) if mix == "delta" else []
        target, client = plan_part[f"target/{layer}"], plan_part[f"client/{layer}"]
        expert, weight = plan_part[f"expert/{layer}"], plan_part[f"weight/{layer}"]
        for m in np.unique(target):
            rows = np.flatnonzero(target == m)
            if len(rows) == 1:
                continue
            sources = []
            for r in rows:
                c, n = int(client[r]), int(expert[r])
                src = {name: own[name][n] for name in keys} if c == own_id else peers.get((c, layer, n))
                if src is None:
                    break
                sources.append(src)
            if len(sources) < len(rows):
                kept += 1
                continue
            for name, value in mix_expert(weight[rows], sources, pairs).items():
                out[layer][name][int(m)] = value
    return out, kept


def _refactor(delta: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Best rank-r factors of `delta` `[out, in]`: A = V_r^T `[r, in]`, B = U_r S_r `[out, r]`."""
    u, s, vt = np.linalg.svd(delta, full_matrices=False)
    if rank > len(s):
        raise ValueError(f"LoRA rank {rank} exceeds min(out, in) = {len(s)}: cannot re-factor a mixed delta")
    return vt[:rank], u[:, :rank] * s[:rank]


def _lora_pairs(keys: Sequence[str]) -> list[tuple[str, str]]:
    stems = sorted({k[: -len(".lora_A")] for k in keys if k.endswith(".lora_A")}
                   | {k[: -len(".lora_B")] for k in keys if k.endswith(".lora_B")})
    pairs = []
    for stem in stems:
        a, b = f"{stem}.lora_A", f"{stem}.lora_B"
        if a not in keys or b not in keys:
            raise ValueError(f"mix='delta' needs both {a!r} and {b!r}")
        pairs.append((a, b))
    return pairs


def _check_proxies(proxies: np.ndarray) -> np.ndarray:
    arr = np.asarray(proxies, dtype=np.float64)
    if arr.ndim != 3 or 0 in arr.shape:
        raise ValueError(f"proxies must be a non-empty [N clients, E experts, D width] array "
                         f"(got shape {list(np.shape(proxies))})")
    if not np.isfinite(arr).all():
        raise ValueError("proxies must be finite (a client sent NaN or inf gate weights)")
    return arr


def _check_experts(plan: NeighbourPlan, experts: Sequence[Mapping[str, np.ndarray]]) -> list[str]:
    if len(experts) != plan.num_clients:
        raise ValueError(f"the plan covers {plan.num_clients} clients but {len(experts)} expert sets were given")
    keys = sorted(experts[0])
    if not keys:
        raise ValueError("expert sets must hold at least one tensor")
    for i, s in enumerate(experts):
        if sorted(s) != keys:
            raise ValueError(f"client {i}'s expert tensors differ from client 0's")
        for name in keys:
            shape = np.shape(s[name])
            if shape != np.shape(experts[0][name]) or not shape or shape[0] != plan.num_experts:
                raise ValueError(f"client {i} tensor {name!r} has shape {list(shape)}: expected "
                                 f"[{plan.num_experts}, ...] like client 0's {list(np.shape(experts[0][name]))}")
    return keys
