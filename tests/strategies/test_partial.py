"""One part travels, the rest stays on the client (strategies/_partial.py): pFedMoE's global expert,
LG-FedAvg's head, FedGH's head made from class means; in process, every message through Flower's serde."""

import numpy as np
import pytest

from experiments.catalogue import build_config
from experiments.inprocess import InProcessGrid, run_inprocess
from fedmoe_sim import wire
from fedmoe_sim.aggregation import weighted_average
from fedmoe_sim.workspace import Workspace, get_workspace
from strategies._partial import shared_part_spec

SMALL = {"federation.num_clients": 10, "federation.rounds": 2, "data.samples_per_client": 20,
         "train.local_epochs": 1}
SHARED = {"pfedmoe": "global", "lg-fedavg": "head"}      # method -> the part that is averaged


def _cfg(tmp_path, strategy, **extra):
    return build_config("pfedmoe-digits", {**SMALL, "strategy": strategy, "out": str(tmp_path / "run"), **extra})


def _ledger(tmp_path):
    rows = [line.split(",") for line in (tmp_path / "run" / "ledger.csv").read_text().splitlines()[1:]]
    return [{"round": int(r[0]), "direction": r[1], "client": int(r[2]), "bytes": int(r[3]), "part": r[4]}
            for r in rows]


@pytest.fixture
def spy(monkeypatch):
    """(round, client) -> (start state, trained state, examples) of every training, and client ->
    the state of its last evaluation: what each client really started from and was judged on."""
    trained, evaluated = {}, {}
    train, evaluate = Workspace.train_clients, Workspace.evaluate_client

    def train_clients(self, cids, server_round, starts, datas=None):
        out = train(self, cids, server_round, starts, datas)
        for cid, start, (state, _, n) in zip(cids, starts, out, strict=True):
            trained[(server_round, cid)] = (start, state, n)
        return out

    def evaluate_client(self, cid, state):
        evaluated[cid] = state
        return evaluate(self, cid, state)

    monkeypatch.setattr(Workspace, "train_clients", train_clients)
    monkeypatch.setattr(Workspace, "evaluate_client", evaluate_client)
    return trained, evaluated


@pytest.mark.parametrize("strategy", list(SHARED))
def test_only_the_shared_part_travels_and_the_ledger_shows_it(tmp_path, strategy):
    cfg = _cfg(tmp_path, strategy)
    summary = run_inprocess([cfg])[0]
    part = SHARED[strategy]
    ws = get_workspace(cfg)
    part_bytes = wire.state_nbytes(ws.model.split_parts(ws.initial_expert(), [part])[part])
    ledger = _ledger(tmp_path)
    up = [r for r in ledger if r["direction"] == wire.UP]
    assert {r["part"] for r in ledger} == {part}                       # up and down: that part, nothing else
    assert len(up) == 2 * 10 and all(r["bytes"] == part_bytes for r in up)
    assert summary.bytes_up == summary.bytes_down == 2 * 10 * part_bytes    # down: training only
    assert summary.bytes_p2p == 0
    assert summary.final["client-train/rejected"] == 0 and summary.final["client-train/num-clients"] == 10


@pytest.mark.parametrize("strategy", list(SHARED))
def test_private_parts_persist_and_the_shared_part_is_the_weighted_average(tmp_path, spy, strategy):
    trained, evaluated = spy
    cfg = _cfg(tmp_path, strategy)
    run_inprocess([cfg])
    ws, part = get_workspace(cfg), SHARED[strategy]
    shared_keys = set(ws.model.part_spec(part))
    average = weighted_average([{k: trained[(1, c)][1][k] for k in shared_keys} for c in range(10)],
                               [trained[(1, c)][2] for c in range(10)])
    for cid in range(10):
        start, after_round_1 = trained[(2, cid)][0], trained[(1, cid)][1]
        for k in set(start) - shared_keys:                              # kept from the client's own round 1
            np.testing.assert_array_equal(start[k], after_round_1[k])
        for k in shared_keys:                                           # replaced by the server's average
            np.testing.assert_allclose(start[k], average[k], rtol=1e-6, atol=1e-7)
        for k in start:                                                 # judged on its own trained model
            np.testing.assert_array_equal(evaluated[cid][k], trained[(2, cid)][1][k])
    a, b = trained[(2, 0)][1], trained[(2, 5)][1]                       # clients 0 and 5: the same family
    assert ws.family_of(0) == ws.family_of(5)
    assert all(not np.array_equal(a[k], b[k]) for k in set(a) - shared_keys)


@pytest.mark.parametrize("strategy", [*SHARED, "fedgh"])
def test_same_seed_same_numbers(tmp_path, strategy):
    one = run_inprocess([_cfg(tmp_path / "a", strategy, **{"federation.num_clients": 5})])[0]
    two = run_inprocess([_cfg(tmp_path / "b", strategy, **{"federation.num_clients": 5})], InProcessGrid(3))[0]
    assert one.final == two.final and one.per_client == two.per_client
    assert (one.bytes_up, one.bytes_down) == (two.bytes_up, two.bytes_down)
    assert "client-eval/acc-own-std" in one.final and 0 < one.final["client-eval/acc-own"] <= 1


def test_a_part_some_family_lacks_or_shapes_differently_is_refused_in_one_line():
    cfg = build_config("pfedmoe-digits", {**SMALL, "strategy": "lg-fedavg"})
    ws = get_workspace(cfg)
    with pytest.raises(ValueError, match=r"family 'cnn-1' has no such part \(its parts: extractor, head\)") as err:
        shared_part_spec(cfg, ws, "global")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="differs between model families 'cnn-1' and 'cnn-2'"):
        shared_part_spec(cfg, ws, "extractor")
    assert set(shared_part_spec(cfg, ws, "head").arrays) == {"head.weight", "head.bias"}
