"""A trainable net from a train_val prototxt: the TRAIN-phase :class:`CaffeNet`, its losses, its
initialisation for fine-tuning, and copying trained weights into a TEST or deploy net.

TRAIN phase, as Caffe builds it: the TRAIN data layer's tops become the inputs (``data``, ``label``),
Dropout drops (``nn.Dropout`` in ``train()`` mode, kept units scaled by ``1/(1-p)``), BatchNorm uses the
batch's statistics (unless ``use_global_stats``), and the net's loss is Caffe's: the sum over the loss
layers' tops of ``loss_weight * top`` (``loss_weight`` defaults to 1 for ``*Loss`` layers, 0 otherwise;
a ``loss_weight`` on another layer makes its top a loss too).

Fine-tuning (:func:`initialise`): every layer is first filled from the prototxt's fillers, then the
caffemodel's blobs are copied by layer name with the strict checks of
:func:`agegender.caffe2torch.weights.load_weights`; a layer whose blob shapes (or type, or blob count)
differ from the caffemodel's, e.g. a new ``fc8`` head with another number of classes, keeps its filler
values, with a logged warning.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch

from ..caffe2torch.ir import NetState, build_ir
from ..caffe2torch.net import CaffeNet
from ..caffe2torch.weights import load_weights, shapes_match
from ..errors import NetDefinitionError, WeightsMismatchError
from ..prototxt.files import read_caffemodel, read_net
from ..prototxt.message import Message
from .fillers import fill_layer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LossTerm:
    """A top that enters the loss: ``loss_weight * blob``."""

    layer: str
    top: str
    weight: float


@dataclass
class InitReport:
    """How the net's weights were initialised: copied from the caffemodel, re-initialised from fillers
    because the caffemodel's blobs do not fit (with why), or filled because the caffemodel lacks them."""

    source: str | None
    copied: list[str] = field(default_factory=list)
    reinitialised: dict[str, str] = field(default_factory=dict)
    filled: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    seed: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """One line for a plan or a log."""
        if self.source is None:
            return f"from the prototxt's fillers (seed {self.seed}): {len(self.filled)} layers"
        parts = [f"{len(self.copied)} layers copied from {Path(self.source).name}"]
        if self.reinitialised:
            parts.append("re-initialised from fillers: " + ", ".join(
                f"{name} ({why})" for name, why in self.reinitialised.items()))
        if self.filled:
            parts.append("not in the caffemodel, filled: " + ", ".join(self.filled))
        return "; ".join(parts)


def build_net(net_def: Message, path: str | Path | None = None, *, phase: str = "TRAIN",
              input_shapes: Mapping[str, Sequence[int]] | None = None, channels_last: bool = True) -> CaffeNet:
    """The :class:`CaffeNet` of a (V2) NetParameter for ``phase``: in ``train()`` mode for TRAIN, ``eval()``
    for TEST; parameters allocated, not filled (see :func:`initialise`)."""
    ir = build_ir(net_def, str(path) if path is not None else None, NetState(phase=phase))
    net = CaffeNet(ir, input_shapes)
    net.net_def = net_def
    net.weights_report = None
    net.train(phase == "TRAIN")
    if channels_last:
        net.to_channels_last()
    return net


def read_train_val(path: str | Path) -> Message:
    """A train_val prototxt (V1 or V2), upgraded to V2."""
    return read_net(path)


def loss_terms(net: CaffeNet) -> list[LossTerm]:
    """The tops that make Caffe's loss, with their weights (Caffe's ``Layer::SetLossWeights``)."""
    terms = []
    for layer in net.ir.layers:
        weights = [float(w) for w in layer.param.loss_weight]
        default = 1.0 if layer.type.endswith("Loss") else 0.0
        if weights and len(weights) != len(layer.tops):
            raise layer.error(f"{len(weights)} loss_weight value(s) for {len(layer.tops)} top(s)")
        for i, top in enumerate(layer.tops):
            weight = weights[i] if weights else (default if i == 0 else 0.0)
            if weight:
                terms.append(LossTerm(layer.name, top, weight))
    if not terms:
        raise NetDefinitionError(f"the {net.ir.state.phase} net has no loss layer (e.g. SoftmaxWithLoss)",
                                 path=net.ir.path, hint="is this a deploy prototxt? training needs a train_val net")
    return terms


def accuracy_tops(net: CaffeNet) -> list[str]:
    """The accuracy tops of the net's Accuracy layers (reported, not optimised); an optional second top
    holds per-class accuracies and is not reported."""
    return [layer.tops[0] for layer in net.ir.layers if layer.type == "Accuracy" and layer.tops]


def data_inputs(net: CaffeNet) -> tuple[str, str]:
    """The image and label input blobs of a net fed by one data layer (``data``, ``label``)."""
    if len(net.input_names) != 2:
        raise NetDefinitionError(
            f"training needs one data layer with two tops (images, labels); the {net.ir.state.phase} net's "
            f"inputs are {net.input_names}", path=net.ir.path)
    return net.input_names[0], net.input_names[1]


