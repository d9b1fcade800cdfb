"""Offline default image benchmark: scikit-learn's 8x8 digits under per-domain shifts.

Why digits: they ship inside scikit-learn, so the benchmark builds offline in
well under a second on a laptop CPU, yet the shifts below are strong enough
that an expert trained on one domain does clearly worse on the others
(routing matters; see DESIGN.md "Data and models, offline first").

The 1,797 base images are split ONCE, with a fixed seed that no caller can
change, into disjoint sets (`base_split`): pretraining (clean, for the frozen
backbone), private (each domain's train pool is a shift of it), public (the
proxy pool) and test. Keeping that split fixed means a cached backbone is
valid for every run. The whole benchmark is independent of the run seed:
domain noise uses fixed per-domain seeds, and randomness that must vary per
run (client partitions, augmentation) belongs to the partitioner and trainer.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedmoe_sim.data.base import Benchmark, Domain, check_domain_names

DEFAULT_DOMAINS = ("rot90", "invert", "blur", "gamma")
# Out-of-domain shifts mixed into the public pool beside the chosen domains (DESIGN).
PUBLIC_EXTRA_SHIFTS = ("clean", "transpose", "noise")
BASE_SPLIT_SIZES = {"pretrain": 600, "private": 500, "public": 400}  # test = the remaining 297
_BASE_SPLIT_SEED = 0  # fixed on purpose: the pretraining set must never move


@dataclass(frozen=True)
class BaseSplit:
    """Disjoint indices into `sklearn.datasets.load_digits()`, roughly stratified by label."""

    pretrain: np.ndarray
    private: np.ndarray
    public: np.ndarray
    test: np.ndarray


def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 images as float32 [N, 1, 8, 8] in [0, 1] and int64 labels."""
    from sklearn.datasets import load_digits  # local: sklearn is slow to import

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    return np.ascontiguousarray(x), bunch.target.astype(np.int64)


def base_split() -> BaseSplit:
    """The fixed split of the base images (same on every call, every machine).

    Each class is shuffled and ordered by its within-class rank fraction before
    the contiguous cut, so every set gets close to the dataset's class balance.
    """
    _, y = _raw_digits()
    rng = np.random.default_rng(_BASE_SPLIT_SEED)
    perm = rng.permutation(len(y))
    frac = np.empty(len(y))
    for c in np.unique(y):
        members = perm[y[perm] == c]
        frac[members] = (np.arange(len(members)) + 0.5) / len(members)
    order = perm[np.argsort(frac[perm], kind="stable")]
    a = BASE_SPLIT_SIZES["pretrain"]
    b = a + BASE_SPLIT_SIZES["private"]
    c = b + BASE_SPLIT_SIZES["public"]
    return BaseSplit(*(np.sort(order[s]) for s in (slice(0, a), slice(a, b), slice(b, c), slice(c, None))))


# -- domain shifts: [N, 1, 8, 8] in [0, 1] -> same shape, in [0, 1] ------------------------

def _fixed_rng(*tags: str) -> np.random.Generator:
    """A generator seeded from names only, so shifts are reproducible without a run seed."""
    return np.random.default_rng(zlib.crc32("/".join(tags).encode()))


def _blur(x: np.ndarray) -> np.ndarray:
    k = np.array([1.0, 2.0, 1.0], dtype=np.float32) / 4.0
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    rows = k[0] * p[:, :, :-2] + k[1] * p[:, :, 1:-1] + k[2] * p[:, :, 2:]
    return k[0] * rows[..., :-2] + k[1] * rows[..., 1:-1] + k[2] * rows[..., 2:]


def _noise(x: np.ndarray, tag: str) -> np.ndarray:
    return x + 0.25 * _fixed_rng("noise", tag).standard_normal(x.shape).astype(np.float32)


def _shrink_shift(x: np.ndarray) -> np.ndarray:
    """Scale to 6x6 (2x2-area average of a 4x upsample) and paste in the bottom-right corner."""
    up = np.repeat(np.repeat(x, 3, axis=2), 3, axis=3)          # [N, 1, 24, 24]
    small = up.reshape(len(x), 1, 6, 4, 6, 4).mean(axis=(3, 5))  # [N, 1, 6, 6]
    out = np.zeros_like(x)
    out[:, :, 2:, 2:] = small
    return out


