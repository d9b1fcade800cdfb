"""Statistics over seeds, from scipy.stats: Student-t intervals, paired t-tests, Holm's correction.

We compare strategies over a handful of seeds (3-10), where the normal 1.96
understates the interval badly (t_{0.975, 2} = 4.30), so intervals use the
Student-t quantile. Seeds fix partitions and client cohorts, so two strategies
are compared on seed-paired values (the difference removes the variance both
share); the table tests several strategies against one baseline, so its
p-values are Holm-adjusted for the number of comparisons.
"""

from __future__ import annotations

import math
import warnings
from typing import Iterable, Sequence

import numpy as np
from scipy import stats as sps

# Differences whose spread is below this fraction of the values' magnitude are constant up to rounding:
# fractions such as 0.8 - 0.7 and 0.9 - 0.8 differ in the last bits, while real accuracy differences
# differ by at least 1 / (test-set size), many orders above.
_CONSTANT_REL_TOL = 1e-12


def t_quantile(p: float, df: float) -> float:
    """Inverse CDF of Student's t (scipy.stats.t.ppf); df may be fractional or inf.

    Kept because `fedmoe_sim.results` exports it; bad arguments raise instead of giving scipy's nan.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1) (got {p})")
    if not df > 0:
        raise ValueError(f"df must be > 0 (got {df})")
    return float(sps.t.ppf(p, df))


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1) (got {level})")


def mean_ci(values: Iterable[float], level: float = 0.95) -> tuple[float, float]:
    """Mean over seeds and the half-width of its Student-t interval.

    half_width = t_{(1+level)/2, n-1} * sd / sqrt(n), sd with ddof = 1. With one
    value there is no spread to estimate: the half-width is nan (callers print
    "(n=1)"), never 0, so a single seed cannot pass for a certain result. Values
    that are all equal give exactly 0 (not a rounding residue), so the table can
    tell "all seeds agree" from a tiny spread.
    """
    _check_level(level)
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = math.fsum(xs) / n
    if n == 1:
        return mean, math.nan
    if min(xs) == max(xs):
        return mean, 0.0
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    return mean, float(sps.t.ppf((1.0 + level) / 2.0, n - 1)) * sd / math.sqrt(n)


def _paired(a: Sequence[float], b: Sequence[float]) -> None:
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths (got {len(a)} and {len(b)})")


def paired_diff_ci(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of a_i - b_i, pairs sharing a seed (so partitions and cohorts match).

    Pairing removes the between-seed variance both strategies share, so the
    interval is usually much tighter than comparing two unpaired intervals.
    """
    _paired(a, b)
    return mean_ci([x - y for x, y in zip(a, b)], level)


def paired_test(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided paired t-test p-value of a_i - b_i = 0 (scipy.stats.ttest_rel), pairs sharing a seed.

    nan where the test is undefined: fewer than 2 pairs, a non-finite value, or
    differences that are all equal (up to rounding of the inputs): with zero
    variance t is 0/0 or ±inf, and scipy gives nan or a meaningless p with a
    precision warning. Those cases are decided here, so no warning reaches the user.
    """
    _paired(a, b)
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) < 2 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        return math.nan
    d = x - y
    scale = max(np.abs(x).max(), np.abs(y).max())
    if np.ptp(d) <= _CONSTANT_REL_TOL * scale:
        return math.nan
    with warnings.catch_warnings():        # belt and braces: degenerate inputs were handled above
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(sps.ttest_rel(x, y).pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni step-down adjusted p-values, in the input order.

    With the m defined p-values sorted ascending, p_(i) (i = 1..m) becomes
    max_{j<=i} min(1, (m - j + 1) p_(j)): monotone in p, capped at 1, and it
    controls the family-wise error at any level without assuming independence.
    nan entries (comparisons without a test) stay nan and do not count in m.
    """
    bad = [p for p in p_values if not (math.isnan(p) or 0.0 <= p <= 1.0)]
    if bad:
        raise ValueError(f"p-values must be in [0, 1] or nan (got {bad})")
    out = [math.nan] * len(p_values)
    defined = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m, running = len(defined), 0.0
    for rank, (p, i) in enumerate(defined):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out
