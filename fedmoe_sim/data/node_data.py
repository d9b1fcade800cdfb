"""A node's own client data (`data-path=...` in a SuperNode's `--node-config`), checked against the run.

Why: on real machines a client's private data lives on its node, not in a
partition the simulation cuts from a shared pool. A node that names a
`data-path` trains and evaluates the logical client it holds (its
`partition-id`, so only with federation.placement = partition) on that data; the
run's benchmark still fixes everything shared: the label space, the input
shape, the domains and their held-out test sets, the public pool.

Formats (`data-path` is a directory):
- a `datasets` save (`Dataset.save_to_disk` / `DatasetDict.save_to_disk`): a
  "label" column (ClassLabel, class-name strings or integer ids) and an "image"
  (or "img") column for image runs, a "text" column for text runs; an optional
  "domain" column of domain names;
- an ImageFolder: `<class>/<file>`, or `train/<class>/...` and `test/<class>/...`.

Checks, each a one-line ValueError naming what differs: class names must be
among the run's (a node may hold a subset: labels are mapped by name onto the
run's indices); integer labels without names must lie in [0, num_classes);
images must have the run's height and width (never resized: a silent resize
would hide a wrong dataset; grey or colour is converted to the run's channels);
the domain (`data-domain=NAME` in the node config, else the "domain" column's
majority, else the domain the partition gives this client) must be a run domain.

Train/test: a dataset that ships both splits (DatasetDict "train" plus "test" or
"validation"; ImageFolder train/ and test/) keeps them; otherwise it is cut like
a simulated partition: data.test_fraction of it (at least one example when it
has two) is held out, drawn with the run seed and the client id, so reruns see
the same cut. data.samples_per_client does not apply: a node trains on all of
its data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedmoe_sim.data.base import Benchmark, ClientSplit

NODE_DATA_PATH = "data-path"       # node-config key: the node's own data directory
NODE_DATA_DOMAIN = "data-domain"   # node-config key: the run domain that data belongs to
IMAGE_COLUMNS = ("image", "img")


@dataclass(frozen=True)
class NodeData:
    """What was read from disk, labels still in the data's own terms."""

    x_train: np.ndarray                  # [N, C, H, W] float32 in [0, 1], or [N] str
    y_train: np.ndarray                  # [N] int64, indices into `class_names` when it is non-empty
    x_test: np.ndarray | None            # the shipped test split, None = cut one here
    y_test: np.ndarray | None
    class_names: tuple[str, ...]         # () = integer labels without names
    domains: tuple[str, ...] = ()        # per-example domain names ("domain" column), () = none


def node_data_path(node_config: Mapping[str, Any] | None, placement: str) -> str:
    """The node's `data-path` ("" = none); one line if the placement cannot honour it."""
    path = str((node_config or {}).get(NODE_DATA_PATH, "")).strip()
    if path and placement != "partition":
        raise ValueError(f"node config {NODE_DATA_PATH}={path!r} needs federation.placement='partition' "
                         f"(got {placement!r}): only then does a node hold one logical client, its partition-id")
    return path


def _where(path: str) -> str:
    return f"node data {NODE_DATA_PATH}={path!r}"


def _to_image(value: Any, shape: tuple[int, ...], path: str) -> np.ndarray:
    """One image (PIL or array) as float32 [C, H, W] in [0, 1] with the run's shape."""
    channels, height, width = shape
    if hasattr(value, "convert"):                          # PIL image: size check, then the run's channels
        if value.size != (width, height):
            raise ValueError(f"{_where(path)}: images are {value.size[0]}x{value.size[1]} (width x height), "
                             f"the run takes {width}x{height}")
        arr = np.asarray(value.convert("L" if channels == 1 else "RGB"))
    else:
        arr = np.asarray(value)
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3 and arr.shape[0] != channels and arr.shape[-1] == channels:
        arr = arr.transpose(2, 0, 1)                       # HWC -> CHW
    if arr.shape != shape:
        raise ValueError(f"{_where(path)}: an image has shape {list(arr.shape)}, the run takes {list(shape)} (C, H, W)")
    scale = np.float32(255.0) if arr.dtype == np.uint8 else np.float32(1.0)
    return arr.astype(np.float32) / scale


