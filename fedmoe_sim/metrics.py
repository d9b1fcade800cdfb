"""Turning per-client evaluation results into the numbers a table reports.

Kept apart from any transport: the server hands in (client id, metrics) pairs
and gets flat, named metrics back ("where measured" is the prefix).
"""

from __future__ import annotations

import math

import numpy as np

ACC_OWN, ACC_DOMAIN, DOMAIN, NUM_EXAMPLES, EVAL_LOSS = "acc-own", "acc-domain", "domain", "num-examples", "eval-loss"
TRAIN_LOSS, TRAIN_ACC = "train-loss", "train-acc"


def _weighted(values: list[float], weights: list[float]) -> float:
    pairs = [(v, w) for v, w in zip(values, weights, strict=True) if math.isfinite(v) and w > 0]
    if not pairs:
        return float("nan")
    return float(sum(v * w for v, w in pairs) / sum(w for _, w in pairs))


def summarise_evaluation(per_client: dict[int, dict[str, float]], domain_names: tuple[str, ...]) -> dict[str, float]:
    """Per-domain accuracy (mean over that domain's clients, on the domain's test set),
    their unweighted mean (`acc-mean`, every domain counts once), the worst client's
    accuracy on its own split, and the example-weighted own-split accuracy and loss.
    Accuracies are fractions in [0, 1].
    """
    out: dict[str, float] = {}
    if not per_client:
        return out
    by_domain: dict[int, list[float]] = {}
    for m in per_client.values():
        d = int(m.get(DOMAIN, -1))
        if d >= 0 and math.isfinite(m.get(ACC_DOMAIN, float("nan"))):
            by_domain.setdefault(d, []).append(m[ACC_DOMAIN])
    for d, accs in sorted(by_domain.items()):
        out[f"acc/{domain_names[d]}"] = float(np.mean(accs))
    if by_domain:
        out["acc-mean"] = float(np.mean([out[f"acc/{domain_names[d]}"] for d in by_domain]))
    own = [m[ACC_OWN] for m in per_client.values() if math.isfinite(m.get(ACC_OWN, float("nan")))]
    weights = [m.get(NUM_EXAMPLES, 0.0) for m in per_client.values()]
    out["acc-own"] = _weighted([m.get(ACC_OWN, float("nan")) for m in per_client.values()], weights)
    out["loss"] = _weighted([m.get(EVAL_LOSS, float("nan")) for m in per_client.values()], weights)
    out["worst-client-acc"] = float(min(own)) if own else float("nan")
    out["num-clients"] = float(len(per_client))
    return out


def summarise_training(per_client: dict[int, dict[str, float]]) -> dict[str, float]:
    """Example-weighted training loss and accuracy over the clients that trained."""
    if not per_client:
        return {}
    weights = [m.get(NUM_EXAMPLES, 0.0) for m in per_client.values()]
    return {
        "loss": _weighted([m.get(TRAIN_LOSS, float("nan")) for m in per_client.values()], weights),
        "acc": _weighted([m.get(TRAIN_ACC, float("nan")) for m in per_client.values()], weights),
        "num-clients": float(len(per_client)),
    }
