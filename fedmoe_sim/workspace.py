"""Per-process client workspace: data, partitions and one reusable model.

Why: a simulated node handles many logical clients and many messages. Building
data and a model per call costs more than training a small client, so a worker
builds them once per (data, model, seed, clients) key and then only copies
expert tensors into the one model in place. Idle clients hold no live module:
their persistent state (personalised methods) is a numpy dict in
`ClientStateStore`, on disk.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from fedmoe_sim.config import RunConfig, config_from_json
from fedmoe_sim.training import TrainStats, derive_seed, evaluate, train_local

State = dict[str, np.ndarray]


@dataclass(frozen=True)
class EvalStats:
    num_examples: int       # size of the client's own test split
    loss: float             # on the own split
    acc_own: float          # on the own split, in [0, 1]
    acc_domain: float       # on the held-out test set of the client's domain
    domain: int


class Workspace:
    """Benchmark, client splits, one model and prepared tensors for one run config."""

    def __init__(self, cfg: RunConfig) -> None:
        from fedmoe_sim.data import client_splits, load_benchmark
        from fedmoe_sim.models import build_model

        torch.set_num_threads(cfg.simulation.torch_threads)
        self.cfg = cfg
        self.benchmark = load_benchmark(cfg.data, cfg.seed)
        self.splits = client_splits(self.benchmark, cfg.data, cfg.federation.num_clients, cfg.seed)
        self.model = build_model(self.benchmark, cfg.model, device=pick_device(cfg))
        self._prepared: dict[tuple, tuple] = {}

    # -- data ---------------------------------------------------------------
    @property
    def data_fingerprint(self) -> str:
        """Hash of every client's train/test arrays: equal fingerprints mean equal partitions."""
        h = hashlib.sha256()
        for s in self.splits:
            for arr in (s.x_train, s.y_train, s.x_test, s.y_test):
                h.update(np.ascontiguousarray(arr).tobytes() if arr.dtype != object else "\x00".join(arr).encode())
        return h.hexdigest()[:16]

    def _prep(self, key: tuple, x: np.ndarray, y: np.ndarray):
        hit = self._prepared.get(key)
        if hit is None:
            hit = (self.model.prepare(x), torch.as_tensor(np.asarray(y), dtype=torch.long, device=self.model.device))
            self._prepared[key] = hit
        return hit

    def train_data(self, cid: int):
        s = self.splits[cid]
        return self._prep(("train", cid), s.x_train, s.y_train)

    def test_data(self, cid: int):
        s = self.splits[cid]
        return self._prep(("test", cid), s.x_test, s.y_test)

    def domain_test(self, domain: int):
        d = self.benchmark.domains[domain]
        return self._prep(("domain", domain), d.x_test, d.y_test)

    def train_data_with_public(self, cid: int, public_idx: np.ndarray):
        """The client's private train split plus public samples with their own public labels."""
        s, b = self.splits[cid], self.benchmark
        key = ("train+public", cid, hashlib.sha1(np.asarray(public_idx, np.int64).tobytes()).hexdigest())
        return self._prep(key, np.concatenate([s.x_train, b.public_x[public_idx]]),
                          np.concatenate([s.y_train, b.public_y[public_idx]]))

    def public_data(self, public_idx: np.ndarray):
        b = self.benchmark
        key = ("public", hashlib.sha1(np.asarray(public_idx, np.int64).tobytes()).hexdigest())
        return self._prep(key, b.public_x[public_idx], b.public_y[public_idx])

    # -- expert -------------------------------------------------------------
    def initial_expert(self) -> State:
        """The expert every method starts from: a function of the run seed only."""
        self.load(None)
        return self.model.expert_state()

    def load(self, state: State | None) -> None:
        """Put `state` (None = the initial expert) into the one model, in place."""
        if state is None:
            self.model.reset_expert(derive_seed(self.cfg.seed, "expert-init"))
        else:
            self.model.load_expert_state(state)

    def train_client(self, cid: int, server_round: int, start: State | None, data=None) -> tuple[State, TrainStats, int]:
        """Train client `cid` from `start` (None = the initial expert) on `data` (default: its
        private train split); returns (state, stats, examples)."""
        self.load(start)
        x, y = data if data is not None else self.train_data(cid)
        stats = train_local(self.model, x, y, self.cfg.train, seed=derive_seed(self.cfg.seed, server_round, cid))
        return self.model.expert_state(), stats, int(y.shape[0])

    def evaluate_client(self, cid: int, state: State | None) -> EvalStats:
        self.load(state)
        x, y = self.test_data(cid)
        loss, acc_own = evaluate(self.model, x, y)
        domain = self.splits[cid].domain
        acc_domain = evaluate(self.model, *self.domain_test(domain))[1] if domain >= 0 else float("nan")
        return EvalStats(int(y.shape[0]), loss, acc_own, acc_domain, domain)


def pick_device(cfg: RunConfig) -> str:
    """A worker trains on the GPU when it was given a GPU share and one is visible."""
    return "cuda" if cfg.simulation.gpus_per_worker > 0 and torch.cuda.is_available() else "cpu"


_WORKSPACES: OrderedDict[tuple, Workspace] = OrderedDict()
_MAX_WORKSPACES = 2


def workspace_key(cfg: RunConfig) -> tuple:
    return (cfg.data_key(), cfg.model, cfg.train, cfg.simulation.torch_threads)


def get_workspace(cfg: RunConfig) -> Workspace:
    """The process-wide workspace for cfg (built on first use, LRU of two)."""
    key = workspace_key(cfg)
    ws = _WORKSPACES.get(key)
    if ws is None:
        ws = Workspace(cfg)
        _WORKSPACES[key] = ws
        while len(_WORKSPACES) > _MAX_WORKSPACES:
            _WORKSPACES.popitem(last=False)
    else:
        _WORKSPACES.move_to_end(key)
    return ws


@lru_cache(maxsize=8)
def parse_run_config(text: str) -> RunConfig:
    """Clients get the resolved config as JSON in every task; parse each text once."""
    return config_from_json(text)


class ClientStateStore:
    """Persistent per-client state as .npz files, written atomically.

    Personalised methods keep a client's own expert between rounds here instead of
    in Flower's `context.state` (shipped with every message) or in live modules.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def for_run(cls, run_id: int, run_config: str) -> "ClientStateStore":
        """Keyed by Flower run and by our config: one simulation may host a whole sweep."""
        key = hashlib.sha256(run_config.encode()).hexdigest()[:16]
        return cls(Path(tempfile.gettempdir()) / "fedmoe-sim-state" / f"{run_id}-{key}")

    def _path(self, cid: int, kind: str) -> Path:
        return self.root / f"{kind}-{cid}.npz"

    def load(self, cid: int, kind: str = "expert") -> State | None:
        """The client's stored arrays of this kind (its expert by default), or None."""
        path = self._path(cid, kind)
        if not path.exists():
            return None
        with np.load(path) as z:
            return {k: z[k] for k in z.files}

    def save(self, cid: int, state: State, kind: str = "expert") -> None:
        path = self._path(cid, kind)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, **state)
        os.replace(tmp, path)
