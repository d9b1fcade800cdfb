"""`build_model` for the model-heterogeneous families: cnn-1..5 and pfedmoe-1..5, on 8x8 digits and
on [3, 32, 32] images read through the real ImageFolder loader from a fixture written here."""

import numpy as np
import pytest
import torch
from PIL import Image

from fedmoe_sim.config import CNN_FAMILIES, PFEDMOE_FAMILIES, ConfigError, ModelConfig
from fedmoe_sim.data.real import load_imagefolder
from fedmoe_sim.models import build_model
from fedmoe_sim.models.cnn import FC1_WIDTHS, HeteroCNNModel
from fedmoe_sim.models.pfedmoe import PFedMoEModel


@pytest.fixture(scope="module")
def cifar_like(tmp_path_factory):
    """Two classes of 32x32 RGB images (CIFAR's shape) in an ImageFolder."""
    root = tmp_path_factory.mktemp("cifar-like")
    for cls, colour in (("cat", (200, 40, 40)), ("dog", (40, 40, 200))):
        for i in range(3):
            (root / cls).mkdir(exist_ok=True)
            Image.new("RGB", (32, 32), colour).save(root / cls / f"{i}.png")
    return load_imagefolder(str(root))


@pytest.mark.parametrize("k", range(1, 6))
def test_cnn_and_pfedmoe_families_on_digits(digits_benchmark, k):
    cnn = build_model(digits_benchmark, ModelConfig(backbone=f"cnn-{k}"))
    moe = build_model(digits_benchmark, ModelConfig(backbone=f"pfedmoe-{k}", gate_hidden=16))
    assert isinstance(cnn, HeteroCNNModel) and cnn.family == k
    assert isinstance(moe, PFedMoEModel) and (moe.local_family, moe.global_family) == (k, 5)
    assert cnn.extractor.padding == 2 and cnn.extractor.fc1.out_features == FC1_WIDTHS[k]   # 8x8: "same" convs
    assert moe.gate.fc1.weight.shape == (16, 64)                                           # model.gate_hidden
    x = cnn.prepare(digits_benchmark.domains[0].x_test[:3])
    assert cnn(x).shape == moe(x).shape == (3, 10)


def test_cifar_sized_inputs_from_the_loader_use_the_published_sizes(cifar_like):
    assert cifar_like.input_shape == (3, 32, 32)
    cnn = build_model(cifar_like, ModelConfig(backbone="cnn-1"))
    moe = build_model(cifar_like, ModelConfig(backbone="pfedmoe-2"))
    assert cnn.extractor.padding == 0 and cnn.extractor.flat_dim == 32 * 5 * 5
    assert moe.local_expert.flat_dim == 16 * 5 * 5 and moe.global_expert.flat_dim == 32 * 5 * 5   # CNN-2: 16 filters
    x = cnn.prepare(cifar_like.domains[0].x_train)
    assert cnn(x).shape == moe(x).shape == (len(x), 2)
    with torch.no_grad():
        np.testing.assert_allclose(moe.gate_weights(x).sum(1).numpy(), 1.0, rtol=1e-6)


def test_families_are_backbones_and_bad_ones_fail_in_one_line(text_benchmark):
    assert ModelConfig(families=",".join(CNN_FAMILIES + PFEDMOE_FAMILIES)).family_list[-1] == "pfedmoe-5"
    with pytest.raises(ConfigError, match="model.backbone must be one of .*cnn-1"):
        ModelConfig(backbone="cnn-6")
    with pytest.raises(ConfigError, match="model.gate_hidden must be >= 1"):
        ModelConfig(gate_hidden=0)
    with pytest.raises(ValueError, match=r"model.backbone=pfedmoe-1 needs an image benchmark .*text-test: kind text"):
        build_model(text_benchmark, ModelConfig(backbone="pfedmoe-1"))
