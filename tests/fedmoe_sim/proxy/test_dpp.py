"""Greedy DPP (MetaMoE step 3) against hand-computed determinants and the brute-force greedy oracle."""

import numpy as np
import pytest
import torch

from fedmoe_sim.proxy.dpp import brute_force_greedy_dpp, greedy_dpp, top_n


def _kernel(feats: np.ndarray, r: np.ndarray) -> np.ndarray:
    """The explicit L = Diag(r) S Diag(r), S = cosine matrix: only the oracle ever builds it."""
    z = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    return r[:, None] * (z @ z.T) * r[None, :]


def test_top_n_is_stable_on_ties():
    scores = np.array([0.5, 0.9, 0.5, 0.9, 0.1])
    np.testing.assert_array_equal(top_n(scores, 3), [1, 3, 0])
    np.testing.assert_array_equal(top_n(scores, 10), [1, 3, 0, 2, 4])
    assert top_n(scores, 0).shape == (0,)


def test_three_items_by_hand():
    # Unit directions z1 = (1, 0, 0), z2 = (.8, .6, 0), z3 = (0, .6, .8); rows scaled by 2, 3, 5 to check
    # that greedy_dpp normalises them. S12 = .8, S13 = 0, S23 = .36. r = (1, .9, .6):
    #   L11 = 1, L22 = .81, L33 = .36, L12 = 1*.9*.8 = .72, L13 = 0, L23 = .9*.6*.36 = .1944.
    # Step 1: argmax L_ii -> item 0, gain 1.
    # Step 2: det L{0,1} = .81 - .72^2 = .2916; det L{0,2} = .36 - 0 = .36 -> item 2 (less relevant than
    #         item 1 but orthogonal to item 0), gain .36 / 1 = .36.
    # Step 3: det S = 1*(1 - .36^2) - .8*(.8*1 - .36*0) + 0 = .8704 - .64 = .2304;
    #         det L = (1 * .81 * .36) * .2304 = .06718464 -> item 1, gain .06718464 / .36 = .186624.
    feats = np.array([[2.0, 0, 0], [2.4, 1.8, 0], [0, 3.0, 4.0]])
    r = np.array([1.0, 0.9, 0.6])
    res = greedy_dpp(feats, r, m=3)
    np.testing.assert_array_equal(res.indices, [0, 2, 1])
    np.testing.assert_allclose(res.gains, [1.0, 0.36, 0.186624], rtol=1e-12)
    assert (res.stopped_early, res.reason) == (False, "m reached")
    np.testing.assert_allclose(np.log(res.gains).sum(), np.log(0.06718464), rtol=1e-12)
    oracle = brute_force_greedy_dpp(_kernel(feats, r), m=3)
    np.testing.assert_array_equal(oracle.indices, [0, 2, 1])
    np.testing.assert_allclose(oracle.gains, res.gains, rtol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("dim", [8, 16])
def test_fast_greedy_matches_brute_force(seed, dim):
    """n = 30, m = 10: with D = 8 the kernel has rank 8, so both must stop after 8 picks."""
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(30, dim))
    r = rng.uniform(0.05, 0.95, size=30)
    fast = greedy_dpp(torch.as_tensor(feats, dtype=torch.float32), r, m=10)
    slow = brute_force_greedy_dpp(_kernel(feats.astype(np.float32).astype(np.float64), r), m=10)
    np.testing.assert_array_equal(fast.indices, slow.indices)
    np.testing.assert_allclose(fast.gains, slow.gains, rtol=1e-6)
    assert len(set(fast.indices.tolist())) == len(fast.indices)
    assert np.all(np.diff(fast.gains) <= 1e-12)          # greedy gains never increase
    if dim == 8:
        assert (len(fast.indices), fast.stopped_early, fast.reason) == (8, True, "rank exhausted after 8")
        assert slow.reason == "rank exhausted after 8"
    else:
        assert (len(fast.indices), fast.stopped_early, fast.reason) == (10, False, "m reached")


def test_rank_deficient_features_stop_at_the_rank():
    rng = np.random.default_rng(7)
    feats = rng.normal(size=(20, 3)) @ rng.normal(size=(3, 10))      # [20, 10] of rank 3
    res = greedy_dpp(feats, rng.uniform(0.1, 0.9, size=20), m=10)
    assert (len(res.indices), res.stopped_early, res.reason) == (3, True, "rank exhausted after 3")


def test_m_larger_than_n_takes_all():
    rng = np.random.default_rng(3)
    res = greedy_dpp(rng.normal(size=(5, 8)), rng.uniform(0.1, 0.9, size=5), m=8)
    assert sorted(res.indices.tolist()) == [0, 1, 2, 3, 4]
    assert (res.stopped_early, res.reason) == (True, "m > n: took all 5")


def test_m_zero_and_empty_candidates():
    res = greedy_dpp(np.ones((4, 2)), np.ones(4), m=0)
    assert (res.indices.shape, res.gains.shape, res.stopped_early, res.reason) == ((0,), (0,), False, "m reached")
    res = greedy_dpp(np.zeros((0, 2)), np.zeros(0), m=3)
    assert (res.indices.shape, res.reason) == ((0,), "m > n: took all 0")


def test_equal_relevance_is_pure_diversity():
    """Four directions, each present twice: no duplicate is picked while a new direction remains."""
    base = np.random.default_rng(11).normal(size=(4, 6))
    feats = np.concatenate([base, 3.0 * base])[[0, 4, 1, 5, 2, 6, 3, 7]]   # rows 2k, 2k+1: same direction
    res = greedy_dpp(feats, np.full(8, 0.7), m=6)
    assert res.indices[0] == 0                                             # all L_ii equal: lowest index
    assert len({i // 2 for i in res.indices.tolist()}) == 4                 # one of each direction
    assert (len(res.indices), res.reason) == (4, "rank exhausted after 4")  # the duplicates add nothing


def test_rescaling_relevance_keeps_the_picks():
    """det L_Y = prod r_i^2 det S_Y: a common factor on r scales every size-k det alike, and eps is relative."""
    rng = np.random.default_rng(5)
    feats, r = rng.normal(size=(40, 12)), rng.uniform(0.1, 0.9, size=40)
    a, b = greedy_dpp(feats, r, m=12), greedy_dpp(feats, 1e-3 * r, m=12)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert a.reason == b.reason == "m reached"


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="features"):
        greedy_dpp(np.ones((3, 2)), np.ones(4), m=1)
    with pytest.raises(ValueError, match="m must be"):
        greedy_dpp(np.ones((3, 2)), np.ones(3), m=-1)
