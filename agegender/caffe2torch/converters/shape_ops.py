"""Layers that move data without arithmetic: Flatten, Reshape, Slice, Crop, Silence and ArgMax.

Each converter checks the parameters as Caffe's Reshape does and computes the top shapes; the
modules redo the same rule on the tensor they get, so the batch size stays free at run time.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..ir import LayerIR, Shape
from ..registry import Converted, register
from ._util import canonical_axis, check_bottoms, count, refuse_in_place


# --- Flatten --------------------------------------------------------------------------------------
class Flatten(nn.Module):
    """Caffe's Flatten: axes ``axis..end_axis`` (inclusive) merged into one."""

    def __init__(self, axis: int, end_axis: int) -> None:
        super().__init__()
        self.axis, self.end_axis = axis, end_axis

    def extra_repr(self) -> str:
        return f"axis={self.axis}, end_axis={self.end_axis}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(self.axis, self.end_axis)


@register("Flatten")
def convert_flatten(layer: LayerIR, shapes: list[Shape]) -> Converted:
    check_bottoms(layer, shapes, 1)
    refuse_in_place(layer)
    shape = shapes[0]
    p = layer.param.flatten_param
    axis = canonical_axis(layer, int(p.axis), len(shape))
    end_axis = canonical_axis(layer, int(p.end_axis), len(shape))
    if end_axis < axis:
        raise layer.error(f"end_axis {p.end_axis} comes before axis {p.axis} in a {len(shape)}-axis blob")
    out = (*shape[:axis], count(shape, axis, end_axis + 1), *shape[end_axis + 1:])
    return Converted(Flatten(axis, end_axis), [out])


# --- Reshape --------------------------------------------------------------------------------------
def reshape_spec(layer: LayerIR, ndim: int) -> tuple[int, int, tuple[int, ...]]:
    """(start axis, end axis, new dims) of a Reshape layer for a bottom of ``ndim`` axes, checked."""
    p = layer.param.reshape_param
    dims = tuple(int(d) for d in p.shape.dim)
    if any(d < -1 for d in dims):
        raise layer.error(f"shape {list(dims)}: dimensions must be positive, 0 (copy) or -1 (infer)")
    if dims.count(-1) > 1:
        raise layer.error(f"shape {list(dims)} has more than one -1; at most one dimension can be inferred")
    axis = int(p.axis)
    start = axis if axis >= 0 else ndim + axis + 1  # Caffe: -1 is after the last axis
    if not 0 <= start <= ndim:
        raise layer.error(f"axis {axis} is out of range for a {ndim}-axis blob")
    num_axes = int(p.num_axes)
    if num_axes < -1:
        raise layer.error(f"num_axes must be -1 (all) or non-negative, got {num_axes}")
    end = ndim if num_axes == -1 else start + num_axes
    if end > ndim:
        raise layer.error(f"axis {axis} + num_axes {num_axes} is past the {ndim} axes of the bottom")
    for i, d in enumerate(dims):
        if d == 0 and start + i >= ndim:
            raise layer.error(f"shape dim {i} is 0 (copy) but the bottom has no axis {start + i} to copy")
    return start, end, dims


def reshape_target(shape: Sequence, start: int, end: int, dims: tuple[int, ...]) -> list:
    """Caffe's new shape with 0 copied from the bottom and -1 left for ``reshape`` to infer."""
    new = [shape[start + i] if d == 0 else d for i, d in enumerate(dims)]
    return [*shape[:start], *new, *shape[end:]]


