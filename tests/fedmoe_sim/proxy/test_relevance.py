"""Relevance probe (MetaMoE step 1): ranks private-like samples first, seeded, scored lazily batch by batch."""

import weakref

import numpy as np
import pytest
import torch
from torch import nn

from fedmoe_sim.proxy.relevance import fit_relevance, iter_features, pool_sampler, score_pool

D = 16


def _features(n: int, private_like: bool, gen: torch.Generator) -> torch.Tensor:
    """Private-like rows point near e_0, the others near e_1; each row gets a random norm in [0.1, 10]."""
    centre = torch.zeros(D)
    centre[0 if private_like else 1] = 3.0
    z = centre + torch.randn(n, D, generator=gen)
    return z * torch.empty(n, 1).uniform_(0.1, 10.0, generator=gen)


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting 1/2 (Mann-Whitney)."""
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(0)
    private = _features(60, True, gen)
    # public pool: 20% private-like, 80% other, shuffled
    pool = torch.cat([_features(100, True, gen), _features(400, False, gen)])
    like = torch.cat([torch.ones(100, dtype=torch.bool), torch.zeros(400, dtype=torch.bool)])
    perm = torch.randperm(500, generator=gen)
    return private, pool[perm], like[perm].numpy()


def _sampler(pool: torch.Tensor):
    return lambda n, gen: pool[torch.randperm(len(pool), generator=gen)[:n]]


def test_probe_ranks_private_like_samples_first(data):
    private, pool, like = data
    probe = fit_relevance(private, _sampler(pool), seed=1, epochs=50, lr=0.05)
    r = score_pool(probe, pool.split(64))
    assert r.shape == (500,) and r.dtype == np.float64 and ((r > 0) & (r < 1)).all()
    assert _auc(r[like], r[~like]) > 0.95


def test_probe_is_deterministic_from_the_seed(data):
    private, pool, _ = data
    a = fit_relevance(private, _sampler(pool), seed=3, epochs=5, lr=0.05)
    b = fit_relevance(private, _sampler(pool), seed=3, epochs=5, lr=0.05)
    c = fit_relevance(private, _sampler(pool), seed=4, epochs=5, lr=0.05)
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)
    assert a.bias == b.bias
    assert not torch.equal(a.weight, c.weight)      # other negatives, other batch order


def test_features_are_scale_invariant(data):
    """L2 normalisation: rescaling every row (or the whole pool) leaves the fit and the scores unchanged."""
    private, pool, _ = data
    a = fit_relevance(private, _sampler(pool), seed=2, epochs=5, lr=0.05)
    b = fit_relevance(100.0 * private, _sampler(0.01 * pool), seed=2, epochs=5, lr=0.05)
    torch.testing.assert_close(a.weight, b.weight)
    np.testing.assert_allclose(score_pool(a, [pool]), score_pool(a, [7.0 * pool]), rtol=1e-6)  # float32 inputs


def test_batched_scoring_equals_one_shot(data):
    private, pool, _ = data
    probe = fit_relevance(private, _sampler(pool), seed=0, epochs=5, lr=0.05)
    one_shot = score_pool(probe, [pool])
    np.testing.assert_allclose(score_pool(probe, pool.split(7)), one_shot, rtol=1e-12, atol=0)
    # by hand: sigmoid(<z/|z|, w> + b), float64
    z = pool.double() / pool.double().norm(dim=1, keepdim=True)
    np.testing.assert_allclose(one_shot, torch.sigmoid(z @ probe.weight + probe.bias).numpy(), rtol=1e-12)


def test_scoring_consumes_a_generator_one_batch_at_a_time(data):
    """A generator has no len(); and when batch k is made, at most batches k-1 and k-2 can still be alive."""
    private, pool, _ = data
    probe = fit_relevance(private, _sampler(pool), seed=0, epochs=2, lr=0.05)
    alive, peak = [0], [0]

    def batches():
        gen = torch.Generator().manual_seed(9)
        for _ in range(50):
            t = torch.randn(10, D, generator=gen)
            alive[0] += 1
            peak[0] = max(peak[0], alive[0])
            weakref.finalize(t, lambda: alive.__setitem__(0, alive[0] - 1))
            yield t
            del t

    r = score_pool(probe, batches())
    assert r.shape == (500,)
    assert peak[0] <= 2                            # keeping every batch would reach 50


class _LinearFeatures(nn.Module):
    """A stand-in ExpertModel: features = x @ W; dropout that must be off while featurising."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 3, bias=False)
        self.drop = nn.Dropout(0.5)
        self.prepared: list[int] = []

    def prepare(self, x):
        self.prepared.append(len(x))
        return torch.as_tensor(x, dtype=torch.float32)

    def features(self, inputs):
        return self.drop(self.proj(inputs))


def test_iter_features_batches_in_eval_mode_and_restores_the_mode():
    model = _LinearFeatures().train()
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    feats = list(iter_features(model, x, batch_size=4))
    assert [f.shape for f in feats] == [(4, 3), (4, 3), (2, 3)] and model.prepared == [4, 4, 2]
    assert model.training                                     # restored
    with torch.no_grad():
        expected = model.proj(torch.as_tensor(x))             # no dropout applied
    torch.testing.assert_close(torch.cat(feats), expected)
    assert not any(f.requires_grad for f in feats)


def test_pool_sampler_draws_distinct_rows_from_the_generator():
    model = _LinearFeatures()
    with torch.no_grad():
        model.proj.weight.copy_(torch.eye(3, 4))
    x = np.arange(40, dtype=np.float32).reshape(10, 4)       # row i starts with 4 i
    sample = pool_sampler(model, x, batch_size=3)
    a = sample(6, torch.Generator().manual_seed(1))
    b = sample(6, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    rows = (a[:, 0] / 4).long().tolist()
    assert len(set(rows)) == 6
    assert sample(15, torch.Generator().manual_seed(1)).shape == (15, 3)   # more than the pool: with replacement
