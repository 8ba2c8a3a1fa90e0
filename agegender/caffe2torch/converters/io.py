"""Layers that produce the net's inputs: Input (deploy nets) and Caffe's data layers (train_val nets).

They become the inputs of the converted module: their tops are fed by the caller. A data layer's
shape is derived from its parameters (batch size, crop size); the channel count of an LMDB is not
in the prototxt, so it is taken as 3 (BGR faces) unless the caller gives the input shape.
"""

from __future__ import annotations

from ..ir import LayerIR, Shape
from ..registry import Converted, register

DATA_CHANNELS = 3


@register("Input")
def convert_input(layer: LayerIR, shapes: list[Shape]) -> Converted:
    declared = [tuple(int(d) for d in s.dim) for s in layer.param.input_param.shape]
    if len(declared) not in (0, 1, len(layer.tops)):
        raise layer.error(f"{len(declared)} shapes for {len(layer.tops)} tops: give one shape or one per top")
    if len(declared) == 1:
        declared = declared * len(layer.tops)
    if not declared:
        declared = [()] * len(layer.tops)  # unknown: the caller must give the shape
    return Converted(None, declared, role="input")


def _data_shapes(layer: LayerIR, batch: int, height: int, width: int) -> list[Shape]:
    data: Shape = (batch, DATA_CHANNELS, height, width) if height and width else ()
    shapes: list[Shape] = [data]
    if len(layer.tops) > 1:
        shapes.append((batch,))
    if len(layer.tops) > 2:
        raise layer.error("a data layer has at most two tops (data, label)")
    return shapes


@register("Data")
def convert_data(layer: LayerIR, shapes: list[Shape]) -> Converted:
    crop = int(layer.param.transform_param.crop_size)
    batch = int(layer.param.data_param.batch_size) or 1
    return Converted(None, _data_shapes(layer, batch, crop, crop), role="input")


@register("ImageData")
def convert_image_data(layer: LayerIR, shapes: list[Shape]) -> Converted:
    p = layer.param.image_data_param
    crop = int(layer.param.transform_param.crop_size)
    height, width = (crop, crop) if crop else (int(p.new_height), int(p.new_width))
    return Converted(None, _data_shapes(layer, int(p.batch_size) or 1, height, width), role="input")


@register("MemoryData")
def convert_memory_data(layer: LayerIR, shapes: list[Shape]) -> Converted:
    p = layer.param.memory_data_param
    data: Shape = (int(p.batch_size), int(p.channels), int(p.height), int(p.width))
    out = [data] + ([(int(p.batch_size),)] if len(layer.tops) > 1 else [])
    return Converted(None, out, role="input")


@register("DummyData")
def convert_dummy_data(layer: LayerIR, shapes: list[Shape]) -> Converted:
    p = layer.param.dummy_data_param
    if p.shape:
        declared = [tuple(int(d) for d in s.dim) for s in p.shape]
    else:
        declared = [tuple(int(v) for v in dims) for dims in zip(p.num, p.channels, p.height, p.width)]
    if len(declared) == 1:
        declared = declared * len(layer.tops)
    if len(declared) != len(layer.tops):
        raise layer.error(f"{len(declared)} shapes for {len(layer.tops)} tops")
    return Converted(None, declared, role="input")


@register("HDF5Data", "WindowData")
def convert_unshaped_data(layer: LayerIR, shapes: list[Shape]) -> Converted:
    return Converted(None, [()] * len(layer.tops), role="input")
