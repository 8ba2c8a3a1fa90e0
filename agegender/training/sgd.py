"""Caffe's SGD (and Nesterov) update as a ``torch.optim.Optimizer``, with Caffe's order of operations.

``SGDSolver::ApplyUpdate`` for the rate ``rate`` of the current iteration, with the gradients summed over
the ``iter_size`` forward/backward passes of the step:

1. ``ClipGradients``: when ``clip_gradients >= 0`` and the global L2 norm of all gradients exceeds it,
   every gradient is scaled by ``clip_gradients / norm`` (on the summed gradients, before 2.);
2. per parameter, ``Normalize``: ``diff /= iter_size``;
3. ``Regularize``: ``diff += weight_decay * decay_mult * data`` (L2) or ``* sign(data)`` (L1);
4. ``ComputeUpdateValue``: ``history = momentum * history + rate * lr_mult * diff``, ``diff = history``
   (Nesterov: ``diff = (1 + momentum) * history - momentum * previous history``);
5. ``Net::Update``: ``data -= diff``.

The learning rate multiplies the gradient *before* it enters the momentum history (unlike
``torch.optim.SGD``, which applies it after): a change of rate does not rescale the history.

Parameters are grouped by their ``(lr_mult, decay_mult)`` (:func:`caffe_param_groups`); each group is
updated with ``torch._foreach_*`` ops, a few passes over all parameters, no host synchronisation. The rate
is set with :meth:`CaffeSGD.set_rate` before each step: a Python float, or, after :meth:`CaffeSGD.use_rate_tensor`,
a 0-d float32 tensor on the parameters' device that a captured CUDA graph reads at replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..caffe2torch.net import CaffeNet
from .solver import SolverConfig

_f32 = np.float32


@dataclass(frozen=True)
class ParamEntry:
    """One learnable Caffe blob: its layer, blob name, index in the layer and Caffe's multipliers."""

    layer: str
    blob: str
    index: int
    lr_mult: float
    decay_mult: float
    parameter: nn.Parameter

    @property
    def name(self) -> str:
        return f"{self.layer}.{self.blob}"


def caffe_params(net: CaffeNet) -> list[ParamEntry]:
    """The net's learnable blobs in Caffe's order (net order, then blob order) with the ``lr_mult`` and
    ``decay_mult`` of the layer's ``param { }`` specs (Caffe's default 1 and 1 where a blob has none; V1
    ``blobs_lr``/``weight_decay`` are already upgraded to these). Buffers (BatchNorm statistics) are not
    learnable and are left out."""
    entries = []
    for info in net.parameter_layers():
        specs = net.ir.layer(info.name).param.param
        for index, (blob, tensor) in enumerate(zip(info.caffe_blobs, net.caffe_tensors(info.name))):
            if not isinstance(tensor, nn.Parameter):
                continue
            spec = specs[index] if index < len(specs) else None
            lr_mult = float(spec.lr_mult) if spec is not None else 1.0
            decay_mult = float(spec.decay_mult) if spec is not None else 1.0
            entries.append(ParamEntry(info.name, blob, index, float(_f32(lr_mult)), float(_f32(decay_mult)), tensor))
    return entries


def caffe_param_groups(entries: Sequence[ParamEntry], freeze_zero_lr: bool = True) -> list[dict]:
    """Optimizer parameter groups, one per ``(lr_mult, decay_mult)``, in order of first appearance.

    With ``freeze_zero_lr`` the blobs of ``lr_mult`` 0 get ``requires_grad = False`` and no group: Caffe
    computes no gradient for them either (``param_need_backward``), and their value never changes.
    """
    groups: dict[tuple[float, float], dict] = {}
    for entry in entries:
        if freeze_zero_lr and entry.lr_mult == 0.0:
            entry.parameter.requires_grad_(False)
            continue
        entry.parameter.requires_grad_(True)
        key = (entry.lr_mult, entry.decay_mult)
        group = groups.setdefault(key, {"params": [], "names": [], "lr_mult": key[0], "decay_mult": key[1]})
        group["params"].append(entry.parameter)
        group["names"].append(entry.name)
    return list(groups.values())


