"""Many clients trained at once, the client as a batch dimension (`torch.func.vmap`).

Why: every method here shares a frozen backbone and differs per client only in
small trainable tensors, so a client's step is launch-bound (a few tiny matmuls).
Stacking the clients' trainable tensors along a leading axis and running one
forward and backward per step over all of them does the same arithmetic in a few
large kernels. No FL framework we know does this for PyTorch clients.

What each client gets is what `training.train_local` gives it alone:
- the same draws: per client, the same `torch.Generator` seeded by the caller, the
  same call order (per epoch a permutation, per batch the augmentation offsets), so
  a client's update does not depend on which clients it is batched with;
- the same optimiser: SGD with momentum and weight decay as `torch.optim.SGD`,
  gradient clipped per client over all its tensors as `clip_grad_norm_`, state
  created per call (nothing carried across rounds);
- ragged clients: grouped by steps per epoch (equal step counts run together);
  a partial last batch is padded and its padding weighs 0 in the loss.
Floating-point reduction orders differ from one-after-another training, so results
agree to about 1e-6, not bit for bit (tests hold them to 1e-5).

Only models whose output for one sample does not depend on the other samples of
the batch, that draw no randomness in the forward (no dropout, no batch norm) and
whose prepared inputs are one tensor (not tokenised text) can be vectorised
(`can_vectorise`); the others train one after another.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from fedmoe_sim.config import TrainConfig
from fedmoe_sim.models.expert_model import ExpertModel
from fedmoe_sim.models.mixer import translate
from fedmoe_sim.training import TrainStats, augments, batch_schedule, steps_per_epoch

State = dict[str, np.ndarray]
_BATCH_COUPLED = (nn.Dropout, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


def can_vectorise(model: nn.Module, inputs=None) -> bool:
    """No layer whose training-mode output couples samples or draws randomness, and (when
    given) `inputs` prepared as one tensor: tokenised text (a dict of tensors, the MiniLM
    models) is not stacked per client, so those models train one after another."""
    if inputs is not None and not isinstance(inputs, torch.Tensor):
        return False
    return not any(isinstance(m, _BATCH_COUPLED) and not (isinstance(m, nn.Dropout) and m.p == 0)
                   for m in model.modules())


def train_many(model: ExpertModel, starts: Sequence[State], data: Sequence[tuple], cfg: TrainConfig,
               seeds: Sequence[int], augment: bool | None = None,
               max_bytes: int = 1 << 30) -> list[tuple[State, TrainStats]]:
    """`train_local` for every client i from `starts[i]` on `data[i]` = (inputs, labels) with
    seed `seeds[i]`; clients of equal steps per epoch in one vectorised loop, in chunks whose
    estimated memory per step (activations plus the stacked trainable tensors, their gradients
    and momentum: `client_bytes`) stays under `max_bytes`, on CPU as on GPU."""
    if not can_vectorise(model, data[0][0] if data else None):
        raise ValueError(f"{type(model).__name__} has batch-coupled or random layers or non-tensor inputs: "
                         "train its clients one by one")
    groups: dict[int, list[int]] = defaultdict(list)
    for i, (_, labels) in enumerate(data):
        groups[steps_per_epoch(int(labels.shape[0]), cfg)].append(i)
    out: list[tuple[State, TrainStats] | None] = [None] * len(starts)
    for members in groups.values():
        batch = min(cfg.batch_size, max(int(data[i][1].shape[0]) for i in members))
        chunk = max(1, int(max_bytes // client_bytes(model, data[members[0]][0], batch, TRAIN_COPIES)))
        for lo in range(0, len(members), chunk):
            part = members[lo:lo + chunk]
            trained = _train_group(model, [starts[i] for i in part], [data[i] for i in part], cfg,
                                   [seeds[i] for i in part], augment)
            for i, result in zip(part, trained, strict=True):
                out[i] = result
    return out  # type: ignore[return-value]


BACKWARD_FACTOR = 3   # saved activations + their gradients + the transient of one layer, roughly
TRAIN_COPIES = 5      # per trainable tensor in a step: itself, its gradient, momentum, clipped and decayed temps
EVAL_COPIES = 1


def client_bytes(model: ExpertModel, inputs, batch: int, copies: int) -> int:
    """Estimated memory one client adds to a vectorised step: `batch` samples' activations
    (`activation_bytes`) plus `copies` of its trainable tensors (stacked per client; for a
    LoRA expert small, for a model trained whole, the tiny MLP, larger than its activations)."""
    trainable = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in model.expert_spec().values())
    return max(1, activation_bytes(model, inputs) * batch + copies * trainable)


def activation_bytes(model: nn.Module, inputs) -> int:
    """Estimated training-step memory of ONE sample: every leaf module's output bytes in a
    forward of the first sample of `inputs`, times BACKWARD_FACTOR. Cached per model."""
    cache = model.__dict__.setdefault("_activation_bytes", {})
    key = tuple(inputs.shape[1:]) if isinstance(inputs, torch.Tensor) else None
    if key in cache:
        return cache[key]
    total = 0

    def count(_module, _args, output) -> None:
        nonlocal total
        for t in (output if isinstance(output, (tuple, list)) else (output,)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            model(ExpertModel.index(inputs, torch.zeros(1, dtype=torch.long)))
    finally:
        for h in hooks:
            h.remove()
    cache[key] = total * BACKWARD_FACTOR
    return cache[key]


def _functional(model: ExpertModel, starts: Sequence[State]):
    """The model as a function of its trainable tensors, and those tensors of every client
    stacked along a leading axis: (call(params, x) -> logits, names, stacked params)."""
    names = list(model.expert_spec())
    path_of = {id(p): path for path, p in model.named_parameters()}
    trainable = {id(model._expert[k]) for k in names}
    paths = {k: path_of[id(model._expert[k])] for k in names}
    fixed = {path: p for path, p in model.named_parameters() if id(p) not in trainable}
    fixed.update(dict(model.named_buffers()))
    params = {k: _stacked([s[k] for s in starts], model.device) for k in names}

    def call(p: dict[str, torch.Tensor], x):
        return functional_call(model, {**fixed, **{paths[k]: v for k, v in p.items()}}, (x,))

    return call, names, params


def _stacked(arrays: Sequence[np.ndarray], device) -> torch.Tensor:
    """The clients' arrays as one new float32 `[C, ...]` tensor on `device`. Clients sent one
    payload share one array object (`wire.Task.part`): it is copied to the device once and
    repeated there, not converted once per client."""
    if all(a is arrays[0] for a in arrays):
        one = torch.as_tensor(np.asarray(arrays[0]), dtype=torch.float32).to(device)
        return one.unsqueeze(0).repeat(len(arrays), *([1] * one.dim()))      # a copy: never the sender's array
    return torch.stack([torch.as_tensor(np.asarray(a), dtype=torch.float32) for a in arrays]).to(device)


def _train_group(model: ExpertModel, starts: Sequence[State], data: Sequence[tuple], cfg: TrainConfig,
                 seeds: Sequence[int], augment: bool | None) -> list[tuple[State, TrainStats]]:
    device = model.device
    call, names, params = _functional(model, starts)
    momentum = {k: torch.zeros_like(v) for k, v in params.items()}
    inputs = [x for x, _ in data]
    labels = [y for _, y in data]
    sizes = [int(y.shape[0]) for y in labels]
    schedules = [batch_schedule(n, cfg, seed, augments(cfg, x, augment))
                 for n, seed, x in zip(sizes, seeds, inputs, strict=True)]
    per_epoch = steps_per_epoch(sizes[0], cfg)     # one group: equal steps per epoch

    def loss_of(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, w: torch.Tensor):
        logits = call(p, x)
        loss = (F.cross_entropy(logits, y, reduction="none") * w).sum() / w.sum().clamp_min(1.0)
        return loss, logits

    step_fn = vmap(grad_and_value(loss_of, has_aux=True))
    loss_sum = torch.zeros(len(starts), dtype=torch.float64, device=device)    # on the device: no sync per step
    correct = torch.zeros(len(starts), dtype=torch.long, device=device)
    model.train()
    for t in range(len(schedules[0])):
        if t % per_epoch == 0:
            loss_sum.zero_()
            correct.zero_()
        xb, yb, wb, counts = _batch(inputs, labels, [s[t] for s in schedules], device)
        grads, (loss, logits) = step_fn(params, xb, yb, wb)
        _sgd_step(params, grads, momentum, cfg)
        loss_sum += loss.detach().double() * counts.to(device)
        correct += ((logits.detach().argmax(-1) == yb) & (wb > 0)).sum(-1)
    model.eval()
    loss_sum, correct = loss_sum.cpu(), correct.cpu()
    out = []
    trained = {k: params[k].detach().to("cpu", torch.float32).numpy() for k in names}   # one copy per tensor
    for i, n in enumerate(sizes):
        state = {k: trained[k][i] for k in names}        # row views: no per-client copies
        out.append((state, TrainStats(loss=float(loss_sum[i]) / max(n, 1), accuracy=int(correct[i]) / max(n, 1),
                                      steps=len(schedules[i]))))
    return out


@torch.no_grad()
def evaluate_many(model: ExpertModel, states: Sequence[State], data: Sequence[tuple], batch_size: int = 512,
                  max_bytes: int = 1 << 30) -> list[tuple[float, float]]:
    """`training.evaluate` (mean cross-entropy, accuracy) of every client i's `states[i]` on
    `data[i]` = (inputs, labels), the clients in one vectorised forward per batch. Clients that
    share one test set (the same tensor object: a domain's held-out set) read it once."""
    if not can_vectorise(model, data[0][0] if data else None):
        raise ValueError(f"{type(model).__name__} has batch-coupled or random layers or non-tensor inputs: "
                         "evaluate its clients one by one")
    out: list[tuple[float, float]] = [(float("nan"), float("nan"))] * len(states)
    users = defaultdict(int)
    for x, _ in data:
        users[id(x)] += 1
    groups: dict[int, list[int]] = defaultdict(list)     # clients sharing one inputs object; -1: the rest
    for i, (x, y) in enumerate(data):
        if int(y.shape[0]):
            groups[id(x) if users[id(x)] > 1 else -1].append(i)
    for key, members in groups.items():
        shared = key != -1
        batch = min(batch_size, max(int(data[i][1].shape[0]) for i in members))
        chunk = max(1, int(max_bytes // client_bytes(model, data[members[0]][0], batch, EVAL_COPIES)))
        for lo in range(0, len(members), chunk):
            part = members[lo:lo + chunk]
            for i, result in zip(part, _evaluate_group(model, [states[i] for i in part], [data[i] for i in part],
                                                       batch_size, shared), strict=True):
                out[i] = result
    model.eval()
    return out


def _evaluate_group(model: ExpertModel, states: Sequence[State], data: Sequence[tuple], batch_size: int,
                    shared: bool) -> list[tuple[float, float]]:
    call, _, params = _functional(model, states)
    model.eval()
    sizes = [int(y.shape[0]) for _, y in data]
    loss_sum = torch.zeros(len(states), dtype=torch.float64)
    correct = torch.zeros(len(states), dtype=torch.long)
    forward = vmap(call, in_dims=(0, None) if shared else (0, 0))
    for start in range(0, max(sizes), batch_size):
        if shared:
            idx = torch.arange(start, min(start + batch_size, sizes[0]))
            xb, yb = ExpertModel.index(data[0][0], idx), data[0][1][idx.to(data[0][1].device)]
            yb = yb.expand(len(states), -1)
            wb = torch.ones(yb.shape, device=yb.device)
        else:
            steps = [(torch.arange(min(start, n), min(start + batch_size, n)), None) for n in sizes]
            xb, yb, wb, _ = _batch([x for x, _ in data], [y for _, y in data], steps, model.device)
        logits = forward(params, xb)
        losses = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none").view(yb.shape)
        loss_sum += (losses * wb).sum(-1).double().cpu()
        correct += ((logits.argmax(-1) == yb) & (wb > 0)).sum(-1).cpu()
    return [(float(loss_sum[i]) / n, int(correct[i]) / n) for i, n in enumerate(sizes)]


def _batch(inputs, labels, steps, device):
    """One step's batches of every client, padded to the step's largest: `[C, B, ...]` plus weights."""
    xs, ys, counts = [], [], []
    batch_size = max(len(idx) for idx, _ in steps)
    for x, y, (idx, offs) in zip(inputs, labels, steps, strict=True):
        xb = ExpertModel.index(x, idx)
        if offs is not None:
            xb = translate(xb, offs)
        pad = batch_size - len(idx)
        yb = y[idx.to(y.device)]
        xs.append(F.pad(xb, (0, 0) * (xb.dim() - 1) + (0, pad)) if pad else xb)
        ys.append(F.pad(yb, (0, pad)) if pad else yb)
        counts.append(len(idx))
    sizes = torch.tensor(counts)
    weights = (torch.arange(batch_size) < sizes[:, None]).to(torch.float32)     # 1 per sample, 0 per pad
    return torch.stack(xs), torch.stack(ys), weights.to(device), sizes.to(torch.float64)


@torch.no_grad()
def _sgd_step(params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], momentum: dict[str, torch.Tensor],
              cfg: TrainConfig) -> None:
    """`clip_grad_norm_` per client, then `torch.optim.SGD`'s update, on stacked `[C, ...]` tensors."""
    if cfg.max_grad_norm > 0:
        norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads.values()], dim=1)
        total = torch.linalg.vector_norm(norms, dim=1)
        coef = torch.clamp(cfg.max_grad_norm / (total + 1e-6), max=1.0)
        grads = {k: g * coef.view(-1, *([1] * (g.dim() - 1))) for k, g in grads.items()}
    for k, p in params.items():
        d_p = grads[k] if cfg.weight_decay == 0 else grads[k] + cfg.weight_decay * p
        if cfg.momentum != 0:
            momentum[k].mul_(cfg.momentum).add_(d_p)
            d_p = momentum[k]
        p.add_(d_p, alpha=-cfg.lr)
