"""pFedSim (Tan et al. 2023): classifier similarity -> a personalised extractor per client. Pure numpy.

The server's two steps after the warm-up (facts from FL-bench `src/server/pfedsim.py`):
- similarity: for two clients i, j that trained in the same round,
  s_ij = max(0, mean over classes c of cos(W_i[c], W_j[c])), W `[classes, D]` being the
  classifier weight; a matrix `[N, N]` that starts as the identity and in which a round
  rewrites only the entries between that round's clients (others keep their old value);
- mixing: client i's row with its own entry set to SELF, each entry w -> -log(1 - w),
  normalised to sum 1; its extractor = that weighted sum of the clients' latest extractors.
  A row whose sum is <= 1 (no peer has s > 0) keeps the client's own extractor as it is.
The transform makes weights grow without bound as s -> 1, so a very similar peer counts
almost as much as the client itself (-log(1e-4) = 9.2) and a dissimilar one (s -> 0) nothing.
Ours: a peer's s is capped at SELF too. With s = 1 (identical classifiers) FL-bench's weight
is -log(0) = inf and its average NaN; capped, identical peers weigh as much as the client.
A classifier row of norm < ZERO_NORM has no direction: its cosine counts as 0.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

SELF = 0.9999          # a client's own entry before the transform (FL-bench), and the cap on peers' (ours)
ZERO_NORM = 1e-12

State = Mapping[str, np.ndarray]


def classifier_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """max(0, mean over classes of cos(a[c], b[c])) for two classifier weights `[classes, D]`."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"classifier weights must be two equal [classes, D] arrays (got {a.shape} and {b.shape})")
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    ok = (na >= ZERO_NORM) & (nb >= ZERO_NORM)
    cos = np.where(ok, (a * b).sum(axis=1) / np.where(ok, na * nb, 1.0), 0.0)
    return max(0.0, float(cos.mean()))


def update_similarity(matrix: np.ndarray, classifiers: Mapping[int, np.ndarray]) -> np.ndarray:
    """A copy of `matrix` `[N, N]` with s_ij rewritten for every pair of clients in `classifiers`
    (client id -> its classifier weight this round); the diagonal and every other entry stay."""
    out = np.array(matrix, dtype=np.float64, copy=True)
    ids = sorted(classifiers)
    for k, i in enumerate(ids):
        for j in ids[k + 1:]:
            out[i, j] = out[j, i] = classifier_similarity(classifiers[i], classifiers[j])
    return out


def mixing_weights(matrix: np.ndarray, client: int) -> dict[int, float]:
    """Client -> weight (> 0, summing to 1) of the clients whose extractors form `client`'s;
    `{client: 1.0}` when its row has no similar peer (row sum <= 1)."""
    row = np.asarray(matrix, np.float64)[client]
    if not row.sum() > 1:
        return {client: 1.0}
    w = np.minimum(np.clip(row, 0.0, None), SELF)
    w[client] = SELF
    w = -np.log1p(-w)
    w /= w.sum()
    return {int(j): float(w[j]) for j in np.flatnonzero(w > 0)}


def personalised_extractor(weights: Mapping[int, float], extractors: Mapping[int, State]) -> State:
    """sum_j weights[j] * extractors[j], key by key, accumulated in float64 and returned in the
    extractors' dtype. A single weight of 1 returns that extractor itself (bit-exact, no copy:
    clients that keep the same extractor share one payload in a message)."""
    if len(weights) == 1 and next(iter(weights.values())) == 1.0:
        return extractors[next(iter(weights))]
    first = extractors[next(iter(weights))]
    out = {}
    for k, ref in first.items():
        acc = np.zeros(np.shape(ref), np.float64)
        for j, w in weights.items():
            acc += w * np.asarray(extractors[j][k], np.float64)
        out[k] = acc.astype(np.asarray(ref).dtype)
    return out


def mean_pair_similarity(matrix: np.ndarray, clients: list[int]) -> float | None:
    """Mean s_ij over the pairs of `clients` (the round's), None with fewer than two: a
    diagnostic of how much mixing the next round does (0: none)."""
    ids = sorted(clients)
    if len(ids) < 2:
        return None
    sub = np.asarray(matrix, np.float64)[np.ix_(ids, ids)]
    return float(sub[np.triu_indices(len(ids), 1)].mean())
