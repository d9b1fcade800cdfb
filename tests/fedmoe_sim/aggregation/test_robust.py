"""Robust aggregation rules and the outlier test behind the norm bound and the num-examples cap."""

import numpy as np
import pytest

from fedmoe_sim.aggregation.robust import (aggregate, coordinate_median, outliers_above, trimmed_mean,
                                           update_floors, update_norm, update_norms)


def _s(*values):
    return {"w": np.array(values, np.float32)}


def test_the_median_ignores_one_huge_client_the_mean_does_not():
    states = [_s(1.0, 2.0), _s(1.2, 2.2), _s(0.8, 1.8), _s(1e6, -1e6)]
    assert np.allclose(coordinate_median(states)["w"], [1.1, 1.9])
    assert aggregate(states, [1, 1, 1, 1], "mean")["w"][0] > 1e5


def test_the_trimmed_mean_cuts_the_same_share_from_each_end_per_coordinate():
    states = [_s(v, -v) for v in (0.0, 1.0, 2.0, 3.0, 100.0)]
    assert np.allclose(trimmed_mean(states, 0.2)["w"], [2.0, -2.0])      # 1 of 5 cut from each end
    assert np.allclose(trimmed_mean(states, 0.0)["w"], [21.2, -21.2])    # nothing cut: the plain mean
    with pytest.raises(ValueError, match="trim"):
        trimmed_mean(states, 0.5)


def test_robust_rules_keep_the_dtype_and_ignore_the_weights():
    states = [_s(1.0), _s(2.0), _s(9.0)]
    for rule in ("median", "trimmed-mean"):
        out = aggregate(states, [1000, 1, 1], rule, 0.34)
        assert out["w"].dtype == np.float32 and out["w"][0] == 2.0
    with pytest.raises(ValueError, match="unknown aggregation rule 'max'"):
        aggregate(states, [1, 1, 1], "max")


def test_update_norm_measures_from_the_reference_when_it_matches():
    state = {"w": np.array([3.0, 4.0], np.float32), "n": np.array([7], np.int64)}
    assert update_norm(state) == 5.0                                    # integer arrays are not weights
    assert update_norm(state, {"w": np.array([3.0, 0.0], np.float32)}) == 4.0
    assert update_norm(state, {"w": np.zeros(3, np.float32)}) == 5.0    # shape differs: from zero


def test_norms_of_a_round_equal_the_one_by_one_norms_whether_or_not_clients_share_a_reference():
    rng = np.random.default_rng(3)
    shared = {"w": rng.normal(size=(4, 5)).astype(np.float32), "b": rng.normal(size=5).astype(np.float32)}
    own = {"w": rng.normal(size=(4, 5)).astype(np.float32), "b": np.zeros(2, np.float32)}    # b: other shape
    states = [{k: v + rng.normal(size=v.shape).astype(np.float32) for k, v in shared.items()} for _ in range(5)]
    refs = [shared, shared, None, own, shared]
    assert update_norms(states, refs) == [update_norm(s, r) for s, r in zip(states, refs)]


@pytest.mark.parametrize("values, bound, flagged", [
    ([1.0, 1.1, 0.9, 50.0], 10, [3]),
    ([1.0, 1.1, 0.9, 5.0], 10, []),
    ([1.0, 1e9], 10, []),                   # two values: no majority to judge by
    ([0.0, 0.0, 0.0, 5.0], 10, []),         # zero median: no scale to judge by
    ([1.0, 1.1, 0.9, 50.0], 0, []),         # off
])
def test_outliers_are_judged_against_the_median(values, bound, flagged):
    assert outliers_above(values, bound) == flagged


# a gated part: most clients' gates ignore it (tiny updates), two still use it, all within its own norm 18.7
GATED = [0.001, 0.0006, 0.002, 0.001, 0.0008, 0.4, 0.3]


@pytest.mark.parametrize("values, floor, flagged", [
    (GATED, 18.7, []),                          # honest: within the part's own scale
    (GATED, 0.0, [5, 6]),                       # the median alone calls them outliers
    (GATED + [1.9e7], 18.7, [7]),               # an upload scaled by 1e6 is still out
    (GATED + [20.0], 18.7, [7]),                # moved further than the part's own length
    ([1.0, 1.1, 0.9, 50.0], 18.7, [3]),         # above the median bound and the floor
    ([1.0, 1.1, 0.9, 15.0], 18.7, []),          # above the median bound, under the floor
    ([0.0, 0.0, 0.0, 50.0], 18.7, [3]),         # zero median: the floor still judges
    ([0.0, 0.0, 0.0, 5.0], 0.0, []),            # zero median, no floor: no scale at all
])
def test_a_floor_keeps_updates_within_their_parts_own_scale(values, floor, flagged):
    assert outliers_above(values, 10, [floor] * len(values)) == flagged


def test_non_finite_values_are_outliers_even_where_the_median_cannot_judge():
    nan, inf = float("nan"), float("inf")
    assert outliers_above([1.0, nan, 1.1, 0.9], 10) == [1]          # the median of the rest is not NaN
    assert outliers_above([1.0, 1.1, 0.9, inf], 10, [99.0] * 4) == [3]
    assert outliers_above([1.0, nan], 10) == [1]                       # too few for a median, still out
    assert outliers_above([nan, nan, nan, 1.0], 10) == [0, 1, 2]
    assert outliers_above([1.0, nan, 1.1, 0.9], 0) == []                # the screen is off
    with pytest.raises(ValueError, match="4 values but 3 floors"):
        outliers_above([1.0, 1.1, 0.9, 5.0], 10, [1.0] * 3)


def test_the_floor_is_the_norm_of_what_was_sent():
    assert update_floors([_s(3.0, 4.0), None, {"w": np.zeros(2, np.float32), "n": np.array([9])}]) == [5.0, 0.0, 0.0]
