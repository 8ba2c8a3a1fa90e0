"""Small helpers shared by converters: Caffe's axis canonicalisation and spatial parameters."""

from __future__ import annotations

import torch
from torch import nn

from ...errors import NetDefinitionError
from ...prototxt.message import Message
from ..ir import LayerIR, Shape


def canonical_axis(layer: LayerIR, axis: int, ndim: int) -> int:
    """Caffe's Blob::CanonicalAxisIndex: negative axes count from the end; out of range is an error."""
    if not -ndim <= axis < ndim:
        raise layer.error(f"axis {axis} is out of range for a {ndim}-axis blob")
    return axis % ndim


def count(shape: Shape, start: int = 0, end: int | None = None) -> int:
    out = 1
    for d in shape[start:end]:
        out *= d
    return out


def spatial_values(
    layer: LayerIR, param: Message, name: str, n_spatial: int, default: int | None
) -> list[int]:
    """Caffe's rule for conv ``kernel_size``/``pad``/``stride``/``dilation``: a ``name_h``/``name_w`` pair
    (2-D only), or a repeated field holding one value for all axes or one per spatial axis."""
    h_name, w_name = {"kernel_size": ("kernel_h", "kernel_w")}.get(name, (f"{name}_h", f"{name}_w"))
    spec_fields = param.mtype.fields
    if h_name in spec_fields and (param.has(h_name) or param.has(w_name)):
        if n_spatial != 2:
            raise layer.error(f"{h_name}/{w_name} can only be used for 2-D blobs")
        if not (param.has(h_name) and param.has(w_name)) and name == "kernel_size":
            raise layer.error("kernel_h and kernel_w must be given together")
        if len(getattr(param, name)) > 0:  # BaseConvolutionLayer: CHECK_EQ(0, kernel_size_size()) etc.
            raise layer.error(f"give either {name} or {h_name}/{w_name}, not both")
        return [int(getattr(param, h_name)), int(getattr(param, w_name))]
    values = list(getattr(param, name))
    if not values:
        if default is None:
            raise layer.error(f"{name} is required")
        return [default] * n_spatial
    if len(values) == 1:
        return [int(values[0])] * n_spatial
    if len(values) != n_spatial:
        raise layer.error(f"{name} must be given once or {n_spatial} times, not {len(values)} times")
    return [int(v) for v in values]


# Caffe's Blob::Reshape refuses a blob of more elements than this ("blob size exceeds INT_MAX")
MAX_BLOB_COUNT = 2**31 - 1


def check_blob_shape(shape: Shape, what: str) -> None:
    """Refuse, as Caffe does, a blob shape with a negative axis or more than INT_MAX elements; checked
    before anything of that size is allocated (a hostile prototxt cannot exhaust memory)."""
    if any(d < 0 for d in shape):
        raise NetDefinitionError(f"{what} would have the shape {list(shape)}, with a negative axis")
    if count(shape) > MAX_BLOB_COUNT:
        raise NetDefinitionError(f"{what} would have the shape {list(shape)}: {count(shape):,} elements, more than "
                                 f"Caffe's limit of {MAX_BLOB_COUNT:,} (INT_MAX) per blob")


def empty_param(*shape: int) -> nn.Parameter:
    """A parameter allocated but not initialised: weights come from the caffemodel (no slow init)."""
    check_blob_shape(shape, "a parameter blob")
    return nn.Parameter(torch.empty(*shape))


def check_bottoms(layer: LayerIR, shapes: list[Shape], n: int | tuple[int, int]) -> None:
    lo, hi = (n, n) if isinstance(n, int) else n
    if not lo <= len(shapes) <= hi:
        want = str(lo) if lo == hi else f"{lo} to {hi}"
        raise layer.error(f"expects {want} bottom blob(s), got {len(shapes)}")


FLT_MIN = float(torch.finfo(torch.float32).tiny)  # C's FLT_MIN, the smallest normal float


def refuse_in_place(layer: LayerIR) -> None:
    """The CHECK of Caffe's Flatten, Reshape and Split layers: "Layer does not allow in-place computation"."""
    if any(top in layer.bottoms for top in layer.tops):
        raise layer.error("does not allow in-place computation (Caffe refuses it too)",
                          hint="give the top a name of its own")


__all__ = ["FLT_MIN", "MAX_BLOB_COUNT", "NetDefinitionError", "canonical_axis", "check_blob_shape", "check_bottoms", "count",
           "empty_param", "refuse_in_place", "spatial_values"]
