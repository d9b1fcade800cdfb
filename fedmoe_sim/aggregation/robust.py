"""Robust aggregation and update screening, as pure numpy over state dicts.

Why here and not in a strategy: every method that averages a part (FedAvg's
model, MetaMoE's per-domain experts, FedMoE-DA's gate, LG-FedAvg's head) and
every method that receives uploads at all needs the same defences; the server
glue calls these once (`strategies._federation.Federation.screen`,
`strategies._base.average_part`).

- `coordinate_median` / `trimmed_mean` (Yin et al. 2018): per coordinate, the
  median, or the mean after cutting a share from each end. Both ignore example
  counts on purpose: a weight is exactly what a hostile client would inflate.
- `outliers_above`: indices whose value exceeds `bound` x the median of all (and its
  own floor, where given), the test behind the norm bound and the num-examples cap. A
  median needs 3 values to out-vote one bad one, so fewer never flags a finite value.
"""

from __future__ import annotations

import numpy as np

from fedmoe_sim.aggregation.average import State, weighted_average

MIN_TO_JUDGE = 3   # values needed before a median can out-vote one outlier


def _stacked(states: list[State]) -> dict[str, np.ndarray]:
    if not states:
        raise ValueError("robust aggregation needs at least one state")
    keys = sorted(states[0])
    for s in states[1:]:
        if sorted(s) != keys:
            raise ValueError("states to aggregate have different keys")
    return {k: np.stack([np.asarray(s[k], dtype=np.float64) for s in states]) for k in keys}


def coordinate_median(states: list[State]) -> State:
    """Per coordinate, the median over clients (dtype of the first state kept)."""
    return {k: np.median(v, axis=0).astype(states[0][k].dtype) for k, v in _stacked(states).items()}


def trimmed_mean(states: list[State], trim: float) -> State:
    """Per coordinate, drop the floor(trim * n) smallest and largest values, average the rest."""
    if not 0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5) (got {trim})")
    n = len(states)
    cut = int(np.floor(trim * n))
    out: State = {}
    for k, v in _stacked(states).items():
        kept = np.sort(v, axis=0)[cut:n - cut]
        out[k] = kept.mean(axis=0).astype(states[0][k].dtype)
    return out


def aggregate(states: list[State], weights: list[float], rule: str = "mean", trim: float = 0.1) -> State:
    """One aggregation rule by name: "mean" (weighted by `weights`), "median", "trimmed-mean"."""
    if rule == "mean":
        return weighted_average(states, weights)
    if rule == "median":
        return coordinate_median(states)
    if rule == "trimmed-mean":
        return trimmed_mean(states, trim)
    raise ValueError(f"unknown aggregation rule {rule!r}; one of mean, median, trimmed-mean")


def update_norm(state: State, reference: State | None = None) -> float:
    """L2 norm over all floating arrays of `state - reference` (of `state` when there is no
    reference, or the reference does not match it)."""
    return update_norms([state], [reference])[0]


def update_norms(states: list[State], references: list[State | None]) -> list[float]:
    """`update_norm` of each state against its reference. A reference many clients share (the
    one global part a round sent them all) is converted to float64 once, not once per client."""
    wide: dict[int, dict[str, np.ndarray]] = {}
    out = []
    for state, reference in zip(states, references, strict=True):
        ref64 = None
        if reference is not None:
            ref64 = wide.get(id(reference))
            if ref64 is None:
                ref64 = wide[id(reference)] = {k: np.asarray(v).astype(np.float64) for k, v in reference.items()}
        total = 0.0
        for k, a in state.items():
            a = np.asarray(a)
            if a.dtype.kind not in "fc":
                continue
            ref = None if ref64 is None else ref64.get(k)
            d = a.astype(np.float64) - (ref if ref is not None and ref.shape == a.shape else 0.0)
            total += float(np.vdot(d, d).real)
        out.append(float(np.sqrt(total)))
    return out


def update_floors(sent: list[State | None]) -> list[float]:
    """Per upload, the update norm below which it is never an outlier: the norm of the part
    the client was sent (0 where nothing was sent: the update is then the state itself, and
    only the median judges it).

    Why that scale: one round of honest local training moves a large part by a fraction of its
    own length (on pfedmoe-digits, N = 10: pFedMoE's global expert at most 8%, whatever its
    client's gate weight; FedAvg's whole CNN-5 at most 13%), while a broken or hostile upload
    that matters (scaled by 1e6, or built from scratch) moves it by more than its length. So an
    honest client whose gate keeps it on a part most others ignore is kept. A floor only ever
    keeps: a small part that honest rounds move further (LG-FedAvg's head: up to 1.08x its norm)
    is judged by the median alone, as before, and its updates share one scale.
    """
    norms: dict[int, float] = {}          # one per distinct part sent (FedAvg: one for the round)
    for s in sent:
        if s is not None and id(s) not in norms:
            norms[id(s)] = update_norm(s)
    return [norms[id(s)] if s is not None else 0.0 for s in sent]


def finite_median(values: list[float]) -> float:
    """The median of the finite values (0 when none is): the scale `outliers_above` judges by."""
    finite = [float(v) for v in values if np.isfinite(v)]
    return float(np.median(finite)) if finite else 0.0


def outliers_above(values: list[float], bound: float, floors: list[float] | None = None) -> list[int]:
    """Indices of values above `bound` x the median of the finite values and above their own
    floor (`floors[i]`, default 0), and of every non-finite value (a NaN must not hide in the
    median). None for bound 0; only the non-finite with fewer than MIN_TO_JUDGE values. A zero
    median gives no scale to judge by: then only a positive floor does.

    Why floors: a median says what a round's typical value is only when the values share one
    scale. A gated part (pFedMoE's global expert, whose update each client scales by its gate
    weight) does not: when most gates ignore it, the median is near zero and honest clients
    that still use it look like outliers. A floor tied to the value's own scale keeps them in.
    """
    if bound <= 0:
        return []
    if floors is not None and len(floors) != len(values):
        raise ValueError(f"outliers_above got {len(values)} values but {len(floors)} floors")
    broken = [i for i, v in enumerate(values) if not np.isfinite(v)]
    if len(values) < MIN_TO_JUDGE:
        return broken
    median = finite_median(values)
    floors = floors if floors is not None else [0.0] * len(values)
    return sorted(broken + [i for i, v in enumerate(values) if np.isfinite(v) and (median > 0 or floors[i] > 0)
                            and v > bound * median and v > floors[i]])
