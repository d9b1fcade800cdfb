"""MetaMoE steps 1-3 (seed 000) composed: which public samples a client sends as its proxies.

relevance probe on frozen features -> r for the whole public pool (scored batch
by batch) -> top-n candidates by r -> relevance-weighted greedy DPP picks m of
them (or, for the "no DPP" ablation, the m most relevant candidates). Every
feature comes from un-augmented inputs through `iter_features` (eval mode, no
grad). Only the n candidates are featurised a second time, for the DPP, so the
pool's features are never held whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedmoe_sim.proxy.dpp import DPPResult, greedy_dpp, top_n
from fedmoe_sim.proxy.relevance import fit_relevance, iter_features, pool_sampler, score_pool


@dataclass(frozen=True)
class ProxySelection:
    """A client's proxies and how they were chosen (all indices are rows of the public pool)."""

    indices: np.ndarray          # [m'] int64 pool rows of the proxies, in pick order (m' = min(m, n') or fewer)
    relevance: np.ndarray        # [P] float64 r(x) for every pool sample
    candidates: np.ndarray       # [n'] int64 pool rows of the top-n by r, best first (n' = min(n, P))
    dpp_result: DPPResult | None  # positions into `candidates`; None when use_dpp=False
    filled: int = 0              # trailing proxies added by relevance after the DPP ran out of rank


def select_proxies(model, private_x: np.ndarray, public_x: np.ndarray, n_candidates: int, m: int, seed: int,
                   use_dpp: bool = True, batch_size: int = 512, probe_epochs: int = 100,
                   probe_lr: float = 0.1, fill: bool = True) -> ProxySelection:
    """Pick m proxies from `public_x` `[P, ...]` for a client holding `private_x` `[N, ...]`.

    `model` is an ExpertModel (only `prepare`, `features`, `train`/`eval` are
    used). `seed` fixes the probe's negatives and mini-batch order; the rest is
    deterministic. With use_dpp=False the proxies are the first m candidates
    (top-m by r), so the ablation changes step 3 only.

    The cosine kernel has rank <= D (feature width), so the DPP returns at most
    D proxies (the digits mixer: D = 64 < m = 120). With `fill` (ours, not in the
    paper, whose backbones have D >= m) the remaining slots go to the most
    relevant unpicked candidates, in order: once every determinant is 0,
    relevance is the only signal left, and DPP vs top-m then compare equal
    proxy counts. `dpp_result` keeps the DPP's own picks and stop reason.
    """
    if n_candidates < 0 or m < 0:
        raise ValueError(f"n_candidates and m must be >= 0 (got {n_candidates}, {m})")
    if len(private_x) == 0:
        raise ValueError("select_proxies needs at least one private sample for the relevance probe")
    private_feats = torch.cat(list(iter_features(model, private_x, batch_size)))          # [N, D]
    probe = fit_relevance(private_feats, pool_sampler(model, public_x, batch_size), seed,
                          epochs=probe_epochs, lr=probe_lr)
    relevance = score_pool(probe, iter_features(model, public_x, batch_size))           # [P]
    candidates = top_n(relevance, n_candidates)                                          # [n']
    if not use_dpp:
        return ProxySelection(candidates[:m].copy(), relevance, candidates, None)
    batches = list(iter_features(model, public_x[candidates], batch_size))
    cand_feats = torch.cat(batches) if batches else private_feats[:0]                   # [n', D]
    result = greedy_dpp(cand_feats, relevance[candidates], m)
    picks = result.indices
    if fill and len(picks) < min(m, len(candidates)):
        rest = np.setdiff1d(np.arange(len(candidates)), picks, assume_unique=True)   # sorted: best r first
        picks = np.concatenate([picks, rest[:m - len(picks)]])
    return ProxySelection(candidates[picks], relevance, candidates, result, len(picks) - len(result.indices))
