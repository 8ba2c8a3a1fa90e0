"""Caffe's weight fillers (``filler.hpp``), for layers trained from scratch or re-initialised for fine-tuning.

With ``count`` the blob's element count and Caffe's legacy ``num = shape[0]``, ``channels = shape[1]``
(1 for a blob of fewer axes): ``fan_in = count / num``, ``fan_out = count / channels``.

* ``constant``: ``value`` (default 0: an unset filler is Caffe's ``FillerParameter`` default);
* ``uniform``: U(``min``, ``max``);
* ``gaussian``: N(``mean``, ``std``); with ``sparse >= 0`` each value is kept with probability
  ``sparse / num`` and zeroed otherwise;
* ``positive_unitball``: U(0, 1), then each of the ``num`` rows divided by its sum;
* ``xavier``: U(-sqrt(3/n), sqrt(3/n)), ``msra``: N(0, sqrt(2/n)), ``n`` = ``fan_in`` (``FAN_IN``, the
  default), ``fan_out`` (``FAN_OUT``) or ``(fan_in + fan_out) / 2`` (``AVERAGE``);
* ``bilinear``: the upsampling kernel of a Deconvolution (``f = ceil(K / 2)``, ``c = (2f - 1 - f % 2) /
  (2f)``, ``w[.., y, x] = (1 - |x/f - c|) (1 - |y/f - c|)``).

Random values come from a ``torch.Generator`` (Caffe's Boost mt19937 stream is not reproduced, the
distributions are).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ..caffe2torch.ir import LayerIR
from ..caffe2torch.net import CaffeNet
from ..errors import NetDefinitionError
from ..prototxt.message import Message

FILLER_TYPES: tuple[str, ...] = ("constant", "uniform", "gaussian", "positive_unitball", "xavier", "msra", "bilinear")


def filler(type: str = "constant", **fields: float | int | str) -> Message:
    """A ``FillerParameter`` message, e.g. ``filler("xavier", variance_norm="AVERAGE")``."""
    return Message("FillerParameter", type=type, **fields)


def _fans(shape: Sequence[int]) -> tuple[int, int]:
    count = math.prod(shape) if shape else 1
    num = shape[0] if len(shape) >= 1 else 1
    channels = shape[1] if len(shape) >= 2 else 1
    return count // num, count // channels


def _fan(param: Message, shape: Sequence[int]) -> float:
    fan_in, fan_out = _fans(shape)
    norm = param.variance_norm
    if norm == "AVERAGE":
        return (fan_in + fan_out) / 2.0
    if norm == "FAN_OUT":
        return float(fan_out)
    return float(fan_in)


def filler_values(param: Message | None, shape: Sequence[int], generator: torch.Generator | None = None,
                  *, where: str = "", layer: LayerIR | None = None) -> torch.Tensor:
    """A float32 CPU tensor of ``shape`` filled as the ``FillerParameter`` ``param`` says (None: Caffe's
    default, constant 0)."""
    param = param if param is not None else Message("FillerParameter")
    shape = tuple(int(d) for d in shape)
    kind = str(param.type)
    count = math.prod(shape) if shape else 1

    def fail(message: str) -> NetDefinitionError:
        if layer is not None:
            return layer.error(f"{where}{message}")
        return NetDefinitionError(f"{where}{message}")

    if count == 0:
        raise fail("cannot fill an empty blob")
    if int(param.sparse) != -1 and kind != "gaussian":
        raise fail(f"the {kind} filler does not support sparse (Caffe refuses it too)")
    if kind == "constant":
        return torch.full(shape, float(param.value), dtype=torch.float32)
    if kind == "uniform":
        low, high = float(param.min), float(param.max)
        return torch.rand(shape, generator=generator, dtype=torch.float32) * (high - low) + low
    if kind == "gaussian":
        values = torch.randn(shape, generator=generator, dtype=torch.float32) * float(param.std) + float(param.mean)
        sparse = int(param.sparse)
        if sparse < -1:
            raise fail(f"sparse must be -1 or non-negative, not {sparse}")
        if sparse >= 0:
            if not shape:
                raise fail("sparse filling needs a blob with at least one axis")
            keep = torch.full(shape, min(sparse / shape[0], 1.0), dtype=torch.float32)
            values *= torch.bernoulli(keep, generator=generator)
        return values
    if kind == "positive_unitball":
        values = torch.rand(shape, generator=generator, dtype=torch.float32)
        rows = values.reshape(shape[0] if shape else 1, -1)
        rows /= rows.sum(dim=1, keepdim=True)
        return values
    if kind == "xavier":
        scale = math.sqrt(3.0 / _fan(param, shape))
        return (torch.rand(shape, generator=generator, dtype=torch.float32) * 2.0 - 1.0) * scale
    if kind == "msra":
        std = math.sqrt(2.0 / _fan(param, shape))
        return torch.randn(shape, generator=generator, dtype=torch.float32) * std
    if kind == "bilinear":
        if len(shape) != 4 or shape[2] != shape[3]:
            raise fail(f"the bilinear filler needs a 4-axis blob with a square kernel, not {list(shape)}")
        size = shape[3]
        f = math.ceil(size / 2.0)
        c = (2 * f - 1 - f % 2) / (2.0 * f)
        axis = 1.0 - torch.abs(torch.arange(size, dtype=torch.float64) / f - c)
        kernel = (axis[:, None] * axis[None, :]).to(torch.float32)
        return kernel.expand(shape).clone()
    raise fail(f"unknown filler type '{kind}' (known: {', '.join(FILLER_TYPES)})")


# Caffe's layer-specific defaults for blobs whose filler the prototxt does not give
_ONE = {"type": "constant", "value": 1.0}
_QUARTER = {"type": "constant", "value": 0.25}


def layer_fillers(layer: LayerIR, blobs: Sequence[str]) -> list[Message]:
    """The ``FillerParameter`` of each of ``layer``'s Caffe blobs (named as the converter names them), as
    the layer's ``LayerSetUp`` uses them: conv/deconv/inner product ``weight_filler``/``bias_filler``,
    Scale ``filler`` (default constant 1) and ``bias_filler``, Bias ``filler``, PReLU ``filler`` (default
    constant 0.25), BatchNorm statistics 0."""
    p = layer.param
    kind = layer.type
    out: list[Message] = []
    for blob in blobs:
        if kind in ("Convolution", "Deconvolution"):
            source = p.convolution_param
            out.append(source.weight_filler if blob == "weight" else source.bias_filler)
        elif kind == "InnerProduct":
            source = p.inner_product_param
            out.append(source.weight_filler if blob == "weight" else source.bias_filler)
        elif kind == "Embed":
            source = p.embed_param
            out.append(source.weight_filler if blob == "weight" else source.bias_filler)
        elif kind == "Scale":
            source = p.scale_param
            if blob == "weight":
                out.append(source.filler if source.has("filler") else filler(**_ONE))
            else:
                out.append(source.bias_filler)
        elif kind == "Bias":
            out.append(p.bias_param.filler)
        elif kind == "PReLU":
            out.append(p.prelu_param.filler if p.prelu_param.has("filler") else filler(**_QUARTER))
        elif kind == "BatchNorm":
            out.append(filler("constant", value=0.0))
        else:
            raise layer.error(f"no filler is known for the blobs of a {kind} layer",
                              hint="give its weights in the caffemodel")
    return out


@torch.no_grad()
def fill_layer(net: CaffeNet, name: str, generator: torch.Generator | None = None) -> None:
    """Fill every Caffe blob of layer ``name`` of ``net`` from its prototxt fillers."""
    info = net.layer(name)
    layer = net.ir.layer(name)
    for blob, tensor, param in zip(info.caffe_blobs, net.caffe_tensors(name), layer_fillers(layer, info.caffe_blobs)):
        values = filler_values(param, tuple(tensor.shape), generator, where=f"blob '{blob}': ", layer=layer)
        tensor.copy_(values)


__all__ = ["FILLER_TYPES", "fill_layer", "filler", "filler_values", "layer_fillers"]
