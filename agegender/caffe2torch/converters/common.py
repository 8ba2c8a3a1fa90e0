"""InnerProduct, ReLU, Dropout, Softmax, Concat and Split: the rest of the Adience nets' layer types."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ir import LayerIR, Shape
from ..registry import Converted, register
from ._util import canonical_axis, check_bottoms, count, empty_param, refuse_in_place


class InnerProduct(nn.Module):
    """Caffe's InnerProduct: axes from ``axis`` on are flattened into one, then ``x W^T + b``.

    With ``transpose: true`` Caffe stores W as (in, out); we keep Caffe's layout so weights load as is.
    """

    def __init__(self, in_features: int, out_features: int, axis: int, bias: bool, transpose: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.axis, self.transpose = axis, transpose
        self.weight = empty_param(*((in_features, out_features) if transpose else (out_features, in_features)))
        self.bias = empty_param(out_features) if bias else None

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, axis={self.axis}, "
                f"bias={self.bias is not None}, transpose={self.transpose}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(self.axis) if x.dim() > self.axis + 1 else x
        weight = self.weight.t() if self.transpose else self.weight
        return F.linear(x, weight, self.bias)


@register("InnerProduct")
def convert_inner_product(layer: LayerIR, shapes: list[Shape]) -> Converted:
    check_bottoms(layer, shapes, 1)
    shape = shapes[0]
    p = layer.param.inner_product_param
    if not p.has("num_output") or p.num_output == 0:
        raise layer.error("inner_product_param.num_output must be set and positive")
    axis = canonical_axis(layer, int(p.axis), len(shape))
    in_features = count(shape, axis)
    module = InnerProduct(in_features, int(p.num_output), axis, bool(p.bias_term), bool(p.transpose))
    blobs = ["weight", "bias"] if p.bias_term else ["weight"]
    return Converted(module, [(*shape[:axis], int(p.num_output))], blobs)


@register("ReLU")
def convert_relu(layer: LayerIR, shapes: list[Shape]) -> Converted:
    check_bottoms(layer, shapes, 1)
    slope = float(layer.param.relu_param.negative_slope)
    # Caffe: max(x, 0) + negative_slope * min(x, 0), which is LeakyReLU
    module: nn.Module = nn.ReLU() if slope == 0.0 else nn.LeakyReLU(slope)
    return Converted(module, [shapes[0]])


@register("Dropout")
def convert_dropout(layer: LayerIR, shapes: list[Shape]) -> Converted:
    check_bottoms(layer, shapes, 1)
    ratio = float(layer.param.dropout_param.dropout_ratio)
    # DropoutLayer only DCHECKs 0 < ratio < 1 (not in a release build): 0 and 1 load, and at test time the
    # layer is the identity whatever the ratio; outside [0, 1] its Bernoulli draw CHECK-fails when training
    if not 0.0 <= ratio <= 1.0:
        raise layer.error(f"dropout_ratio must be in [0, 1], got {ratio}")
    # Caffe scales kept units by 1/(1-p) while training and is the identity at test time, as torch does
    return Converted(nn.Dropout(ratio), [shapes[0]])


@register("Softmax")
def convert_softmax(layer: LayerIR, shapes: list[Shape]) -> Converted:
    check_bottoms(layer, shapes, 1)
    axis = canonical_axis(layer, int(layer.param.softmax_param.axis), len(shapes[0]))
    return Converted(nn.Softmax(dim=axis), [shapes[0]])


class Concat(nn.Module):
    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def extra_repr(self) -> str:
        return f"axis={self.axis}"

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=self.axis)


@register("Concat")
def convert_concat(layer: LayerIR, shapes: list[Shape]) -> Converted:
    check_bottoms(layer, shapes, (1, 1 << 16))
    p = layer.param.concat_param
    if p.has("concat_dim") and p.has("axis"):
        raise layer.error("give either axis or concat_dim, not both")
    first = shapes[0]
    axis = int(p.concat_dim) if p.has("concat_dim") else int(p.axis)
    axis = canonical_axis(layer, axis, len(first))
    for i, shape in enumerate(shapes[1:], 1):
        if len(shape) != len(first) or any(a != b for j, (a, b) in enumerate(zip(shape, first)) if j != axis):
            raise layer.error(
                f"bottom {i} has shape {list(shape)}, which does not match {list(first)} outside axis {axis}"
            )
    out = list(first)
    out[axis] = sum(shape[axis] for shape in shapes)
    return Converted(Concat(axis), [tuple(out)])


class Split(nn.Module):
    """Caffe's Split: every top is the bottom (gradients add up in backward, as autograd does). With one
    top (Caffe allows it) the blob itself, not a 1-tuple: the net binds a lone top to the module's output."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return x if self.n == 1 else (x,) * self.n


@register("Split")
def convert_split(layer: LayerIR, shapes: list[Shape]) -> Converted:
    check_bottoms(layer, shapes, 1)
    refuse_in_place(layer)
    n = len(layer.tops)
    return Converted(Split(n), [shapes[0]] * n)
