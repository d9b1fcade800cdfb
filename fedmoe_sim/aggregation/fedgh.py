"""FedGH (Yi et al., ACM MM 2023): a generalised global head trained on the server.

Protocol (the paper, as we recall its description): every client's model is a
heterogeneous feature extractor plus a head of one shared shape. Each round a
client replaces its head with the global head, trains its whole model on its
data, then uploads, for each class it holds, the mean of its extractor's
representations over its training examples (one "prototype" per local class).
The server trains the global head with cross-entropy on all uploaded
(prototype, class) pairs, each pair one training example, and broadcasts it.
Only prototypes and the head travel: no extractor leaves a client, so the
extractors may differ in architecture.

Ours (the paper gives no server hyperparameters we rely on): plain SGD without
momentum, the defaults of `epochs`, `lr` and `batch_size`, and a shuffle drawn
from `seed`. Prototypes are not weighted by their class counts (each upload is
one example, as in the paper); the counts are returned for the caller's metrics.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fedmoe_sim.models.expert_model import ExpertModel, Inputs

State = dict[str, np.ndarray]
PROTOTYPES = "prototypes"                              # the part a FedGH client uploads
MEANS, CLASSES, COUNTS = "means", "classes", "counts"  # its arrays (see class_mean_representations)


@torch.no_grad()
def class_mean_representations(
    model: ExpertModel, inputs: Inputs, labels: torch.Tensor | np.ndarray, batch_size: int = 512,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class means of `model.features` over a client's examples: what a FedGH client uploads.

    Returns (means `[C_present, D]` float32, classes `[C_present]` int64 ascending,
    counts `[C_present]` int64 examples per class); classes absent from `labels` are
    left out. Sums accumulate in float64, in batches of `batch_size` examples.
    """
    y = torch.as_tensor(labels).long().cpu()
    n = int(y.shape[0])
    if n == 0:
        raise ValueError("class_mean_representations needs at least one example")
    if int(y.min()) < 0:
        raise ValueError(f"labels must be >= 0 (got {int(y.min())})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    model.eval()
    sums: torch.Tensor | None = None
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        feats = model.features(ExpertModel.index(inputs, idx)).to("cpu", torch.float64)
        if feats.shape[0] != len(idx):
            raise ValueError(f"features returned {feats.shape[0]} rows for {len(idx)} examples")
        if sums is None:
            sums = torch.zeros(int(y.max()) + 1, feats.shape[1], dtype=torch.float64)
        sums.index_add_(0, y[idx], feats)
    assert sums is not None  # n >= 1, so the loop ran
    counts_all = torch.bincount(y, minlength=sums.shape[0])
    classes = torch.nonzero(counts_all).flatten()
    counts = counts_all[classes]
    means = sums[classes] / counts[:, None].to(torch.float64)
    return means.numpy().astype(np.float32), classes.numpy().astype(np.int64), counts.numpy().astype(np.int64)


def _head_keys(head_state: State) -> tuple[str, str]:
    weights = [k for k in head_state if k.endswith("weight")]
    biases = [k for k in head_state if k.endswith("bias")]
    if len(weights) != 1 or len(biases) != 1 or len(head_state) != 2:
        raise ValueError(f"head state must hold one '*weight' and one '*bias' tensor (got {sorted(head_state)})")
    return weights[0], biases[0]


def train_global_head(
    head_state: State, means: np.ndarray, classes: np.ndarray, *,
    epochs: int = 10, lr: float = 0.01, batch_size: int = 32, seed: int = 0,
) -> State:
    """FedGH's server step: SGD with cross-entropy on uploaded prototypes; a new head state.

    `head_state`: a Linear head's `{*weight: [C, D], *bias: [C]}` (e.g. a model's
    `part_state("head")`), not modified. `means`: `[M, D]` prototypes stacked over
    clients; `classes`: `[M]` their labels in [0, C). Returns float32 copies under
    the same keys. Torch only, on CPU: the head is small and the result must not
    depend on the server's device.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1 (got {epochs})")
    if not lr > 0:
        raise ValueError(f"lr must be > 0 (got {lr})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    wk, bk = _head_keys(head_state)
    w = torch.tensor(np.asarray(head_state[wk], dtype=np.float32), requires_grad=True)
    b = torch.tensor(np.asarray(head_state[bk], dtype=np.float32), requires_grad=True)
    if w.dim() != 2 or tuple(b.shape) != (w.shape[0],):
        raise ValueError(f"head weight {tuple(w.shape)} and bias {tuple(b.shape)} do not form a Linear head")
    x = torch.as_tensor(np.asarray(means, dtype=np.float32))
    y = torch.as_tensor(np.asarray(classes)).long()
    if x.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"means must be [M, {w.shape[1]}] (got {list(x.shape)})")
    if y.shape != (x.shape[0],):
        raise ValueError(f"classes must be [{x.shape[0]}] to match means (got {list(y.shape)})")
    if x.shape[0] == 0:
        raise ValueError("train_global_head needs at least one uploaded prototype")
    if int(y.min()) < 0 or int(y.max()) >= w.shape[0]:
        raise ValueError(f"classes must be in [0, {w.shape[0]}) (got {int(y.min())}..{int(y.max())})")
    opt = torch.optim.SGD([w, b], lr=lr)
    gen = torch.Generator().manual_seed(int(seed))
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=gen)
        for start in range(0, x.shape[0], batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(F.linear(x[idx], w, b), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return {wk: w.detach().numpy().copy(), bk: b.detach().numpy().copy()}