_SHIFTS: dict[str, Callable[[np.ndarray, str], np.ndarray]] = {
    "clean": lambda x, tag: x,
    "rot90": lambda x, tag: np.rot90(x, 1, axes=(2, 3)),
    "rot180": lambda x, tag: np.rot90(x, 2, axes=(2, 3)),
    "hflip": lambda x, tag: x[..., ::-1],
    "transpose": lambda x, tag: np.swapaxes(x, 2, 3),
    "invert": lambda x, tag: 1.0 - x,
    "blur": lambda x, tag: _blur(x),
    "gamma": lambda x, tag: np.power(x, 0.4),
    "noise": _noise,
    "shift": lambda x, tag: _shrink_shift(x),
}
ALL_DOMAINS = tuple(_SHIFTS)


def apply_shift(name: str, x: np.ndarray, tag: str = "") -> np.ndarray:
    """Apply the named shift; `tag` keys the fixed noise draw so train/test/public differ."""
    if name not in _SHIFTS:
        raise ValueError(f"unknown digits domain {name!r}; allowed: {', '.join(ALL_DOMAINS)}")
    out = _SHIFTS[name](x, f"{name}/{tag}")
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0), dtype=np.float32)


def _jitter(x: np.ndarray, tag: str) -> np.ndarray:
    """A deterministic +-1 pixel translation per image (zero fill): the public pool's second copy."""
    rng = _fixed_rng("jitter", tag)
    moves = rng.integers(-1, 2, size=(len(x), 2))
    moves[(moves == 0).all(axis=1), 0] = 1  # every image really moves
    pad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.empty_like(x)
    for i, (dy, dx) in enumerate(moves):
        out[i] = pad[i, :, 1 - dy:9 - dy, 1 - dx:9 - dx]
    return out


def load_digits_domains(domains: tuple[str, ...] = (), seed: int = 0, pool: str = "private") -> Benchmark:
    """Build the digits benchmark (byte-identical for equal `domains`).

    `domains` = () means DEFAULT_DOMAINS (rot90, invert, blur, gamma: two strong
    shifts that send a clean model to chance and two mild ones). `seed` is
    accepted for a uniform loader signature and deliberately ignored: see the
    module docstring. Public pool = public base images x (the chosen domains,
    then PUBLIC_EXTRA_SHIFTS not already chosen) x 2 copies (as is, then a
    +-1 pixel jitter), labelled with digit labels; public_source is the domain
    index, or -1 for the out-of-domain shifts.

    `pool` (data.digits_pool): "private" shifts the private share (500 images) into each
    domain's train pool; "all-but-test" shifts the private, pretraining and public shares
    (1,500), for from-scratch methods that need more clients than 2,000 images can feed
    (Dirichlet(0.1) over 100 clients). Those methods use neither share otherwise; a method
    on the pretrained mixer would train on shifted copies of its pretraining images. The
    test share, the backbone's pretraining set and the public pool stay as they are.
    """
    del seed  # the benchmark is seed-independent by design
    names = check_domain_names("digits", tuple(domains) or DEFAULT_DOMAINS, _SHIFTS, ALL_DOMAINS)
    x, y = _raw_digits()
    split = base_split()
    if pool not in ("private", "all-but-test"):
        raise ValueError(f"unknown digits pool {pool!r}; one of private, all-but-test")
    train = split.private if pool == "private" else np.sort(np.concatenate([split.private, split.pretrain,
                                                                             split.public]))
    built = tuple(
        Domain(name, apply_shift(name, x[train], "train"), y[train].copy(),
               apply_shift(name, x[split.test], "test"), y[split.test].copy())
        for name in names
    )
    shifts = names + tuple(s for s in PUBLIC_EXTRA_SHIFTS if s not in names)
    px, py, ps = [], [], []
    for copy in range(2):
        for name in shifts:
            shifted = apply_shift(name, x[split.public], f"public{copy}")
            px.append(shifted if copy == 0 else _jitter(shifted, f"{name}/public{copy}"))
            py.append(y[split.public])
            ps.append(np.full(len(split.public), names.index(name) if name in names else -1, np.int64))
    return Benchmark(
        name="digits-domains", kind="image", num_classes=10, domains=built,
        public_x=np.concatenate(px), public_y=np.concatenate(py), public_source=np.concatenate(ps),
        pretrain_x=x[split.pretrain].copy(), pretrain_y=y[split.pretrain].copy(),
        class_names=tuple(str(d) for d in range(10)),
    )
