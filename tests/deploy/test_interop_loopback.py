"""Flower interop over loopback: both directions of tests/strategies/test_flower_interop.py with
real processes, one insecure SuperLink and two SuperNodes (partition-id i of 2) on 127.0.0.1.

A: a Flower user's app, written into a temp dir, whose ServerApp runs Flower's own FedAvg
(as README.md's snippet shows) and whose `clientapp` is our `clients.app:app`: our
clients read their config from Flower's run config (the app's `[tool.flwr.app.config]`
with `--run-config` overrides), train, and the final arrays keep the model's names.
B: our ServerApp (`strategies.app:app`) under federation.wire='flower' drives a
quickstart-style ClientApp written into the app dir (a torch MLP matching
model.backbone='tiny-mlp'); the run directory and the ledger are ours.

`flwr run APP` ships each app dir as a FAB (its .py and .toml files); the SuperNodes unpack
it and put it first on the ClientApp's sys.path, and our packages come from the venv
(installed editable; runtime dependency installation is off). Both runs share the
SuperLink and the nodes (one module-scoped fixture) and evaluate in the last round only.

Wall time of this module on 2 cores shared with other jobs: 2 min 25 s at load average
3 to 8 (start 7 s, run A 75 s, run B 58 s, stop 5 s), up to 4.7 min at load 8.5. Its
processes use about 140 s of CPU, so about 1.5 min is to be expected on 2 idle cores.
The time is Flower's start-up, not training: each message starts a fresh ClientApp
process per node (importing our stack takes ~4 s of CPU), and the SuperNodes and the
ServerApp poll every 3 s. The repo has no slow-test marker: CI runs it with the rest.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.deploy.loopback import Loopback, uploads, wait_until, write_app

NODES = 2
ROUNDS = 2   # the assertions spell out rounds 1 and 2
TINY_MLP = {"fc1.weight": [64, 64], "fc1.bias": [64], "fc2.weight": [10, 64], "fc2.bias": [10]}  # digits: 8x8, 10

USER_SERVER = '''\
"""A Flower user's ServerApp: Flower's FedAvg driving fedmoe-sim's ClientApp (README.md's snippet),
counting the good replies of each round (Flower's Result keeps only their aggregate)."""
import json
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedmoe_sim import interop
from strategies.app import config_from_run_config

app = ServerApp()
replies = {"train": {}, "evaluate": {}}


class CountingFedAvg(FedAvg):
    """FedAvg that evaluates in the last round only (each phase starts a ClientApp process per node)."""

    def __init__(self, num_rounds, **kwargs):
        super().__init__(**kwargs)
        self.num_rounds = num_rounds

    def configure_evaluate(self, server_round, arrays, config, grid):
        if server_round < self.num_rounds:
            return []
        return super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, msgs):
        msgs = list(msgs)
        replies["train"][server_round] = sum(not m.has_error() for m in msgs)
        return super().aggregate_train(server_round, msgs)

    def aggregate_evaluate(self, server_round, msgs):
        msgs = list(msgs)
        replies["evaluate"][server_round] = sum(not m.has_error() for m in msgs)
        return super().aggregate_evaluate(server_round, msgs)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = config_from_run_config(context.run_config)
    n = cfg.federation.num_clients
    initial = interop.initial_arrays(cfg)
    strategy = CountingFedAvg(cfg.federation.rounds, min_train_nodes=n, min_evaluate_nodes=n, min_available_nodes=n)
    result = strategy.start(
        grid=grid, initial_arrays=initial, num_rounds=cfg.federation.rounds, timeout=cfg.federation.round_timeout)
    final = result.arrays
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "flower-result.json").write_text(json.dumps({
        "initial": {k: list(v.shape) for k, v in initial.items()},
        "final": {k: list(v.shape) for k, v in final.items()},
        "changed": max(float(abs(final[k].numpy() - initial[k].numpy()).max()) for k in initial),
        "replies": replies,
        "train": {str(r): dict(m) for r, m in result.train_metrics_clientapp.items()},
        "evaluate": {str(r): dict(m) for r, m in result.evaluate_metrics_clientapp.items()},
    }))
