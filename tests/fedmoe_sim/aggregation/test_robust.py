"""Robust aggregation rules and the outlier test behind the norm bound and the num-examples cap."""

import numpy as np
import pytest

from fedmoe_sim.aggregation.robust import (aggregate, coordinate_median, outliers_above, trimmed_mean,
                                           update_norm)


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


@pytest.mark.parametrize("values, bound, flagged", [
    ([1.0, 1.1, 0.9, 50.0], 10, [3]),
    ([1.0, 1.1, 0.9, 5.0], 10, []),
    ([1.0, 1e9], 10, []),                   # two values: no majority to judge by
    ([0.0, 0.0, 0.0, 5.0], 10, []),         # zero median: no scale to judge by
    ([1.0, 1.1, 0.9, 50.0], 0, []),         # off
])
def test_outliers_are_judged_against_the_median(values, bound, flagged):
    assert outliers_above(values, bound) == flagged
