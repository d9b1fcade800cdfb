"""Deployment path: a real SuperLink and two SuperNodes on localhost, `flwr run .` against them.

The same ServerApp/ClientApp as the simulation, over Flower's Fleet API, one logical
client pinned to each node (`placement=partition`), MetaMoE's multi-phase protocol
(training rounds, the upload phase, unification on the server). Flower's home
(connections, installed apps) is a temp dir: the user's ~/.flwr is never touched.
"""

from __future__ import annotations

import json

import pytest

from tests.deploy.loopback import Loopback, uploads


@pytest.fixture
def superlink(tmp_path):
    """A SuperLink and two SuperNodes (partition-id 0 and 1); yields (connection name, loopback)."""
    with Loopback(tmp_path) as lab:
        address = lab.superlink()
        lab.supernodes(address, 2)
        yield lab.connection("test", address), lab


@pytest.mark.slow
def test_metamoe_runs_on_a_superlink_with_one_client_per_node(superlink, tmp_path):
    connection, lab = superlink
    out = tmp_path / "run"
    run_config = [
        "strategy='metamoe'", "experiment='metamoe-digits'", "federation.num_clients=2",
        "federation.placement='partition'", "federation.rounds=1", "data.samples_per_client=20",
        "model.pretrain_steps=200", "train.local_epochs=1", "metamoe.candidates=60", "metamoe.proxies=15",
        "metamoe.relevance_epochs=5", "metamoe.finetune_epochs=1"]
    summary = lab.run_app(connection, run_config, out)
    assert summary["rounds"] == 1
    assert 0 < summary["final"]["acc-mean"] <= 1
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert rows[-1]["server-eval/rejected-uploads"] == 0
    assert {cid for _, cid in uploads(out)} == {0, 1}   # both pinned clients uploaded their expert once
