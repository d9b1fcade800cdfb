"""Real-data loaders: torchvision datasets, image folders, Hugging Face datasets.

They turn on-disk (or, when allowed, downloaded) datasets into the same
in-memory `Benchmark` the offline benchmarks produce, so strategies never
know where data came from. Each returns a single domain named after the
dataset. Images become float32 `[N, 3, size, size]` in [0, 1] (always RGB, so
one backbone fits every folder); text becomes an object array of `str`.
Datasets without a test split get a seeded 80/20 split. torchvision and
`datasets` are imported inside the functions: the offline default path never
pays for them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from fedmoe_sim.data.base import Benchmark, Domain

# lower-case name -> (torchvision class, train kwargs, test kwargs; None = no split, cut 80/20 here)
TORCHVISION_DATASETS: dict[str, tuple[str, dict[str, Any], dict[str, Any] | None]] = {
    "cifar10": ("CIFAR10", {"train": True}, {"train": False}),
    "cifar100": ("CIFAR100", {"train": True}, {"train": False}),
    "eurosat": ("EuroSAT", {}, None),
    "flowers102": ("Flowers102", {"split": "train"}, {"split": "test"}),
    "oxfordiiitpet": ("OxfordIIITPet", {"split": "trainval"}, {"split": "test"}),
}


def _require(path: str | os.PathLike[str], what: str) -> Path:
    p = Path(path).expanduser()
    if not str(path) or not p.exists():
        raise FileNotFoundError(f"{what} not found: {str(path)!r}")
    return p


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/test cut of range(n) (for datasets that ship no test split)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = min(max(1, round(n * test_fraction)), n - 1) if n >= 2 else 0
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _pil_to_array(img: Any, size: int) -> np.ndarray:
    from PIL import Image

    img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def images_to_arrays(dataset: Any, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A torchvision dataset yielding (PIL image, int label) -> ([N, 3, size, size] float32, [N] int64).

    Fast path for in-memory uint8 datasets of the right size (CIFAR's `.data`):
    no per-image PIL round trip for 50,000 images.
    """
    data = getattr(dataset, "data", None)
    if isinstance(data, np.ndarray) and data.ndim == 4 and data.shape[1:] == (size, size, 3):
        hwc = data
        labels = np.asarray(dataset.targets, dtype=np.int64)
    else:
        hwc = np.zeros((len(dataset), size, size, 3), np.uint8)
        labels = np.zeros(len(dataset), np.int64)
        for i in range(len(dataset)):  # one decoded image alive at a time
            img, label = dataset[i]
            hwc[i], labels[i] = _pil_to_array(img, size), int(label)
    x = np.ascontiguousarray(hwc.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)
    return x, labels


def _image_benchmark(name: str, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                     classes: list[str] | tuple[str, ...] | None) -> Benchmark:
    num_classes = len(classes) if classes else int(max(train[1].max(initial=-1), test[1].max(initial=-1)) + 1)
    return Benchmark(name=name, kind="image", num_classes=num_classes,
                     domains=(Domain(name, train[0], train[1], test[0], test[1]),),
                     class_names=tuple(classes or ()))


def _cut(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int):
    tr, te = split_indices(len(y), test_fraction, seed)
    return (x[tr], y[tr]), (x[te], y[te])


