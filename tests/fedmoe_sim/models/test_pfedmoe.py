import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from fedmoe_sim.aggregation.average import weighted_average
from fedmoe_sim.config import TrainConfig
from fedmoe_sim.models.pfedmoe import PFedMoEModel
from fedmoe_sim.training import evaluate, train_local

DIGITS, CIFAR = (1, 8, 8), (3, 32, 32)


def _images(n: int, shape=DIGITS, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


@pytest.mark.parametrize("shape", [DIGITS, CIFAR])
def test_shapes_and_gate_weights_sum_to_one(shape):
    model = PFedMoEModel(2, shape, num_classes=100)
    x = model.prepare(_images(5, shape))
    assert model(x).shape == (5, 100)
    assert model.features(x).shape == (5, 500)
    a = model.gate_weights(x)
    assert a.shape == (5, 2) and bool((a > 0).all())
    torch.testing.assert_close(a.sum(1), torch.ones(5))


def test_representation_is_the_gate_weighted_sum_of_the_experts():
    model = PFedMoEModel(1, DIGITS, 10)
    x = model.prepare(_images(4))
    with torch.no_grad():
        a = model.gate_weights(x)
        expected = a[:, 0:1] * model.global_expert(x) + a[:, 1:2] * model.local_expert(x)
        torch.testing.assert_close(model.features(x), expected)
        torch.testing.assert_close(model(x), model.head(expected))


def test_parts_are_exactly_the_trainable_tensors_and_disjoint():
    model = PFedMoEModel(4, DIGITS, 10, gate_hidden=16)
    assert model.part_names == ("global", "local", "gate", "head")
    specs = [model.part_spec(p) for p in model.part_names]
    names = [k for s in specs for k in s]
    assert len(names) == len(set(names))                                   # disjoint
    assert {k: v for s in specs for k, v in s.items()} == model.expert_spec()
    assert {id(p) for p in model.parameters()} == {id(p) for p in model.parameters() if p.requires_grad}
    assert len(names) == len(list(model.parameters())) == 8 + 8 + 6 + 2
    assert model.part_spec("gate") == {"gate.fc1.bias": ((16,), "float32"), "gate.fc1.weight": ((16, 64), "float32"),
                                       "gate.fc2.bias": ((2,), "float32"), "gate.fc2.weight": ((2, 16), "float32"),
                                       "gate.norm.bias": ((64,), "float32"), "gate.norm.weight": ((64,), "float32")}
    assert model.backbone_state() == {}                                    # no BatchNorm buffers to lose


def test_global_part_of_different_families_can_be_averaged():
    a, b = PFedMoEModel(1, DIGITS, 10, seed=1), PFedMoEModel(2, DIGITS, 10, seed=2)
    assert a.part_spec("global") == b.part_spec("global")
    assert a.part_spec("local") != b.part_spec("local")
    ga, gb, local_before = a.part_state("global"), b.part_state("global"), a.part_state("local")
    avg = weighted_average([ga, gb], [1, 3])                     # the server's FedAvg of the global part
    a.load_expert_state({**a.expert_state(), **avg})
    for k, v in a.part_state("global").items():
        np.testing.assert_allclose(v, 0.25 * ga[k] + 0.75 * gb[k], rtol=1e-6, atol=1e-7)
    for k, v in a.part_state("local").items():                   # the private expert is untouched
        np.testing.assert_array_equal(v, local_before[k])


def test_every_part_gets_gradient_from_one_cross_entropy():
    model = PFedMoEModel(3, DIGITS, 10)
    x = model.prepare(_images(6))
    F.cross_entropy(model(x), torch.arange(6)).backward()
    for part in model.part_names:
        for name in model.part_spec(part):
            grad = model.get_parameter(name).grad
            assert grad is not None and float(grad.abs().sum()) > 0, name


def test_predictions_do_not_depend_on_the_rest_of_the_batch():
    model = PFedMoEModel(5, DIGITS, 10)
    x = model.prepare(_images(8))
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:3], model(x[:3]))
        torch.testing.assert_close(model(x)[3:4], model(x[3:4]))


def test_init_comes_from_the_seed_alone():
    torch.manual_seed(5)
    expected_next = torch.rand(1)
    torch.manual_seed(5)
    a = PFedMoEModel(1, DIGITS, 10, seed=3).expert_state()
    assert torch.rand(1) == expected_next                       # the global RNG was not drawn from
    b = PFedMoEModel(1, DIGITS, 10, seed=3).expert_state()
    c = PFedMoEModel(1, DIGITS, 10, seed=4).expert_state()
    random_keys = [k for k in a if not k.startswith("gate.norm.")]   # LayerNorm starts at (1, 0)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not any(np.array_equal(a[k], c[k]) for k in random_keys)
    np.testing.assert_array_equal(a["gate.norm.weight"], np.ones(64, np.float32))
    other_local = PFedMoEModel(3, DIGITS, 10, seed=3)
    for k, v in other_local.part_state("global").items():   # same seed: same global start, any local family
        np.testing.assert_array_equal(v, a[k])


def test_train_local_lowers_the_loss_on_digits():
    d = load_digits()
    x = (d.images[:40] / 16.0).astype(np.float32)[:, None]
    model = PFedMoEModel(1, DIGITS, 10)
    inputs, y = model.prepare(x), torch.as_tensor(d.target[:40])
    before, gate_before = evaluate(model, inputs, y)[0], model.part_state("gate")
    train_local(model, inputs, y, TrainConfig(local_epochs=10, batch_size=8, lr=0.1, augment=False), seed=0)
    assert evaluate(model, inputs, y)[0] < 0.7 * before
    assert not np.array_equal(model.part_state("gate")["gate.fc2.weight"], gate_before["gate.fc2.weight"])


def test_bad_gate_width_is_refused():
    with pytest.raises(ValueError, match="gate hidden width"):
        PFedMoEModel(1, DIGITS, 10, gate_hidden=0)
