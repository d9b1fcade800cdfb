"""pFedSim rounds in process: FedAvg warm-up, then per-client extractors mixed by head similarity."""

import dataclasses
import json

import numpy as np
import pytest
import torch

import clients.pfedsim
from experiments import registry
from experiments.catalogue import build_config
from experiments.inprocess import InProcessGrid, run_inprocess
from fedmoe_sim import wire
from fedmoe_sim.aggregation import pfedsim as ps
from fedmoe_sim.config import ConfigError
from fedmoe_sim.models.expert_model import EXPERT, WHOLE
from fedmoe_sim.models.mixer import HEAD, HEAD_WEIGHT
from fedmoe_sim.workspace import Workspace, get_workspace
from strategies.pfedsim import PFedSimStrategy

METHOD = registry.Method("pfedsim", PFedSimStrategy, clients.pfedsim,
                         "pFedSim: FedAvg warm-up, then per-client extractors mixed by classifier similarity",
                         {"model.train_head": True})
SMALL = {"federation.num_clients": 4, "federation.rounds": 4, "data.samples_per_client": 20,
         "model.pretrain_steps": 200, "train.local_epochs": 1}        # warm-up 0.5: rounds 1-2


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    monkeypatch.setitem(registry.METHODS, "pfedsim", METHOD)


def _cfg(tmp_path, **extra):
    return build_config("digits-domains", {**SMALL, "strategy": "pfedsim", "out": str(tmp_path / "run"), **extra})


def _ledger(path):
    rows = [line.split(",") for line in (path / "ledger.csv").read_text().splitlines()[1:]]
    return [{"round": int(r[0]), "direction": r[1], "client": int(r[2]), "bytes": int(r[3]), "part": r[4]}
            for r in rows]


@pytest.fixture
def spy(monkeypatch):
    """(round, client) -> (start state, trained state); round -> the training outbox."""
    trained, boxes = {}, {}
    train, configure = Workspace.train_clients, PFedSimStrategy.configure_train

    def train_clients(self, cids, server_round, starts, datas=None):
        out = train(self, cids, server_round, starts, datas)
        for cid, start, (state, _, _) in zip(cids, starts, out, strict=True):
            trained[(server_round, cid)] = (start, state)
        return out

    def configure_train(self, server_round):
        boxes[server_round] = configure(self, server_round)
        return boxes[server_round]

    monkeypatch.setattr(Workspace, "train_clients", train_clients)
    monkeypatch.setattr(PFedSimStrategy, "configure_train", configure_train)
    return trained, boxes


def _same(a, b, keys):
    return all(np.array_equal(a[k], b[k]) for k in keys)


def test_warm_up_is_fedavg_then_each_client_gets_its_own_mixed_extractor(tmp_path, spy):
    trained, boxes = spy
    cfg = _cfg(tmp_path)
    summary = run_inprocess([cfg])[0]
    model = get_workspace(cfg).model
    lora, head = list(model.part_spec(EXPERT)), list(model.part_spec(HEAD))
    for rnd in (1, 2):                                   # warm-up: one shared global model, head included
        assert set(boxes[rnd].shared) == {WHOLE} and not boxes[rnd].per_client
        assert all(_same(trained[(rnd, 0)][0], trained[(rnd, c)][0], lora + head) for c in range(4))
    for rnd in (3, 4):                                   # then: the extractor alone, one per client
        assert not boxes[rnd].shared and all(set(boxes[rnd].per_client[c]) == {EXPERT} for c in range(4))
        for c in range(4):                               # the head is the client's own, from its last training
            assert _same(trained[(rnd, c)][0], trained[(rnd - 1, c)][1], head)
    # round 3: the identity matrix, so everyone keeps the warm-up's global extractor
    assert all(_same(trained[(3, 0)][0], trained[(3, c)][0], lora) for c in range(4))
    # round 4: mixed by the round-3 heads' similarity, as worked out from the uploads
    sim = ps.update_similarity(np.eye(4), {c: trained[(3, c)][1][HEAD_WEIGHT] for c in range(4)})
    assert (sim[~np.eye(4, dtype=bool)] > 0).all()
    for c in range(4):
        weights = ps.mixing_weights(sim, c)
        want = ps.personalised_extractor(weights, {j: {k: trained[(3, j)][1][k] for k in lora} for j in weights})
        for k in lora:
            np.testing.assert_allclose(trained[(4, c)][0][k], want[k], rtol=1e-6, atol=1e-8)
    assert not _same(trained[(4, 0)][0], trained[(4, 1)][0], lora)
    assert 0 < summary.final["pfedsim/similarity"] <= 1 and "client-eval/acc-own-std" in summary.final


def test_the_ledger_books_per_client_what_went_down_and_up_and_no_head_goes_down(tmp_path):
    cfg = _cfg(tmp_path)
    summary = run_inprocess([cfg])[0]
    ws = get_workspace(cfg)
    whole, expert, head = (wire.state_nbytes(ws.model.split_parts(ws.initial_expert(), [p])[p])
                           for p in (WHOLE, EXPERT, HEAD))
    ledger = _ledger(tmp_path / "run")

    def rows(rnd, direction):
        return sorted((r["client"], r["part"], r["bytes"]) for r in ledger
                      if r["round"] == rnd and r["direction"] == direction)

    for rnd in (1, 2):           # training and evaluation of the global model (one row per client and part)
        assert rows(rnd, wire.DOWN) == [(c, WHOLE, 2 * whole) for c in range(4)]
        assert rows(rnd, wire.UP) == [(c, WHOLE, whole) for c in range(4)]
    for rnd in (3, 4):           # evaluation of each client's own model sends nothing
        assert rows(rnd, wire.DOWN) == [(c, EXPERT, expert) for c in range(4)]
        assert rows(rnd, wire.UP) == sorted([(c, p, n) for c in range(4) for p, n in ((EXPERT, expert), (HEAD, head))])
    assert not [r for r in ledger if r["direction"] == wire.DOWN and r["part"] == HEAD]
    assert summary.bytes_p2p == 0 and summary.bytes_down == 4 * (4 * whole) + 2 * 4 * expert


