"""Per-process client workspace: data, partitions and one reusable model per model family.

Why: a simulated node handles many logical clients and many messages. Building
data and a model per call costs more than training a small client, so a worker
builds them once per (data, model, seed, clients) key and then only copies
trainable tensors into the one model of the client's family, in place. Idle
clients hold no live module: their persistent state (personalised methods) is a
numpy dict in `ClientStateStore`, on disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import shutil
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from fedmoe_sim.config import RunConfig, config_from_json
from fedmoe_sim.heap import reuse_freed_memory
from fedmoe_sim.models.expert_model import ExpertModel
from fedmoe_sim.results.io import atomic_write_bytes
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
    """Benchmark, client splits, one model per family and prepared tensors for one run config.

    `model` is the first family's model (the server's, and every client's when all run
    the same model); `model_of(cid)` is the client's own family's model.
    """

    def __init__(self, cfg: RunConfig) -> None:
        from fedmoe_sim.data import client_splits, load_benchmark
        from fedmoe_sim.models import build_model

        torch.set_num_threads(cfg.simulation.torch_threads)
        if cfg.simulation.reuse_memory:
            reuse_freed_memory()
        self.cfg = cfg
        self.benchmark = load_benchmark(cfg.data, cfg.seed)
        self.splits = client_splits(self.benchmark, cfg.data, cfg.federation.num_clients, cfg.seed)
        self.families = cfg.model.family_list
        device = pick_device(cfg)
        self.models: dict[str, ExpertModel] = {
            family: build_model(self.benchmark, dataclasses.replace(cfg.model, backbone=family), device=device)
            for family in dict.fromkeys(self.families)}
        self.model = self.models[self.families[0]]
        self._prepared: dict[tuple, tuple] = {}

    # -- model families ---------------------------------------------------------
    def family_of(self, cid: int) -> str:
        return self.families[cid % len(self.families)]

    def model_of(self, cid: int) -> ExpertModel:
        return self.models[self.family_of(cid)]

    # -- data ---------------------------------------------------------------
    @property
    def data_fingerprint(self) -> str:
        """Hash of every client's train/test arrays: equal fingerprints mean equal partitions."""
        h = hashlib.sha256()
        for s in self.splits:
            for arr in (s.x_train, s.y_train, s.x_test, s.y_test):
                h.update(np.ascontiguousarray(arr).tobytes() if arr.dtype != object else "\x00".join(arr).encode())
        return h.hexdigest()[:16]

    def _prep(self, key: tuple, x: np.ndarray, y: np.ndarray, family: str | None = None):
        """Inputs prepared by `family`'s model (default: the first), cached per family: two
        families may tokenise or lay out the same pool differently."""
        family = family or self.families[0]
        hit = self._prepared.get((family, *key))
        if hit is None:
            model = self.models[family]
            hit = (model.prepare(x), torch.as_tensor(np.asarray(y), dtype=torch.long, device=model.device))
            self._prepared[(family, *key)] = hit
        return hit

    def train_data(self, cid: int):
        s = self.splits[cid]
        return self._prep(("train", cid), s.x_train, s.y_train, self.family_of(cid))

    def test_data(self, cid: int):
        s = self.splits[cid]
        return self._prep(("test", cid), s.x_test, s.y_test, self.family_of(cid))

    def domain_test(self, domain: int, family: str | None = None):
        d = self.benchmark.domains[domain]
        return self._prep(("domain", domain), d.x_test, d.y_test, family)

    def train_data_with_public(self, cid: int, public_idx: np.ndarray):
        """The client's private train split plus public samples with their own public labels."""
        s, b = self.splits[cid], self.benchmark
        key = ("train+public", cid, hashlib.sha1(np.asarray(public_idx, np.int64).tobytes()).hexdigest())
        return self._prep(key, np.concatenate([s.x_train, b.public_x[public_idx]]),
                          np.concatenate([s.y_train, b.public_y[public_idx]]), self.family_of(cid))

    def public_data(self, public_idx: np.ndarray):
        b = self.benchmark
        key = ("public", hashlib.sha1(np.asarray(public_idx, np.int64).tobytes()).hexdigest())
        return self._prep(key, b.public_x[public_idx], b.public_y[public_idx])

    # -- expert -------------------------------------------------------------
    def initial_expert(self, family: str | None = None) -> State:
        """The trainable state every method starts from: a function of the run seed (and family) only."""
        self.load(None, family)
        return self.models[family or self.families[0]].expert_state()

    def initial_state(self, cid: int) -> State:
        """Client `cid`'s state before it has trained: its family's `initial_expert`, with the
        parts its model keeps private (`model.private_parts`: pFedMoE's gate, local expert and
        head; a CNN's extractor and head) redrawn from the run seed and the client id alone.

        Why: in a deployment each client initialises what it never shares itself, so one draw
        must not decide every client's start (pFedMoE: one shared initial gate sent every client
        to the same expert). Parts outside `private_parts` (pFedMoE's global expert) keep the
        common draw the server also starts from. The seed names neither node nor batch, so
        placement and vectorisation do not change it.
        """
        return self._initial_states([cid])[0]

    def _initial_states(self, cids: list[int]) -> list[State]:
        """`initial_state` of clients of one family, its common draw made once."""
        family = self.family_of(cids[0])
        common = self.initial_expert(family)
        model = self.models[family]
        if not model.private_parts:
            return [common] * len(cids)
        return [self._own_draw(model, common, cid) for cid in cids]

    def _own_draw(self, model: ExpertModel, common: State, cid: int) -> State:
        model.reset_expert(derive_seed(self.cfg.seed, "client-init", cid))
        own = model.split_parts(model.expert_state(), model.private_parts)
        return {**common, **{k: v for part in own.values() for k, v in part.items()}}

    def _with_initial(self, cids: list[int], states: list[State | None]) -> list[State]:
        """`states` with each None replaced by that client's `initial_state` (one family)."""
        missing = [i for i, s in enumerate(states) if s is None]
        if not missing:
            return list(states)
        fresh = dict(zip(missing, self._initial_states([cids[i] for i in missing]), strict=True))
        return [fresh.get(i, s) for i, s in enumerate(states)]

    def load(self, state: State | None, family: str | None = None) -> ExpertModel:
        """Put `state` (None = the run's common initial draw, `initial_expert`) into `family`'s one
        model, in place; return that model."""
        model = self.models[family or self.families[0]]
        if state is None:
            model.reset_expert(derive_seed(self.cfg.seed, "expert-init"))
        else:
            model.load_expert_state(state)
        return model

    def train_client(self, cid: int, server_round: int, start: State | None, data=None) -> tuple[State, TrainStats, int]:
        """Train client `cid` from `start` (None = its `initial_state`) on `data` (default: its
        private train split); returns (state, stats, examples)."""
        model = self.load(start if start is not None else self.initial_state(cid), self.family_of(cid))
        x, y = data if data is not None else self.train_data(cid)
        stats = train_local(model, x, y, self.cfg.train, seed=derive_seed(self.cfg.seed, server_round, cid))
        return model.expert_state(), stats, int(y.shape[0])

    def train_clients(self, cids: list[int], server_round: int, starts: list[State | None],
                      datas: list | None = None) -> list[tuple[State, TrainStats, int]]:
        """`train_client` for each client; with simulation.vectorise, the clients of one model
        family train together (`fedmoe_sim.vectorised`), one after another otherwise."""
        datas = datas or [None] * len(cids)
        if not self.cfg.simulation.vectorise:
            return [self.train_client(c, server_round, s, d) for c, s, d in zip(cids, starts, datas, strict=True)]
        from fedmoe_sim.vectorised import can_vectorise, train_many

        out: list = [None] * len(cids)
        by_family: dict[str, list[int]] = {}
        for i, cid in enumerate(cids):
            by_family.setdefault(self.family_of(cid), []).append(i)
        for family, members in by_family.items():
            model = self.models[family]
            pools = [datas[i] if datas[i] is not None else self.train_data(cids[i]) for i in members]
            if len(members) == 1 or not can_vectorise(model, pools[0][0]):
                for i in members:
                    out[i] = self.train_client(cids[i], server_round, starts[i], datas[i])
                continue
            firsts = self._with_initial([cids[i] for i in members], [starts[i] for i in members])
            trained = train_many(model, firsts, pools,
                                 self.cfg.train, [derive_seed(self.cfg.seed, server_round, cids[i]) for i in members],
                                 max_bytes=self.cfg.simulation.vectorise_mib << 20)
            for i, pool, (state, stats) in zip(members, pools, trained, strict=True):
                out[i] = (state, stats, int(pool[1].shape[0]))
        return out

    def evaluate_client(self, cid: int, state: State | None) -> EvalStats:
        family = self.family_of(cid)
        model = self.load(state if state is not None else self.initial_state(cid), family)
        x, y = self.test_data(cid)
        loss, acc_own = evaluate(model, x, y)
        domain = self.splits[cid].domain
        acc_domain = evaluate(model, *self.domain_test(domain, family))[1] if domain >= 0 else float("nan")
        return EvalStats(int(y.shape[0]), loss, acc_own, acc_domain, domain)


    def evaluate_clients(self, cids: list[int], states: list[State | None]) -> list[EvalStats]:
        """`evaluate_client` for each client; with simulation.vectorise, the clients of one model
        family are evaluated together (`fedmoe_sim.vectorised.evaluate_many`): on their own
        splits, and once per domain on that domain's held-out set."""
        if not self.cfg.simulation.vectorise:
            return [self.evaluate_client(c, s) for c, s in zip(cids, states, strict=True)]
        from fedmoe_sim.vectorised import can_vectorise, evaluate_many

        out: list = [None] * len(cids)
        by_family: dict[str, list[int]] = {}
        for i, cid in enumerate(cids):
            by_family.setdefault(self.family_of(cid), []).append(i)
        budget = self.cfg.simulation.vectorise_mib << 20
        for family, members in by_family.items():
            model = self.models[family]
            if len(members) == 1 or not can_vectorise(model, self.test_data(cids[members[0]])[0]):
                for i in members:
                    out[i] = self.evaluate_client(cids[i], states[i])
                continue
            mine = self._with_initial([cids[i] for i in members], [states[i] for i in members])
            own = evaluate_many(model, mine, [self.test_data(cids[i]) for i in members], max_bytes=budget)
            domains = [self.splits[cids[i]].domain for i in members]
            with_domain = [j for j, d in enumerate(domains) if d >= 0]
            by_domain = evaluate_many(model, [mine[j] for j in with_domain],
                                      [self.domain_test(domains[j], family) for j in with_domain], max_bytes=budget)
            acc_domain = dict(zip(with_domain, (acc for _, acc in by_domain), strict=True))
            for j, i in enumerate(members):
                loss, acc_own = own[j]
                out[i] = EvalStats(int(self.test_data(cids[i])[1].shape[0]), loss, acc_own,
                                   acc_domain.get(j, float("nan")), domains[j])
        return out