def load_torchvision(name: str, root: str, download: bool = False, *, size: int = 32,
                     split_seed: int = 0, test_fraction: float = 0.2) -> Benchmark:
    """Load one of TORCHVISION_DATASETS (name case-insensitive) from `root`.

    Images are resized to `size` x `size` (variable-size datasets need one shape
    for a batch). `download=True` lets torchvision fetch the data (needs internet).
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key not in TORCHVISION_DATASETS:
        raise ValueError(f"unknown torchvision dataset {name!r}; allowed: {', '.join(TORCHVISION_DATASETS)}")
    if not download:
        _require(root, f"torchvision root for {name}")
    import torchvision.datasets as tvd

    cls_name, train_kw, test_kw = TORCHVISION_DATASETS[key]
    cls = getattr(tvd, cls_name)
    try:
        train_ds = cls(root, download=download, **train_kw)
        test_ds = cls(root, download=download, **test_kw) if test_kw is not None else None
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted ..."
        if "not found" not in str(err).lower():
            raise
        raise FileNotFoundError(f"{cls_name} not found or corrupted under {root!r} (download=False)") from err
    train = images_to_arrays(train_ds, size)
    if test_ds is None:
        train, test = _cut(*train, test_fraction, split_seed)
    else:
        test = images_to_arrays(test_ds, size)
    return _image_benchmark(key, train, test, getattr(train_ds, "classes", None))


def load_imagefolder(root: str, *, size: int = 32, split_seed: int = 0, test_fraction: float = 0.2) -> Benchmark:
    """root/train/<class>/* and root/test/<class>/*, or root/<class>/* cut 80/20 with `split_seed`."""
    path = _require(root, "image folder")
    from torchvision.datasets import ImageFolder

    name = path.resolve().name
    if (path / "train").is_dir() and (path / "test").is_dir():
        train_ds, test_ds = ImageFolder(str(path / "train")), ImageFolder(str(path / "test"))
        unknown = sorted(set(test_ds.classes) - set(train_ds.classes))
        if unknown:
            raise ValueError(f"image folder {root!r}: test classes {unknown} are missing from train")
        train = images_to_arrays(train_ds, size)
        x_te, y_te = images_to_arrays(test_ds, size)
        remap = np.array([train_ds.class_to_idx[c] for c in test_ds.classes], dtype=np.int64)
        test = (x_te, remap[y_te])
    else:
        train_ds = ImageFolder(str(path))
        train, test = _cut(*images_to_arrays(train_ds, size), test_fraction, split_seed)
    return _image_benchmark(name, train, test, train_ds.classes)


def _hf_columns(ds: Any, text_column: str, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    for col in (text_column, label_column):
        if col not in ds.column_names:
            raise ValueError(f"hf dataset has no column {col!r}; columns: {', '.join(ds.column_names)}")
    texts = ds[text_column]
    if texts and not isinstance(texts[0], str):
        raise ValueError(f"hf column {text_column!r} holds {type(texts[0]).__name__}, expected text (str)")
    x = np.empty(len(texts), dtype=object)
    x[:] = texts
    return x, np.asarray(ds[label_column])


def load_hf(name_or_path: str, text_column: str = "text", label_column: str = "label", *,
            split_seed: int = 0, test_fraction: float = 0.2) -> Benchmark:
    """A text-classification dataset: a `save_to_disk` directory, else a hub name (needs internet).

    DatasetDict: "train" and "test" (or "validation"); a single split is cut
    80/20 with `split_seed`. Labels: ClassLabel names if present, string labels
    are mapped to sorted class names, integer labels are kept.
    """
    import datasets

    if os.path.exists(os.path.expanduser(name_or_path)):
        loaded = datasets.load_from_disk(os.path.expanduser(name_or_path))
    elif name_or_path.startswith(("/", ".", "~")) or not name_or_path:
        raise FileNotFoundError(f"hf dataset path not found: {name_or_path!r}")
    else:
        loaded = datasets.load_dataset(name_or_path)
    if isinstance(loaded, datasets.DatasetDict):
        test_key = next((k for k in ("test", "validation") if k in loaded), None)
        train_key = "train" if "train" in loaded else next(iter(loaded))
        ref = loaded[train_key]
        train = _hf_columns(ref, text_column, label_column)
        test = _hf_columns(loaded[test_key], text_column, label_column) if test_key else None
    else:
        ref = loaded
        train, test = _hf_columns(loaded, text_column, label_column), None
    if test is None:
        train, test = _cut(*train, test_fraction, split_seed)
    feature = ref.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        classes = tuple(feature.names)
        y_train, y_test = train[1].astype(np.int64), test[1].astype(np.int64)
    elif train[1].dtype.kind in "iu":
        classes = ()
        y_train, y_test = train[1].astype(np.int64), test[1].astype(np.int64)
    else:  # string (or other) labels: index them by sorted value
        classes = tuple(sorted(set(map(str, train[1])) | set(map(str, test[1]))))
        index = {c: i for i, c in enumerate(classes)}
        y_train = np.array([index[str(v)] for v in train[1]], dtype=np.int64)
        y_test = np.array([index[str(v)] for v in test[1]], dtype=np.int64)
    num_classes = len(classes) or int(max(y_train.max(initial=-1), y_test.max(initial=-1)) + 1)
    name = Path(name_or_path.rstrip("/")).name or name_or_path
    return Benchmark(name=name, kind="text", num_classes=num_classes,
                     domains=(Domain(name, train[0], y_train, test[0], y_test),), class_names=classes)
