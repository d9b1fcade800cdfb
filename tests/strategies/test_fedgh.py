"""FedGH in process: class means up, the server-trained head down, extractors kept on the clients."""

import numpy as np
import pytest

from experiments.catalogue import build_config
from experiments.inprocess import run_inprocess
from fedmoe_sim import wire
from fedmoe_sim.aggregation.fedgh import class_mean_representations, train_global_head
from fedmoe_sim.config import ConfigError, resolve_config
from fedmoe_sim.training import derive_seed
from fedmoe_sim.workspace import Workspace, get_workspace
from strategies.fedgh import CLASSES, COUNTS, MEANS, prototypes_ok

SMALL = {"federation.num_clients": 5, "federation.rounds": 2, "data.samples_per_client": 20,
         "train.local_epochs": 1}


def test_class_means_go_up_the_head_comes_down_and_the_server_trains_it(tmp_path, monkeypatch):
    trained = {}
    train = Workspace.train_clients

    def spy(self, cids, server_round, starts, datas=None):
        out = train(self, cids, server_round, starts, datas)
        trained.update({(server_round, c): (s, o[0]) for c, s, o in zip(cids, starts, out, strict=True)})
        return out

    monkeypatch.setattr(Workspace, "train_clients", spy)
    cfg = build_config("pfedmoe-digits", {**SMALL, "strategy": "fedgh", "out": str(tmp_path / "run"),
                                          "fedgh.epochs": 3})
    summary = run_inprocess([cfg])[0]
    rows = [line.split(",") for line in (tmp_path / "run" / "ledger.csv").read_text().splitlines()[1:]]
    assert {(r[1], r[4]) for r in rows} == {(wire.UP, "prototypes"), (wire.DOWN, "head")}
    assert summary.bytes_down == 2 * 5 * (10 * 500 + 10) * 4                     # the head, to every client
    ws = get_workspace(cfg)
    held = [len(np.unique(ws.splits[c].y_train)) for c in range(5)]
    assert summary.bytes_up == 2 * sum(n * (500 * 4 + 8 + 8) for n in held)    # per class: a mean, a label, a count
    assert summary.final["fedgh/prototypes"] == sum(held) and summary.final["fedgh/rejected"] == 0

    # the round-2 head is the server's SGD on the round-1 class means of the trained extractors
    protos = [class_mean_representations(ws.load(trained[(1, c)][1], ws.family_of(c)), *ws.train_data(c))
              for c in range(5)]
    initial_head = {k: v for k, v in ws.initial_expert().items() if k.startswith("head.")}
    means, classes = np.concatenate([p[0] for p in protos]), np.concatenate([p[1] for p in protos])
    head = train_global_head(initial_head, means, classes, epochs=3, lr=cfg.fedgh.lr, batch_size=cfg.fedgh.batch,
                             seed=derive_seed(cfg.seed, "fedgh", 1))
    for c in range(5):
        start = trained[(2, c)][0]
        for k in head:
            np.testing.assert_allclose(start[k], head[k], rtol=1e-5, atol=1e-6)
        for k in set(start) - set(head):                                  # the extractor stays the client's own
            np.testing.assert_array_equal(start[k], trained[(1, c)][1][k])


def test_prototypes_that_do_not_line_up_or_name_unknown_classes_are_refused():
    good = {MEANS: np.zeros((2, 500), np.float32), CLASSES: np.array([1, 7]), COUNTS: np.array([3, 4])}
    assert prototypes_ok(good, 10)
    assert not prototypes_ok({**good, CLASSES: np.array([1, 10])}, 10)
    assert not prototypes_ok({**good, CLASSES: np.array([-1, 2])}, 10)
    assert not prototypes_ok({**good, COUNTS: np.array([3])}, 10)


def test_fedgh_settings_are_checked_and_count_only_for_fedgh():
    with pytest.raises(ConfigError, match=r"fedgh.lr must be a finite number > 0 \(got 0.0\)"):
        resolve_config({"fedgh.lr": 0})
    with pytest.raises(ConfigError, match="fedgh.batch must be >= 1"):
        resolve_config({"fedgh.batch": 0})
    for strategy, counts in (("fedgh", True), ("pfedmoe", False), ("fedavg", False)):
        a, b = resolve_config({"strategy": strategy}), resolve_config({"strategy": strategy, "fedgh.epochs": 3})
        assert (a.identity_hash() != b.identity_hash()) == counts
