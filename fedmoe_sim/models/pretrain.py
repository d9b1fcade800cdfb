"""Deterministic pretraining of the digits Mixer, cached on disk and per process.

Why cache: every worker process builds the same backbone, and the backbone must be
identical across runs and seeds (it is the shared "public pretrained model"). The
file name hashes everything that changes the weights (architecture, steps, classes,
the pretraining data bytes, this recipe's version), so a stale file is never
reused. Writes go to a temporary file then `os.replace`, so racing workers each
write a whole file and readers never see a partial one.

Cross-machine note: training runs on one thread, so the result is bit-identical
across processes of one machine; another CPU (kernel ISA) or torch build may still
change the last bits. The cache file is what makes "the same backbone everywhere"
exact across machines: share it (FEDMOE_SIM_CACHE).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedmoe_sim.models.mixer import Mixer, random_translate

log = logging.getLogger(__name__)

RECIPE_VERSION = 1     # bump when the recipe below changes: old cache files are then ignored
BACKBONE_SEED = 0      # the backbone is the same for every run seed (DESIGN)
BATCH = 64
LR = 3e-3
PRETRAIN_THREADS = 1   # fixed: the float summation order (so the last bits) depends on the thread split

_MEMO: dict[str, dict[str, torch.Tensor]] = {}


def cache_dir() -> Path:
    """`$FEDMOE_SIM_CACHE`, else `~/.cache/fedmoe-sim` (read at call time)."""
    return Path(os.environ.get("FEDMOE_SIM_CACHE") or Path.home() / ".cache" / "fedmoe-sim")


def data_hash(x: np.ndarray, y: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in (np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.int64)):
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def cache_key(x: np.ndarray, y: np.ndarray, width: int, blocks: int, num_classes: int, steps: int) -> str:
    spec = {"recipe": RECIPE_VERSION, "seed": BACKBONE_SEED, "width": width, "blocks": blocks,
            "steps": steps, "classes": num_classes, "data": data_hash(x, y)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def pretrain_mixer(x: np.ndarray, y: np.ndarray, width: int, blocks: int, num_classes: int,
                   steps: int) -> dict[str, torch.Tensor]:
    """Train a Mixer on clean digits (`x` `[N, C, 8, 8]`, `y` `[N]`) and return its CPU state dict.

    Adam (lr 3e-3, cosine decay to 0), batch 64 drawn with replacement, random +-1 pixel
    translations. Init and batches come from seed 0 only (init inside `fork_rng`), on
    one thread whatever the caller's setting (restored after), so racing workers with
    different `torch_threads` still train bit-identical backbones (~7 s for 1500 steps).
    """
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"pretraining needs matching non-empty x, y (got {len(x)} and {len(y)})")
    if int(np.max(y)) >= num_classes or int(np.min(y)) < 0:
        raise ValueError(f"pretrain labels must be in [0, {num_classes}) (got {np.min(y)}..{np.max(y)})")
    threads = torch.get_num_threads()
    torch.set_num_threads(PRETRAIN_THREADS)
    try:
        return _train(x, y, width, blocks, num_classes, steps)
    finally:
        torch.set_num_threads(threads)


def _train(x: np.ndarray, y: np.ndarray, width: int, blocks: int, num_classes: int,
           steps: int) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(BACKBONE_SEED)
        net = Mixer(x.shape[1], width, blocks, num_classes)
    gen = torch.Generator().manual_seed(BACKBONE_SEED)
    xs = torch.as_tensor(np.asarray(x, dtype=np.float32))
    ys = torch.as_tensor(np.asarray(y, dtype=np.int64))
    opt = torch.optim.Adam(net.parameters(), lr=LR, foreach=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    net.train()
    for _ in range(steps):
        idx = torch.randint(len(xs), (BATCH,), generator=gen)
        loss = F.cross_entropy(net(random_translate(xs[idx], gen)), ys[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def pretrained_mixer_state(x: np.ndarray, y: np.ndarray, width: int, blocks: int, num_classes: int,
                           steps: int) -> dict[str, torch.Tensor]:
    """The pretrained state dict: from the process memo, else the disk cache, else trained now."""
    key = cache_key(x, y, width, blocks, num_classes, steps)
    if key in _MEMO:
        return _MEMO[key]
    path = cache_dir() / f"mixer-w{width}-b{blocks}-s{steps}-{key}.pt"
    state = _load(path)
    if state is None:
        t0 = time.perf_counter()
        state = pretrain_mixer(x, y, width, blocks, num_classes, steps)
        log.info("pretrained mixer backbone (%d steps) in %.1f s -> %s", steps, time.perf_counter() - t0, path)
        _save(state, path)
    _MEMO[key] = state
    return state


def clear_memo() -> None:
    """Forget the per-process memo (tests use it to exercise the disk cache)."""
    _MEMO.clear()


def _load(path: Path) -> dict[str, torch.Tensor] | None:
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a foreign or damaged file: retrain and overwrite it
        log.warning("ignoring unreadable backbone cache %s (%s)", path, exc)
        return None


def _save(state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(state, f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:  # a read-only cache only costs the pretraining time next process
        log.warning("could not write backbone cache %s (%s)", path, exc)
