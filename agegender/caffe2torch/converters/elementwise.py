"""Element-wise layers: Eltwise, PReLU and Caffe's neuron layers (Sigmoid, TanH, ELU, AbsVal, Power,
Exp, Log, BNLL, Threshold), each with Caffe's formula and parameter checks."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..ir import LayerIR, Shape
from ..registry import Converted, register
from ._util import check_bottoms


# --- Eltwise --------------------------------------------------------------------------------------
class Eltwise(nn.Module):
    """Caffe's Eltwise over two or more blobs of one shape: PROD, SUM (with per-blob coefficients)
    or MAX, folded left to right as Caffe does."""

    def __init__(self, operation: str, coeffs: tuple[float, ...]) -> None:
        super().__init__()
        self.operation, self.coeffs = operation, coeffs

    def extra_repr(self) -> str:
        return f"{self.operation}" + (f", coeffs={list(self.coeffs)}" if self.operation == "SUM" else "")

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.operation == "SUM":
            out = xs[0] if self.coeffs[0] == 1.0 else xs[0] * self.coeffs[0]
            for x, c in zip(xs[1:], self.coeffs[1:]):
                out = out + x if c == 1.0 else out + x * c
            return out
        out = xs[0]
        for x in xs[1:]:
            out = out * x if self.operation == "PROD" else torch.maximum(out, x)
        return out


@register("Eltwise")
def convert_eltwise(layer: LayerIR, shapes: list[Shape]) -> Converted:
    check_bottoms(layer, shapes, (2, 1 << 16))
    p = layer.param.eltwise_param
    coeffs = [float(c) for c in p.coeff]
    if coeffs and len(coeffs) != len(shapes):
        raise layer.error(f"{len(coeffs)} coeff values for {len(shapes)} bottoms: give one per bottom or none")
    if coeffs and p.operation == "PROD":  # EltwiseLayer refuses them for PROD only; MAX ignores them
        raise layer.error("coeff is only used by SUM, not PROD")
    if p.operation != "SUM":
        coeffs = []
    for i, shape in enumerate(shapes[1:], 1):
        if tuple(shape) != tuple(shapes[0]):
            raise layer.error(f"bottom {i} has shape {list(shape)}, bottom 0 has {list(shapes[0])}: they must match")
    return Converted(Eltwise(p.operation, tuple(coeffs) or (1.0,) * len(shapes)), [shapes[0]])


# --- PReLU ----------------------------------------------------------------------------------------
class PReLU(nn.Module):
    """Caffe's PReLU: ``max(x, 0) + a_c * min(x, 0)`` with one slope per channel (axis 1) or one shared.

    A channel-shared slope is a 0-axis blob in Caffe; it is held with shape (1,), the shape our
    caffemodel reader gives a blob stored without a shape.
    """

    def __init__(self, channels: int, channel_shared: bool) -> None:
        super().__init__()
        self.channel_shared = channel_shared
        self.weight = nn.Parameter(torch.empty(1 if channel_shared else channels))

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, channel_shared={self.channel_shared}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.prelu(x, self.weight)


@register("PReLU")
def convert_prelu(layer: LayerIR, shapes: list[Shape]) -> Converted:
    check_bottoms(layer, shapes, 1)
    shape = shapes[0]
    if len(shape) < 2:
        raise layer.error(f"needs a bottom blob with at least 2 axes (N, C, ...), got {list(shape)}")
    shared = bool(layer.param.prelu_param.channel_shared)
    return Converted(PReLU(shape[1], shared), [shape], ["weight"])


# --- neuron layers --------------------------------------------------------------------------------
class Neuron(nn.Module):
    """A parameter-free element-wise Caffe layer: ``fn(x)`` with the layer's constants in ``extra``."""

    def __init__(self, name: str, fn: Callable[[torch.Tensor], torch.Tensor], extra: str = "") -> None:
        super().__init__()
        self.name, self.fn, self.extra = name, fn, extra

    def extra_repr(self) -> str:
        return f"{self.name}" + (f", {self.extra}" if self.extra else "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _neuron(layer: LayerIR, shapes: list[Shape], module: nn.Module) -> Converted:
    check_bottoms(layer, shapes, 1)
    return Converted(module, [shapes[0]])


@register("Sigmoid")
def convert_sigmoid(layer: LayerIR, shapes: list[Shape]) -> Converted:
    return _neuron(layer, shapes, nn.Sigmoid())


@register("TanH")
def convert_tanh(layer: LayerIR, shapes: list[Shape]) -> Converted:
    return _neuron(layer, shapes, nn.Tanh())


@register("AbsVal")
def convert_absval(layer: LayerIR, shapes: list[Shape]) -> Converted:
    return _neuron(layer, shapes, Neuron("AbsVal", torch.abs))


@register("ELU")
def convert_elu(layer: LayerIR, shapes: list[Shape]) -> Converted:
    # Caffe: x if x > 0 else alpha * (exp(x) - 1), which is torch's ELU
    return _neuron(layer, shapes, nn.ELU(alpha=float(layer.param.elu_param.alpha)))


def _bnll(x: torch.Tensor) -> torch.Tensor:
    # Caffe: x + log(1 + exp(-x)) for x > 0, else log(1 + exp(x)); one form for both without overflow
    return torch.clamp(x, min=0) + torch.log1p(torch.exp(-torch.abs(x)))


@register("BNLL")
def convert_bnll(layer: LayerIR, shapes: list[Shape]) -> Converted:
    return _neuron(layer, shapes, Neuron("BNLL", _bnll))


class Threshold(nn.Module):
    """Caffe's Threshold: 1 where ``x > threshold``, else 0."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x > self.threshold).to(x.dtype)


@register("Threshold")
def convert_threshold(layer: LayerIR, shapes: list[Shape]) -> Converted:
    return _neuron(layer, shapes, Threshold(float(layer.param.threshold_param.threshold)))


class Power(nn.Module):
    """Caffe's Power: ``(shift + scale * x) ** power``; a constant when ``power * scale`` is 0."""

    def __init__(self, power: float, scale: float, shift: float) -> None:
        super().__init__()
        self.power, self.scale, self.shift = power, scale, shift
        # C's pow: inf for 0 ** -p, NaN for a negative base with a fractional power (Python would raise)
        self.constant = 1.0 if power == 0.0 else float(torch.tensor(shift, dtype=torch.float64) ** power)

    def extra_repr(self) -> str:
        return f"power={self.power}, scale={self.scale}, shift={self.shift}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.power * self.scale == 0.0:
            return torch.full_like(x, self.constant)  # Caffe ignores the input here, NaNs included
        y = x
        if self.scale != 1.0:
            y = y * self.scale
        if self.shift != 0.0:
            y = y + self.shift
        if self.power != 1.0:
            y = torch.pow(y, self.power)
        return y


@register("Power")
def convert_power(layer: LayerIR, shapes: list[Shape]) -> Converted:
    p = layer.param.power_param
    return _neuron(layer, shapes, Power(float(p.power), float(p.scale), float(p.shift)))


def _log_base(layer: LayerIR, base: float) -> float:
    """Caffe's ExpLayer/LogLayer base rule: -1 means e, otherwise the base must be positive and not 1
    (for Log, whose scale is 1/log(base))."""
    if base == -1.0:
        return 1.0
    if base <= 0:
        raise layer.error(f"base must be strictly positive (or -1 for e), got {base}")
    return math.log(base)


class Exp(nn.Module):
    """Caffe's Exp: ``base ** (shift + scale * x)`` as ``outer * exp(inner * x)``."""

    def __init__(self, inner_scale: float, outer_scale: float) -> None:
        super().__init__()
        self.inner_scale, self.outer_scale = inner_scale, outer_scale

    def extra_repr(self) -> str:
        return f"inner_scale={self.inner_scale}, outer_scale={self.outer_scale}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.exp(x if self.inner_scale == 1.0 else x * self.inner_scale)
        return y if self.outer_scale == 1.0 else y * self.outer_scale


@register("Exp")
def convert_exp(layer: LayerIR, shapes: list[Shape]) -> Converted:
    p = layer.param.exp_param
    base, scale, shift = float(p.base), float(p.scale), float(p.shift)
    log_base = _log_base(layer, base)
    # Caffe before 2016 computed pow(-1, shift) here for base e (a bug it later fixed): we use e ** shift.
    # ExpLayer does not check this float: an overflow to inf gives inf (or NaN) outputs, not an error
    with np.errstate(over="ignore"):
        outer = 1.0 if shift == 0.0 else float(np.float32(np.exp(np.float64(log_base * shift))))
    return _neuron(layer, shapes, Exp(log_base * scale, outer))


class Log(nn.Module):
    """Caffe's Log: ``log_base(shift + scale * x)``."""

    def __init__(self, scale: float, shift: float, base_scale: float) -> None:
        super().__init__()
        self.scale, self.shift, self.base_scale = scale, shift, base_scale

    def extra_repr(self) -> str:
        return f"scale={self.scale}, shift={self.shift}, base_scale={self.base_scale}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.scale != 1.0:
            y = y * self.scale
        if self.shift != 0.0:
            y = y + self.shift
        y = torch.log(y)
        return y if self.base_scale == 1.0 else y * self.base_scale


@register("Log")
def convert_log(layer: LayerIR, shapes: list[Shape]) -> Converted:
    p = layer.param.log_param
    log_base = _log_base(layer, float(p.base))
    if log_base == 0.0:
        raise layer.error("base 1 has no logarithm (1/log(1) is infinite)")
    return _neuron(layer, shapes, Log(float(p.scale), float(p.shift), 1.0 / log_base))


__all__ = ["Eltwise", "Exp", "Log", "Neuron", "PReLU", "Power", "Threshold"]
