"""Student-t intervals, paired tests and Holm's correction: table values, hand arithmetic, scipy."""

import math
import warnings

import pytest
from scipy import stats

from fedmoe_sim.results.stats import holm, mean_ci, paired_diff_ci, paired_test, t_quantile

# Recorded (repr) from the hand-written incomplete-beta implementation these functions replace
# (commit 0f911ff), so the switch to scipy is shown not to move any number the tables print.
RECORDED_MEAN_CI = [
    ([0.81, 0.84, 0.79], 0.95, (0.8133333333333334, 0.06251609479375761)),
    ([0.81, 0.84, 0.79], 0.9, (0.8133333333333334, 0.042426406871192764)),
    ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.95, (5.5, 2.165850589668169)),
    ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.9, (5.5, 1.7550720133037985)),
    ([0.7, 0.73], 0.95, (0.715, 0.19059307104262044)),
    ([0.7, 0.73], 0.9, (0.715, 0.09470627272012555)),
    ([0.5, 0.5, 0.6, 0.6], 0.95, (0.55, 0.09186931155185389)),
    ([0.5, 0.5, 0.6, 0.6], 0.9, (0.55, 0.06793575062919269)),
    ([0.8, 0.8, 0.8], 0.95, (0.8000000000000002, 3.377781301657392e-16)),   # old: rounding residue; now exactly 0
    ([0.8, 0.8, 0.8], 0.9, (0.8000000000000002, 2.292323669589374e-16)),
]
RECORDED_PAIRED = [
    ([0.82, 0.80, 0.85], [0.78, 0.79, 0.80], 0.95, (0.03333333333333329, 0.051711450125422484)),
    ([0.82, 0.80, 0.85, 0.81], [0.78, 0.79, 0.80, 0.80], 0.9, (0.02749999999999997, 0.024257915042885676)),
]
RECORDED_T_QUANTILE = [
    (0.975, 1, 12.706204736174687), (0.975, 2, 4.302652729749459), (0.95, 4, 2.1318467863266504),
    (0.9, 9, 1.383028738396638), (0.999, 3, 10.21453185240738), (0.975, 2.5, 3.57465484200368),
    (0.8, 0.7, 1.75882673140346), (0.01, 6.3, -3.093189975370529), (0.975, 3500.0, 1.9606420067878114),
]


def _scipy_hw(values, level):
    lo, hi = stats.t.interval(level, len(values) - 1, loc=stats.tmean(values), scale=stats.sem(values))
    return (hi - lo) / 2


@pytest.mark.parametrize("values, level, recorded", RECORDED_MEAN_CI)
def test_mean_ci_matches_the_old_implementation_and_scipy(values, level, recorded):
    mean, hw = mean_ci(values, level)
    assert mean == pytest.approx(recorded[0], abs=1e-9) and hw == pytest.approx(recorded[1], abs=1e-9)
    assert hw == pytest.approx(_scipy_hw(values, level), abs=1e-9)


@pytest.mark.parametrize("a, b, level, recorded", RECORDED_PAIRED)
def test_paired_diff_ci_matches_the_old_implementation_and_scipy(a, b, level, recorded):
    mean, hw = paired_diff_ci(a, b, level)
    assert mean == pytest.approx(recorded[0], abs=1e-9) and hw == pytest.approx(recorded[1], abs=1e-9)
    assert hw == pytest.approx(_scipy_hw([x - y for x, y in zip(a, b)], level), abs=1e-9)


@pytest.mark.parametrize("p, df, recorded", RECORDED_T_QUANTILE)
def test_t_quantile_matches_the_old_implementation_and_scipy(p, df, recorded):
    assert t_quantile(p, df) == pytest.approx(recorded, abs=1e-9)
    assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), abs=1e-9)


@pytest.mark.parametrize("df, expected", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (29, 2.0452)])
def test_t_quantile_matches_the_table_at_97_5(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=5e-5)


def test_t_quantile_closed_forms_and_limits():
    # df = 1 is Cauchy: tan(pi (p - 1/2)); df = 2: (2p - 1) / sqrt(2 p (1 - p)); df = inf is the normal
    for p in (0.6, 0.9, 0.99, 0.999999):
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
        assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)
    assert t_quantile(0.5, 3) == 0.0
    assert t_quantile(0.975, math.inf) == pytest.approx(1.959964, abs=1e-6)


def test_t_quantile_rejects_bad_arguments():
    for p, df in ((0.0, 3), (1.0, 3), (0.9, 0), (0.9, -1)):
        with pytest.raises(ValueError):
            t_quantile(p, df)


def test_mean_ci_of_one_two_three():
    mean, hw = mean_ci([1, 2, 3])                                   # sd = 1
    assert mean == 2.0
    assert hw == pytest.approx(4.3027 / math.sqrt(3), abs=1e-4)     # 2.4842