def test_a_run_killed_after_warm_up_resumes_to_the_uninterrupted_numbers(tmp_path, monkeypatch):
    from tests.strategies.test_resume import Killed, _rows, _stopping, _summary

    values = {"federation.num_clients": 6, "federation.rounds": 5, "federation.fraction_train": 0.5,
              "pfedsim.warmup": 0.4,                  # warm-up rounds 1-2; killed in round 4, resumed after 3
              "federation.checkpoint_min_s": 0.0}     # (a checkpoint every round)
    cfg = _cfg(tmp_path, **values, out=str(tmp_path / "whole"))
    run_inprocess([cfg], InProcessGrid(2))
    cut = dataclasses.replace(cfg, out=str(tmp_path / "cut"))
    monkeypatch.setitem(registry.METHODS, "pfedsim", _stopping(METHOD, 4, "aggregate_train"))
    with pytest.raises(Killed):
        run_inprocess([cut], InProcessGrid(2))
    monkeypatch.setitem(registry.METHODS, "pfedsim", METHOD)
    run_inprocess([dataclasses.replace(cut, resume=True)], InProcessGrid(2))
    assert _summary(tmp_path / "cut" / "summary.json") == _summary(tmp_path / "whole" / "summary.json")
    assert _rows(tmp_path / "cut" / "rounds.jsonl") == _rows(tmp_path / "whole" / "rounds.jsonl")
    assert (tmp_path / "cut" / "ledger.csv").read_text() == (tmp_path / "whole" / "ledger.csv").read_text()
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["resumed"][0]["after_round"] == 3


def test_the_server_state_goes_through_a_checkpoint_unchanged(tmp_path):
    from fedmoe_sim import checkpoint
    from strategies._federation import Federation

    cfg = _cfg(tmp_path)
    ws = get_workspace(cfg)
    first = PFedSimStrategy(Federation(cfg, ws.benchmark.domain_names), ws)
    first.extractors = {2: ws.model.split_parts(ws.initial_expert(), [EXPERT])[EXPERT]}
    first.similarity[1, 2] = first.similarity[2, 1] = 0.123456789
    checkpoint.save(tmp_path / "c.npz", {"strategy": first.checkpoint_state()})
    second = PFedSimStrategy(Federation(cfg, ws.benchmark.domain_names), ws)
    second.restore(checkpoint.load(tmp_path / "c.npz")["strategy"])
    assert second.similarity.dtype == np.float64 and np.array_equal(second.similarity, first.similarity)
    assert list(second.extractors) == [2] and _same(second.extractors[2], first.extractors[2], first.extractors[2])
    assert second.warmup_rounds == first.warmup_rounds == 2


@pytest.mark.parametrize("backbone", ["vit", "mixer-moe", "cnn-5"])
def test_pfedsim_on_a_non_mixer_backbone_is_refused_in_one_line(backbone):
    with pytest.raises(ConfigError, match=f"model.train_head=true needs model.backbone=mixer .*got {backbone}") as err:
        build_config("digits-domains", {**SMALL, "strategy": "pfedsim", "model.backbone": backbone})
    assert "\n" not in str(err.value)


def test_the_strategy_refuses_a_frozen_head_and_bad_warmups():
    plain = build_config("digits-domains", {**SMALL, "strategy": "fedavg"})
    with pytest.raises(ValueError, match="needs a trainable personal classifier: model.train_head=true"):
        PFedSimStrategy.check_config(plain, get_workspace(plain))
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match=r"pfedsim.warmup must be a share of the rounds in \[0, 1\)"):
            build_config("digits-domains", {**SMALL, "strategy": "pfedsim", "pfedsim.warmup": bad})


def test_the_trainable_head_starts_as_the_pretrained_model_and_changes_no_other_hash():
    frozen_cfg = build_config("digits-domains", {**SMALL, "strategy": "fedavg"})
    head_cfg = build_config("digits-domains", {**SMALL, "strategy": "fedavg", "model.train_head": True})
    frozen, trained = get_workspace(frozen_cfg), get_workspace(head_cfg)
    assert trained.model.part_names == (EXPERT, HEAD) and frozen.model.part_names == (EXPERT,)
    start = trained.initial_expert()
    assert _same(start, frozen.initial_expert(), frozen.model.part_spec(EXPERT))     # the same LoRA draws
    np.testing.assert_array_equal(start[HEAD_WEIGHT], frozen.model.backbone_state()["net.head.weight"])
    x = trained.test_data(0)[0]
    with torch.no_grad():
        np.testing.assert_array_equal(trained.load(None)(x).numpy(), frozen.load(None)(x).numpy())
    off = dataclasses.replace(head_cfg, model=dataclasses.replace(head_cfg.model, train_head=False))
    assert off.identity_hash() == frozen_cfg.identity_hash() != head_cfg.identity_hash()
    other = build_config("digits-domains", {**SMALL, "strategy": "fedavg", "pfedsim.warmup": 0.2})
    assert other.identity_hash() == frozen_cfg.identity_hash()       # the pfedsim section is pfedsim's alone
