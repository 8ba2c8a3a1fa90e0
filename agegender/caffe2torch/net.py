"""``CaffeNet``: a Caffe net rebuilt as a real ``torch.nn.Module``.

Its submodules are named after Caffe's layers (``net.conv1``, ``net.get_submodule("inception_3a/1x1")``),
so its ``state_dict`` keys are ``"conv1.weight"``, ``"conv1.bias"``... Its forward runs the layers in
Caffe's order over named blobs; in-place layers overwrite their blob as in Caffe, so asking for
``outputs=["fc6"]`` gives ``fc6`` after ``relu6`` and ``drop6``, exactly what Caffe holds.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn

from ..errors import AgegenderError, NetDefinitionError
from .ir import LayerIR, NetIR, Shape
from .converters._util import check_blob_shape
from .registry import converter_for


@dataclass(frozen=True)
class LayerInfo:
    """What the net knows of one converted layer (for inspect, cards and reports)."""

    name: str
    type: str
    module_name: str | None  # None for input layers
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    out_shapes: tuple[Shape, ...]
    caffe_blobs: tuple[str, ...]
    line: int | None


def check_in_place(ir: NetIR) -> None:
    """Refuse the in-place uses Caffe's Net::Init refuses ("Top blob '...' produced by multiple sources"):

    * a top is computed in place only when it is named like the bottom *at its own index*; a top named
      like another bottom is a second producer of that blob;
    * an in-place layer whose bottom is read by another layer too: InsertSplits gives every reader of a
      blob read more than once its own split copy, so the in-place top no longer names its bottom.
    """
    readers: dict[tuple[int, int], int] = {}  # (producing layer, top index) -> layers reading that value
    source: dict[str, tuple[int, int]] = {}
    bottom_sources: list[list[tuple[int, int] | None]] = []
    for i, layer in enumerate(ir.layers):
        bottom_sources.append([source.get(b) for b in layer.bottoms])
        for key in bottom_sources[-1]:
            if key is not None:
                readers[key] = readers.get(key, 0) + 1
        for j, top in enumerate(layer.tops):
            source[top] = (i, j)
    for i, layer in enumerate(ir.layers):
        for j, top in enumerate(layer.tops):
            if top not in layer.bottoms:
                continue
            if j >= len(layer.bottoms) or layer.bottoms[j] != top:
                raise layer.error(f"top {j} '{top}' is bottom {layer.bottoms.index(top)}: Caffe computes in place "
                                  f"only a top named like the bottom at its own index (top blob '{top}' produced by "
                                  "multiple sources)")
            key = bottom_sources[i][j]
            if key is not None and readers.get(key, 0) > 1:
                raise layer.error(f"computes '{top}' in place, but other layers read '{top}' too: Caffe splits a "
                                  f"blob read by several layers, and then refuses this (top blob '{top}' produced "
                                  "by multiple sources)", hint="give the layer a top of its own")


def _module_key(name: str, taken: set[str], net: nn.Module) -> str:
    """Caffe's layer name as a submodule name: '.' is not allowed by torch, so it becomes '_'."""
    key = name.replace(".", "_") or "layer"
    base, i = key, 1
    while key in taken or (hasattr(net, key) and key not in net._modules):
        key = f"{base}_{i}"
        i += 1
    taken.add(key)
    return key


