"""Parameter and FLOP counts per layer of a :class:`CaffeNet`, per image.

Convention (the one of most papers, e.g. VGG's "15.5 GFLOPs" is 2 x its multiply-adds):

* Convolution, Deconvolution, InnerProduct: **2 FLOPs per multiply-add** (one multiply, one add);
  bias additions are not counted. Convolution: ``2 * C_out * H_out * W_out * (C_in / group) * K_h * K_w``;
  Deconvolution: the same with input and output swapped; InnerProduct: ``2 * in * out``.
* Pooling: one FLOP per window element per output (a comparison for MAX, an add for AVE).
* LRN: ``2 * local_size + 3`` per element (the windowed sum of squares as multiply-adds, then scale,
  power and multiply).
* Element-wise activations (ReLU, PReLU, Sigmoid, TanH, ELU, ...), Scale, Bias: 1 per element; BatchNorm:
  2 per element; Eltwise: (number of bottoms - 1) per element; Softmax: 3 per element (exp, sum, divide).
* Concat, Split, Slice, Crop, Flatten, Reshape, Silence, Dropout (identity at TEST time) and input layers: 0.
* Other layer types are reported with ``counted=False`` and 0 FLOPs.

Counts are per image: the batch axis (axis 0 of every blob) is divided out.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from torch import nn

from .net import CaffeNet

FLOP_CONVENTION = (
    "per image; Convolution/Deconvolution/InnerProduct: 2 FLOPs per multiply-add, bias not counted; "
    "Pooling: window size per output; LRN: 2*local_size+3 per element; activations, Scale, Bias: 1, "
    "BatchNorm: 2, Eltwise: bottoms-1, Softmax: 3 per element; Concat/Split/Dropout/reshapes/inputs: 0"
)
_PER_ELEMENT = {"ReLU": 1, "PReLU": 1, "Sigmoid": 1, "TanH": 1, "AbsVal": 1, "ELU": 1, "BNLL": 1, "Threshold": 1,
                "Power": 1, "Exp": 1, "Log": 1, "Scale": 1, "Bias": 1, "BatchNorm": 2, "Softmax": 3}
_FREE = {"Concat", "Split", "Slice", "Crop", "Dropout", "Flatten", "Reshape", "Silence"}


@dataclass(frozen=True)
class LayerCost:
    """Parameters and FLOPs (per image) of one layer."""

    name: str
    type: str
    out_shapes: tuple[tuple[int, ...], ...]
    params: int
    flops: int
    counted: bool  # False: a layer type the convention does not cover (flops reported as 0)

    def as_dict(self) -> dict:
        return {"name": self.name, "type": self.type, "output_shapes": [list(s) for s in self.out_shapes],
                "params": self.params, "flops": self.flops, "counted": self.counted}


@dataclass(frozen=True)
class NetCost:
    """Per-layer costs of a net, in net order, with totals."""

    layers: tuple[LayerCost, ...]

    @property
    def total_params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def total_flops(self) -> int:
        return sum(layer.flops for layer in self.layers)

    @property
    def uncounted(self) -> list[str]:
        """Layers whose type the convention does not cover."""
        return [layer.name for layer in self.layers if not layer.counted]

    def as_dict(self) -> dict:
        return {"convention": FLOP_CONVENTION, "total_params": self.total_params, "total_flops": self.total_flops,
                "uncounted": self.uncounted, "layers": [layer.as_dict() for layer in self.layers]}


def _per_image(shape: tuple[int, ...]) -> int:
    return prod(shape[1:]) if len(shape) > 1 else 1


def _layer_flops(net: CaffeNet, layer_type: str, module: nn.Module | None, in_shapes: list[tuple[int, ...]],
                 out_shapes: tuple[tuple[int, ...], ...]) -> tuple[int, bool]:
    if module is None or layer_type in _FREE:
        return 0, True
    out_elems = sum(_per_image(s) for s in out_shapes)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        kernel = prod(module.kernel_size) * (module.in_channels // module.groups)
        return 2 * out_elems * kernel, True
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        in_elems = _per_image(in_shapes[0])
        return 2 * in_elems * prod(module.kernel_size) * (module.out_channels // module.groups), True
    if layer_type == "InnerProduct":
        in_features = int(getattr(module, "in_features"))
        return 2 * in_features * out_elems, True
    if layer_type == "Pooling":
        kernel = getattr(module, "kernel", None)
        window = prod(in_shapes[0][2:]) if kernel is None else prod(kernel)
        return window * out_elems, True
    if layer_type == "LRN":
        size = int(getattr(module, "size"))
        return (2 * size + 3) * out_elems, True
    if layer_type == "Eltwise":
        return (len(in_shapes) - 1) * out_elems, True
    if layer_type in _PER_ELEMENT:
        return _PER_ELEMENT[layer_type] * out_elems, True
    return 0, False


def count_flops(net: CaffeNet) -> NetCost:
    """Parameters and FLOPs of every layer of ``net`` (see the module docstring for the convention)."""
    costs = []
    for info in net.layer_info:
        module = net.layer_module(info.name) if info.module_name is not None else None
        params = sum(int(t.numel()) for t in net.caffe_tensors(info.name)) if info.caffe_blobs else 0
        in_shapes = [tuple(net.blob_shapes[b]) for b in info.bottoms]
        flops, counted = _layer_flops(net, info.type, module, in_shapes, info.out_shapes)
        costs.append(LayerCost(name=info.name, type=info.type, out_shapes=info.out_shapes, params=params,
                               flops=int(flops), counted=counted))
    return NetCost(layers=tuple(costs))


__all__ = ["FLOP_CONVENTION", "LayerCost", "NetCost", "count_flops"]
