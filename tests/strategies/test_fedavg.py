"""FedAvg on the homogeneous CNN-5 (pFedMoE's model-homogeneous baseline), and its config edge."""

import numpy as np
import pytest

from experiments.catalogue import build_config
from experiments.cli import main
from experiments.inprocess import run_inprocess
from fedmoe_sim.workspace import get_workspace
from strategies.fedavg import FedAvgStrategy

SMALL = {"federation.num_clients": 5, "federation.rounds": 2, "data.samples_per_client": 20,
         "train.local_epochs": 1}


def test_fedavg_cnn_averages_the_whole_cnn_5():
    cfg = build_config("pfedmoe-digits", {**SMALL, "strategy": "fedavg-cnn"})
    ws = get_workspace(cfg)
    assert ws.families == ("cnn-5",) and ws.model.family == 5
    summary = run_inprocess([cfg])[0]
    whole = sum(a.nbytes for a in ws.initial_expert().values())
    assert summary.bytes_up == 2 * 5 * whole and summary.bytes_down == 2 * (5 + 5) * whole   # train + evaluate
    assert np.isfinite(summary.final["client-eval/acc-own"])


def test_fedavg_with_several_families_is_one_clear_line(capsys):
    cfg = build_config("pfedmoe-digits", {**SMALL, "strategy": "fedavg", "model.families": "cnn-1,cnn-2"})
    with pytest.raises(ValueError, match=r"model.families must name one family \(got 'cnn-1,cnn-2'\)"):
        FedAvgStrategy.check_config(cfg, get_workspace(cfg))
    assert main(["run", "--experiment", "pfedmoe-digits", "--strategy", "fedavg",
                 "--set", "model.families=cnn-1,cnn-2", "--set", "federation.num_clients=5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.families must name one family" in err[0]
