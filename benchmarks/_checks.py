"""Honesty checks of benchmarks/sim_speed.py: the modes computed the same thing, on the patched Flower.

Same result: a speed ratio means something only if the modes end with the same
model. After the timed rounds every FedAvg-driving mode hands in its global
expert; each is compared with the one-core loop's (a) by the largest absolute
difference of any entry. The tolerance, SAME_RESULT_TOL = 1e-5, sits between two
measured scales (BENCHMARKS.md, five rounds): vectorised training (b) moves the
expert by float32 reduction order only (at most 3e-8), Flower's float32
aggregation (c) by 4e-8 to 3e-6, growing with the cohort; a different cohort,
seed or starting point moves it by the order of one round's update, printed
beside the check as `update` (2e-4 to 3e-2 for these workloads). A single
dropped client can move it less than that: dropped and rejected replies are
counted by the modes themselves. The multi-process floor (a2) averages in (a)'s
order: 0 exactly. Personalised methods (`local`) have no global model: N/A.

Patch: the speed of short rounds depends on `experiments/flower_patches.py`; a
benchmark on an unpatched Flower would report Flower's 0.1 s polling as our
overhead, so it stops instead (`require_pickup_patch`).
"""

from __future__ import annotations

import numpy as np

State = dict[str, np.ndarray]
SAME_RESULT_TOL = 1e-5


def max_abs_diff(a: State, b: State) -> float:
    """Largest |a[k] - b[k]| over every key; inf when keys or shapes differ (not the same model)."""
    if set(a) != set(b) or any(np.shape(a[k]) != np.shape(b[k]) for k in a):
        return float("inf")
    return max((float(np.max(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64))))
                for k in a if np.size(a[k])), default=0.0)


def same_result(experts: dict[str, State | None], reference: str = "a", previous: State | None = None,
                tol: float = SAME_RESULT_TOL) -> dict:
    """Each mode's global expert against `experts[reference]`: {"diff": mode -> max abs difference,
    "same": all within tol (None when fewer than two modes handed one in), "tol", and "update":
    the reference's change over its last round (`previous` = the expert one round earlier), the
    scale a genuinely different result would show}."""
    ref = experts.get(reference)
    got = {m: s for m, s in experts.items() if m != reference and s is not None}
    diff = {m: max_abs_diff(ref, s) for m, s in got.items()} if ref is not None else {}
    return {"diff": {m: float(f"{d:.3g}") for m, d in diff.items()},
            "same": all(d <= tol for d in diff.values()) if diff else None, "tol": tol,
            "update": float(f"{max_abs_diff(ref, previous):.3g}") if ref is not None and previous is not None else None}


def require_pickup_patch() -> None:
    """Install Flower's faster message pick-up (experiments/flower_patches.py) or stop with a
    one-line reason: installed flwr, the version it was written for and the ones checked."""
    from experiments import flower_patches as fp

    if fp.shorten_message_pickup() and fp.pickup_patch_installed():
        return
    raise SystemExit(f"sim_speed: the message pick-up patch (experiments/flower_patches.py) did not install on "
                     f"flwr {fp.flwr_version()} (written for {fp.WRITTEN_FOR_FLWR}, source checked on "
                     f"{', '.join(fp.CHECKED_FLWR)}): unpatched, every short round pays Flower's 0.1 s polling "
                     "and the numbers would not be ours; update PINNED_SOURCE_SHA256 after checking the new loop")