class CaffeNet(nn.Module):
    """A Caffe net as a PyTorch module, built from a :class:`NetIR`.

    ``input_shapes`` overrides the declared shape of any input blob (e.g. ``{"data": (10, 3, 227, 227)}``);
    the batch size is free at run time either way. Nets built for the TEST phase start in ``eval()`` mode
    (dropout off), as Caffe's TEST nets do.
    """

    def __init__(self, ir: NetIR, input_shapes: Mapping[str, Sequence[int]] | None = None) -> None:
        super().__init__()
        self.ir = ir
        self.net_name = ir.name
        overrides = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}
        shapes: dict[str, Shape] = {}
        self.input_names: list[str] = []
        self.layer_info: list[LayerInfo] = []
        self._plan: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = []
        # plan steps whose ReLU may overwrite its bottom when no gradient is recorded (see _relu_in_place)
        self._relu_in_place: set[int] = set()
        last_writer: dict[str, str] = {}
        taken: set[str] = set()
        check_in_place(ir)
        for layer in ir.layers:
            bottom_shapes = [shapes[b] for b in layer.bottoms]
            for b, s in zip(layer.bottoms, bottom_shapes):
                if s == ():
                    raise NetDefinitionError(
                        f"the shape of input blob '{b}' is unknown", path=ir.path, layer=layer.name,
                        hint=f"give it, e.g. input_shapes={{'{b}': (1, 3, 227, 227)}}",
                    )
            try:
                converted = converter_for(layer)(layer, bottom_shapes)
            except NetDefinitionError as exc:
                if exc.layer is None and exc.path is None:  # from a shared helper: say which layer
                    raise layer.error(exc.message, type(exc), exc.hint) from None
                raise
            if len(converted.out_shapes) != len(layer.tops):
                raise layer.error(f"produces {len(converted.out_shapes)} blob(s) but names {len(layer.tops)} top(s)")
            out_shapes = list(converted.out_shapes)
            if converted.role == "input":
                for i, top in enumerate(layer.tops):
                    if top in overrides:
                        out_shapes[i] = overrides[top]
                    self.input_names.append(top)
                # a data layer's label follows the batch size given for its data
                if (layer.type != "Input" and len(layer.tops) == 2 and layer.tops[0] in overrides
                        and layer.tops[1] not in overrides and len(out_shapes[1]) == 1):
                    out_shapes[1] = (overrides[layer.tops[0]][0],)
                module_name = None
            else:
                assert converted.module is not None
                module_name = _module_key(layer.name, taken, self)
                self.add_module(module_name, converted.module)
                if (layer.type == "ReLU" and tuple(layer.tops) == tuple(layer.bottoms)
                        and last_writer.get(layer.bottoms[0]) in _FRESH_OUTPUT_TYPES):
                    self._relu_in_place.add(len(self._plan))
                self._plan.append((module_name, tuple(layer.bottoms), tuple(layer.tops)))
            for top in layer.tops:
                last_writer[top] = layer.type
            for top, shape in zip(layer.tops, out_shapes):
                try:
                    check_blob_shape(tuple(shape), f"top blob '{top}'")
                except NetDefinitionError as exc:
                    raise layer.error(exc.message) from None
                shapes[top] = tuple(shape)
            self.layer_info.append(LayerInfo(
                name=layer.name, type=layer.type, module_name=module_name, bottoms=tuple(layer.bottoms),
                tops=tuple(layer.tops), out_shapes=tuple(tuple(s) for s in out_shapes),
                caffe_blobs=tuple(converted.caffe_blobs), line=layer.line,
            ))
        unknown = set(overrides) - set(self.input_names)
        if unknown:
            raise AgegenderError(f"input_shapes names no input of the net: {sorted(unknown)} "
                                 f"(inputs: {self.input_names})", path=ir.path)
        self.blob_shapes: dict[str, Shape] = shapes
        self.output_names: list[str] = [o for o in ir.outputs if o not in self.input_names]
        self.channels_last = False
        if ir.state.phase == "TEST":
            self.eval()

    def to_channels_last(self) -> "CaffeNet":
        """Run in the channels-last (NHWC) memory layout: 4-D weights are converted now and 4-D inputs at
        each call. Same values up to float rounding; on CPU pooling and convolution are much faster in it
        (see bench/RESULTS.md). Returns the net."""
        self.to(memory_format=torch.channels_last)
        self.channels_last = True
        return self

    # --- introspection ----------------------------------------------------------------------------
    def layer(self, name: str) -> LayerInfo:
        for info in self.layer_info:
            if info.name == name:
                return info
        raise KeyError(name)

    def layer_module(self, name: str) -> nn.Module:
        """The submodule of Caffe layer ``name``."""
        info = self.layer(name)
        if info.module_name is None:
            raise KeyError(f"layer {name!r} is an input layer and has no module")
        return self._modules[info.module_name]  # type: ignore[return-value]

    def parameter_layers(self) -> list[LayerInfo]:
        """Layers that carry Caffe blobs (weights), in net order."""
        return [info for info in self.layer_info if info.caffe_blobs]

    def caffe_tensors(self, name: str) -> list[torch.Tensor]:
        """The tensors of layer ``name`` in Caffe's blob order."""
        info = self.layer(name)
        module = self.layer_module(name)
        return [getattr(module, attr) for attr in info.caffe_blobs]

    # --- running ----------------------------------------------------------------------------------
    def _bind(self, args: tuple[torch.Tensor, ...], kwargs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if len(args) > len(self.input_names):
            raise TypeError(f"{len(args)} inputs given, the net has {len(self.input_names)}: {self.input_names}")
        blobs = dict(zip(self.input_names, args))
        for key, value in kwargs.items():
            if key not in self.input_names:
                raise TypeError(f"unknown input {key!r}; the net's inputs are {self.input_names}")
            blobs[key] = value
        return blobs

    def run(
        self, *args: torch.Tensor, record_layers: bool = False, **kwargs: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, list[torch.Tensor]]]:
        """Run the whole net. Returns every blob as Caffe holds it after the forward pass and, if
        ``record_layers``, each layer's own outputs (before later in-place layers change them)."""
        blobs = self._bind(args, kwargs)
        if self.channels_last:
            blobs = {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v
                     for k, v in blobs.items()}
        layer_outputs: dict[str, list[torch.Tensor]] = {}
        modules = self._modules
        in_place = self._relu_in_place if not record_layers and not torch.is_grad_enabled() else ()
        for step, (key, bottoms, tops) in enumerate(self._plan):
            try:
                inputs = [blobs[b] for b in bottoms]
            except KeyError as exc:
                raise TypeError(f"input blob {exc.args[0]!r} was not given (inputs: {self.input_names})") from None
            if step in in_place:
                out = _relu_in_place(modules[key], inputs[0])
            else:
                out = modules[key](*inputs)  # type: ignore[misc]
            outs = (out,) if len(tops) == 1 else tuple(out)
            for top, value in zip(tops, outs):
                blobs[top] = value
            if record_layers:
                layer_outputs[key] = list(outs)
        return blobs, layer_outputs

    def forward(
        self, *args: torch.Tensor, outputs: Sequence[str] | None = None, **kwargs: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, ...] | dict[str, torch.Tensor]:
        """Run the net on its input blobs (positional in input order, or by name).

        Without ``outputs``: the net's output blob (a tensor), or a tuple of them in ``output_names``
        order. With ``outputs=[names]``: a dict of those blobs, as Caffe names and holds them.
        """
        if outputs is not None:
            missing = [o for o in outputs if o not in self.blob_shapes]
            if missing:
                raise KeyError(f"no blob named {missing[0]!r}; blobs: {list(self.blob_shapes)}")
        blobs, _ = self.run(*args, **kwargs)
        if outputs is not None:
            return {name: blobs[name] for name in outputs}
        if len(self.output_names) == 1:
            return blobs[self.output_names[0]]
        return tuple(blobs[name] for name in self.output_names)