class Reshape(nn.Module):
    """Caffe's Reshape: axes ``start..end`` replaced by ``dims`` (0 copies, -1 is inferred)."""

    def __init__(self, start: int, end: int, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.start, self.end, self.dims = start, end, dims

    def extra_repr(self) -> str:
        return f"axes {self.start}..{self.end} -> {list(self.dims)}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(reshape_target(x.shape, self.start, self.end, self.dims))


@register("Reshape")
def convert_reshape(layer: LayerIR, shapes: list[Shape]) -> Converted:
    check_bottoms(layer, shapes, 1)
    refuse_in_place(layer)
    shape = shapes[0]
    start, end, dims = reshape_spec(layer, len(shape))
    target = reshape_target(shape, start, end, dims)
    total = count(shape)
    if -1 in target:
        known = count(tuple(d for d in target if d != -1))
        if known == 0 or total % known:
            raise layer.error(f"cannot infer the -1 of {target}: {total} values are not a multiple of {known}")
        target[target.index(-1)] = total // known
    if count(tuple(target)) != total:
        raise layer.error(f"shape {target} holds {count(tuple(target))} values, the bottom {list(shape)} has {total}")
    return Converted(Reshape(start, end, dims), [tuple(target)])


# --- Slice ----------------------------------------------------------------------------------------
class Slice(nn.Module):
    """Caffe's Slice: the bottom cut along ``axis`` at ``points`` (or into ``n`` equal parts)."""

    def __init__(self, axis: int, points: tuple[int, ...], n: int) -> None:
        super().__init__()
        self.axis, self.points, self.n = axis, points, n

    def extra_repr(self) -> str:
        return f"axis={self.axis}, " + (f"slice_point={list(self.points)}" if self.points else f"{self.n} equal parts")

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self.n == 1:  # one top: Caffe shares the bottom's data; a lone top is bound to the output itself
            return x
        if not self.points:
            return tuple(torch.chunk(x, self.n, dim=self.axis))
        bounds = (0, *self.points, None)
        lead = (slice(None),) * self.axis
        return tuple(x[lead + (slice(a, b),)] for a, b in zip(bounds[:-1], bounds[1:]))


@register("Slice")
def convert_slice(layer: LayerIR, shapes: list[Shape]) -> Converted:
    check_bottoms(layer, shapes, 1)
    shape = shapes[0]
    p = layer.param.slice_param
    if p.has("axis") and p.has("slice_dim"):
        raise layer.error("give either axis or slice_dim, not both")
    if p.has("slice_dim"):
        if not 0 <= int(p.slice_dim) < len(shape):
            raise layer.error(f"slice_dim {p.slice_dim} is out of range for a {len(shape)}-axis blob")
        axis = int(p.slice_dim)
    else:
        axis = canonical_axis(layer, int(p.axis), len(shape))
    n = len(layer.tops)
    if n < 1:
        raise layer.error("needs at least one top")
    size = shape[axis]
    points = tuple(int(v) for v in p.slice_point)
    if points:
        if len(points) != n - 1:
            raise layer.error(f"{len(points)} slice_point value(s) for {n} tops: give one fewer than the tops")
        if n > size:
            raise layer.error(f"{n} tops cannot slice an axis of size {size}")
        if any(b <= a for a, b in zip((0, *points), points)) or points[-1] > size:
            raise layer.error(f"slice_point {list(points)} must increase strictly within (0, {size}]")
        lengths = [b - a for a, b in zip((0, *points), (*points, size))]
    else:
        if size % n:
            raise layer.error(f"{n} tops do not divide axis {axis} of size {size} evenly; give slice_point")
        lengths = [size // n] * n
    outs = [tuple(length if i == axis else d for i, d in enumerate(shape)) for length in lengths]
    return Converted(Slice(axis, points, n), outs)


# --- Crop -----------------------------------------------------------------------------------------
class Crop(nn.Module):
    """Caffe's Crop: the first bottom cut to the second bottom's size on axes ``axis..``, from ``offsets``."""

    def __init__(self, axis: int, offsets: tuple[int, ...]) -> None:
        super().__init__()
        self.axis, self.offsets = axis, offsets

    def extra_repr(self) -> str:
        return f"axis={self.axis}, offsets={list(self.offsets)}"

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        for i, offset in enumerate(self.offsets):
            x = x.narrow(self.axis + i, offset, like.shape[self.axis + i])
        return x


@register("Crop")
def convert_crop(layer: LayerIR, shapes: list[Shape]) -> Converted:
    check_bottoms(layer, shapes, 2)
    shape, like = shapes
    # CropLayer reads bottom[1]'s axes up to bottom[0]'s count: extra trailing axes are not used
    if len(like) < len(shape):
        raise layer.error(f"the reference bottom {list(like)} has fewer axes than the cropped one {list(shape)}")
    p = layer.param.crop_param
    axis = canonical_axis(layer, int(p.axis), len(shape))
    given = [int(v) for v in p.offset]
    n_cropped = len(shape) - axis
    if len(given) > 1 and len(given) != n_cropped:
        raise layer.error(f"{len(given)} offsets for the {n_cropped} axes from axis {axis}: give one or {n_cropped}")
    offsets = tuple(given * n_cropped if len(given) == 1 else given or [0] * n_cropped)
    for i, offset in enumerate(offsets):
        a = axis + i
        if shape[a] - offset < like[a]:
            raise layer.error(f"crop of axis {a} to {like[a]} from offset {offset} runs past its size {shape[a]}")
    out = (*shape[:axis], *like[axis:len(shape)])
    return Converted(Crop(axis, offsets), [out])


# --- Silence and ArgMax ---------------------------------------------------------------------------
class Silence(nn.Module):
    """Caffe's Silence: consumes its bottoms, produces nothing."""

    def forward(self, *xs: torch.Tensor) -> tuple[()]:
        return ()


@register("Silence")
def convert_silence(layer: LayerIR, shapes: list[Shape]) -> Converted:
    check_bottoms(layer, shapes, (1, 1 << 16))
    if layer.tops:
        raise layer.error("takes no tops")
    return Converted(Silence(), [])


class ArgMax(nn.Module):
    """Caffe's ArgMax: the ``top_k`` largest values' indices (or values) along ``axis``, as floats.

    Without an axis each item's values are flattened and the top is (N, 1 or 2, top_k, 1...), with
    the values after the indices when ``out_max_val``. Ties go to the larger index, as Caffe's
    ``partial_sort`` of (value, index) pairs does.
    """

    def __init__(self, axis: int | None, top_k: int, out_max_val: bool, out_ndim: int) -> None:
        super().__init__()
        self.axis, self.top_k, self.out_max_val, self.out_ndim = axis, top_k, out_max_val, out_ndim

    def extra_repr(self) -> str:
        return f"axis={self.axis}, top_k={self.top_k}, out_max_val={self.out_max_val}"

    def _top(self, x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        # on the reversed axis, "lower index first among equal values" is Caffe's "larger index first"
        size = x.shape[dim]
        flipped = x.flip(dim)
        if torch.onnx.is_in_onnx_export():
            # ONNX TopK breaks ties by the lower index (a stable sort does not export)
            values, order = torch.topk(flipped, self.top_k, dim=dim)
        else:
            values, order = torch.sort(flipped, dim=dim, descending=True, stable=True)
            values, order = values.narrow(dim, 0, self.top_k), order.narrow(dim, 0, self.top_k)
        return values, (size - 1 - order).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.axis is not None:
            values, indices = self._top(x, self.axis)
            return values if self.out_max_val else indices
        values, indices = self._top(x.reshape(x.shape[0], -1), 1)
        out = torch.stack([indices, values], 1) if self.out_max_val else indices[:, None]
        return out.reshape(out.shape + (1,) * (self.out_ndim - 3))


@register("ArgMax")
def convert_argmax(layer: LayerIR, shapes: list[Shape]) -> Converted:
    check_bottoms(layer, shapes, 1)
    shape = shapes[0]
    p = layer.param.argmax_param
    top_k = int(p.top_k)
    if top_k < 1:
        raise layer.error(f"top_k must be at least 1, got {top_k}")
    if p.has("axis"):
        axis: int | None = canonical_axis(layer, int(p.axis), len(shape))
        if top_k > shape[axis]:
            raise layer.error(f"top_k {top_k} is larger than axis {axis} ({shape[axis]} values)")
        out = tuple(top_k if i == axis else d for i, d in enumerate(shape))
    else:
        axis = None
        if top_k > count(shape, 1):
            raise layer.error(f"top_k {top_k} is larger than the {count(shape, 1)} values per item")
        ndim = max(len(shape), 3)
        out = (shape[0], 2 if p.out_max_val else 1, top_k) + (1,) * (ndim - 3)
    return Converted(ArgMax(axis, top_k, bool(p.out_max_val), len(out)), [out])


__all__ = ["ArgMax", "Crop", "Flatten", "Reshape", "Silence", "Slice", "reshape_spec", "reshape_target"]
