"""Named parts: the unit of what a method exchanges, and the spec a receiver checks it against.

Why not "the expert": personalised methods send some trainable tensors and keep
others (a private head, a gate), and some things they send are not model tensors
at all (proxy ids, routing vectors). A part is a named dict of arrays; a strategy
declares the spec of every part it expects, and anything else is rejected. Plain
numpy, so library code (unification, aggregation plans) can build and check parts
without Flower.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

State = dict[str, np.ndarray]
Parts = dict[str, State]


@dataclass(frozen=True)
class ArraySpec:
    shape: tuple[int | None, ...]   # None: any length on that axis (e.g. a list of proxy ids)
    dtype: str


@dataclass(frozen=True)
class PartSpec:
    """What one part must look like. `relay`: the part is uploaded only so the simulation
    can hand it to peers (a deployment sends it peer to peer), so its upload is booked as
    relay traffic, never as client -> server bytes."""

    arrays: Mapping[str, ArraySpec]
    relay: bool = False

    @classmethod
    def of(cls, spec: Mapping[str, tuple[tuple[int | None, ...], str]], relay: bool = False) -> PartSpec:
        """From a model's `{name: (shape, dtype)}` spec (`ExpertModel.part_spec`)."""
        return cls({k: ArraySpec(tuple(shape), str(dtype)) for k, (shape, dtype) in spec.items()}, relay)

    def __post_init__(self) -> None:
        # np.dtype once: `str(a.dtype)` per array and client was a fifth of the server's busy time
        object.__setattr__(self, "_dtypes", {k: np.dtype(s.dtype) for k, s in self.arrays.items()})

    def check(self, state: State) -> str | None:
        """Why `state` is not a valid instance of this part, or None if it is."""
        why = self.check_layout(state)
        if why is not None:
            return why
        for k in self.arrays:
            a = state[k]
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                return _nonfinite(k)
        return None

    def check_rows(self, stacked: State, n: int) -> list[str | None]:
        """`check`'s finite-values test per row of `stacked` (each array n rows, one per client,
        their layout already checked): a packed reply's clients in one pass per array."""
        bad: list[str | None] = [None] * n
        for k in self.arrays:
            a = stacked[k]
            if a.dtype.kind == "f":
                for i in np.flatnonzero(~np.isfinite(a.reshape(n, -1)).all(axis=1)).tolist():
                    bad[i] = bad[i] or _nonfinite(k)
        return bad

    def check_layout(self, state: State) -> str | None:
        """`check` without the finite-values test: names, shapes, dtypes (what every row of a
        packed reply shares, so it is checked once per pack)."""
        if state.keys() != self.arrays.keys():
            missing, extra = sorted(set(self.arrays) - set(state)), sorted(set(state) - set(self.arrays))
            return f"keys differ (missing {missing[:3]}, unexpected {extra[:3]})"
        for k, spec in self.arrays.items():
            a = state[k]
            if a.ndim != len(spec.shape) or any(want is not None and got != want
                                                for got, want in zip(a.shape, spec.shape, strict=True)):
                return f"{k} has shape {tuple(a.shape)}, expected {spec.shape}"
            if a.dtype != self._dtypes[k]:
                return f"{k} has dtype {a.dtype}, expected {spec.dtype}"
        return None


def _nonfinite(key: str) -> str:
    return f"{key} has non-finite values"


def check_parts(parts: Parts, expect: Mapping[str, PartSpec], checked: set[str] | frozenset = frozenset()) -> str | None:
    """Why `parts` is not exactly the expected set of valid parts, or None; `checked` names
    parts already checked against their spec (rows of a packed reply)."""
    unknown = sorted(set(parts) - set(expect))
    if unknown:
        return f"unexpected part {unknown[0]!r} (expected: {', '.join(sorted(expect)) or 'none'})"
    for name, spec in expect.items():
        if name not in parts:
            return f"missing part {name!r}"
        why = None if name in checked else spec.check(parts[name])
        if why is not None:
            return f"part {name!r}: {why}"
    return None
