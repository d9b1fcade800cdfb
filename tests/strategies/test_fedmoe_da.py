"""FedMoE-DA rounds in process: gates to the server, experts peer to peer, personalised evaluation."""

import pytest

from experiments.catalogue import build_config
from experiments.inprocess import InProcessGrid, run_inprocess
from fedmoe_sim import wire

SMALL = {"federation.num_clients": 4, "federation.rounds": 2, "data.samples_per_client": 20,
         "model.pretrain_steps": 200, "train.local_epochs": 1, "fedmoe_da.every": 1}


def _run(tmp_path, **extra):
    cfg = build_config("digits-domains", {**SMALL, "strategy": "fedmoe-da", "out": str(tmp_path / "run"), **extra})
    grid = InProcessGrid(2)
    summary = run_inprocess([cfg], grid)[0]
    rows = [line.split(",") for line in (tmp_path / "run" / "ledger.csv").read_text().splitlines()[1:]]
    return summary, grid, [{"round": int(r[0]), "direction": r[1], "client": int(r[2]), "bytes": int(r[3]),
                            "part": r[4], "peer": int(r[5])} for r in rows]


def test_gates_go_to_the_server_and_experts_travel_peer_to_peer(tmp_path):
    summary, grid, ledger = _run(tmp_path)
    assert {r["part"] for r in ledger if r["direction"] == wire.UP} == {"gate"}     # only gates to the server
    assert {r["part"] for r in ledger if r["direction"] == wire.DOWN} == {"gate", "plan"}
    from fedmoe_sim.workspace import get_workspace

    model = get_workspace(build_config("digits-domains", {**SMALL, "strategy": "fedmoe-da"})).model
    gate_bytes = sum(a.nbytes for a in model.part_state("gate").values())
    for rnd in (1, 2):
        up = sum(r["bytes"] for r in ledger if r["round"] == rnd and r["direction"] == wire.UP)
        assert up == 4 * gate_bytes                                        # server-bound: the gates, nothing else
    assert not [r for r in ledger if r["part"].startswith("peer/") and r["direction"] != wire.P2P]
    p2p = [r for r in ledger if r["direction"] == wire.P2P]
    assert p2p and all(r["part"].startswith("peer/") and r["peer"] != r["client"] for r in p2p)
    assert all(r["part"] == f"peer/{r['peer']}/{r['part'].split('/')[2]}/{r['part'].split('/')[3]}" for r in p2p)
    assert {r["part"] for r in ledger if r["direction"] == wire.RELAY} == {"experts"}
    assert summary.bytes_p2p == sum(r["bytes"] for r in p2p) > 0
    phases = [phase for _, phase, _ in grid.deliveries]
    assert phases.count("sync") == 2 * 2                         # one sync message per node per round
    final = summary.final
    assert final["sync/transfers"] == len([r for r in p2p if r["round"] == 2])
    assert final["sync/kept-experts"] == 0 and final["sync/missing-peers"] == 0
    assert 0 < final["acc-mean"] <= 1 and "client-eval/acc-own-std" in final


def test_no_neighbours_means_no_transfer_and_local_training(tmp_path):
    summary, grid, ledger = _run(tmp_path, **{"fedmoe_da.top_p": 0, "fedmoe_da.gate": "personal"})
    assert summary.bytes_p2p == 0 and not [p for _, p, _ in grid.deliveries if p == "sync"]
    assert {r["part"] for r in ledger if r["direction"] == wire.UP} == {"gate"}
    assert not [r for r in ledger if r["direction"] == wire.DOWN]                    # personal gate: nothing down


def test_the_method_forces_the_client_moe_and_its_check_names_it():
    from fedmoe_sim.workspace import get_workspace
    from strategies.fedmoe_da import FedMoEDAStrategy

    cfg = build_config("digits-domains", {**SMALL, "strategy": "fedmoe-da", "model.backbone": "mixer"})
    assert cfg.model.backbone == "mixer-moe"                      # the registry's defining value wins
    plain = build_config("digits-domains", {**SMALL, "strategy": "fedavg"})
    with pytest.raises(ValueError, match="needs the client MoE for every client: model.backbone=mixer-moe"):
        FedMoEDAStrategy.check_config(plain, get_workspace(plain))


@pytest.mark.parametrize("gate, proxy", [("fedavg", "row"), ("personal", "update"), ("fedavg", "update")])
def test_same_seed_same_numbers(tmp_path, gate, proxy):
    a = _run(tmp_path / "a", **{"fedmoe_da.gate": gate, "fedmoe_da.proxy": proxy})[0]
    b = _run(tmp_path / "b", **{"fedmoe_da.gate": gate, "fedmoe_da.proxy": proxy})[0]
    assert a.final == b.final and a.bytes_p2p == b.bytes_p2p


def test_update_proxies_plan_differently_from_raw_gate_rows(tmp_path):
    """Shared inits make raw gate rows alike everywhere; the round's update is what differs."""
    row = _run(tmp_path / "row", **{"fedmoe_da.tau": 0.1})[0]
    update = _run(tmp_path / "update", **{"fedmoe_da.tau": 0.1, "fedmoe_da.proxy": "update"})[0]
    assert row.bytes_p2p != update.bytes_p2p or row.final != update.final