def _read_imagefolder(path: str, benchmark: Benchmark) -> NodeData:
    from PIL import Image
    from torchvision.datasets import ImageFolder

    def image(file: str) -> np.ndarray:
        with Image.open(file) as img:          # not ImageFolder's loader: it makes every image RGB
            return _to_image(img, benchmark.input_shape, path)

    root = Path(path)
    split_dirs = (root / "train").is_dir() and (root / "test").is_dir()
    parts = [ImageFolder(str(root / s)) for s in ("train", "test")] if split_dirs else [ImageFolder(str(root))]
    names = sorted(set().union(*(p.classes for p in parts)))
    arrays = []
    for part in parts:
        remap = np.array([names.index(c) for c in part.classes], dtype=np.int64)
        x = np.stack([image(f) for f, _ in part.samples])
        arrays.append((x, remap[np.array([label for _, label in part.samples], dtype=np.int64)]))
    (x_tr, y_tr), (x_te, y_te) = arrays if split_dirs else (arrays[0], (None, None))
    return NodeData(x_tr, y_tr, x_te, y_te, tuple(names))


def _hf_part(ds: Any, benchmark: Benchmark, path: str, names: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    """(x, label ids, domain names) of one split; string labels become indices into `names`."""
    if "label" not in ds.column_names:
        raise ValueError(f"{_where(path)}: no 'label' column (columns: {', '.join(ds.column_names)})")
    if benchmark.kind == "text":
        if "text" not in ds.column_names:
            raise ValueError(f"{_where(path)}: the run is a text benchmark, the dataset has no 'text' column")
        x = np.empty(len(ds), dtype=object)
        x[:] = [str(t) for t in ds["text"]]
    else:
        column = next((c for c in IMAGE_COLUMNS if c in ds.column_names), None)
        if column is None:
            raise ValueError(f"{_where(path)}: the run is an image benchmark, the dataset has no "
                             f"{' or '.join(repr(c) for c in IMAGE_COLUMNS)} column")
        x = np.stack([_to_image(v, benchmark.input_shape, path) for v in ds[column]]) if len(ds) else \
            np.zeros((0, *benchmark.input_shape), np.float32)
    labels = list(ds["label"])
    if names and labels and isinstance(labels[0], str):
        index = {name: i for i, name in enumerate(names)}
        y = np.array([index[v] for v in labels], dtype=np.int64)
    else:
        y = np.asarray(labels, dtype=np.int64)
    domains = tuple(str(d) for d in ds["domain"]) if "domain" in ds.column_names else ()
    return x, y, domains


def _read_saved_dataset(path: str, benchmark: Benchmark) -> NodeData:
    import datasets

    loaded = datasets.load_from_disk(path)
    if isinstance(loaded, datasets.DatasetDict):
        test_key = next((k for k in ("test", "validation") if k in loaded), None)
        train_key = "train" if "train" in loaded else next((k for k in loaded if k != test_key), None)
        if train_key is None:
            raise ValueError(f"{_where(path)}: splits {', '.join(loaded)} hold no training split")
        splits = [loaded[train_key]] + ([loaded[test_key]] if test_key else [])
    else:
        splits = [loaded]
    feature = splits[0].features.get("label")
    if isinstance(feature, datasets.ClassLabel):
        names = tuple(feature.names)
    elif splits[0].num_rows and isinstance(splits[0][0]["label"], str):
        names = tuple(sorted({str(v) for s in splits for v in s["label"]}))
    else:
        names = ()
    parts = [_hf_part(s, benchmark, path, names) for s in splits]
    x_tr, y_tr, d_tr = parts[0]
    x_te, y_te, d_te = parts[1] if len(parts) > 1 else (None, None, ())
    return NodeData(x_tr, y_tr, x_te, y_te, names, d_tr + d_te)


def read_node_data(path: str, benchmark: Benchmark) -> NodeData:
    """Read `path` (a `save_to_disk` directory or an ImageFolder) in the run's input format."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{_where(path)}: no such directory")
    if any((root / f).exists() for f in ("dataset_info.json", "dataset_dict.json", "state.json")):
        return _read_saved_dataset(str(root), benchmark)
    if benchmark.kind != "image":
        raise ValueError(f"{_where(path)}: an image folder, but the run's benchmark "
                         f"{benchmark.name!r} is {benchmark.kind}; save a `datasets` dataset with a 'text' column")
    return _read_imagefolder(str(root), benchmark)


def run_labels(data: NodeData, benchmark: Benchmark, path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The node's labels as indices of the run's label space (by class name when both have names)."""
    if data.class_names and benchmark.class_names:
        unknown = [c for c in data.class_names if c not in benchmark.class_names]
        if unknown:
            raise ValueError(f"{_where(path)}: classes {', '.join(unknown)} are not in the run's label space "
                             f"({benchmark.name}: {', '.join(benchmark.class_names)})")
        remap = np.array([benchmark.class_names.index(c) for c in data.class_names], dtype=np.int64)
        return remap[data.y_train], None if data.y_test is None else remap[data.y_test]
    if data.class_names and len(data.class_names) > benchmark.num_classes:
        raise ValueError(f"{_where(path)}: {len(data.class_names)} classes, the run ({benchmark.name}) "
                         f"has {benchmark.num_classes}")
    for y in (data.y_train, data.y_test):
        if y is not None and len(y) and not 0 <= int(y.min()) <= int(y.max()) < benchmark.num_classes:
            raise ValueError(f"{_where(path)}: labels {int(y.min())}..{int(y.max())} are outside the run's "
                             f"{benchmark.num_classes} classes (0..{benchmark.num_classes - 1})")
    return data.y_train, data.y_test


def node_domain(data: NodeData, benchmark: Benchmark, path: str, named: str, default: int) -> int:
    """Index of the node's domain: `named` (node config), else the "domain" column's majority
    (ties: the lowest run index), else `default` (the client's simulated domain)."""
    allowed = benchmark.domain_names
    names = (named,) if named else data.domains
    unknown = sorted({n for n in names if n not in allowed})
    if unknown:
        raise ValueError(f"{_where(path)}: domain {', '.join(unknown)} is not one of the run's domains "
                         f"({', '.join(allowed)})")
    if not names:
        return default
    counts = np.bincount([allowed.index(n) for n in names], minlength=len(allowed))
    return int(counts.argmax())


def _cut(n: int, test_fraction: float, seed: int, client_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The simulated partitions' rule: round(n * test_fraction) held out, at least 1 if n >= 2."""
    perm = np.random.default_rng([seed, 2, client_id]).permutation(n)
    n_test = min(max(1, round(n * test_fraction)), n - 1) if n >= 2 else 0
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def load_node_split(path: str, benchmark: Benchmark, client_id: int, *, seed: int, test_fraction: float,
                    domain: str = "", default_domain: int = 0) -> ClientSplit:
    """The logical client `client_id`'s split from the node's own data, checked against `benchmark`."""
    data = read_node_data(path, benchmark)
    if len(data.y_train) == 0:
        raise ValueError(f"{_where(path)}: no training examples")
    y_train, y_test = run_labels(data, benchmark, path)
    d = node_domain(data, benchmark, path, domain, default_domain)
    if data.x_test is None:
        tr, te = _cut(len(y_train), test_fraction, seed, client_id)
        return ClientSplit(client_id, d, data.x_train[tr], y_train[tr], data.x_train[te], y_train[te])
    return ClientSplit(client_id, d, data.x_train, y_train, data.x_test, y_test)
