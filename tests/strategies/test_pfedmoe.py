"""pFedMoE in process: five model families in one federation, the CIFAR-sized path, the config edge."""

import numpy as np
import pytest
from PIL import Image

from experiments.catalogue import build_config, get_experiment
from experiments.inprocess import run_inprocess
from experiments.registry import get_method
from fedmoe_sim.config import CNN_FAMILIES, PFEDMOE_FAMILIES
from fedmoe_sim.workspace import get_workspace
from strategies.pfedmoe import PFedMoEStrategy

SMALL = {"federation.num_clients": 5, "federation.rounds": 2, "data.samples_per_client": 20,
         "train.local_epochs": 1}


def test_clients_of_all_five_families_train_together_and_upload_one_global_spec():
    cfg = build_config("pfedmoe-digits", {**SMALL, "strategy": "pfedmoe"})
    ws = get_workspace(cfg)
    assert [ws.family_of(c) for c in range(5)] == list(PFEDMOE_FAMILIES)
    assert [ws.model_of(c).local_family for c in range(5)] == [1, 2, 3, 4, 5]
    local_specs = {str(sorted(ws.model_of(c).part_spec("local").items())) for c in range(5)}
    assert len(local_specs) == 5                                      # five different local experts ...
    assert len({str(sorted(ws.model_of(c).part_spec("global").items())) for c in range(5)}) == 1   # ... one global
    summary = run_inprocess([cfg])[0]
    assert summary.final["client-train/num-clients"] == 5 and summary.final["client-train/rejected"] == 0
    assert summary.bytes_up == 2 * 5 * sum(np.prod(s) * 4 for s, _ in ws.model.part_spec("global").values())
    gates = [row["gate-global"] for row in summary.per_client]     # what each client's gate learned
    assert len(gates) == 5 and all(0 < g < 1 for g in gates)
    assert summary.final["client-eval/gate-global"] == pytest.approx(np.mean(gates))


