"""The client-side model contract: a frozen shared backbone plus one trainable expert.

Why a contract: every method (FedAvg of experts, MetaMoE, FedMoE-DA, ...) moves
only expert tensors (DESIGN "Expert-only upload"), and a simulation worker reuses
one model for hundreds of logical clients. So the expert is addressed by stable,
sorted names, read out as float32 numpy copies, and written back in place
(`copy_` into the existing Parameters: optimisers and caches stay valid).
Subclasses say which tensors form the expert and how inputs are prepared.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from fedmoe_sim.models.lora import lora_a_init_

EXPERT = "expert"   # the one part of a model that registers a single expert
WHOLE = "model"     # every model's implicit part: all trainable tensors (what FedAvg averages)
Inputs = Any  # a Tensor (images) or a dict of Tensors (text: input_ids, attention_mask)


def capture_inputs(modules: Sequence[nn.Module], run: Callable[[], Any]) -> list[torch.Tensor]:
    """The first positional input of each module during `run()`, in call order.

    Why hooks: MetaMoE's routing vectors and the MoE's per-sample context need each
    layer's FFN input, which the encoders do not return. The forward pre-hooks sit on
    the caller's own modules and are removed before returning, even on error.
    """
    captured: list[torch.Tensor] = []
    hooks = [m.register_forward_pre_hook(lambda _m, args: captured.append(args[0])) for m in modules]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    if len(captured) != len(hooks):
        raise RuntimeError(f"expected one input per hooked module ({len(hooks)}), got {len(captured)}")
    return captured


class ExpertModel(nn.Module):
    """Frozen backbone + expert. `parameters()` requiring grad == exactly the expert tensors.

    Subclasses implement `prepare`, `forward` (logits `[B, num_classes]`) and
    `features` (frozen-backbone pooled features `[B, D]`, no expert), and call
    `_register_expert(named)` once at the end of `__init__`.
    """

    num_classes: int
    # parts each client draws from its own seed (`Workspace.initial_state`): ones no client ever
    # gets from the server before it trains; () = every client starts from the run's one draw
    private_parts: tuple[str, ...] = ()

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = int(num_classes)
        self._expert: dict[str, nn.Parameter] = {}
        self._parts: dict[str, tuple[str, ...]] = {}   # part name -> its tensor names (sorted)

    # -- what subclasses provide ---------------------------------------------------
    def prepare(self, x: np.ndarray) -> Inputs:
        """numpy pool -> model inputs on the model's device (done once per pool, cached by the caller)."""
        raise NotImplementedError

    def features(self, inputs: Inputs) -> torch.Tensor:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(iter(self._expert.values())).device

    @staticmethod
    def index(inputs: Inputs, idx: torch.Tensor) -> Inputs:
        """Rows `idx` (LongTensor) of prepared inputs, for a Tensor or a dict of Tensors."""
        if isinstance(inputs, dict):
            return {k: v[idx.to(v.device)] for k, v in inputs.items()}
        return inputs[idx.to(inputs.device)]

    def _register_expert(self, named: dict[str, nn.Parameter]) -> None:
        """Freeze everything, then unfreeze exactly `named` (public name -> Parameter): one part, "expert"."""
        self._register_parts({EXPERT: named})

    def _register_parts(self, parts: dict[str, dict[str, nn.Parameter]]) -> None:
        """Freeze everything, then unfreeze exactly the tensors of `parts` (part -> public name -> Parameter).

        Why parts: personalised methods send some trainable tensors and keep others (a
        gate, a private head), so "trainable" and "what is sent" differ; the strategy
        names the parts it exchanges, the model says which tensors form each. Tensor
        names are unique across parts.
        """
        named: dict[str, nn.Parameter] = {}
        for part, tensors in parts.items():
            clash = sorted(set(named) & set(tensors))
            if clash:
                raise RuntimeError(f"tensor {clash[0]!r} is in two parts")
            named.update(tensors)
        self.requires_grad_(False)
        for p in named.values():
            p.requires_grad_(True)
        self._expert = dict(sorted(named.items()))
        self._parts = {part: tuple(sorted(tensors)) for part, tensors in parts.items()}
        expert_ids = {id(p) for p in self._expert.values()}
        trainable = {id(p) for p in self.parameters() if p.requires_grad}
        if trainable != expert_ids:  # a programming error: an expert tensor is not a submodule param
            raise RuntimeError("expert tensors must be exactly the model's trainable parameters")

    # -- named parts -----------------------------------------------------------------
    @property
    def part_names(self) -> tuple[str, ...]:
        return tuple(self._parts)

    def _tensors_of(self, part: str) -> tuple[str, ...]:
        if part == WHOLE:
            return tuple(self._expert)
        try:
            return self._parts[part]
        except KeyError:
            raise ValueError(f"model has no part {part!r} (parts: {', '.join(self._parts)})") from None

    def part_spec(self, part: str) -> dict[str, tuple[tuple[int, ...], str]]:
        return {k: (tuple(self._expert[k].shape), "float32") for k in self._tensors_of(part)}

    def part_state(self, part: str) -> dict[str, np.ndarray]:
        """Float32 numpy copies of one part's tensors, sorted by name."""
        return {k: self._expert[k].detach().to("cpu", torch.float32).numpy().copy() for k in self._tensors_of(part)}

    def load_part(self, part: str, state: dict[str, np.ndarray]) -> None:
        """Copy one part's tensors in place, leaving the other parts as they are; strict on keys and shapes."""
        names = self._tensors_of(part)
        if set(state) != set(names):
            raise ValueError(f"part {part!r} state keys differ (missing {sorted(set(names) - set(state))[:3]}, "
                             f"unexpected {sorted(set(state) - set(names))[:3]})")
        for k in names:
            if tuple(np.shape(state[k])) != tuple(self._expert[k].shape):
                raise ValueError(f"part {part!r} key {k!r} has shape {tuple(np.shape(state[k]))}, "
                                 f"expected {tuple(self._expert[k].shape)}")
        with torch.no_grad():
            for k in names:
                self._expert[k].copy_(torch.as_tensor(np.asarray(state[k])))

    def split_parts(self, state: dict[str, np.ndarray], parts: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
        """A whole trainable state (as `expert_state` gives) cut into the named parts."""
        return {part: {k: state[k] for k in self._tensors_of(part)} for part in parts}

    # -- the expert ----------------------------------------------------------------
    def expert_state(self) -> dict[str, np.ndarray]:
        """Float32 numpy copies of every trainable tensor (all parts), sorted by name: what a
        client trains and keeps; what it sends is the parts its strategy names."""
        return {k: p.detach().to("cpu", torch.float32).numpy().copy() for k, p in self._expert.items()}

    def expert_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {k: (tuple(p.shape), "float32") for k, p in self._expert.items()}

    def load_expert_state(self, state: dict[str, np.ndarray]) -> None:
        """Copy `state` into the existing expert tensors; strict on keys and shapes."""
        missing = sorted(set(self._expert) - set(state))
        if missing:
            raise ValueError(f"expert state is missing key {missing[0]!r} ({len(missing)} missing)")
        unexpected = sorted(set(state) - set(self._expert))
        if unexpected:
            raise ValueError(f"expert state has unexpected key {unexpected[0]!r} (not an expert tensor)")
        for k, p in self._expert.items():
            if tuple(np.shape(state[k])) != tuple(p.shape):
                raise ValueError(f"expert state key {k!r} has shape {tuple(np.shape(state[k]))}, "
                                 f"expected {tuple(p.shape)}")
        with torch.no_grad():
            for k, p in self._expert.items():
                p.copy_(torch.as_tensor(np.asarray(state[k])))

    def reset_expert(self, seed: int) -> None:
        """Re-initialise the expert from `seed` alone (never the global RNG).

        LoRA A: U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming-uniform); LoRA B: 0, so
        the model starts at the backbone. Other expert tensors (the text head) get
        nn.Linear's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)). Tensors are drawn in
        sorted-name order from one CPU generator.
        """
        gen = torch.Generator().manual_seed(int(seed))
        fan_in = {k[: -len(".weight")]: p.shape[-1] for k, p in self._expert.items() if k.endswith(".weight")}
        for name, p in self._expert.items():
            if "lora_A" in name:
                lora_a_init_(p, gen)
                continue
            with torch.no_grad():
                if "lora_B" in name:
                    p.zero_()
                    continue
                stem = name.rsplit(".", 1)[0]
                bound = 1.0 / math.sqrt(fan_in.get(stem, p.shape[-1]))
                p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=gen))

    def backbone_state(self) -> dict[str, np.ndarray]:
        """Every frozen tensor (parameters and buffers) as numpy copies: what must never leave a client."""
        expert_ids = {id(p) for p in self._expert.values()}
        out: dict[str, np.ndarray] = {}
        for k, t in [*self.named_parameters(), *self.named_buffers()]:
            if id(t) not in expert_ids:
                out[self._backbone_name(k)] = t.detach().cpu().numpy().copy()
        return out

    def _backbone_name(self, module_path: str) -> str:
        """Public name of a frozen tensor (subclasses strip wrapper prefixes)."""
        return module_path
