"""MetaMoE step 1 (seed 000): a relevance probe on frozen backbone features.

A client asks "which public samples look like my private domain?" with a linear
probe (logistic regression, BCE) on frozen M0 features: its private samples are
class 1, an equal number of public samples drawn at random are class 0 (equal
counts, so the score is not skewed toward either class by their sizes).
r(x) = sigmoid(probe(x)) is then computed for every public sample.

Features are L2-normalised before the probe. Why: feature norms differ by
orders of magnitude across backbones (a mixer's LayerNorm-ed tokens vs a
transformer's mean-pooled hidden states), so one learning rate and epoch count
then work for all of them, and the probe sees the direction of a feature, which
is what the DPP's cosine kernel (step 3) measures too.

The public pool may hold 100,000+ samples, so it is never featurised as one
matrix: `score_pool` consumes an iterator of feature batches and keeps only the
`[P]` scores. Probe arithmetic is float64 (cheap at `[b, D]`), so a sample's
score does not depend on the batch it was scored in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# (n, generator) -> features `[n, D]` of n public samples drawn at random with `generator`.
PublicSampler = Callable[[int, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class RelevanceProbe:
    """Logistic regression on L2-normalised features: r(z) = sigmoid(<z / |z|, weight> + bias)."""

    weight: torch.Tensor   # [D] float64, CPU
    bias: float
    train_loss: float      # mean BCE over the (balanced) training set after the last epoch

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """`[b, D]` raw features -> `[b]` float64 logits (normalised here, so callers pass raw features)."""
        z = _normalise(feats)
        if z.shape[1] != self.weight.shape[0]:
            raise ValueError(f"features have width {z.shape[1]}, the probe was fit on width {self.weight.shape[0]}")
        return z @ self.weight + self.bias


def _normalise(feats: torch.Tensor) -> torch.Tensor:
    """`[b, D]` -> float64 CPU rows of unit L2 norm (an all-zero row stays zero)."""
    t = torch.as_tensor(feats).detach().to("cpu", torch.float64)
    if t.dim() != 2:
        raise ValueError(f"features must be [batch, dim] (got shape {list(t.shape)})")
    return F.normalize(t, dim=1)


def fit_relevance(private_feats: torch.Tensor, public_feats_sampler: PublicSampler, seed: int,
                  epochs: int, lr: float, batch_size: int = 256) -> RelevanceProbe:
    """Fit the probe: `private_feats` `[N, D]` = 1 vs `public_feats_sampler(N, gen)` `[N, D]` = 0.

    Deterministic from `seed`: one `torch.Generator` first draws the public
    negatives (through the sampler), then each epoch's mini-batch order. Weights
    start at zero (the loss is convex: no init draw is needed). Adam, since
    normalised features give small, unevenly scaled gradients.
    """
    if epochs < 1 or not lr > 0 or batch_size < 1:
        raise ValueError(f"need epochs >= 1, lr > 0, batch_size >= 1 (got {epochs}, {lr}, {batch_size})")
    pos = _normalise(private_feats)
    n = pos.shape[0]
    if n == 0:
        raise ValueError("fit_relevance needs at least one private sample")
    gen = torch.Generator().manual_seed(int(seed))
    neg = _normalise(public_feats_sampler(n, gen))
    if tuple(neg.shape) != tuple(pos.shape):
        raise ValueError(f"public sampler returned shape {list(neg.shape)}, expected {list(pos.shape)}")
    x = torch.cat([pos, neg])                                       # [2N, D]
    y = torch.cat([torch.ones(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)])
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    for _ in range(epochs):
        order = torch.randperm(2 * n, generator=gen)
        for start in range(0, 2 * n, batch_size):
            idx = order[start:start + batch_size]
            loss = F.binary_cross_entropy_with_logits(x[idx] @ w + b, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        final = float(F.binary_cross_entropy_with_logits(x @ w + b, y))
    return RelevanceProbe(weight=w.detach().clone(), bias=float(b.detach()), train_loss=final)


def score_pool(probe: RelevanceProbe, feature_batches: Iterable[torch.Tensor]) -> np.ndarray:
    """Relevance `[P]` float64 in (0, 1) of a pool given as feature batches `[b_k, D]` (in pool order).

    The iterable is consumed once, lazily (a generator is fine; `len()` is never
    asked), and each batch is dropped after scoring: peak memory is one batch.
    """
    out: list[np.ndarray] = []
    with torch.no_grad():
        for feats in feature_batches:
            out.append(torch.sigmoid(probe.logits(feats)).numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float64)


def iter_features(model, x: np.ndarray, batch_size: int = 512) -> Iterator[torch.Tensor]:
    """Yield frozen-backbone features `[b, D]` (CPU) of `x` in order, `batch_size` rows at a time.

    Each batch is prepared (`model.prepare`) and featurised on its own, so neither
    the prepared pool nor its feature matrix is ever whole in memory. The model is
    put in eval mode for each batch (no dropout noise in relevance or DPP
    features: DESIGN "un-augmented inputs") and its previous mode restored before
    the batch is yielded, so a half-consumed generator leaves no trace.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    for start in range(0, len(x), batch_size):
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                feats = model.features(model.prepare(x[start:start + batch_size]))
        finally:
            model.train(was_training)
        yield feats.detach().cpu()


def pool_sampler(model, x_pool: np.ndarray, batch_size: int = 512) -> PublicSampler:
    """A `PublicSampler` over a numpy pool: n distinct rows uniformly at random (with replacement if n > P).

    The indices come from the generator `fit_relevance` passes in, so the
    negatives are fixed by its seed.
    """
    def sample(n: int, gen: torch.Generator) -> torch.Tensor:
        size = len(x_pool)
        if size == 0:
            raise ValueError("the public pool is empty: no negatives for the relevance probe")
        if n <= size:
            idx = torch.randperm(size, generator=gen)[:n]
        else:  # fewer public than private samples: draw with replacement to keep the classes equal
            idx = torch.randint(size, (n,), generator=gen)
        return torch.cat(list(iter_features(model, x_pool[idx.numpy()], batch_size)))

    return sample
