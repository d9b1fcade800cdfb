"""Checkpoints and exact resume, in-process: a run stopped mid-way and resumed ends with
the numbers of an uninterrupted run, for every kind of server state we keep."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from experiments import registry
from experiments.catalogue import build_config
from experiments.inprocess import InProcessGrid, run_inprocess
from fedmoe_sim import checkpoint
from fedmoe_sim.aggregation.fedmoe_da import NeighbourPlan
from fedmoe_sim import wire
from fedmoe_sim.checkpoint import CHECKPOINT, CheckpointError

SMALL = {"federation.num_clients": 6, "federation.rounds": 4, "data.samples_per_client": 20,
         "model.pretrain_steps": 200, "train.local_epochs": 1, "federation.fraction_train": 0.5,
         "federation.checkpoint_min_s": 0.0}     # a checkpoint every round, however short: the cut is at round 2
MM = {"metamoe.candidates": 80, "metamoe.proxies": 20, "metamoe.relevance_epochs": 5, "metamoe.finetune_epochs": 1}
CASES = {   # one per kind of server state: a global part, client state only, per-domain experts,
            # gate + plans + per-client experts, a shared part of heterogeneous models, a server-trained head
    "fedavg": ("digits-domains", {"strategy": "fedavg"}),
    "local": ("digits-domains", {"strategy": "local"}),
    "metamoe-domain": ("metamoe-digits", {**MM, "strategy": "metamoe", "metamoe.expert_per": "domain"}),
    "metamoe": ("metamoe-digits", {**MM, "strategy": "metamoe"}),
    "fedmoe-da": ("digits-domains", {"strategy": "fedmoe-da", "model.backbone": "mixer-moe",
                                     "fedmoe_da.every": 2, "fedmoe_da.top_p": 2}),
    "pfedmoe": ("digits-domains", {"strategy": "pfedmoe", "model.backbone": "pfedmoe-5"}),
    "fedgh": ("digits-domains", {"strategy": "fedgh", "model.backbone": "cnn-5"}),
}


class Killed(Exception):
    """Stands in for SIGKILL: the process stops here, nothing after it runs."""


def _stopping(method: registry.Method, at_round: int, hook: str) -> registry.Method:
    """The method, but its strategy dies in `hook` of round `at_round` (after the clients of
    that round trained and stored their new state, when hook is aggregate_train)."""
    class Stopping(method.strategy):
        def __getattribute__(self, name):
            attr = super().__getattribute__(name)
            if name != hook:
                return attr

            def dying(server_round, *args):
                if server_round == at_round:
                    if hook == "aggregate_train":
                        attr(server_round, *args)     # the round's work is done, its record is not
                    raise Killed(f"killed in {hook} of round {at_round}")
                return attr(server_round, *args)
            return dying
    return dataclasses.replace(method, strategy=Stopping)


def _rows(path):
    return [{k: v for k, v in json.loads(line).items() if k != "wall-s"} for line in path.read_text().splitlines()]


def _summary(path):
    d = json.loads(path.read_text())
    return {k: d[k] for k in ("final", "per_domain", "per_client", "bytes_up", "bytes_down", "bytes_p2p")}


@pytest.mark.parametrize("name", list(CASES))
def test_a_run_killed_mid_round_resumes_to_the_uninterrupted_numbers(name, tmp_path, monkeypatch):
    experiment, values = CASES[name]
    cfg = build_config(experiment, {**SMALL, **values, "out": str(tmp_path / "whole")})
    run_inprocess([cfg], InProcessGrid(2))
    assert not (tmp_path / "whole" / CHECKPOINT).exists()          # a finished run keeps no checkpoint

    cut = dataclasses.replace(cfg, out=str(tmp_path / "cut"))
    original = registry.get_method(cfg.strategy)
    monkeypatch.setitem(registry.METHODS, cfg.strategy, _stopping(original, 3, "aggregate_train"))
    with pytest.raises(Killed):
        run_inprocess([cut], InProcessGrid(2))
    assert (tmp_path / "cut" / CHECKPOINT).exists() and not (tmp_path / "cut" / "summary.json").exists()
    monkeypatch.setitem(registry.METHODS, cfg.strategy, original)
    run_inprocess([dataclasses.replace(cut, resume=True)], InProcessGrid(2))

    assert _summary(tmp_path / "cut" / "summary.json") == _summary(tmp_path / "whole" / "summary.json")
    assert _rows(tmp_path / "cut" / "rounds.jsonl") == _rows(tmp_path / "whole" / "rounds.jsonl")
    assert (tmp_path / "cut" / "ledger.csv").read_text() == (tmp_path / "whole" / "ledger.csv").read_text()
    recorded = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert recorded["resumed"][0]["after_round"] == 2


def test_checkpoints_are_written_every_k_rounds_but_at_most_once_per_min_s(monkeypatch):
    from strategies import _loop

    clock = [50.0]
    monkeypatch.setattr(_loop.time, "monotonic", lambda: clock[0])
    cfg = build_config("digits-domains", {"federation.checkpoint_every": 2, "federation.checkpoint_min_s": 5.0})
    assert not _loop.checkpoint_due(cfg, 1, None) and _loop.checkpoint_due(cfg, 2, None)   # the first due: always
    assert not _loop.checkpoint_due(cfg, 4, 47.0)          # 3 s after the last one
    assert not _loop.checkpoint_due(cfg, 5, 40.0)          # not a multiple of 2
    assert _loop.checkpoint_due(cfg, 6, 45.0)              # 5 s after
    off = build_config("digits-domains", {"federation.checkpoint_every": 0})
    assert not _loop.checkpoint_due(off, 2, None)
    every = build_config("digits-domains", {"federation.checkpoint_min_s": 0.0})
    assert all(_loop.checkpoint_due(every, r, 50.0) for r in (1, 2, 3))


def test_a_finished_run_deletes_its_clients_state_and_a_killed_one_keeps_it_for_resume(tmp_path, monkeypatch):
    """Every node is told to drop the run's client-state store once summary.json is written (a
    sweep's stores filled this machine's disk); a killed run keeps it, or it could not resume."""
    states = tmp_path / "states"
    cfg = build_config("digits-domains", {**SMALL, "strategy": "local", "federation.state_dir": str(states),
                                          "out": str(tmp_path / "run")})
    grid = InProcessGrid(2)
    run_inprocess([cfg], grid)
    assert sorted(node for node, phase, _ in grid.deliveries if phase == wire.RELEASE) == [1, 2]
    assert list(states.iterdir()) == []

    original = registry.get_method("local")
    monkeypatch.setitem(registry.METHODS, "local", _stopping(original, 3, "aggregate_train"))
    with pytest.raises(Killed):
        run_inprocess([cfg], InProcessGrid(2))
    assert [p.name.split("-")[-1] for p in states.iterdir()] == [cfg.identity_hash()]   # kept for the resume
    monkeypatch.setitem(registry.METHODS, "local", original)
    run_inprocess([dataclasses.replace(cfg, resume=True)], InProcessGrid(2))
    assert list(states.iterdir()) == []


def test_resume_without_a_checkpoint_starts_from_the_first_round(tmp_path):
    cfg = build_config("digits-domains", {**SMALL, "strategy": "fedavg", "federation.rounds": 2,
                                          "out": str(tmp_path), "resume": True})
    summary = run_inprocess([cfg])[0]
    assert summary.rounds == 2 and len(_rows(tmp_path / "rounds.jsonl")) == 2


def test_a_checkpoint_of_another_config_is_refused(tmp_path, monkeypatch):
    cfg = build_config("digits-domains", {**SMALL, "strategy": "fedavg", "out": str(tmp_path)})
    original = registry.get_method("fedavg")
    monkeypatch.setitem(registry.METHODS, "fedavg", _stopping(original, 2, "configure_train"))
    with pytest.raises(Killed):
        run_inprocess([cfg])
    monkeypatch.setitem(registry.METHODS, "fedavg", original)
    other = dataclasses.replace(cfg, seed=1, resume=True)
    with pytest.raises(CheckpointError, match="of another config"):
        run_inprocess([other])


# ---------------------------------------------------------------- the file format ----
def test_checkpoints_round_trip_nested_server_state_without_pickle(tmp_path):
    import torch

    plan = NeighbourPlan(layer=1, num_clients=2, num_experts=2, target=np.array([0, 1]), source=np.array([0, 1]),
                         weight=np.array([1.0, 1.0]))
    tree = {"experts": {3: {"w": np.arange(4, dtype=np.float32)}}, "plans": [plan], "ids": (1, 2), "none": None,
            "rng": np.random.get_state(), "t": torch.arange(3), "scalar": np.float32(2.5), "nan": float("nan")}
    path = checkpoint.save(tmp_path / "c.npz", tree)
    back = checkpoint.load(path)
    assert list(back["experts"]) == [3] and back["experts"][3]["w"].dtype == np.float32
    assert isinstance(back["plans"][0], NeighbourPlan) and np.array_equal(back["plans"][0].weight, [1.0, 1.0])
    assert back["ids"] == (1, 2) and back["none"] is None and back["scalar"] == np.float32(2.5)
    assert torch.equal(back["t"], torch.arange(3)) and np.isnan(back["nan"])
    np.random.set_state(back["rng"])


def test_large_numeric_dicts_travel_as_arrays_and_come_back_as_python_numbers(tmp_path):
    """client -> round for 1,000 clients is two arrays, not 1,000 JSON pairs; it reads back as
    the same dict of Python ints (floats, NaN included); a mixed or small dict stays JSON."""
    rounds = {cid: cid % 7 for cid in range(1000)}
    losses = {cid: cid / 3 for cid in range(20)} | {99: float("nan")}
    mixed = {cid: (cid if cid % 2 else float(cid)) for cid in range(20)}
    path = checkpoint.save(tmp_path / "c.npz", {"rounds": rounds, "losses": losses, "mixed": mixed, "few": {1: 2}})
    with np.load(path) as z:
        assert len(z.files) == 1 + 4          # the meta document and two arrays per numeric dict
    back = checkpoint.load(path)
    assert back["rounds"] == rounds and all(type(k) is int and type(v) is int for k, v in back["rounds"].items())
    assert list(back["losses"])[:20] == list(range(20)) and np.isnan(back["losses"][99])
    assert all(type(v) is float for v in back["losses"].values())
    assert back["mixed"] == mixed and [type(v) for v in back["mixed"].values()] == [type(v) for v in mixed.values()]
    assert back["few"] == {1: 2}


def test_a_ledger_checkpoint_codes_its_names_and_reads_older_plain_columns():
    ledger = wire.ByteLedger()
    for rnd in (1, 2):
        for cid in range(5):
            ledger.add(rnd, wire.UP, cid, 10 * cid, "expert")
            ledger.add(rnd, wire.P2P, cid, 3, "expert/1", peer=(cid + 1) % 5)
    cols = ledger.to_arrays()
    assert cols["part_names"].tolist() == ["expert", "expert/1"] and cols["part_code"].dtype == np.int32
    assert wire.ByteLedger.from_arrays(cols).rows() == ledger.rows()
    rows = ledger.rows()
    older = {"round": np.array([r["round"] for r in rows]), "direction": np.array([r["direction"] for r in rows]),
             "client": np.array([r["client"] for r in rows]), "part": np.array([r["part"] for r in rows]),
             "peer": np.array([r["peer"] for r in rows]), "bytes": np.array([r["bytes"] for r in rows])}
    assert wire.ByteLedger.from_arrays(older).rows() == rows


def test_a_checkpoint_refuses_what_it_cannot_hold_by_name(tmp_path):
    with pytest.raises(TypeError, match=r"checkpoint\['x'\]\[0\]: a object cannot be checkpointed"):
        checkpoint.save(tmp_path / "c.npz", {"x": [object()]})
    with pytest.raises(TypeError, match="object arrays"):
        checkpoint.save(tmp_path / "c.npz", {"x": np.array([None], dtype=object)})


def test_a_pickled_or_foreign_checkpoint_file_is_refused(tmp_path):
    bad = tmp_path / "pickled.npz"
    np.savez(bad, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        checkpoint.load(bad)
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(CheckpointError):
        checkpoint.load(tmp_path / "junk.npz")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        checkpoint.load(tmp_path / "absent.npz")


@pytest.mark.parametrize("name", list(registry.METHODS))
def test_every_registered_strategy_checkpoints_and_restores_its_state(name, tmp_path):
    """Each method's server state after construction goes through the file and back unchanged
    (the resume test above runs rounds for one method of each kind of state)."""
    from experiments.catalogue import EXPERIMENTS
    from fedmoe_sim.workspace import get_workspace
    from strategies._federation import Federation

    experiment = next(n for n, exp in EXPERIMENTS.items() if name in exp.strategies)   # the method's own setting
    cfg = build_config(experiment, {"strategy": name, "model.pretrain_steps": 200, "data.samples_per_client": 20})
    ws = get_workspace(cfg)
    method = registry.get_method(name)
    first = method.strategy(Federation(cfg, ws.benchmark.domain_names), ws)
    state = first.checkpoint_state()
    assert "per_client" in state and "fed" not in state and "ws" not in state
    checkpoint.save(tmp_path / "a.npz", {"strategy": state})
    second = method.strategy(Federation(cfg, ws.benchmark.domain_names), ws)
    second.restore(checkpoint.load(tmp_path / "a.npz")["strategy"])
    checkpoint.save(tmp_path / "b.npz", {"strategy": second.checkpoint_state()})
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])
