import numpy as np
import pytest
import torch
from torch import nn

from fedmoe_sim.aggregation.fedgh import class_mean_representations, train_global_head
from fedmoe_sim.models.cnn import HeteroCNNModel
from fedmoe_sim.models.expert_model import ExpertModel


class _IdentityFeatures(ExpertModel):
    """features(x) = x: representations we can average by hand."""

    def __init__(self):
        super().__init__(num_classes=3)
        self.w = nn.Parameter(torch.zeros(1))
        self._register_parts({"head": {"w": self.w}})

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs


def test_class_means_by_hand_skip_absent_classes_and_span_batches():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 4.0], [5.0, 5.0]])
    y = np.array([2, 0, 2, 0, 2])                                  # class 1 absent
    means, classes, counts = class_mean_representations(_IdentityFeatures(), x, y, batch_size=2)
    np.testing.assert_array_equal(classes, [0, 2])
    np.testing.assert_array_equal(counts, [2, 3])
    np.testing.assert_allclose(means, [[0.0, 3.0], [3.0, 5.0 / 3.0]], rtol=1e-6)
    assert means.dtype == np.float32 and classes.dtype == np.int64 and counts.dtype == np.int64


def test_class_means_of_a_cnn_are_500_wide_extractor_means():
    model = HeteroCNNModel(2, (1, 8, 8), 10)
    x = model.prepare(np.random.default_rng(0).random((6, 1, 8, 8), dtype=np.float32))
    y = torch.tensor([4, 4, 4, 7, 7, 7])
    means, classes, _ = class_mean_representations(model, x, y)
    assert means.shape == (2, 500) and classes.tolist() == [4, 7]
    np.testing.assert_allclose(means[1], model.features(x[3:]).mean(0).numpy(), rtol=1e-5, atol=1e-6)


def test_class_means_refuse_empty_and_negative_labels():
    with pytest.raises(ValueError, match="at least one"):
        class_mean_representations(_IdentityFeatures(), torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match=">= 0"):
        class_mean_representations(_IdentityFeatures(), torch.zeros(1, 2), torch.tensor([-1]))


def _separable_uploads(num_clients: int = 5, num_classes: int = 10, seed: int = 0):
    """Each client uploads a noisy copy of a per-class centre, for two of the classes."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, 500)).astype(np.float32)
    classes = np.concatenate([rng.choice(num_classes, 2, replace=False) for _ in range(num_clients)] +
                             [np.arange(num_classes)])             # every class seen at least once
    means = centres[classes] + 0.1 * rng.normal(size=(len(classes), 500)).astype(np.float32)
    return means.astype(np.float32), classes.astype(np.int64)


def test_global_head_fits_separable_uploads():
    head = HeteroCNNModel(5, (1, 8, 8), 10).part_state("head")
    means, classes = _separable_uploads()
    before = {k: v.copy() for k, v in head.items()}
    new = train_global_head(head, means, classes, epochs=20, lr=0.1, batch_size=4, seed=0)
    assert sorted(new) == ["head.bias", "head.weight"]
    assert all(new[k].shape == head[k].shape and new[k].dtype == np.float32 for k in new)
    assert all(np.array_equal(head[k], before[k]) for k in head)   # the input state is not modified
    predicted = (means @ new["head.weight"].T + new["head.bias"]).argmax(1)
    assert (predicted == classes).mean() == 1.0
    assert (means @ head["head.weight"].T + head["head.bias"]).argmax(1).tolist() != classes.tolist()


def test_global_head_training_is_seeded():
    head = HeteroCNNModel(5, (1, 8, 8), 10).part_state("head")
    means, classes = _separable_uploads()
    a, b, c = (train_global_head(head, means, classes, epochs=2, batch_size=3, seed=s) for s in (1, 1, 2))
    np.testing.assert_array_equal(a["head.weight"], b["head.weight"])
    assert not np.array_equal(a["head.weight"], c["head.weight"])   # another shuffle, another path


def test_global_head_refuses_mismatched_uploads():
    head = {"head.weight": np.zeros((3, 4), np.float32), "head.bias": np.zeros(3, np.float32)}
    with pytest.raises(ValueError, match=r"means must be \[M, 4\]"):
        train_global_head(head, np.zeros((2, 5), np.float32), np.array([0, 1]))
    with pytest.raises(ValueError, match="to match means"):
        train_global_head(head, np.zeros((2, 4), np.float32), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        train_global_head(head, np.zeros((2, 4), np.float32), np.array([0, 3]))
    with pytest.raises(ValueError, match="one '\\*weight'"):
        train_global_head({"w": head["head.weight"]}, np.zeros((2, 4), np.float32), np.array([0, 1]))