def pick_device(cfg: RunConfig) -> str:
    """A worker trains on the GPU when it was given a GPU share and one is visible."""
    return "cuda" if cfg.simulation.gpus_per_worker > 0 and torch.cuda.is_available() else "cpu"


_WORKSPACES: OrderedDict[tuple, Workspace] = OrderedDict()
_MAX_WORKSPACES = 2


def workspace_key(cfg: RunConfig) -> tuple:
    return (cfg.data_key(), cfg.model, cfg.train, cfg.simulation.torch_threads)


def get_workspace(cfg: RunConfig, node_config: dict | None = None) -> Workspace:
    """The process-wide workspace for cfg (built on first use, LRU of two; `ws.cfg` is the latest
    caller's, so settings outside the key, such as simulation.vectorise, follow the run). A node whose
    node config names a `data-path` gets its own, in which the logical client it holds
    (its partition-id) has the node's data instead of its partition (`data.node_data`)."""
    from fedmoe_sim.data.node_data import NODE_DATA_DOMAIN, load_node_split, node_data_path

    node = node_config or {}
    data_path = node_data_path(node, cfg.federation.placement)
    own = (data_path, int(node.get("partition-id", 0)), str(node.get(NODE_DATA_DOMAIN, ""))) if data_path else ()
    key = (*workspace_key(cfg), *own)
    ws = _WORKSPACES.get(key)
    if ws is None:
        ws = Workspace(cfg)
        if own:
            pid = own[1]
            if not 0 <= pid < len(ws.splits):
                raise ValueError(f"node partition-id {pid} is not a client of this run (0..{len(ws.splits) - 1})")
            ws.splits[pid] = load_node_split(data_path, ws.benchmark, pid, seed=cfg.seed, domain=own[2],
                                             test_fraction=cfg.data.test_fraction,
                                             default_domain=ws.splits[pid].domain)
        _WORKSPACES[key] = ws
        while len(_WORKSPACES) > _MAX_WORKSPACES:
            _WORKSPACES.popitem(last=False)
    else:
        _WORKSPACES.move_to_end(key)
        ws.cfg = cfg    # the key fixes data and models; the rest (simulation.vectorise, ...) is this run's
    return ws


