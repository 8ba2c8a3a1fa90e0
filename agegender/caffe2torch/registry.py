"""The converter registry: one function per Caffe layer type.

A converter receives the layer's IR and the shapes of its bottom blobs, and returns the
:class:`Converted` module with the shapes of its tops, computed with Caffe's own formulas. The
module's ``caffe_blobs`` names its parameters/buffers in Caffe's blob order, with the shapes Caffe
stores them in, so that weights load by position with strict shape checks::

    @register("AbsVal")
    def convert_absval(layer: LayerIR, shapes: list[Shape]) -> Converted:
        return Converted(AbsVal(), [shapes[0]])

Adding a layer type is adding one such function in ``converters/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from ..errors import UnsupportedLayerError
from .ir import LayerIR, Shape


@dataclass
class Converted:
    """What a converter returns: the module, its tops' shapes, and Caffe's blob names in order."""

    module: nn.Module | None
    out_shapes: list[Shape]
    caffe_blobs: list[str] = field(default_factory=list)
    # how the layer behaves: "input" (produces net inputs), "compute" (the default)
    role: str = "compute"


Converter = Callable[[LayerIR, list[Shape]], Converted]

_CONVERTERS: dict[str, Converter] = {}


def register(*layer_types: str) -> Callable[[Converter], Converter]:
    """Register a converter function for one or more Caffe layer type names."""

    def deco(fn: Converter) -> Converter:
        for layer_type in layer_types:
            if layer_type in _CONVERTERS:
                raise ValueError(f"a converter for {layer_type} is already registered")
            _CONVERTERS[layer_type] = fn
        return fn

    return deco


def converter_for(layer: LayerIR) -> Converter:
    """The converter of ``layer``'s type, or a clear error naming the layer, its type and the file."""
    from . import converters  # noqa: F401  (registers every converter on first use)

    try:
        return _CONVERTERS[layer.type]
    except KeyError:
        raise UnsupportedLayerError(
            f"layer type '{layer.type}' is not supported",
            path=layer.path, line=layer.line, layer=layer.name,
            hint="supported types: " + ", ".join(sorted(_CONVERTERS)),
        ) from None


def supported_types() -> list[str]:
    """The Caffe layer types we can convert."""
    from . import converters  # noqa: F401

    return sorted(_CONVERTERS)
