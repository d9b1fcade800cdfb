"""End-to-end: real Flower simulations on Ray with the digits benchmark (small, ~1 min in all).

One simulation hosts FedAvg and Local-only back to back (as `compare` does); a
second one re-runs FedAvg with one node per client to prove placement does not
change the numbers.
"""

import csv
import json

import numpy as np
import pytest

from experiments.catalogue import build_config
from experiments.runner import run_many
from fedmoe_sim import wire
from fedmoe_sim.workspace import get_workspace

SMALL = {
    "federation.num_clients": 4,
    "federation.rounds": 2,
    "data.samples_per_client": 20,
    "model.pretrain_steps": 200,
    "train.local_epochs": 1,
    "simulation.num_workers": 2,
}


def _cfg(tmp_path, strategy, **extra):
    return build_config("digits-domains", {**SMALL, **extra, "strategy": strategy, "out": str(tmp_path / strategy)})


@pytest.fixture(scope="module")
def sims(tmp_path_factory, simulate):
    tmp = tmp_path_factory.mktemp("sim")
    fedavg, local = _cfg(tmp, "fedavg"), _cfg(tmp, "local")
    summaries, captured = simulate([fedavg, local])
    return {"cfg": fedavg, "fedavg": summaries[0], "local": summaries[1], "replies": captured, "tmp": tmp}


def test_no_backbone_tensor_leaves_a_client_and_upload_equals_expert_bytes(sims):
    ws = get_workspace(sims["cfg"])
    backbone = ws.model.backbone_state()
    spec = ws.model.expert_spec()
    expert_bytes = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in spec.values())
    uploaded = 0
    for msg in sims["replies"]:
        assert all(name.startswith((wire.UP_PREFIX, wire.PACK_PREFIX)) and name.endswith("/model")
                   for name in msg.content.array_records)
        for state in (parts["model"] for parts in wire.unpack_reply(msg.content)[0].values()):
            assert set(state) == set(spec)
            assert not set(state) & set(backbone)
            for arr in state.values():           # not even under another name
                assert not any(b.shape == arr.shape and np.array_equal(b, arr) for b in backbone.values())
            uploaded += wire.state_nbytes(state)
    fedavg = sims["fedavg"]
    assert uploaded == fedavg.bytes_up == 2 * 4 * expert_bytes      # rounds x clients x expert
    assert fedavg.bytes_down == 2 * (4 + 4) * expert_bytes          # train + evaluate, per logical client
    assert sims["local"].bytes_up == 0


def test_run_directory_has_config_rounds_and_summary(sims):
    out = sims["tmp"] / "fedavg"
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["strategy"] == "fedavg"
    with open(out / "rounds.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["round"] for r in rows] == ["1", "2"]
    for column in ("client-eval/acc-mean", "client-eval/acc/rot90", "client-train/loss", "bytes-up", "bytes-down", "wall-s"):
        assert column in rows[0], column
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["strategy"] == "fedavg"
    assert 0.0 <= summary["final"]["client-eval/acc-mean"] <= 1.0
    assert len(summary["per_client"]) == 4


def test_both_strategies_saw_identical_partitions(sims):
    assert sims["fedavg"].data_fingerprint == sims["local"].data_fingerprint


def test_training_beats_the_initial_expert(sims):
    """Sanity, not a benchmark: two rounds of either method help on the shifted domains."""
    zero = run_many([build_config("digits-domains", {**SMALL, "federation.rounds": 0, "strategy": "fedavg"})])[0]
    assert sims["fedavg"].final["client-eval/acc-mean"] > zero.final["client-eval/acc-mean"]
    assert sims["local"].final["client-eval/acc-mean"] > zero.final["client-eval/acc-mean"]


def test_placement_does_not_change_the_numbers(sims, tmp_path):
    """Many clients per node (shard) and one client per node (partition) give the same run: the
    same accuracies and bytes, losses to 1e-6, since a shard's clients train vectorised (the
    default) and a lone client one by one (bit for bit with simulation.vectorise off: the
    moving-clients test of tests/strategies/test_protocol.py)."""
    pinned = run_many([_cfg(tmp_path, "fedavg", **{"federation.placement": "partition"})])[0]
    accuracies = lambda final: {k: v for k, v in final.items() if "acc" in k}  # noqa: E731
    assert accuracies(pinned.final) == accuracies(sims["fedavg"].final)
    assert pinned.final == pytest.approx(sims["fedavg"].final, abs=1e-6)
    assert pinned.bytes_up == sims["fedavg"].bytes_up
