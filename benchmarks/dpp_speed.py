"""Speed of MetaMoE's greedy DPP (fedmoe_sim.proxy.dpp): fast incremental Cholesky vs brute force.

Not a test. Random Gaussian features and uniform relevance, seeded, so every run
times the same problem:
- the paper's size (n = 3,000 candidates, m = 500 proxies, D = 512): fast greedy only;
- a size where brute force is feasible (n = 300, m = 50, D = 512): both, plus an
  equality check of the pick sequences.
Prints a table, then one JSON line.

    .venv/bin/python benchmarks/dpp_speed.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from fedmoe_sim.proxy.dpp import brute_force_greedy_dpp, greedy_dpp


def problem(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features `[n, D]` float32 and relevance `[n]` in (0.01, 0.99), from `seed` alone."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dim)).astype(np.float32), rng.uniform(0.01, 0.99, size=n)


def kernel(feats: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Explicit L = Diag(r) S Diag(r) `[n, n]` for the brute force (greedy_dpp never builds it)."""
    z = feats.astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    return r[:, None] * (z @ z.T) * r[None, :]


def best_time(fn, repeats: int):
    """(min wall seconds over `repeats` runs, last result): min is the least noisy on a shared box."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rows, record = [], {"bench": "dpp_speed", "seed": args.seed, "repeats": args.repeats}
    n, m, dim = 3000, 500, 512
    feats, r = problem(n, dim, args.seed)
    t_fast, res = best_time(lambda: greedy_dpp(feats, r, m), args.repeats)
    rows.append((n, m, dim, "greedy_dpp (fast)", t_fast, len(res.indices), res.reason, ""))
    record.update(fast_s_n3000_m500_d512=round(t_fast, 4), fast_reason_n3000=res.reason)

    n, m = 300, 50
    feats, r = problem(n, dim, args.seed + 1)
    L = kernel(feats, r)
    t_fast, fast = best_time(lambda: greedy_dpp(feats, r, m), args.repeats)
    t_slow, slow = best_time(lambda: brute_force_greedy_dpp(L, m), max(1, args.repeats))
    equal = bool(np.array_equal(fast.indices, slow.indices))
    gain_err = float(np.max(np.abs(fast.gains - slow.gains) / slow.gains))
    rows.append((n, m, dim, "greedy_dpp (fast)", t_fast, len(fast.indices), fast.reason, ""))
    rows.append((n, m, dim, "brute force", t_slow, len(slow.indices), slow.reason,
                 f"same picks: {equal}, max rel gain diff {gain_err:.1e}"))
    record.update(fast_s_n300_m50_d512=round(t_fast, 5), brute_s_n300_m50_d512=round(t_slow, 4),
                  speedup_n300=round(t_slow / t_fast, 1), same_picks_n300=equal, max_rel_gain_diff_n300=gain_err)

    print(f"{'n':>5} {'m':>4} {'D':>4}  {'method':<18} {'seconds':>9}  {'picked':>6}  {'stop':<14} check")
    for n_, m_, d_, name, t, k, reason, note in rows:
        print(f"{n_:>5} {m_:>4} {d_:>4}  {name:<18} {t:>9.4f}  {k:>6}  {reason:<14} {note}")
    record.update(python=platform.python_version(), torch=torch.__version__, numpy=np.__version__,
                  torch_threads=torch.get_num_threads())
    print(json.dumps(record))


if __name__ == "__main__":
    main()
