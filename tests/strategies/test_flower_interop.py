"""Flower-native interoperability on the in-process grid, both directions, one logical client per node.

A: Flower's own strategies (FedAvg, FedAdam, FedTrimmedAvg) drive our ClientApp.
B: a ClientApp written as Flower's quickstart writes one runs against our FedAvg
ServerApp under federation.wire = flower; our own ClientApp behind that wire gives
the numbers our own layout gives. Methods that cannot speak the layout refuse it.
"""

import csv

import numpy as np
import pytest
from flwr.app import ArrayRecord, Message, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedTrimmedAvg

from experiments import registry
from experiments.catalogue import build_config
from experiments.inprocess import InProcessGrid, run_inprocess
from fedmoe_sim import interop
from fedmoe_sim.config import NOT_IDENTITY, ConfigError
from strategies._base import check_method

SMALL = {"federation.num_clients": 3, "federation.rounds": 2, "data.samples_per_client": 20,
         "model.pretrain_steps": 200, "train.local_epochs": 1}
# what `flwr run` hands every ClientApp as context.run_config (pyproject's table with overrides)
RUN_CONFIG = {"experiment": "digits-domains", "strategy": "fedavg", **SMALL}
FLOWER_WIRE = {"federation.wire": "flower", "federation.placement": "partition"}


def _nodes(n: int) -> list[dict]:
    return [{"partition-id": i, "num-partitions": n} for i in range(n)]


def _flower_grid(n: int = 3) -> InProcessGrid:
    grid = InProcessGrid(n, _nodes(n))
    for context in grid.contexts.values():
        context.run_config.update(RUN_CONFIG)
    return grid


# ---------------------------------------------------- A: Flower's strategies, our clients ----
def _start(strategy, grid, cfg, **kwargs):
    initial = interop.initial_arrays(cfg)
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=2, timeout=60, **kwargs)
    return initial, result


def _changed(initial: ArrayRecord, final: ArrayRecord) -> float:
    assert set(final) == set(initial)
    return max(float(np.abs(final[k].numpy() - initial[k].numpy()).max()) for k in initial)


def test_flowers_fedavg_drives_our_clients_like_our_fedavg(task_identity):
    """Three nodes, our config from Flower's run config: the arrays move, accuracy is a valid
    number, and the numbers are our own FedAvg's (one client per node), up to float sums."""
    cfg = build_config("digits-domains", SMALL)
    nodes = dict(min_train_nodes=3, min_evaluate_nodes=3, min_available_nodes=3)
    initial, result = _start(FedAvg(**nodes), _flower_grid(), cfg)
    assert _changed(initial, result.arrays) > 0
    evaluated = result.evaluate_metrics_clientapp[2]
    assert 0 <= evaluated["acc-own"] <= 1 and np.isfinite(evaluated["eval-loss"])
    ours = run_inprocess([build_config("digits-domains", {**SMALL, "federation.placement": "partition"})],
                         InProcessGrid(3, _nodes(3)))[0].final
    assert result.train_metrics_clientapp[2]["train-loss"] == pytest.approx(ours["client-train/loss"], rel=1e-5)
    assert evaluated["acc-own"] == pytest.approx(ours["client-eval/acc-own"])


@pytest.mark.parametrize("strategy", [FedAdam, FedTrimmedAvg])
def test_other_flower_strategies_drive_our_clients_with_the_config_they_pass(task_identity, strategy):
    """The run config travels in the strategy's train/evaluate config (interop.client_config);
    the nodes' Flower run config is left empty."""
    cfg = build_config("digits-domains", SMALL)
    config = interop.client_config(cfg)
    nodes = dict(min_train_nodes=3, min_evaluate_nodes=3, min_available_nodes=3)
    initial, result = _start(strategy(**nodes), InProcessGrid(3, _nodes(3)), cfg,
                             train_config=config, evaluate_config=config)
    assert _changed(initial, result.arrays) > 0
    assert set(result.evaluate_metrics_clientapp) == {1, 2}
    assert 0 <= result.evaluate_metrics_clientapp[2]["acc-own"] <= 1


def test_a_node_outside_the_runs_clients_answers_with_one_line(task_identity):
    cfg = build_config("digits-domains", SMALL)
    grid = _flower_grid(2)
    grid.contexts[2].node_config["partition-id"] = 7
    msg = Message(RecordDict({"arrays": interop.initial_arrays(cfg)}), 2, "train")
    with pytest.raises(ConfigError, match=r"node partition-id 7 is not a client of this run.*0\.\.2"):
        grid.client_app(msg, grid.contexts[2])