def classifier_classes(net: CaffeNet) -> int:
    """The number of classes the first loss layer's prediction blob has (8 for age, 2 for gender)."""
    term = loss_terms(net)[0]
    layer = net.ir.layer(term.layer)
    shape = net.blob_shapes[layer.bottoms[0]]
    if len(shape) < 2:
        raise NetDefinitionError(f"the prediction blob '{layer.bottoms[0]}' has shape {list(shape)}",
                                 path=net.ir.path, layer=layer.name)
    return int(shape[1])


def plan_initialisation(net: CaffeNet, caffemodel: str | Path | None = None, *, seed: int = 0,
                        weights=None) -> tuple[InitReport, dict]:
    """What :func:`initialise` will do, without touching the net: the report, and the caffemodel's layers
    that fit (name -> blobs). ``weights`` is the already read caffemodel, if any."""
    layers = net.parameter_layers()
    report = InitReport(source=str(caffemodel) if caffemodel is not None else None, seed=int(seed))
    if caffemodel is None:
        report.filled = [info.name for info in layers]
        return report, {}
    weights = weights if weights is not None else read_caffemodel(caffemodel)
    fitting = {}
    for info in layers:
        stored = weights.layers.get(info.name)
        if stored is None:
            report.filled.append(info.name)
            continue
        reason = _misfit(net, info, stored)
        if reason is not None:
            report.reinitialised[info.name] = reason
            continue
        fitting[info.name] = stored
    if not fitting:
        raise WeightsMismatchError(
            f"no layer of the caffemodel (net '{weights.name}') fits net '{net.net_name}'", path=caffemodel,
            hint="are the prototxt and the caffemodel of the same architecture?")
    known = {info.name for info in net.layer_info}
    report.unused = [name for name in weights.layers if name not in known]
    report.copied = list(fitting)
    return report, fitting


@torch.no_grad()
def initialise(net: CaffeNet, caffemodel: str | Path | None = None, *, seed: int = 0) -> InitReport:
    """Fill ``net`` for training: fillers everywhere, then the caffemodel's fitting layers (see the module
    docstring). Returns what was done; layers re-initialised for not fitting are logged as warnings."""
    generator = torch.Generator().manual_seed(int(seed))
    for info in net.parameter_layers():
        fill_layer(net, info.name, generator)
    weights = read_caffemodel(caffemodel) if caffemodel is not None else None
    report, fitting = plan_initialisation(net, caffemodel, seed=seed, weights=weights)
    for name, reason in report.reinitialised.items():
        log.warning("%s: layer '%s' re-initialised from the prototxt's fillers: %s", caffemodel, name, reason)
    if weights is not None:
        loaded = load_weights(net, dataclasses.replace(weights, layers=fitting), allow_missing=True)
        report.copied = list(loaded.loaded)
    return report


def _misfit(net: CaffeNet, info, stored) -> str | None:
    if stored.type and stored.type != info.type:
        return f"type {stored.type} in the caffemodel, {info.type} in the prototxt"
    tensors = net.caffe_tensors(info.name)
    if len(stored.blobs) != len(tensors):
        return f"{len(stored.blobs)} blob(s) in the caffemodel, {len(tensors)} in the prototxt"
    for blob, tensor, array, legacy in zip(info.caffe_blobs, tensors, stored.blobs, stored.legacy_shape):
        if not shapes_match(tuple(tensor.shape), tuple(array.shape), legacy):
            return f"{blob} {list(array.shape)} in the caffemodel, {list(tensor.shape)} in the prototxt"
    return None


@torch.no_grad()
def copy_weights(source: CaffeNet, target: CaffeNet) -> list[str]:
    """Copy every Caffe blob of ``target``'s layers from ``source``'s layer of the same name (e.g. a trained
    TRAIN net into its deploy or TEST net). Shapes must match; every parameter layer of ``target`` must
    exist in ``source``. Returns the layers copied."""
    copied = []
    source_layers = {info.name for info in source.parameter_layers()}
    for info in target.parameter_layers():
        if info.name not in source_layers:
            raise WeightsMismatchError(f"the trained net has no layer '{info.name}'", path=target.ir.path,
                                       layer=info.name, hint="is the deploy prototxt of this train_val?")
        for blob, dst, src in zip(info.caffe_blobs, target.caffe_tensors(info.name), source.caffe_tensors(info.name)):
            if tuple(dst.shape) != tuple(src.shape):
                raise WeightsMismatchError(
                    f"blob {blob} is {list(src.shape)} in the trained net but {list(dst.shape)} here",
                    path=target.ir.path, layer=info.name)
            dst.copy_(src.detach().to(dst.device))
        copied.append(info.name)
    return copied


def phase_net_def(net_def: Message, phase: str) -> Message:
    """A copy of ``net_def`` with only the layers a net of ``phase`` includes (e.g. what Caffe writes in a
    snapshot caffemodel: the TRAIN net's layers)."""
    state = NetState(phase=phase)
    out = net_def.copy()
    out.layer = [layer for layer in net_def.layer if state.includes(layer)]
    return out


__all__ = ["InitReport", "LossTerm", "accuracy_tops", "build_net", "classifier_classes", "copy_weights",
           "data_inputs", "initialise", "loss_terms", "phase_net_def", "plan_initialisation", "read_train_val"]
