"""MetaMoE steps 2-3 (seed 000): top-n candidates, then a relevance-weighted DPP.

The DPP kernel over n candidates is L = Diag(r) S Diag(r), S_ij = cos(z_i, z_j)
(DESIGN step 3): det(L_Y) = prod_{i in Y} r_i^2 * det(S_Y), so a subset scores
high when its members are relevant (r) and point in different directions (S).
Greedy MAP inference adds, at each step, the item that maximises
log det(L_{Y+i}); `greedy_dpp` does this in O(n m D) time and O(n m) memory with
the incremental Cholesky updates of Chen, Zhang & Zhou (2018), "Fast greedy MAP
inference for determinantal point process to improve recommendation diversity",
Algorithm 1, never forming the n x n kernel. `brute_force_greedy_dpp` is the
same greedy rule computed from determinants, kept as the test/benchmark oracle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_EPS = 1e-10   # stop once the best gain d^2 <= eps * max_i L_ii (relative: see greedy_dpp)


@dataclass(frozen=True)
class DPPResult:
    """What greedy MAP picked, in pick order, and why it stopped.

    `gains[t]` is d_j^2 = det(L_{Y_t + j}) / det(L_{Y_t}) for the t-th pick j
    (non-increasing; its logs sum to log det(L_Y)). `stopped_early` is True
    when fewer than m items came back; `reason` says why: "m reached",
    "rank exhausted after k" (every remaining item lies in the span of the
    picked ones) or "m > n: took all n".
    """

    indices: np.ndarray   # [k] int64 positions in the candidate set, distinct, in pick order
    gains: np.ndarray     # [k] float64 marginal det ratios d_j^2 at pick time
    stopped_early: bool
    reason: str


def top_n(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices `[min(n, P)]` of the n highest scores, best first; ties go to the lower index."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D (got shape {s.shape})")
    if n < 0:
        raise ValueError(f"n must be >= 0 (got {n})")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return np.argsort(-s, kind="stable")[:n].astype(np.int64)


def _result(picks: list[int], gains: list[float], m: int, n: int, exhausted: bool) -> DPPResult:
    k = len(picks)
    if exhausted:
        reason = f"rank exhausted after {k}"
    elif m > n:
        reason = f"m > n: took all {n}"
    else:
        reason = "m reached"
    return DPPResult(np.asarray(picks, dtype=np.int64), np.asarray(gains, dtype=np.float64), k < m, reason)


def greedy_dpp(features, relevance, m: int, eps: float = DEFAULT_EPS) -> DPPResult:
    """Greedy MAP for L = Diag(r) Z Z^T Diag(r); `features` `[n, D]` (Tensor or array), `relevance` `[n]`.

    Rows of `features` are L2-normalised (Z) so S = Z Z^T is the cosine matrix
    with S_ii = 1; write B = Diag(r) Z, then L = B B^T and row j of L is
    B @ B[j], computed when j is picked (O(n D)). Algorithm 1 of Chen et al.:
    d_i^2 = L_ii = r_i^2; pick j = argmax d^2; for every i,
    e_i = (L_ji - <c_j, c_i>) / d_j, append e_i to c_i, d_i^2 -= e_i^2.
    c (`[m, n]`) and d^2 (`[n]`) are float64: d_i^2 is a difference of nearly
    equal numbers once i is almost in the span of the picks, and float32 would
    turn that cancellation into spurious gains or early stops.

    L_ii is set to r_i^2 exactly (not summed from the normalised row), so equal
    relevances tie exactly and the first pick is the lowest-index argmax r^2.
    Ties (equal d^2) go to the lower index. The run stops when m items are
    picked, when all n are, or when the best remaining d^2 <= eps * max_i L_ii
    (relative, so rescaling r does not change the picks; the rank of L is
    then exhausted up to round-off). An all-zero feature row has L_ii = 0 and
    is never picked.
    """
    z = torch.as_tensor(features).detach().to("cpu", torch.float64)
    r = torch.as_tensor(np.asarray(relevance, dtype=np.float64))
    if z.dim() != 2 or r.dim() != 1 or z.shape[0] != r.shape[0]:
        raise ValueError(f"need features [n, D] and relevance [n] (got {list(z.shape)} and {list(r.shape)})")
    if m < 0:
        raise ValueError(f"m must be >= 0 (got {m})")
    if not torch.isfinite(z).all() or not torch.isfinite(r).all():
        raise ValueError("features and relevance must be finite")
    n = z.shape[0]
    b = (r[:, None] * torch.nn.functional.normalize(z, dim=1)).numpy()   # [n, D], L = b b^T
    d2 = np.where(z.abs().amax(dim=1).numpy() > 0, r.numpy() ** 2, 0.0)  # [n] L_ii = r_i^2 S_ii, S_ii = 1 exactly
    scale = float(d2.max()) if n else 0.0
    steps = min(m, n)
    c = np.zeros((steps, n), dtype=np.float64)                           # row t: e from the t-th pick
    picks: list[int] = []
    gains: list[float] = []
    taken = np.zeros(n, dtype=bool)
    for t in range(steps):
        j = int(np.argmax(np.where(taken, -np.inf, d2)))
        if not d2[j] > eps * scale:
            return _result(picks, gains, m, n, exhausted=True)
        picks.append(j)
        gains.append(float(d2[j]))
        taken[j] = True
        if t + 1 == steps:
            break
        e = (b @ b[j] - c[:t].T @ c[:t, j]) / np.sqrt(d2[j])            # [n] L_j,: - <c_j, c_i>
        c[t] = e
        d2 = d2 - e * e
    return _result(picks, gains, m, n, exhausted=False)


def brute_force_greedy_dpp(L: np.ndarray, m: int, eps: float = DEFAULT_EPS) -> DPPResult:
    """Reference greedy MAP on an explicit kernel `L` `[n, n]` (PSD): argmax_i log det(L[Y+i, Y+i]).

    Every candidate's determinant is recomputed from scratch (O(n m^4) in all):
    for tests and the speed benchmark only. Same tie and stop rules as
    `greedy_dpp`, with gain = det(L_{Y+i}) / det(L_Y).
    """
    L = np.asarray(L, dtype=np.float64)
    if L.ndim != 2 or L.shape[0] != L.shape[1]:
        raise ValueError(f"L must be square (got shape {L.shape})")
    if m < 0:
        raise ValueError(f"m must be >= 0 (got {m})")
    n = L.shape[0]
    scale = float(np.diag(L).max()) if n else 0.0
    picks: list[int] = []
    gains: list[float] = []
    logdet = 0.0
    for _ in range(min(m, n)):
        rest = np.setdiff1d(np.arange(n), picks)
        sets = np.concatenate([np.tile(picks, (len(rest), 1)), rest[:, None]], axis=1).astype(np.int64)
        sign, logdets = np.linalg.slogdet(L[sets[:, :, None], sets[:, None, :]])   # [len(rest)]
        gain = np.where(sign > 0, np.exp(logdets - logdet), 0.0)
        best = int(np.argmax(gain))            # rest is sorted: ties go to the lower index
        if not gain[best] > eps * scale:
            return _result(picks, gains, m, n, exhausted=True)
        picks.append(int(rest[best]))
        gains.append(float(gain[best]))
        logdet = float(logdets[best])
    return _result(picks, gains, m, n, exhausted=False)
