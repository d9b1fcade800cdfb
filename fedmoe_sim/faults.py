"""Injected client faults (`--faults crash=0.1,hang=0.05,corrupt=0.05,slow=0.1`).

Why: a long sweep must survive the failures real federations have, and the claim
"the run goes on" needs a test that makes them happen. Every draw is a pure
function of (seed, round, client), so the server can record what was injected
without being told (a crashed or hung client tells nothing), and a faulty run is
as reproducible as a clean one.

Faults hit training phases only, after the client has trained (its own stored
state is as an honest client's; the server's accept/reject decides which version
it resumes from):
- crash:   the client's result is replaced by an error;
- hang:    its result is withheld: the server counts the client as missed;
- corrupt: one uploaded part is spoiled: NaN, a wrong shape, or scaled by 1e6;
- slow:    the node's reply is held back `slow_s` seconds (inside the round timeout).
A hang of a whole node (a real timeout) is the deployment test's business: with many
logical clients per simulated node, one hung client must not stall the others.
"""

from __future__ import annotations

import time

import numpy as np

from fedmoe_sim import wire
from fedmoe_sim.config import FAULT_KINDS, ConfigError, FaultsConfig
from fedmoe_sim.training import derive_seed

CORRUPTIONS = ("nan", "shape", "scale")
SCALE = 1e6


def parse_faults(text: str) -> dict[str, str]:
    """`crash=0.1,hang=0.05` -> {"faults.crash": "0.1", ...}; values are checked by the config."""
    out: dict[str, str] = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        kind, sep, value = item.partition("=")
        kind = kind.strip()
        if not sep or kind not in (*FAULT_KINDS, "slow_s"):
            raise ConfigError(f"--faults expects KIND=P with KIND one of {', '.join(FAULT_KINDS)} (or slow_s=SECONDS), "
                              f"comma-separated (got {item!r})")
        out[f"faults.{kind}"] = value.strip()
    return out


def draw(cfg: FaultsConfig, seed: int, server_round: int, cid: int) -> str | None:
    """The fault client `cid` suffers in training round `server_round`, or None."""
    if not cfg.any:
        return None
    u = np.random.default_rng(derive_seed(seed, "faults", server_round, cid)).random()
    edge = 0.0
    for kind in FAULT_KINDS:
        edge += getattr(cfg, kind)
        if u < edge:
            return kind
    return None


def corruption(seed: int, server_round: int, cid: int) -> str:
    rng = np.random.default_rng(derive_seed(seed, "corruption", server_round, cid))
    return CORRUPTIONS[int(rng.integers(len(CORRUPTIONS)))]


def injected(cfg: FaultsConfig, seed: int, server_round: int, cids) -> dict[str, list[int]]:
    """kind -> the clients of the cohort that get it this round (for the record)."""
    out: dict[str, list[int]] = {}
    for cid in sorted(cids):
        kind = draw(cfg, seed, server_round, cid)
        if kind is not None:
            out.setdefault(kind, []).append(int(cid))
    return out


def spoil(state: wire.State, mode: str) -> wire.State:
    """A corrupted copy of `state`: the first floating array NaN-filled, reshaped or scaled."""
    out = dict(state)
    name = next((k for k in sorted(state) if np.asarray(state[k]).dtype.kind == "f"), None)
    if name is None:
        return out
    a = np.asarray(state[name])
    if mode == "nan":
        out[name] = np.full_like(a, np.nan)
    elif mode == "shape":
        out[name] = np.zeros((a.size + 1,), dtype=a.dtype)
    elif mode == "scale":
        out = {k: (np.asarray(v) * SCALE).astype(np.asarray(v).dtype) if np.asarray(v).dtype.kind == "f" else v
               for k, v in state.items()}
    else:
        raise ValueError(f"unknown corruption {mode!r}; one of {', '.join(CORRUPTIONS)}")
    return out


def inject(cfg: FaultsConfig, seed: int, server_round: int, results: list[wire.ClientResult]) -> list[wire.ClientResult]:
    """Apply this round's faults to a node's training results (sleeping for slow clients)."""
    out: list[wire.ClientResult] = []
    delay = 0.0
    for res in results:
        kind = None if res.error is not None else draw(cfg, seed, server_round, res.client_id)
        if kind == "crash":
            out.append(wire.ClientResult(res.client_id, {}, error="injected crash"))
        elif kind == "hang":
            continue
        elif kind == "corrupt" and res.parts:
            part = sorted(res.parts)[0]
            mode = corruption(seed, server_round, res.client_id)
            out.append(wire.ClientResult(res.client_id, res.metrics, {**res.parts, part: spoil(res.parts[part], mode)}))
        else:
            delay += cfg.slow_s if kind == "slow" else 0.0
            out.append(res)
    if delay:
        time.sleep(delay)
    return out