class CaffeSGD(torch.optim.Optimizer):
    """Caffe's ``SGDSolver``/``NesterovSolver`` update (see the module docstring).

    ``params``: groups with ``lr_mult`` and ``decay_mult`` (from :func:`caffe_param_groups`), or plain
    parameters (multipliers 1). The optimizer state of each parameter is Caffe's ``history`` blob.
    """

    def __init__(self, params: Iterable, *, momentum: float = 0.0, weight_decay: float = 0.0,
                 regularization: str = "L2", iter_size: int = 1, clip_gradients: float = -1.0,
                 nesterov: bool = False) -> None:
        if regularization not in ("L2", "L1"):
            raise ValueError(f"regularization must be L2 or L1, not {regularization!r}")
        if iter_size < 1:
            raise ValueError(f"iter_size must be at least 1, not {iter_size}")
        defaults = {"lr_mult": 1.0, "decay_mult": 1.0}
        super().__init__(params, defaults)
        self.momentum = float(_f32(momentum))
        self.weight_decay = float(_f32(weight_decay))
        self.regularization = regularization
        self.iter_size = int(iter_size)
        self.clip_gradients = float(_f32(clip_gradients))
        self.nesterov = bool(nesterov)
        self._rate: float | torch.Tensor = 0.0
        self._rate_tensor: torch.Tensor | None = None

    @classmethod
    def from_solver(cls, groups: Iterable, solver: SolverConfig) -> "CaffeSGD":
        """The optimizer a solver file describes."""
        return cls(groups, momentum=solver.momentum, weight_decay=solver.weight_decay,
                   regularization=solver.regularization_type, iter_size=solver.iter_size,
                   clip_gradients=solver.clip_gradients, nesterov=solver.type == "Nesterov")

    # --- the rate ---------------------------------------------------------------------------------
    def use_rate_tensor(self, device: torch.device | str) -> torch.Tensor:
        """Hold the rate in a 0-d float32 tensor on ``device`` (for CUDA graph capture); returns it."""
        if self._rate_tensor is None or self._rate_tensor.device != torch.device(device):
            self._rate_tensor = torch.zeros((), dtype=torch.float32, device=device)
        self._rate_tensor.fill_(float(self._rate) if not isinstance(self._rate, torch.Tensor) else 0.0)
        self._rate = self._rate_tensor
        return self._rate_tensor

    def set_rate(self, rate: float) -> None:
        """The learning rate of the next :meth:`step` (Caffe's ``rate``, before ``lr_mult``)."""
        value = float(_f32(rate))
        if self._rate_tensor is not None:
            self._rate_tensor.fill_(value)  # a device-side fill, no host synchronisation
        else:
            self._rate = value
        for group in self.param_groups:
            group["lr"] = float(_f32(value) * _f32(group["lr_mult"]))

    # --- the update -------------------------------------------------------------------------------
    def _history(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for p in params:
            state = self.state[p]
            if "history" not in state:
                state["history"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            out.append(state["history"])
        return out

    def _grads(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each parameter's gradient; zeros for one that got none (Caffe's diff is then 0, and weight decay
        still applies)."""
        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p, memory_format=torch.preserve_format)
            grads.append(p.grad)
        return grads

    @torch.no_grad()
    def clip(self) -> None:
        """Caffe's ``ClipGradients`` on the summed gradients (no host synchronisation)."""
        if self.clip_gradients < 0:
            return
        grads = [g for group in self.param_groups for g in self._grads(group["params"])]
        if not grads:
            return
        norms = torch._foreach_norm(grads)
        total = torch.linalg.vector_norm(torch.stack(norms))
        limit = torch.full_like(total, self.clip_gradients)
        scale = torch.where(total > limit, limit / total, torch.ones_like(total))
        torch._foreach_mul_(grads, scale)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """One Caffe update with the rate given to :meth:`set_rate`."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.clip()
        for group in self.param_groups:
            params = list(group["params"])
            if not params:
                continue
            grads = self._grads(params)
            history = self._history(params)
            if self.iter_size != 1:
                torch._foreach_mul_(grads, float(_f32(1.0) / _f32(self.iter_size)))
            local_decay = float(_f32(self.weight_decay) * _f32(group["decay_mult"]))
            if local_decay:
                if self.regularization == "L2":
                    torch._foreach_add_(grads, params, alpha=local_decay)
                else:
                    torch._foreach_add_(grads, torch._foreach_sign(params), alpha=local_decay)
            lr_mult = float(_f32(group["lr_mult"]))
            local_rate = self._rate * lr_mult if isinstance(self._rate, torch.Tensor) else float(
                _f32(self._rate) * _f32(lr_mult))
            torch._foreach_mul_(grads, local_rate)  # rate * lr_mult * diff
            if self.nesterov:
                previous = torch._foreach_mul(history, -self.momentum)
                torch._foreach_mul_(history, self.momentum)
                torch._foreach_add_(history, grads)
                # update = (1 + momentum) * history - momentum * previous history (Caffe's axpby order)
                torch._foreach_add_(previous, torch._foreach_mul(history, float(_f32(1.0) + _f32(self.momentum))))
                torch._foreach_sub_(params, previous)
            else:
                torch._foreach_mul_(history, self.momentum)
                torch._foreach_add_(history, grads)
                torch._foreach_sub_(params, history)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:  # Caffe's ClearParamDiffs
        super().zero_grad(set_to_none=set_to_none)


__all__ = ["CaffeSGD", "ParamEntry", "caffe_param_groups", "caffe_params"]
