"""Upgrade old net definitions to the one V2 form the converter reads, as Caffe's upgrade_proto does.

* V1 nets (``layers { type: CONVOLUTION ... }``) become V2 (``layer { type: "Convolution" ... }``):
  ``blobs_lr``/``weight_decay`` become ``param { lr_mult decay_mult }``, the layer parameters move
  across unchanged (they are the same messages).
* Deprecated data-layer preprocessing in ``data_param`` (``mean_file``, ``crop_size``, ``mirror``,
  ``scale``) moves to ``transform_param``.
* ``input:`` with ``input_dim:`` or ``input_shape {}`` become an ``Input`` layer named ``input``.
"""

from __future__ import annotations

from ..errors import NetDefinitionError
from .message import Message

V1_LAYER_TYPES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN",
    "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}
_DATA_TYPES = ("Data", "ImageData", "WindowData")


def upgrade_v1_layer(old: Message, path: str | None = None) -> Message:
    """One V1LayerParameter as a V2 LayerParameter."""
    new = Message("LayerParameter")
    object.__setattr__(new, "_pos", old.pos)
    object.__setattr__(new, "_field_pos", old._field_pos)
    new_fields = new.mtype.fields
    for spec, value in old.set_fields():
        name = spec.name
        if name == "type":
            new.type = V1_LAYER_TYPES[value]
        elif name in ("param", "blob_share_mode", "blobs_lr", "weight_decay"):
            continue  # folded into ParamSpec below
        elif name in new_fields:
            setattr(new, name, value)
    n_params = max(len(old.param), len(old.blob_share_mode), len(old.blobs_lr), len(old.weight_decay))
    for i in range(n_params):
        spec_msg = new.add("param")
        if i < len(old.param) and old.param[i]:
            spec_msg.name = old.param[i]
        if i < len(old.blob_share_mode):
            spec_msg.share_mode = old.blob_share_mode[i]
        if i < len(old.blobs_lr):
            spec_msg.lr_mult = float(old.blobs_lr[i])
        if i < len(old.weight_decay):
            spec_msg.decay_mult = float(old.weight_decay[i])
    return new


def _upgrade_data_transformation(layer: Message) -> None:
    """Move deprecated preprocessing fields of a data layer into transform_param (Caffe does this)."""
    if layer.type not in _DATA_TYPES:
        return
    for holder in ("data_param", "image_data_param", "window_data_param"):
        if not layer.has(holder):
            continue
        param = getattr(layer, holder)
        for field in ("scale", "mean_file", "crop_size", "mirror"):
            if param.has(field):
                setattr(layer.mutable("transform_param"), field, getattr(param, field))
                param.clear(field)


def _input_layer(net: Message, path: str | None) -> Message:
    names = list(net.input)
    layer = Message("LayerParameter", name="input", type="Input", top=names)
    object.__setattr__(layer, "_pos", net.field_pos("input"))
    param = layer.mutable("input_param")
    if net.has("input_shape"):
        if len(net.input_shape) != len(names):
            raise NetDefinitionError(
                f"{len(names)} input(s) but {len(net.input_shape)} input_shape(s)", path=path,
                line=(net.field_pos("input_shape") or (None,))[0],
            )
        for shape in net.input_shape:
            param.add("shape", dim=list(shape.dim))
    elif net.has("input_dim"):
        dims = list(net.input_dim)
        if len(dims) != 4 * len(names):
            raise NetDefinitionError(
                f"input_dim must give 4 numbers per input: {len(names)} input(s), {len(dims)} input_dim(s)",
                path=path, line=(net.field_pos("input_dim") or (None,))[0],
            )
        for i in range(len(names)):
            param.add("shape", dim=dims[4 * i : 4 * i + 4])
    # inputs with no shape stay shapeless; the caller must give one
    return layer


def upgrade_net(net: Message, path: str | None = None) -> Message:
    """Return ``net`` (a NetParameter) in the V2 form: ``layer`` only, an ``Input`` layer for inputs."""
    if net.has("layer") and net.has("layers"):
        raise NetDefinitionError(
            "the net mixes V1 'layers {}' and V2 'layer {}' blocks; Caffe refuses this too", path=path
        )
    out = net.copy()
    if net.has("layers"):
        out.clear("layers")
        out.layer = [upgrade_v1_layer(old, path) for old in net.layers]
    for layer in out.layer:
        _upgrade_data_transformation(layer)
    if net.has("input"):
        out.layer = [_input_layer(net, path)] + list(out.layer)
        for name in ("input", "input_dim", "input_shape"):
            out.clear(name)
    elif net.has("input_dim") or net.has("input_shape"):
        raise NetDefinitionError("input_dim/input_shape given without 'input:' names", path=path)
    return out
