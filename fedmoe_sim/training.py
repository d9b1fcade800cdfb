"""Local training and evaluation of an expert model: plain PyTorch, no Flower.

Every random draw (shuffling, augmentation) comes from a `torch.Generator`
seeded by the caller from (run seed, round, client id), so a client's update does
not depend on which worker trains it or in which order: the same numbers in
one-client-per-node and many-clients-per-node placements.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedmoe_sim.config import TrainConfig
from fedmoe_sim.models.expert_model import ExpertModel
from fedmoe_sim.models.mixer import translate, translation_offsets


def derive_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from parts (Python's hash() is salted per process)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class TrainStats:
    loss: float        # mean training loss over the last epoch
    accuracy: float    # training accuracy over the last epoch, in [0, 1]
    steps: int


def train_local(
    model: nn.Module,
    inputs,
    labels: torch.Tensor,
    cfg: TrainConfig,
    seed: int,
    augment: bool | None = None,
) -> TrainStats:
    """SGD over the model's trainable parameters (the expert) for cfg.local_epochs.

    The optimizer is created per call: momentum is not carried across rounds, so
    no optimizer state needs to persist or travel.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters to train")
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    n = int(labels.shape[0])
    schedule = batch_schedule(n, cfg, seed, augments(cfg, inputs, augment))
    model.train()
    steps, loss_sum, correct = 0, 0.0, 0
    per_epoch = steps_per_epoch(n, cfg)
    for step, (idx, offsets) in enumerate(schedule):
        if step % per_epoch == 0:
            loss_sum, correct = 0.0, 0          # the stats are the last epoch's
        xb, yb = ExpertModel.index(inputs, idx), labels[idx]
        if offsets is not None:
            xb = translate(xb, offsets)
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        steps += 1
        loss_sum += float(loss.detach()) * len(idx)
        correct += int((logits.detach().argmax(1) == yb).sum())
    model.eval()
    return TrainStats(loss=loss_sum / max(n, 1), accuracy=correct / max(n, 1), steps=steps)


def augments(cfg: TrainConfig, inputs, augment: bool | None = None) -> bool:
    """Whether training shifts the images: `augment` overrides cfg.augment; only image batches."""
    on = cfg.augment if augment is None else augment
    return bool(on) and isinstance(inputs, torch.Tensor) and inputs.dim() == 4


def steps_per_epoch(n: int, cfg: TrainConfig) -> int:
    return math.ceil(n / cfg.batch_size)


def batch_schedule(n: int, cfg: TrainConfig, seed: int, augment: bool) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Every step's (batch indices, translation offsets or None), drawn from one generator seeded
    by `seed` in a fixed order (per epoch a permutation, per batch its offsets). One definition
    of the draws, so one client trained alone (`train_local`) or batched with others
    (`fedmoe_sim.vectorised`) sees exactly the same batches and shifts."""
    gen = torch.Generator().manual_seed(seed)
    steps = []
    for _ in range(cfg.local_epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            steps.append((idx, translation_offsets(len(idx), gen) if augment else None))
    return steps


@torch.no_grad()
def evaluate(model: nn.Module, inputs, labels: torch.Tensor, batch_size: int = 512) -> tuple[float, float]:
    """(mean cross-entropy, accuracy in [0, 1]); an empty set gives (nan, nan)."""
    n = int(labels.shape[0])
    if n == 0:
        return float("nan"), float("nan")
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        logits = model(ExpertModel.index(inputs, idx))
        yb = labels[idx]
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    return loss_sum / n, correct / n
