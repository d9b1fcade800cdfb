"""Student-t intervals, checked against table values and hand arithmetic."""

import math

import pytest

from fedmoe_sim.results.stats import betainc, mean_ci, paired_diff_ci, t_quantile


@pytest.mark.parametrize("df, expected", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (29, 2.0452)])
def test_t_quantile_matches_the_table_at_97_5(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=5e-5)


@pytest.mark.parametrize("p, df, expected", [
    (0.95, 2, 2.9200), (0.995, 3, 5.8409), (0.9, 10, 1.3722), (0.99, 20, 2.5280), (0.9995, 1, 636.6192),
])
def test_t_quantile_other_levels(p, df, expected):
    assert t_quantile(p, df) == pytest.approx(expected, abs=5e-4)


def test_t_quantile_closed_forms():
    # df = 1 is Cauchy: tan(pi (p - 1/2)); df = 2: (2p - 1) / sqrt(2 p (1 - p))
    for p in (0.6, 0.9, 0.99, 0.999999):
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
        assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)


def test_t_quantile_is_symmetric_and_tends_to_the_normal():
    assert t_quantile(0.5, 3) == 0.0
    assert t_quantile(0.025, 4) == pytest.approx(-t_quantile(0.975, 4), rel=1e-12)
    assert t_quantile(0.975, math.inf) == pytest.approx(1.959964, abs=1e-6)
    # continuous where the exact method hands over to the expansion
    assert t_quantile(0.975, 2999) == pytest.approx(t_quantile(0.975, 3000), abs=1e-6)


def test_t_quantile_agrees_with_scipy_everywhere():
    stats = pytest.importorskip("scipy.stats")
    for df in (0.5, 1, 2, 3, 7, 30, 120, 1000, 5000, 1e6):
        for p in (0.51, 0.8, 0.95, 0.975, 0.999, 0.01):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-8)


def test_t_quantile_rejects_bad_arguments():
    for p, df in ((0.0, 3), (1.0, 3), (0.9, 0), (0.9, -1)):
        with pytest.raises(ValueError):
            t_quantile(p, df)


def test_betainc_known_values():
    assert betainc(1, 1, 0.3) == pytest.approx(0.3)                 # uniform
    assert betainc(2, 1, 0.5) == pytest.approx(0.25)                # x^2
    assert betainc(0.5, 0.5, 0.5) == pytest.approx(0.5)             # symmetric arcsine
    assert betainc(3, 2, 0.0) == 0.0 and betainc(3, 2, 1.0) == 1.0


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
