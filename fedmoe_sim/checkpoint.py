"""Server checkpoints: one .npz file, written atomically, read without pickle.

Why not pickle or torch.save: a checkpoint is a file a user may get from someone
else, and unpickling runs code. Here a checkpoint is plain arrays plus one JSON
document that says how to rebuild the Python values around them:

- None, bool, int, float, str: JSON;
- numpy arrays and scalars, torch tensors: an entry of the .npz (`np.load(...,
  allow_pickle=False)` refuses object arrays);
- dict (any hashable encodable keys), list, tuple: tagged JSON; a large dict of int keys
  to all-int or all-float values: two arrays;
- dataclasses registered with `@checkpointable` (e.g. FedMoE-DA's NeighbourPlan):
  rebuilt from their fields; no other class can be named by a file.
Anything else raises TypeError naming where it sits: a strategy attribute the
checkpoint cannot hold must be declared transient, never dropped silently.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = 1
CHECKPOINT = "checkpoint.npz"   # its name in a run directory
META = "__meta__"
_CLASSES: dict[str, type] = {}


def checkpointable(cls: type) -> type:
    """Allow a dataclass in checkpoints (by its qualified name)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    _CLASSES[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return cls


class CheckpointError(ValueError):
    """A checkpoint file that is missing, foreign, corrupt or of another format."""


def _encode(value: Any, arrays: dict[str, np.ndarray], where: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "O":
            raise TypeError(f"{where}: object arrays cannot be checkpointed")
        key = f"a{len(arrays)}"
        arrays[key] = value
        return {"$a": key}
    if isinstance(value, np.generic):
        key = f"a{len(arrays)}"
        arrays[key] = np.asarray(value)
        return {"$s": key}
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        key = f"a{len(arrays)}"
        arrays[key] = value.detach().cpu().numpy()
        return {"$t": key}
    if isinstance(value, dict):
        columns = _numeric_columns(value)
        if columns is not None:          # e.g. client -> round for 1,000 clients: two arrays, not 1,000 JSON pairs
            keys, values = f"a{len(arrays)}", f"a{len(arrays) + 1}"
            arrays[keys], arrays[values] = columns
            return {"$n": [keys, values]}
        return {"$d": [[_encode(k, arrays, where), _encode(v, arrays, f"{where}[{k!r}]")] for k, v in value.items()]}
    if isinstance(value, list):
        return {"$l": [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, tuple):
        return {"$u": [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(value)]}
    name = f"{type(value).__module__}.{type(value).__qualname__}"
    if name in _CLASSES:
        return {"$c": name, "f": {f.name: _encode(getattr(value, f.name), arrays, f"{where}.{f.name}")
                                  for f in dataclasses.fields(value)}}
    raise TypeError(f"{where}: a {type(value).__name__} cannot be checkpointed (declare it transient, "
                    f"or register its dataclass with @checkpointable)")


def _decode(node: Any, arrays: dict[str, np.ndarray]) -> Any:
    if not isinstance(node, dict):
        return node
    if "$a" in node:
        return arrays[node["$a"]]
    if "$s" in node:
        return arrays[node["$s"]][()]
    if "$t" in node:
        import torch
        return torch.from_numpy(np.array(arrays[node["$t"]]))
    if "$n" in node:
        keys, values = (arrays[k].tolist() for k in node["$n"])
        return dict(zip(keys, values, strict=True))
    if "$d" in node:
        return {_hashable(_decode(k, arrays)): _decode(v, arrays) for k, v in node["$d"]}
    if "$l" in node:
        return [_decode(v, arrays) for v in node["$l"]]
    if "$u" in node:
        return tuple(_decode(v, arrays) for v in node["$u"])
    if "$c" in node:
        cls = _CLASSES.get(node["$c"])
        if cls is None:
            raise CheckpointError(f"checkpoint names class {node['$c']!r}, which is not checkpointable")
        return cls(**{k: _decode(v, arrays) for k, v in node["f"].items()})
    raise CheckpointError(f"checkpoint holds an untagged object {sorted(node)[:3]}")


def _numeric_columns(value: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """A large dict of int keys to all-int or all-float values as two arrays (which give back
    the same Python ints and floats), else None."""
    if len(value) < 16 or any(type(k) is not int for k in value):
        return None
    kinds = {type(v) for v in value.values()}
    if kinds not in ({int}, {float}):
        return None
    try:
        return (np.fromiter(value.keys(), np.int64, len(value)),
                np.fromiter(value.values(), np.int64 if kinds == {int} else np.float64, len(value)))
    except OverflowError:
        return None


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, (list, tuple)) else key


def save(path: str | os.PathLike, tree: dict[str, Any]) -> Path:
    """Write `tree` to `path` atomically (temp file, fsync, rename)."""
    from fedmoe_sim.results.io import atomic_write_bytes

    arrays: dict[str, np.ndarray] = {}
    doc = {"format": FORMAT, "tree": _encode(tree, arrays, "checkpoint")}
    buf = io.BytesIO()
    np.savez(buf, **arrays, **{META: np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8)})
    return atomic_write_bytes(path, buf.getvalue())


def load(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        doc = json.loads(arrays.pop(META).tobytes().decode())
    except (OSError, ValueError, KeyError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint ({exc})") from None
    if doc.get("format") != FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {doc.get('format')!r}; this version reads {FORMAT}")
    return _decode(doc["tree"], arrays)
