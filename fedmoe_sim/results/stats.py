"""Confidence intervals over seeds: Student-t, computed here.

We compare strategies over a handful of seeds (3-10), where the normal 1.96
understates the interval badly (t_{0.975, 2} = 4.30), so intervals use the
Student-t quantile. It is computed exactly (regularised incomplete beta +
bisection) rather than taken from scipy, which the package does not depend on.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Iterable, Sequence

_EPS = 1e-16
_TINY = 1e-300


def _beta_cf(a: float, b: float, x: float) -> float:
    """Continued fraction of I_x(a, b) (modified Lentz; Numerical Recipes 6.4)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 100_000):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                    -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + num / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float, y: float | None = None) -> float:
    """Regularised incomplete beta I_x(a, b); pass y = 1 - x when it is known more precisely."""
    y = 1.0 - x if y is None else y
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_cf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_cf(b, a, y) / b


def t_sf(t: float, df: float) -> float:
    """Upper tail P(T > t) of Student's t with `df` degrees of freedom."""
    if t < 0:
        return 1.0 - t_sf(-t, df)
    return 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t), t * t / (df + t * t))


def _t_quantile_expansion(p: float, df: float) -> float:
    """Cornish-Fisher expansion of t about the normal quantile (Abramowitz & Stegun 26.7.5)."""
    z = NormalDist().inv_cdf(p)
    if math.isinf(df):
        return z
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def t_quantile(p: float, df: float) -> float:
    """Inverse CDF of Student's t: the t with P(T <= t) = p (df may be fractional or inf)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1) (got {p})")
    if not df > 0:
        raise ValueError(f"df must be > 0 (got {df})")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    if df >= 3000:                # lgamma cancellation costs digits here; the expansion is exact to ~1e-14
        return _t_quantile_expansion(p, df)
    q = 1.0 - p
    lo, hi = 0.0, 1.0
    while t_sf(hi, df) > q:                           # bracket: sf is decreasing in t
        lo, hi = hi, hi * 2.0
    for _ in range(400):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi) or hi - lo <= 1e-15 * hi:
            break
        if t_sf(mid, df) > q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1) (got {level})")


def mean_ci(values: Iterable[float], level: float = 0.95) -> tuple[float, float]:
    """Mean over seeds and the half-width of its Student-t interval.

    half_width = t_{(1+level)/2, n-1} * sd / sqrt(n), sd with ddof = 1. With one
    value there is no spread to estimate: the half-width is nan (callers print
    "(n=1)"), never 0, so a single seed cannot pass for a certain result.
    """
    _check_level(level)
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = math.fsum(xs) / n
    if n == 1:
        return mean, math.nan
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    return mean, t_quantile((1.0 + level) / 2.0, n - 1) * sd / math.sqrt(n)


def paired_diff_ci(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of a_i - b_i, pairs sharing a seed (so partitions and cohorts match).

    Pairing removes the between-seed variance both strategies share, so the
    interval is usually much tighter than comparing two unpaired intervals.
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths (got {len(a)} and {len(b)})")
    return mean_ci([x - y for x, y in zip(a, b)], level)
