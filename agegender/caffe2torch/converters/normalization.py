"""BatchNorm, Scale and Bias with Caffe's blob layouts and statistics rules.

Caffe splits a batch normalisation into a ``BatchNorm`` layer (normalise only, three statistic
blobs) followed by a ``Scale`` layer with ``bias_term: true`` (the learned affine part).

A 0-axis Caffe blob (a learned scalar: ``Scale``/``Bias`` with ``num_axes: 0``) is held as a
tensor of shape (1,): Caffe writes such a blob without a shape, and our caffemodel reader reads
it as its element count, (1,).
"""

from __future__ import annotations

import torch
from torch import nn

from ..ir import LayerIR, Shape
from ..registry import Converted, register
from ._util import canonical_axis, check_bottoms


def _empty_buffer(module: nn.Module, name: str, shape: Shape) -> None:
    module.register_buffer(name, torch.empty(shape))


def _unsqueeze_trailing(t: torch.Tensor, trailing: int) -> torch.Tensor:
    """``t`` with ``trailing`` size-1 axes appended, so it broadcasts from an inner axis of a blob."""
    return t[(Ellipsis,) + (None,) * trailing] if trailing else t


# --- BatchNorm ------------------------------------------------------------------------------------
class CaffeBatchNorm(nn.Module):
    """Caffe's BatchNorm: ``(x - mean) / sqrt(var + eps)`` per channel (axis 1), no affine part.

    With global statistics the stored blobs are divided by ``scale_factor`` (0 gives 0), as Caffe
    does. Without them the batch's own mean and biased variance are used, and the stored blobs are
    updated as Caffe's forward pass does (``scale_factor = maf * scale_factor + 1``, ``mean = batch
    mean + maf * mean``, ``variance = m/(m-1) * batch var + maf * variance``).

    ``use_global_stats`` None follows the module's mode: global statistics in ``eval()`` (Caffe's
    TEST default), batch statistics in ``train()`` (Caffe's TRAIN default).
    """

    mean: torch.Tensor
    variance: torch.Tensor
    scale_factor: torch.Tensor

    def __init__(self, channels: int, eps: float, moving_average_fraction: float,
                 use_global_stats: bool | None) -> None:
        super().__init__()
        self.channels, self.eps = channels, eps
        self.moving_average_fraction = moving_average_fraction
        self.use_global_stats = use_global_stats
        _empty_buffer(self, "mean", (channels,))
        _empty_buffer(self, "variance", (channels,))
        _empty_buffer(self, "scale_factor", (1,))

    def extra_repr(self) -> str:
        mode = "by mode" if self.use_global_stats is None else self.use_global_stats
        return f"{self.channels}, eps={self.eps}, use_global_stats={mode}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        global_stats = (not self.training) if self.use_global_stats is None else self.use_global_stats
        trailing = max(x.dim() - 2, 0)
        if global_stats:
            factor = self.scale_factor[0]
            inv = torch.where(factor == 0, torch.zeros_like(factor), 1.0 / factor)
            mean, var = self.mean * inv, self.variance * inv
        else:
            dims = [0] + list(range(2, x.dim()))
            mean = x.mean(dim=dims)
            var = (x - _unsqueeze_trailing(mean, trailing)).square().mean(dim=dims)
            self._update_statistics(mean, var, x.numel() // self.channels)
        mean, var = _unsqueeze_trailing(mean, trailing), _unsqueeze_trailing(var, trailing)
        return (x - mean) / torch.sqrt(var + self.eps)

    @torch.no_grad()
    def _update_statistics(self, mean: torch.Tensor, var: torch.Tensor, m: int) -> None:
        maf = self.moving_average_fraction
        correction = m / (m - 1) if m > 1 else 1.0
        self.scale_factor.mul_(maf).add_(1.0)
        self.mean.mul_(maf).add_(mean.detach())
        self.variance.mul_(maf).add_(var.detach(), alpha=correction)


@register("BatchNorm")
def convert_batch_norm(layer: LayerIR, shapes: list[Shape]) -> Converted:
    check_bottoms(layer, shapes, 1)
    shape = shapes[0]
    p = layer.param.batch_norm_param
    if len(shape) < 1:
        raise layer.error("needs a bottom blob with at least one axis")
    channels = 1 if len(shape) == 1 else shape[1]
    eps = float(p.eps)
    if eps < 0:
        raise layer.error(f"eps must not be negative, got {eps}")
    if p.has("use_global_stats"):
        use_global: bool | None = bool(p.use_global_stats)
    elif layer.param.has("phase"):  # an explicit layer phase overrides the net's, as in Net::Init
        use_global = layer.param.phase == "TEST"
    else:
        use_global = None
    for i, spec in enumerate(layer.param.param[:3]):
        if spec.has("lr_mult") and float(spec.lr_mult) != 0.0:
            raise layer.error(f"param {i} has lr_mult {spec.lr_mult}; BatchNorm statistics take lr_mult 0",
                              hint="learn the affine part with a Scale layer")
    module = CaffeBatchNorm(channels, eps, float(p.moving_average_fraction), use_global)
    return Converted(module, [shape], ["mean", "variance", "scale_factor"])


# --- Scale and Bias -------------------------------------------------------------------------------
def _param_span(layer: LayerIR, shape: Shape, axis: int, num_axes: int) -> tuple[int, Shape]:
    """(canonical axis, blob shape) of a learned Scale/Bias blob: ``shape[axis:axis+num_axes]``."""
    axis = canonical_axis(layer, axis, len(shape))
    if num_axes < -1:
        raise layer.error(f"num_axes must be -1 (to the end) or non-negative, got {num_axes}")
    end = len(shape) if num_axes == -1 else axis + num_axes
    if end > len(shape):
        raise layer.error(f"axis {axis} + num_axes {num_axes} extends past the {len(shape)}-axis bottom {list(shape)}")
    return axis, tuple(shape[axis:end])


def _operand_axis(layer: LayerIR, shape: Shape, operand: Shape, axis: int, what: str) -> int:
    """Caffe's Reshape rule for a second-bottom operand: axis 0 for a scalar, its axes must match."""
    if len(operand) == 0:
        return 0
    axis = canonical_axis(layer, axis, len(shape))
    if axis + len(operand) > len(shape) or tuple(shape[axis:axis + len(operand)]) != tuple(operand):
        raise layer.error(
            f"the {what} blob {list(operand)} does not match bottom {list(shape)} from axis {axis}"
        )
    return axis


def _trailing(shape: Shape, axis: int, operand_axes: int) -> int:
    return len(shape) - axis - operand_axes


class CaffeScale(nn.Module):
    """Caffe's Scale: ``x * scale`` (+ ``bias``), the operand spanning axes ``axis..axis+k`` of x.

    The scale is the learned ``weight`` (one bottom) or the second bottom; the bias, if any, is
    always learned. ``trailing`` is the number of x's axes after the operand's.
    """

    def __init__(self, weight_shape: Shape | None, bias_shape: Shape | None, trailing: int) -> None:
        super().__init__()
        self.trailing = trailing
        self.weight = _learned(weight_shape)
        self.bias = _learned(bias_shape)
        # learned scalars are held as (1,) and broadcast as they are
        self.weight_scalar, self.bias_scalar = weight_shape == (), bias_shape == ()

    def extra_repr(self) -> str:
        weight = "second bottom" if self.weight is None else list(self.weight.shape)
        bias = None if self.bias is None else list(self.bias.shape)
        return f"scale={weight}, bias={bias}, trailing_axes={self.trailing}"

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        if scale is None:
            assert self.weight is not None
            scale = self.weight if self.weight_scalar else _unsqueeze_trailing(self.weight, self.trailing)
        elif scale.dim():
            scale = _unsqueeze_trailing(scale, self.trailing)
        out = x * scale
        if self.bias is not None:
            out = out + (self.bias if self.bias_scalar else _unsqueeze_trailing(self.bias, self.trailing))
        return out


def _learned(shape: Shape | None) -> nn.Parameter | None:
    return None if shape is None else nn.Parameter(torch.empty(shape or (1,)))


@register("Scale")
def convert_scale(layer: LayerIR, shapes: list[Shape]) -> Converted:
    check_bottoms(layer, shapes, (1, 2))
    shape = shapes[0]
    p = layer.param.scale_param
    if len(shapes) == 1:
        axis, weight_shape = _param_span(layer, shape, int(p.axis), int(p.num_axes))
        bias_shape = weight_shape if p.bias_term else None
        module = CaffeScale(weight_shape, bias_shape, _trailing(shape, axis, len(weight_shape)))
        return Converted(module, [shape], ["weight", "bias"] if p.bias_term else ["weight"])
    operand = shapes[1]
    axis = _operand_axis(layer, shape, operand, int(p.axis), "scale")
    bias_shape = None
    if p.bias_term:
        # Caffe's inner Bias layer: as many axes as the second bottom, from the layer's axis
        _, bias_shape = _param_span(layer, shape, int(p.axis), len(operand))
    module = CaffeScale(None, bias_shape, _trailing(shape, axis, len(operand)))
    return Converted(module, [shape], ["bias"] if p.bias_term else [])


class CaffeBias(nn.Module):
    """Caffe's Bias: ``x + bias``, the bias spanning axes ``axis..axis+k`` of x (learned or a bottom)."""

    def __init__(self, bias_shape: Shape | None, trailing: int) -> None:
        super().__init__()
        self.trailing = trailing
        self.bias = _learned(bias_shape)
        self.bias_scalar = bias_shape == ()

    def extra_repr(self) -> str:
        bias = "second bottom" if self.bias is None else list(self.bias.shape)
        return f"bias={bias}, trailing_axes={self.trailing}"

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if bias is None:
            assert self.bias is not None
            bias = self.bias if self.bias_scalar else _unsqueeze_trailing(self.bias, self.trailing)
        elif bias.dim():
            bias = _unsqueeze_trailing(bias, self.trailing)
        return x + bias


@register("Bias")
def convert_bias(layer: LayerIR, shapes: list[Shape]) -> Converted:
    check_bottoms(layer, shapes, (1, 2))
    shape = shapes[0]
    p = layer.param.bias_param
    if len(shapes) == 1:
        axis, bias_shape = _param_span(layer, shape, int(p.axis), int(p.num_axes))
        return Converted(CaffeBias(bias_shape, _trailing(shape, axis, len(bias_shape))), [shape], ["bias"])
    operand = shapes[1]
    axis = _operand_axis(layer, shape, operand, int(p.axis), "bias")
    return Converted(CaffeBias(None, _trailing(shape, axis, len(operand))), [shape], [])


__all__ = ["CaffeBatchNorm", "CaffeBias", "CaffeScale"]
