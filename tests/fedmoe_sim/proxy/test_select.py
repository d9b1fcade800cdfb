"""select_proxies (MetaMoE steps 1-3): top-n candidates by relevance, then DPP or the top-m ablation."""

import numpy as np
import torch
from torch import nn

from fedmoe_sim.proxy.dpp import top_n
from fedmoe_sim.proxy.select import select_proxies

D = 8


class _IdentityFeatures(nn.Module):
    """A stand-in ExpertModel whose features are its inputs; it records every batch it prepares."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.prepared: list[int] = []

    def prepare(self, x):
        self.prepared.append(len(x))
        return torch.as_tensor(x, dtype=torch.float32)

    def features(self, inputs):
        return inputs.clone()


def _pool():
    """Private data near e_0. Public pool: 5 private-like directions, each copied 10 times (50 rows),
    then 150 rows near e_1; shuffled. Copies share a relevance, so top-m takes copies of one direction."""
    rng = np.random.default_rng(0)
    private = rng.normal(size=(40, D)) * 0.3
    private[:, 0] += 3.0
    like = rng.normal(size=(5, D)) * 0.3
    like[:, 0] += 3.0
    other = rng.normal(size=(150, D)) * 0.3
    other[:, 1] += 3.0
    pool = np.concatenate([np.repeat(like, 10, axis=0), other]).astype(np.float32)
    direction = np.concatenate([np.repeat(np.arange(5), 10), np.full(150, -1)])
    perm = rng.permutation(len(pool))
    return private.astype(np.float32), pool[perm], direction[perm]


def test_dpp_picks_distinct_relevant_directions_where_top_m_repeats_one():
    private, pool, direction = _pool()
    model = _IdentityFeatures()
    dpp = select_proxies(model, private, pool, n_candidates=50, m=5, seed=0, batch_size=32)
    assert max(model.prepared) <= 32                       # the pool is prepared batch by batch
    assert len(model.prepared) == 2 + 2 + 7 + 2            # 40 private, 40 negatives, 200 pool, 50 candidates
    np.testing.assert_array_equal(dpp.candidates, top_n(dpp.relevance, 50))
    assert (direction[dpp.candidates] >= 0).all()          # relevance: the 50 private-like rows come first
    assert set(dpp.indices.tolist()) <= set(dpp.candidates.tolist())
    np.testing.assert_array_equal(dpp.indices, dpp.candidates[dpp.dpp_result.indices])
    assert sorted(direction[dpp.indices].tolist()) == [0, 1, 2, 3, 4]
    assert dpp.dpp_result.reason == "m reached"

    ablation = select_proxies(model, private, pool, n_candidates=50, m=5, seed=0, use_dpp=False, batch_size=32)
    np.testing.assert_array_equal(ablation.indices, dpp.candidates[:5])
    assert len(set(direction[ablation.indices].tolist())) == 1   # five copies of the most relevant direction
    assert ablation.dpp_result is None


def test_selection_is_deterministic_from_the_seed():
    private, pool, _ = _pool()
    a = select_proxies(_IdentityFeatures(), private, pool, n_candidates=60, m=8, seed=4)
    b = select_proxies(_IdentityFeatures(), private, pool, n_candidates=60, m=8, seed=4)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.relevance, b.relevance)


def test_rank_exhausted_dpp_is_filled_by_relevance():
    """The 50 candidates hold 5 distinct vectors (rank 5): the DPP stops at 5, the rest come in r order."""
    private, pool, _ = _pool()
    filled = select_proxies(_IdentityFeatures(), private, pool, n_candidates=50, m=12, seed=0)
    assert filled.dpp_result.reason == "rank exhausted after 5" and filled.filled == 7
    picked = filled.dpp_result.indices
    rest = [i for i in range(50) if i not in set(picked.tolist())][:7]   # candidates are best-r first
    np.testing.assert_array_equal(filled.indices, filled.candidates[np.concatenate([picked, rest])])
    bare = select_proxies(_IdentityFeatures(), private, pool, n_candidates=50, m=12, seed=0, fill=False)
    np.testing.assert_array_equal(bare.indices, filled.indices[:5])
    assert bare.filled == 0