# ------------------------------------------ B: a Flower user's ClientApp, our ServerApp ----
def _quickstart_app():
    """The user's ClientApp (tests/quickstart_clientapp.py, also shipped by the loopback test)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "quickstart_clientapp.py"
    spec = importlib.util.spec_from_file_location("quickstart_clientapp", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.app


user_app = _quickstart_app()


def _user_run(tmp_path, nodes):
    cfg = build_config("digits-domains", {**SMALL, **FLOWER_WIRE, "federation.num_clients": len(nodes),
                                          "model.backbone": "tiny-mlp", "out": str(tmp_path / "run")})
    summary = run_inprocess([cfg], InProcessGrid(len(nodes), nodes, client_app=user_app))[0]
    with open(tmp_path / "run" / "ledger.csv") as f:
        return summary, list(csv.DictReader(f))


def test_a_quickstart_style_client_runs_against_our_fedavg(tmp_path):
    summary, ledger = _user_run(tmp_path, _nodes(2))
    nbytes = (64 * 64 + 64 + 10 * 64 + 10) * 4
    assert summary.rounds == 2 and summary.final["client-train/rejected"] == 0
    assert [c["eval_acc"] for c in summary.per_client] and all(0 <= c["eval_acc"] <= 1 for c in summary.per_client)
    assert summary.bytes_up == 2 * 2 * nbytes                        # rounds x clients x the model
    assert summary.bytes_down == 2 * 2 * 2 * nbytes                  # train and evaluate, every round
    up = {(int(r["round"]), int(r["client"])) for r in ledger if r["direction"] == "up"}
    assert up == {(r, c) for r in (1, 2) for c in (0, 1)}
    assert {r["part"] for r in ledger} == {"model"}
    assert {(r["direction"], int(r["bytes"])) for r in ledger} == {("up", nbytes), ("down", 2 * nbytes)}


def test_a_standard_reply_is_judged_as_ours_are(tmp_path, caplog):
    """A non-finite metric in the standard layout is rejected, logged and counted; the round goes on."""
    nodes = _nodes(3)
    nodes[1]["misbehave"] = "nan"
    summary, _ = _user_run(tmp_path, nodes)
    assert summary.final["client-train/rejected"] == 1 and summary.final["client-train/num-clients"] == 2
    assert "rejected update of client 1: non-finite metrics" in caplog.text


def test_our_own_clients_behind_the_flower_wire_give_our_numbers():
    nodes = _nodes(3)
    ours = run_inprocess([build_config("digits-domains", {**SMALL, "federation.placement": "partition"})],
                         InProcessGrid(3, nodes))[0]
    flower = run_inprocess([build_config("digits-domains", {**SMALL, **FLOWER_WIRE})], InProcessGrid(3, nodes))[0]
    assert flower.final == ours.final and flower.per_client == ours.per_client
    assert (flower.bytes_up, flower.bytes_down) == (ours.bytes_up, ours.bytes_down)


# ---------------------------------------------------------------- refusals ----
def _refusal_cases():
    return [name for name, method in registry.METHODS.items() if not method.strategy.flower_wire]


@pytest.mark.parametrize("name", _refusal_cases())
def test_methods_that_cannot_speak_the_standard_layout_refuse_it_in_one_line(name):
    cfg = build_config("digits-domains", {"strategy": name, **FLOWER_WIRE})
    with pytest.raises(ConfigError, match=rf"^federation.wire must be fedmoe for strategy {name} \(got 'flower'\)"
                                          r": .* only fedavg, fedavg-moe, fedavg-cnn exchange$"):
        check_method(registry.get_method(name).strategy, cfg, None)   # refused before the workspace is needed


def test_the_flower_wire_needs_partition_placement_and_a_known_value():
    with pytest.raises(ConfigError, match=r"^federation.placement must be 'partition' with federation.wire='flower'"):
        build_config("digits-domains", {"federation.wire": "flower"})
    with pytest.raises(ConfigError, match=r"^federation.wire must be one of fedmoe, flower \(got 'grpc'\)$"):
        build_config("digits-domains", {"federation.wire": "grpc"})


def test_the_default_wire_leaves_the_config_hash_alone():
    """Recorded runs stay resumable: the default is out of the hash, the other value in it."""
    cfg = build_config("digits-domains", {**SMALL, "federation.placement": "partition"})
    assert cfg.identity_hash() == cfg.identity_hash(exclude=(*NOT_IDENTITY, "federation.wire"))
    assert build_config("digits-domains", {**SMALL, **FLOWER_WIRE}).identity_hash() != cfg.identity_hash()


def test_the_cli_refuses_the_flower_wire_for_local_in_one_line(capsys):
    from experiments.cli import main

    args = ["run", "--strategy", "local", "--set", "federation.wire=flower", "--set", "federation.placement=partition",
            "--set", "model.pretrain_steps=10", "--set", "federation.num_clients=2"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("fedmoe-sim: error: federation.wire must be fedmoe for strategy local")
