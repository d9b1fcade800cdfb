"""Standalone (the local strategy with heterogeneous CNN-1..5): nothing travels, each client learns alone."""

from experiments.catalogue import build_config
from experiments.inprocess import run_inprocess
from fedmoe_sim.workspace import get_workspace


def test_standalone_sends_nothing_and_runs_five_cnn_families(tmp_path):
    cfg = build_config("pfedmoe-digits", {"federation.num_clients": 5, "federation.rounds": 2,
                                          "data.samples_per_client": 20, "train.local_epochs": 1,
                                          "strategy": "standalone", "out": str(tmp_path / "run")})
    ws = get_workspace(cfg)
    assert [ws.model_of(c).family for c in range(5)] == [1, 2, 3, 4, 5]
    summary = run_inprocess([cfg])[0]
    assert (summary.bytes_up, summary.bytes_down, summary.bytes_p2p) == (0, 0, 0)
    assert (tmp_path / "run" / "ledger.csv").read_text().splitlines()[1:] == []
    assert summary.final["client-train/num-clients"] == 5 and 0 < summary.final["client-eval/acc-own"] <= 1
