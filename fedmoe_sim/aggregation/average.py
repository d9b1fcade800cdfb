"""Example-weighted averaging of expert states (FedAvg's server step)."""

from __future__ import annotations

import numpy as np

State = dict[str, np.ndarray]


def weighted_average(states: list[State], weights: list[float]) -> State:
    """sum_i w_i * state_i / sum_i w_i, key by key, accumulated in float64.

    All states must share keys and shapes (the caller validated them against the
    expert spec); weights are example counts and must be positive in total.
    """
    if not states:
        raise ValueError("weighted_average needs at least one state")
    if len(states) != len(weights):
        raise ValueError(f"{len(states)} states but {len(weights)} weights")
    w = np.asarray(weights, dtype=np.float64)
    if (w < 0).any() or not w.sum() > 0:
        raise ValueError(f"weights must be >= 0 with a positive sum (got {weights})")
    w = w / w.sum()
    keys = sorted(states[0])
    for s in states[1:]:
        if sorted(s) != keys:
            raise ValueError("states to average have different keys")
    out: State = {}
    for k in keys:
        acc = np.zeros(states[0][k].shape, dtype=np.float64)
        for wi, s in zip(w, states, strict=True):
            acc += wi * s[k]
        out[k] = acc.astype(states[0][k].dtype)
    return out