# Layers whose module always returns a new tensor: an in-place ReLU after one of them overwrites no tensor
# the caller or another blob holds (Caffe refuses in-place layers on blobs others read: check_in_place)
_FRESH_OUTPUT_TYPES = frozenset({"Convolution", "Deconvolution", "InnerProduct", "Pooling", "LRN", "BatchNorm",
                                 "Scale"})


def _relu_in_place(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Caffe's in-place ReLU without a new blob: at inference, writing over the bottom saves allocating
    (and first touching) a blob as large as it, about a fifth of VGG16's CPU forward."""
    if type(module) is nn.LeakyReLU:
        return nn.functional.leaky_relu(x, module.negative_slope, inplace=True)
    if type(module) is nn.ReLU:
        return torch.relu_(x)
    return module(x)  # replaced by the user: leave it alone


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode (dropout off, stored BatchNorm statistics) for the block, then every
    submodule's own mode back."""
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes.items():
            m.training = training


def build_net(ir: NetIR, input_shapes: Mapping[str, Sequence[int]] | None = None) -> CaffeNet:
    """Build the :class:`CaffeNet` of an IR (parameters allocated, not yet filled)."""
    return CaffeNet(ir, input_shapes)


__all__ = ["CaffeNet", "LayerInfo", "LayerIR", "build_net", "check_in_place", "eval_mode"]