@lru_cache(maxsize=8)
def parse_run_config(text: str) -> RunConfig:
    """Clients get the resolved config as JSON in every task; parse each text once."""
    return config_from_json(text)


class MissingStateError(RuntimeError):
    """A client's stored state is absent or older than the server knows it to be."""


STATE_ROUND_KEY = "__round__"   # stored beside the arrays: the round that produced them


class ClientStateStore:
    """Persistent per-client state as .npz files (no pickle), written atomically and fsynced.

    Personalised methods keep a client's own state between rounds here instead of in
    Flower's `context.state` (shipped with every message) or in live modules. Each
    file is one version, named by the round that wrote it: the server says which
    version it accepted last (a rejected update must not become the client's state)
    and which one its last checkpoint names (a resumed run goes back to it), so a node
    can tell "never trained" from "trained, but the state is not here" (another
    machine's disk) and from "stale", and keeps only the versions still asked for.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def for_run(cls, run_key: int | str, config_hash: str, base: str | os.PathLike = "") -> ClientStateStore:
        """Keyed by the run (the server's state key, which a resumed run keeps) and by the config's
        identity (one simulation may host a whole sweep; `resume` or `out` do not change it).
        `base`: a directory every node that may handle the client reaches ("" = system temp)."""
        root = Path(base) if base else Path(tempfile.gettempdir()) / "fedmoe-sim-state"
        return cls(root / f"{run_key}-{config_hash}")

    def remove(self) -> None:
        """Delete the whole store: the run it belongs to has finished, so no round and no resume
        will ask for its versions again (a sweep's stores would otherwise fill the disk)."""
        shutil.rmtree(self.root, ignore_errors=True)

    def _dir(self, cid: int, kind: str) -> Path:
        """One small directory per client and kind: listing its versions never scans the
        files of every other client (a save per client per round would then be quadratic)."""
        return self.root / f"{kind}-{cid}"

    def _path(self, cid: int, kind: str, server_round: int) -> Path:
        return self._dir(cid, kind) / f"r{server_round}.npz"

    def versions(self, cid: int, kind: str = "expert") -> list[int]:
        """Rounds of the stored versions of this client's state, oldest first."""
        folder = self._dir(cid, kind)
        if not folder.is_dir():
            return []
        return sorted(int(name[1:-4]) for name in os.listdir(folder)
                      if name.startswith("r") and name.endswith(".npz") and name[1:-4].isdigit())

    def load(self, cid: int, kind: str = "expert", at_least: int = 0) -> State | None:
        """The client's stored arrays of this kind (its expert by default).

        `at_least`: the round the server last accepted this client's training (0 = never:
        the newest version, or None if nothing is stored); above 0 exactly that version
        must exist, or `MissingStateError` says what is there instead.
        """
        have = self.versions(cid, kind)
        if at_least <= 0:
            if not have:
                return None
            at_least = have[-1]
        elif at_least not in have:
            there = f"versions from rounds {have}" if have else "nothing"
            raise MissingStateError(f"no stored {kind} of client {cid} from round {at_least} under {self.root} "
                                    f"({there}); the server accepted its training in round {at_least}")
        with np.load(self._path(cid, kind, at_least), allow_pickle=False) as z:
            state = {k: z[k] for k in z.files}
        state.pop(STATE_ROUND_KEY, None)
        return state

    def save(self, cid: int, state: State, kind: str = "expert", server_round: int = 0,
             keep: tuple[int, ...] = ()) -> None:
        """Write this round's version, then drop every other version not in `keep`."""
        buf = io.BytesIO()
        np.savez(buf, **state, **{STATE_ROUND_KEY: np.array(server_round, np.int64)})
        atomic_write_bytes(self._path(cid, kind, server_round), buf.getvalue())   # temp, fsync, rename, dir fsync
        for old in self.versions(cid, kind):
            if old != server_round and old not in keep:
                self._path(cid, kind, old).unlink(missing_ok=True)
