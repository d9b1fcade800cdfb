import torch
from torch import nn

from fedmoe_sim.config import TrainConfig
from fedmoe_sim.training import derive_seed, evaluate, train_local


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2)
    assert derive_seed(0, 1, 2) != derive_seed(0, 2, 1)


def _toy():
    torch.manual_seed(0)
    x = torch.randn(64, 1, 8, 8)
    y = (x.flatten(1).sum(1) > 0).long()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    return model, x, y


def test_training_is_reproducible_from_the_seed_and_learns():
    cfg = TrainConfig(local_epochs=5, batch_size=16, lr=0.1)
    m1, x, y = _toy()
    m2, _, _ = _toy()
    before = evaluate(m1, x, y)[0]
    s1 = train_local(m1, x, y, cfg, seed=7)
    s2 = train_local(m2, x, y, cfg, seed=7)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)
    assert s1 == s2 and s1.steps == 20
    assert evaluate(m1, x, y)[0] < before


def test_evaluate_on_empty_set_is_nan():
    model, x, y = _toy()
    loss, acc = evaluate(model, x[:0], y[:0])
    assert loss != loss and acc != acc