def test_mean_ci_eight_values_and_another_level():
    # mean 5, sum of squares 32, sd = sqrt(32 / 7) = 2.13809; t_{0.975, 7} = 2.36462
    mean, hw = mean_ci([2, 4, 4, 4, 5, 5, 7, 9])
    assert mean == 5.0
    assert hw == pytest.approx(2.36462 * 2.13809 / math.sqrt(8), abs=1e-4)
    assert mean_ci([1, 2, 3], level=0.90)[1] == pytest.approx(2.9200 / math.sqrt(3), abs=1e-4)


def test_mean_ci_one_seed_has_no_interval():
    mean, hw = mean_ci([0.85])
    assert mean == 0.85 and math.isnan(hw)


def test_mean_ci_equal_values_have_zero_width():
    assert mean_ci([4.0, 4.0, 4.0]) == (4.0, 0.0)
    assert mean_ci([0.8, 0.8, 0.8])[1] == 0.0            # not the 3e-16 rounding residue of sd


def test_mean_ci_rejects_empty_input_and_bad_levels():
    with pytest.raises(ValueError):
        mean_ci([])
    with pytest.raises(ValueError):
        mean_ci([1, 2], level=95)


def test_paired_diff_ci_is_the_interval_of_the_differences():
    mean, hw = paired_diff_ci([3, 5, 7], [1, 2, 3])                  # differences 2, 3, 4
    assert mean == 3.0
    assert hw == pytest.approx(4.3027 / math.sqrt(3), abs=1e-4)


def test_pairing_removes_the_shared_seed_variance():
    base = [0.60, 0.70, 0.80, 0.90]                                  # seeds differ a lot
    better = [b + 0.02 + e for b, e in zip(base, (0.001, -0.001, 0.002, -0.002))]
    diff_mean, diff_hw = paired_diff_ci(better, base)
    assert diff_mean == pytest.approx(0.02)
    assert diff_hw < 0.01 < mean_ci(better)[1]                      # unpaired would be ~0.2 wide


def test_paired_diff_ci_needs_equal_lengths():
    with pytest.raises(ValueError, match="equal"):
        paired_diff_ci([1, 2, 3], [1, 2])


def test_paired_test_by_hand():
    # differences 2, 3, 4: mean 3, sd 1, t = 3 / (1 / sqrt 3) = 5.196 on 2 df; p = 2 P(T_2 > t) = 1 - t / sqrt(t^2 + 2)
    t = 3 * math.sqrt(3)
    assert paired_test([3, 5, 7], [1, 2, 3]) == pytest.approx(1 - t / math.sqrt(t * t + 2), abs=1e-12)   # 0.0351
    assert paired_test([1, 2, 3], [3, 5, 7]) == paired_test([3, 5, 7], [1, 2, 3])                        # two-sided


@pytest.mark.parametrize("a, b", [
    ([0.82, 0.80, 0.85], [0.78, 0.79, 0.80]),
    ([0.82, 0.80, 0.85, 0.81], [0.78, 0.79, 0.80, 0.80]),
    ([0.7, 0.9], [0.71, 0.85]),
])
def test_paired_test_agrees_with_scipy(a, b):
    assert paired_test(a, b) == pytest.approx(stats.ttest_rel(a, b).pvalue, abs=1e-9)


@pytest.mark.parametrize("a, b", [
    ([0.8], [0.7]),                             # one pair: no variance to estimate
    ([], []),
    ([0.8, 0.9, 0.7], [0.8, 0.9, 0.7]),         # all differences 0: t = 0 / 0
    ([1, 2, 3], [0, 1, 2]),                     # constant nonzero difference: t = inf, scipy warns
    ([0.8, 0.9, 0.7], [0.7, 0.8, 0.6]),         # constant 0.1 up to rounding (0.10000000000000009, ...)
    ([0.8, math.nan, 0.7], [0.7, 0.8, 0.65]),
])
def test_paired_test_is_nan_where_undefined_without_warnings(a, b):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(paired_test(a, b))


def test_paired_test_needs_equal_lengths():
    with pytest.raises(ValueError, match="equal"):
        paired_test([1, 2, 3], [1, 2])


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    assert holm([0.2, 0.5, 0.9]) == pytest.approx([0.6, 1.0, 1.0])              # capped at 1, still monotone
    assert holm([0.01, 0.01]) == pytest.approx([0.02, 0.02])                     # ties share a value
    assert holm([0.3]) == [0.3] and holm([]) == []                               # one comparison: unchanged


def test_holm_passes_nan_through_and_does_not_count_it():
    out = holm([0.01, math.nan, 0.04])                                           # m = 2, not 3
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert all(math.isnan(p) for p in holm([math.nan, math.nan]))


def test_holm_is_monotone_in_p():
    ps = [0.001, 0.2, 0.011, 0.04, 0.5, 0.012, 0.03]
    adjusted = holm(ps)
    order = sorted(range(len(ps)), key=ps.__getitem__)
    assert all(adjusted[i] <= adjusted[j] for i, j in zip(order, order[1:]))
    assert all(a >= p for a, p in zip(adjusted, ps))


def test_holm_rejects_values_that_are_not_p_values():
    with pytest.raises(ValueError, match="1.5"):
        holm([0.01, 1.5])