'''

USER_CLIENT = (Path(__file__).resolve().parents[1] / "quickstart_clientapp.py").read_text()   # shared with
# the in-process interop test


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """One insecure SuperLink and NODES SuperNodes for both runs, as (lab, connection name);
    everything (all descendants) is stopped at the end of the module, also after a failure."""
    with Loopback(tmp_path_factory.mktemp("interop-lab")) as lab:
        address = lab.superlink()
        lab.supernodes(address, NODES)
        yield lab, lab.connection("lab", address)


@pytest.mark.slow
def test_flowers_fedavg_serverapp_drives_our_clientapp_over_loopback(federation, tmp_path):
    lab, connection = federation
    # Flower only accepts --run-config keys the app declares; our ClientApp reads these (and
    # the experiment's values for the rest), exactly as our ServerApp reads its own table.
    app = write_app(tmp_path / "flower-user-app", "userapp.server:app", "clients.app:app", {
        "experiment": "digits-domains", "strategy": "fedavg", "model.backbone": "tiny-mlp",
        "federation.num_clients": NODES, "federation.rounds": ROUNDS, "federation.round_timeout": 300,
        "data.samples_per_client": 20, "train.local_epochs": 1, "out": "runs/unset"},
        {"userapp/__init__.py": "", "userapp/server.py": USER_SERVER})
    out = tmp_path / "run"
    lab.run_app_at(app, connection, [f"out='{out}'"])
    wait_until((out / "flower-result.json").exists, 60, "the ServerApp's result after `flwr run` returned")
    result = json.loads((out / "flower-result.json").read_text())
    assert result["replies"] == {"train": {"1": NODES, "2": NODES}, "evaluate": {"1": 0, "2": NODES}}  # all nodes
    assert set(result["train"]) == {str(r) for r in range(1, ROUNDS + 1)}
    for train in result["train"].values():                                       # our clients' own metrics
        assert train["train-loss"] > 0 and 0 <= train["train-acc"] <= 1
    evaluate = result["evaluate"][str(ROUNDS)]
    assert evaluate["eval-loss"] > 0 and 0 <= evaluate["acc-own"] <= 1
    assert result["final"] == result["initial"] == TINY_MLP                      # the model's names and shapes
    assert result["changed"] > 0


@pytest.mark.slow
def test_our_serverapp_drives_a_quickstart_clientapp_over_loopback(federation, tmp_path):
    lab, connection = federation
    out = tmp_path / "run"
    run_config = ["strategy='fedavg'", "federation.wire='flower'", "federation.placement='partition'",
                  f"federation.num_clients={NODES}", f"federation.rounds={ROUNDS}", f"federation.eval_every={ROUNDS}",
                  "federation.round_timeout=300", "model.backbone='tiny-mlp'", f"out='{out}'"]
    # "" = the experiment's value, as in our own pyproject; Flower needs each overridden key declared
    table = dict.fromkeys((c.split("=", 1)[0] for c in run_config), "")
    app = write_app(tmp_path / "quickstart-user-app", "strategies.app:app", "userclient.client:app", table,
                    {"userclient/__init__.py": "", "userclient/client.py": USER_CLIENT})
    lab.run_app_at(app, connection, run_config)
    wait_until((out / "summary.json").exists, 60, "summary.json after `flwr run` returned")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["rounds"] == ROUNDS
    assert summary["final"]["client-train/rejected"] == 0
    assert uploads(out) == {(r, c) for r in range(1, ROUNDS + 1) for c in range(NODES)}   # the ledger: both, twice
    assert summary["bytes_up"] == ROUNDS * NODES * 4 * sum(math.prod(s) for s in TINY_MLP.values())  # float32
    assert len(summary["per_client"]) == NODES and all(0 <= c["eval_acc"] <= 1 for c in summary["per_client"])
