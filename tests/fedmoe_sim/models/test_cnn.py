import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from fedmoe_sim.config import TrainConfig
from fedmoe_sim.models.cnn import CNNExtractor, HeteroCNNModel, conv_padding, family_for_client
from fedmoe_sim.training import evaluate, train_local

DIGITS, CIFAR = (1, 8, 8), (3, 32, 32)
FAMILIES = (1, 2, 3, 4, 5)


def test_clients_cycle_through_the_five_families():
    assert [family_for_client(i) for i in range(11)] == [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1]
    with pytest.raises(ValueError, match="client_id"):
        family_for_client(-1)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape", [DIGITS, CIFAR])
def test_logits_and_500_wide_representation_for_each_family(family, shape):
    model = HeteroCNNModel(family, shape, num_classes=10)
    x = model.prepare(np.random.default_rng(0).random((3, *shape), dtype=np.float32))
    assert model(x).shape == (3, 10)
    assert model.features(x).shape == (3, 500)


def test_published_layer_widths():
    fc1 = {f: CNNExtractor(f, CIFAR).fc1.out_features for f in FAMILIES}
    assert fc1 == {1: 2000, 2: 2000, 3: 1000, 4: 800, 5: 500}
    conv2 = {f: CNNExtractor(f, CIFAR).conv2.out_channels for f in FAMILIES}
    assert conv2 == {1: 32, 2: 16, 3: 32, 4: 32, 5: 32}
    assert {CNNExtractor(f, CIFAR).conv1.out_channels for f in FAMILIES} == {16}
    assert {CNNExtractor(f, CIFAR).fc2.out_features for f in FAMILIES} == {500}


def test_flatten_size_follows_the_input():
    assert conv_padding(CIFAR) == 0 and CNNExtractor(1, CIFAR).fc1.in_features == 32 * 5 * 5   # 32-28-14-10-5
    assert CNNExtractor(2, CIFAR).fc1.in_features == 16 * 5 * 5
    assert conv_padding(DIGITS) == 2 and CNNExtractor(1, DIGITS).fc1.in_features == 32 * 2 * 2  # 8-8-4-4-2
    assert CNNExtractor(1, (1, 28, 28)).fc1.in_features == 32 * 4 * 4                            # LeNet's MNIST
    assert CNNExtractor(1, (1, 4, 4)).fc1.in_features == 32                                      # smallest "same"


def test_too_small_inputs_are_refused_clearly():
    with pytest.raises(ValueError, match="too small"):
        CNNExtractor(1, (1, 3, 3))
    with pytest.raises(ValueError, match="too small"):
        CNNExtractor(1, DIGITS, padding=0)
    with pytest.raises(ValueError, match="family"):
        CNNExtractor(6, DIGITS)
    with pytest.raises(ValueError, match=r"\[N, 1, 8, 8\]"):
        HeteroCNNModel(1, DIGITS, 10).prepare(np.zeros((2, 3, 8, 8), np.float32))


def test_parts_are_exactly_the_trainable_tensors_and_disjoint():
    model = HeteroCNNModel(3, DIGITS, 10)
    assert model.part_names == ("extractor", "head")
    ext, head = model.part_spec("extractor"), model.part_spec("head")
    assert not set(ext) & set(head)
    assert {**ext, **head} == model.expert_spec()
    assert len(ext) == 8 and head == {"head.weight": ((10, 500), "float32"), "head.bias": ((10,), "float32")}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in model.parameters()} and len(trainable) == 10
    assert model.backbone_state() == {}   # nothing frozen, no buffers (no BatchNorm)


def test_lg_fedavg_head_is_shareable_across_families():
    specs = [HeteroCNNModel(f, DIGITS, 10).part_spec("head") for f in FAMILIES]
    assert all(s == specs[0] for s in specs)
    assert HeteroCNNModel(1, DIGITS, 10).part_spec("extractor") != HeteroCNNModel(2, DIGITS, 10).part_spec("extractor")


def test_init_comes_from_the_seed_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = HeteroCNNModel(1, DIGITS, 10, seed=7).expert_state()
    assert torch.rand(1) == expected_next                       # the global RNG was not drawn from
    b = HeteroCNNModel(1, DIGITS, 10, seed=7).expert_state()
    c = HeteroCNNModel(1, DIGITS, 10, seed=8).expert_state()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not any(np.array_equal(a[k], c[k]) for k in a)
    model = HeteroCNNModel(1, DIGITS, 10, seed=8)
    model.reset_expert(7)
    assert all(np.array_equal(a[k], v) for k, v in model.expert_state().items())


def test_conv_init_uses_the_kernel_fan_in():
    state = HeteroCNNModel(1, CIFAR, 10).expert_state()
    for key, fan_in in [("extractor.conv1.weight", 3 * 25), ("extractor.conv2.weight", 16 * 25),
                        ("extractor.conv2.bias", 16 * 25), ("extractor.fc1.weight", 800), ("head.weight", 500)]:
        bound = 1 / math.sqrt(fan_in)
        assert np.abs(state[key]).max() <= bound
        assert np.abs(state[key]).max() > 0.9 * bound           # a kw-only fan-in (5) would give 0.45


def test_train_local_lowers_the_loss_on_digits():
    d = load_digits()
    x = (d.images[:40] / 16.0).astype(np.float32)[:, None]
    model = HeteroCNNModel(1, DIGITS, 10)
    inputs, y = model.prepare(x), torch.as_tensor(d.target[:40])
    before = evaluate(model, inputs, y)[0]
    train_local(model, inputs, y, TrainConfig(local_epochs=10, batch_size=8, lr=0.1, augment=False), seed=0)
    assert evaluate(model, inputs, y)[0] < 0.5 * before
