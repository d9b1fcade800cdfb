"""Vectorised clients (`fedmoe_sim.vectorised`) against one-after-another training, client by client."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fedmoe_sim.config import TrainConfig
from fedmoe_sim.models import build_model
from fedmoe_sim.training import train_local
from fedmoe_sim.vectorised import can_vectorise, train_many

SIZES = [1, 7, 16, 17, 33, 60]          # ragged: one image, partial batches, exact batches
TRAIN = TrainConfig(local_epochs=3, batch_size=16, lr=0.03, momentum=0.9, weight_decay=1e-3, max_grad_norm=1.0,
                    augment=True)
PLAIN = dataclasses.replace(TRAIN, momentum=0.0, weight_decay=0.0, max_grad_norm=0.0, augment=False)


def _clients(model, benchmark, seed=0):
    """Each client: a start state (a distinct expert, B != 0, so every tensor has gradient), its data, a seed."""
    rng = np.random.default_rng(seed)
    x_all, y_all = benchmark.domains[0].x_train, benchmark.domains[0].y_train
    starts, data = [], []
    for i, n in enumerate(SIZES):
        model.reset_expert(100 + i)
        starts.append({k: (v + 0.05 * rng.standard_normal(v.shape)).astype(np.float32)
                       for k, v in model.expert_state().items()})
        idx = rng.choice(len(y_all), size=n, replace=False)
        data.append((model.prepare(x_all[idx]), torch.as_tensor(y_all[idx], dtype=torch.long)))
    return starts, data, [1000 + i for i in range(len(SIZES))]


def _one_by_one(model, starts, data, cfg, seeds):
    out = []
    for start, (x, y), seed in zip(starts, data, seeds, strict=True):
        model.load_expert_state(start)
        stats = train_local(model, x, y, cfg, seed=seed)
        out.append((model.expert_state(), stats))
    return out


@pytest.fixture(scope="module", params=["mixer", "tiny-mlp", "mixer-moe"])
def model(request, digits_benchmark, mixer_cfg):
    return build_model(digits_benchmark, dataclasses.replace(mixer_cfg, backbone=request.param))


@pytest.mark.parametrize("cfg", [TRAIN, PLAIN], ids=["momentum-clip-decay-augment", "plain"])
def test_vectorised_clients_get_what_each_would_get_alone(model, digits_benchmark, cfg):
    assert can_vectorise(model)
    starts, data, seeds = _clients(model, digits_benchmark)
    alone = _one_by_one(model, starts, data, cfg, seeds)
    together = train_many(model, starts, data, cfg, seeds)
    for (s_alone, st_alone), (s_vec, st_vec), start in zip(alone, together, starts, strict=True):
        assert set(s_vec) == set(s_alone)
        assert max(float(np.abs(s_vec[k] - s_alone[k]).max()) for k in s_alone) < 1e-5
        assert max(float(np.abs(s_vec[k] - start[k]).max()) for k in start) > 1e-3     # it did train
        assert st_vec.steps == st_alone.steps
        assert st_vec.loss == pytest.approx(st_alone.loss, abs=1e-5)
        assert abs(st_vec.accuracy - st_alone.accuracy) <= 1 / 60 + 1e-12     # at most one near-tie flips


def test_a_clients_update_does_not_depend_on_its_batch_mates(model, digits_benchmark):
    starts, data, seeds = _clients(model, digits_benchmark)
    together = train_many(model, starts, data, TRAIN, seeds)
    others = _clients(model, digits_benchmark, seed=9)      # different companions, client 3 unchanged
    mates = train_many(model, [starts[3], *others[0][:3]], [data[3], *others[1][:3]], TRAIN, [seeds[3], *others[2][:3]])
    for k, v in together[3][0].items():
        np.testing.assert_allclose(mates[0][0][k], v, atol=1e-6)


def test_models_that_couple_samples_are_refused():
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    assert not can_vectorise(net) and not can_vectorise(torch.nn.Sequential(torch.nn.Dropout(0.1)))
    assert can_vectorise(torch.nn.Sequential(torch.nn.Dropout(0.0)))


def test_a_small_memory_budget_chunks_the_clients_and_changes_nothing(model, digits_benchmark):
    from fedmoe_sim.vectorised import activation_bytes

    starts, data, seeds = _clients(model, digits_benchmark)
    per_sample = activation_bytes(model, data[0][0])
    assert per_sample > 0
    whole = train_many(model, starts, data, TRAIN, seeds)
    calls = []
    import fedmoe_sim.vectorised as vec

    real = vec._train_group
    try:
        vec._train_group = lambda *a, **k: calls.append(len(a[1])) or real(*a, **k)
        chunked = train_many(model, starts, data, TRAIN, seeds, max_bytes=per_sample * 16)   # one client per chunk
    finally:
        vec._train_group = real
    assert max(calls) == 1 and len(calls) == len(SIZES)
    for (a, _), (b, _) in zip(whole, chunked, strict=True):
        for k in a:
            np.testing.assert_allclose(a[k], b[k], atol=1e-6)


def test_vectorised_evaluation_gives_each_clients_loss_and_accuracy(model, digits_benchmark):
    """Ragged own splits (one image to 60, an empty one) and one shared held-out set read once."""
    from fedmoe_sim.training import evaluate
    from fedmoe_sim.vectorised import evaluate_many

    starts, data, _ = _clients(model, digits_benchmark)
    empty = (data[0][0][:0], data[0][1][:0])
    alone = []
    for start, (x, y) in zip(starts, data, strict=True):
        model.load_expert_state(start)
        alone.append(evaluate(model, x, y, batch_size=16))
    together = evaluate_many(model, [*starts, starts[0]], [*data, empty], batch_size=16)
    assert all(v != v for v in together[-1])                       # empty split: (nan, nan), as alone
    for (loss_a, acc_a), (loss_v, acc_v), (_, y) in zip(alone, together[:-1], data, strict=True):
        assert loss_v == pytest.approx(loss_a, abs=1e-5)
        assert abs(acc_v - acc_a) <= 1 / int(y.shape[0]) + 1e-12          # at most one near-tie flips
    shared = data[-1]
    on_shared = evaluate_many(model, starts, [shared] * len(starts), batch_size=16, max_bytes=1)  # one per chunk
    for start, (loss_v, acc_v) in zip(starts, on_shared, strict=True):
        model.load_expert_state(start)
        loss_a, acc_a = evaluate(model, *shared, batch_size=16)
        assert loss_v == pytest.approx(loss_a, abs=1e-5) and abs(acc_v - acc_a) <= 1 / 60


def test_clients_sent_one_payload_train_from_copies_and_leave_it_as_sent(model, digits_benchmark):
    """Clients of a message sent one part share one array object (wire.Task.part): the stacked
    starting tensors are copies (training never writes into the payload), and each client
    gets what it gets from a start of its own."""
    starts, data, seeds = _clients(model, digits_benchmark)
    shared = starts[0]
    kept = {k: v.copy() for k, v in shared.items()}
    together = train_many(model, [shared] * len(data), data, TRAIN, seeds)
    for k, v in kept.items():
        np.testing.assert_array_equal(shared[k], v)
    own = train_many(model, [{k: v.copy() for k, v in shared.items()} for _ in data], data, TRAIN, seeds)
    for (a, _), (b, _) in zip(together, own, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