def _cifar_like_folder(root, classes=10, per_class=6):
    """[3, 32, 32] images: class c is a colour plus noise (the CIFAR loader path, nothing downloaded)."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        colour = rng.integers(0, 256, 3)
        for i in range(per_class):
            pixels = np.clip(colour + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
            path = root / f"class{c}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)


@pytest.mark.parametrize("strategy", ["pfedmoe", "fedgh", "lg-fedavg"])
def test_cifar_sized_images_use_the_published_geometry(tmp_path, strategy):
    _cifar_like_folder(tmp_path / "pool")
    cfg = build_config("pfedmoe-digits", {**SMALL, "strategy": strategy, "data.benchmark": "imagefolder",
                                          "data.root": str(tmp_path / "pool"), "data.samples_per_client": 0})
    ws = get_workspace(cfg)
    assert ws.benchmark.input_shape == (3, 32, 32)
    extractor = ws.model.global_expert if strategy == "pfedmoe" else ws.model.extractor
    assert extractor.padding == 0 and extractor.flat_dim == 32 * 5 * 5      # 32 -> 28 -> 14 -> 10 -> 5
    summary = run_inprocess([cfg])[0]
    assert summary.final["client-train/num-clients"] == 5 and 0 <= summary.final["client-eval/acc-own"] <= 1
    if strategy == "pfedmoe":
        cnn_5 = 3 * 16 * 25 + 16 + 16 * 32 * 25 + 32 + 800 * 500 + 500 + 500 * 500 + 500   # convs, FC1, FC2
        assert summary.bytes_up == 2 * 5 * 4 * cnn_5


def test_pfedmoe_refuses_models_without_a_global_expert_in_one_line():
    cfg = build_config("pfedmoe-digits", {**SMALL, "strategy": "standalone"})
    with pytest.raises(ValueError, match=r"shares part 'global' .* family 'cnn-1' has no such part") as err:
        PFedMoEStrategy.check_config(cfg, get_workspace(cfg))
    assert "\n" not in str(err.value)


def test_every_method_of_the_experiment_gets_its_defining_models_and_passes_its_check():
    exp = get_experiment("pfedmoe-digits")
    assert set(exp.strategies) >= {"pfedmoe", "standalone", "fedavg-cnn", "lg-fedavg", "fedgh"}
    for name in exp.strategies:
        cfg = build_config("pfedmoe-digits", {**SMALL, "strategy": name, "model.pretrain_steps": 10})
        get_method(name).strategy.check_config(cfg, get_workspace(cfg))
    families = {name: build_config("pfedmoe-digits", {**SMALL, "strategy": name, "model.families": "cnn-1,cnn-2"})
                .model.family_list for name in ("pfedmoe", "standalone", "lg-fedavg", "fedgh", "fedavg-cnn")}
    assert families["pfedmoe"] == PFEDMOE_FAMILIES                       # the method's own values win
    assert families["standalone"] == families["lg-fedavg"] == families["fedgh"] == CNN_FAMILIES
    assert families["fedavg-cnn"] == ("cnn-5",)


@pytest.mark.parametrize("strategy", ["pfedmoe", "standalone"])
def test_clients_own_starts_give_one_run_vectorised_or_not_and_wherever_they_train(strategy):
    """Each client's private parts start from its own seed (`Workspace.initial_state`): the run is
    the same with clients trained one by one, vectorised per family, or one per node."""
    from experiments.inprocess import InProcessGrid

    base = {**SMALL, "federation.num_clients": 10, "strategy": strategy}
    seq = run_inprocess([build_config("pfedmoe-digits", {**base, "simulation.vectorise": False})])[0]
    vec = run_inprocess([build_config("pfedmoe-digits", {**base, "simulation.vectorise": True})])[0]
    pinned = run_inprocess([build_config("pfedmoe-digits", {**base, "federation.placement": "partition"})],
                           InProcessGrid(10, [{"partition-id": i, "num-partitions": 10} for i in range(10)]))[0]
    own = {name: [row["acc-own"] for row in run.per_client] for name, run in
           (("seq", seq), ("vec", vec), ("pinned", pinned))}
    assert own["seq"] == own["vec"] == own["pinned"]
    for run in (vec, pinned):
        assert run.final["client-train/loss"] == pytest.approx(seq.final["client-train/loss"], abs=1e-4)


def test_pfedmoe_runs_the_cifar_100_setting_end_to_end_on_a_local_copy(tmp_path, no_md5):
    """The paper's CIFAR-100 setting, pathological with 10 classes per client, through the
    torchvision CIFAR-100 loader on a small fake on-disk copy (the real files are not here):
    32x32 inputs at the published geometry, 100 output classes, the global expert the only upload."""
    from tests.fedmoe_sim.data.test_real import _write_cifar

    _write_cifar(tmp_path / "cifar", hundred=True, n=400, classes=40)
    cfg = build_config("pfedmoe-digits", {**SMALL, "strategy": "pfedmoe", "data.benchmark": "torchvision",
                                          "data.name": "cifar100", "data.root": str(tmp_path / "cifar"),
                                          "data.samples_per_client": 0, "data.classes_per_client": 10})
    ws = get_workspace(cfg)
    assert ws.benchmark.input_shape == (3, 32, 32) and ws.benchmark.num_classes == 100
    labels = [set(ws.train_data(c)[1].tolist()) for c in range(5)]
    assert all(len(own) <= 10 for own in labels) and len(set().union(*labels)) > 10   # 10 of the 40 each
    summary = run_inprocess([cfg])[0]
    assert summary.final["client-train/num-clients"] == 5 and 0 <= summary.final["client-eval/acc-own"] <= 1
    cnn_5 = 3 * 16 * 25 + 16 + 16 * 32 * 25 + 32 + 800 * 500 + 500 + 500 * 500 + 500    # the global expert
    assert summary.bytes_up == 2 * 5 * 4 * cnn_5 and summary.bytes_p2p == 0
