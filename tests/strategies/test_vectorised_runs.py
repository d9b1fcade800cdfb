"""Runs with vectorised clients (simulation.vectorise) against one-after-another runs, in process."""

import pytest

from experiments.catalogue import build_config
from experiments.inprocess import InProcessGrid, run_inprocess

SMALL = {"federation.num_clients": 6, "federation.rounds": 2, "data.samples_per_client": 20,
         "model.pretrain_steps": 200, "train.local_epochs": 2}


def _cfg(strategy, **extra):
    return build_config("digits-domains", {**SMALL, "strategy": strategy, **extra})


@pytest.mark.parametrize("strategy", ["fedavg", "local", "fedmoe-da"])
def test_vectorised_runs_end_where_sequential_runs_end(strategy):
    seq = run_inprocess([_cfg(strategy, **{"simulation.vectorise": False})])[0]
    vec = run_inprocess([_cfg(strategy, **{"simulation.vectorise": True})])[0]
    assert abs(vec.final["acc-mean"] - seq.final["acc-mean"]) <= 0.002          # within 0.2 points
    assert vec.final["client-train/loss"] == pytest.approx(seq.final["client-train/loss"], abs=1e-4)
    assert (vec.bytes_up, vec.bytes_down, vec.bytes_p2p) == (seq.bytes_up, seq.bytes_down, seq.bytes_p2p)


def test_vectorised_numbers_do_not_depend_on_which_clients_share_a_message():
    """Shard placement (3 clients per node) and one client per node give the same run."""
    vec = {"simulation.vectorise": True}
    shard = run_inprocess([_cfg("fedavg", **vec)], InProcessGrid(2))[0]
    pinned = run_inprocess([_cfg("fedavg", **vec, **{"federation.placement": "partition"})],
                           InProcessGrid(6, [{"partition-id": i, "num-partitions": 6} for i in range(6)]))[0]
    assert shard.final["acc-mean"] == pinned.final["acc-mean"]
    assert shard.final["client-train/loss"] == pytest.approx(pinned.final["client-train/loss"], abs=1e-6)


def test_a_cached_workspace_follows_each_runs_vectorise_setting():
    """One process hosting runs with vectorisation on and off (a sweep, or these tests) trains each
    as it asks: a cached workspace takes the caller's config (its key fixes only data and models)."""
    from fedmoe_sim.workspace import get_workspace

    on, off = _cfg("fedavg", **{"simulation.vectorise": True}), _cfg("fedavg", **{"simulation.vectorise": False})
    ws = get_workspace(on)
    assert get_workspace(off) is ws and not ws.cfg.simulation.vectorise
    assert get_workspace(on) is ws and ws.cfg.simulation.vectorise
