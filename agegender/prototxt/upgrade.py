"""Upgrade old net definitions to the one V2 form the converter reads, as Caffe's ``UpgradeNetAsNeeded``
(``src/caffe/util/upgrade_proto.cpp``) does, in its order:

* V0 nets (``layers { layer { type: "conv" num_output: 96 ... } bottom: ... }``) become V1: ``padding``
  layers fold into the convolution or pooling they feed, each V0 setting moves to its layer type's
  parameter message, and only the net's name, layers, inputs and ``force_backward`` are kept.
* Deprecated preprocessing of V1 data layers (``scale``, ``mean_file``, ``crop_size``, ``mirror`` of a
  DATA layer's ``data_param``, an IMAGE_DATA layer's ``image_data_param``, a WINDOW_DATA layer's
  ``window_data_param``) moves to ``transform_param``. V2 layers are left alone: Caffe ignores those
  fields there.
* V1 nets (``layers { type: CONVOLUTION ... }``) become V2 (``layer { type: "Convolution" ... }``):
  ``param``/``blob_share_mode``/``blobs_lr``/``weight_decay`` become ``param { name share_mode lr_mult
  decay_mult }``, the layer parameters move across unchanged (they are the same messages). A net that
  also has V2 ``layer`` blocks loses them, as in Caffe (which logs an error and goes on).
* ``input:`` with ``input_shape {}`` (or else ``input_dim:``) becomes an ``Input`` layer named ``input``
  in front; inputs with neither are dropped (legacy caffemodels name their inputs so).
* A ``BatchNorm`` layer with three ``param`` specs gets ``lr_mult: 0 decay_mult: 0`` in each.
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import NetDefinitionError
from .message import Message

log = logging.getLogger(__name__)

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
# the V1 data layers whose own parameter message held the preprocessing fields (UpgradeNetDataTransformation)
_V1_DATA_HOLDERS = {"DATA": "data_param", "IMAGE_DATA": "image_data_param", "WINDOW_DATA": "window_data_param"}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")

# UpgradeV0LayerType: the V0 type strings Caffe knows ("padding" layers are folded away before)
V0_LAYER_TYPES = {
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION", "data": "DATA",
    "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS", "flatten": "FLATTEN", "hdf5_data": "HDF5_DATA",
    "hdf5_output": "HDF5_OUTPUT", "im2col": "IM2COL", "images": "IMAGE_DATA", "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT", "lrn": "LRN", "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS",
    "pool": "POOLING", "relu": "RELU", "sigmoid": "SIGMOID", "softmax": "SOFTMAX", "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT", "tanh": "TANH", "window_data": "WINDOW_DATA",
}
_ANY = "*"  # a V0 setting every layer type may give (it moves to transform_param)
# UpgradeV0LayerParameter: V0 field -> {V0 type (or _ANY): (V1 parameter message, its field, append?)};
# a field given for a type not listed is dropped (Caffe logs "Unknown parameter ... for layer type")
_V0_FIELDS: dict[str, dict[str, tuple[str, str, bool]]] = {
    "num_output": {"conv": ("convolution_param", "num_output", False),
                   "innerproduct": ("inner_product_param", "num_output", False)},
    "biasterm": {"conv": ("convolution_param", "bias_term", False),
                 "innerproduct": ("inner_product_param", "bias_term", False)},
    "weight_filler": {"conv": ("convolution_param", "weight_filler", False),
                      "innerproduct": ("inner_product_param", "weight_filler", False)},
    "bias_filler": {"conv": ("convolution_param", "bias_filler", False),
                    "innerproduct": ("inner_product_param", "bias_filler", False)},
    "pad": {"conv": ("convolution_param", "pad", True), "pool": ("pooling_param", "pad", False)},
    "kernelsize": {"conv": ("convolution_param", "kernel_size", True), "pool": ("pooling_param", "kernel_size", False)},
    "group": {"conv": ("convolution_param", "group", False)},
    "stride": {"conv": ("convolution_param", "stride", True), "pool": ("pooling_param", "stride", False)},
    "pool": {"pool": ("pooling_param", "pool", False)},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio", False)},
    "local_size": {"lrn": ("lrn_param", "local_size", False)},
    "alpha": {"lrn": ("lrn_param", "alpha", False)},
    "beta": {"lrn": ("lrn_param", "beta", False)},
    "k": {"lrn": ("lrn_param", "k", False)},
    "source": {"data": ("data_param", "source", False), "hdf5_data": ("hdf5_data_param", "source", False),
               "images": ("image_data_param", "source", False),
               "window_data": ("window_data_param", "source", False),
               "infogain_loss": ("infogain_loss_param", "source", False)},
    "scale": {_ANY: ("transform_param", "scale", False)},
    "meanfile": {_ANY: ("transform_param", "mean_file", False)},
    "batchsize": {"data": ("data_param", "batch_size", False), "hdf5_data": ("hdf5_data_param", "batch_size", False),
                  "images": ("image_data_param", "batch_size", False),
                  "window_data": ("window_data_param", "batch_size", False)},
    "cropsize": {_ANY: ("transform_param", "crop_size", False)},
    "mirror": {_ANY: ("transform_param", "mirror", False)},
    "rand_skip": {"data": ("data_param", "rand_skip", False), "images": ("image_data_param", "rand_skip", False)},
    "shuffle_images": {"images": ("image_data_param", "shuffle", False)},
    "new_height": {"images": ("image_data_param", "new_height", False)},
    "new_width": {"images": ("image_data_param", "new_width", False)},
    "concat_dim": {"concat": ("concat_param", "concat_dim", False)},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold", False)},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold", False)},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction", False)},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad", False)},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode", False)},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", "", False)},  # the whole message
}


def _line(msg: Message, name: str | None = None) -> int | None:
    pos = msg.field_pos(name) if name else msg.pos
    return pos[0] if pos else None


def _keep_pos(new: Message, old: Message) -> Message:
    object.__setattr__(new, "_pos", old.pos)
    object.__setattr__(new, "_field_pos", old._field_pos)
    return new


# --- V0 -> V1 ------------------------------------------------------------------------------------------
def _fold_v0_padding(net: Message, path: str | None) -> list[Message]:
    """UpgradeV0PaddingLayers: the V0 layers without the ``padding`` ones, whose ``pad`` (and input) go
    to the convolution or pooling layer they feed."""
    last_top = {name: -1 for name in net.input}  # blob -> index of the layer that last wrote it
    out: list[Message] = []
    for i, conn in enumerate(net.layers):
        v0 = conn.layer
        if v0.type != "padding":
            out.append(conn.copy())
        for j, blob in enumerate(conn.bottom):
            if blob not in last_top:
                raise NetDefinitionError(f"V0 layer {i} takes '{blob}', which no input or earlier layer produces",
                                         path=path, line=_line(conn), layer=v0.name or None)
            source_index = last_top[blob]
            if source_index == -1:
                continue
            source = net.layers[source_index]
            if source.layer.type != "padding":
                continue
            # Caffe CHECKs these: a padding layer may only feed one single-input conv or pool layer
            if v0.type not in ("conv", "pool"):
                raise NetDefinitionError(f"a V0 padding layer feeds a '{v0.type}' layer (only conv and pool may "
                                         "take one)", path=path, line=_line(conn), layer=v0.name or None)
            if len(conn.bottom) != 1 or len(source.bottom) != 1 or len(source.top) != 1:
                raise NetDefinitionError("a V0 padding layer and the layer it feeds must each take one blob, and "
                                         "the padding layer produce one", path=path, line=_line(conn),
                                         layer=v0.name or None)
            target = out[-1]
            target.mutable("layer").pad = source.layer.pad
            bottoms = list(target.bottom)
            bottoms[j] = source.bottom[0]
            target.bottom = bottoms
        for blob in conn.top:
            last_top[blob] = i
    return out


def _upgrade_v0_layer(conn: Message, path: str | None) -> Message:
    """UpgradeV0LayerParameter: one V0 layer connection as a V1LayerParameter."""
    new = _keep_pos(Message("V1LayerParameter"), conn)
    new.bottom = list(conn.bottom)
    new.top = list(conn.top)
    if not conn.has("layer"):
        return new  # a V1 layer in a V0 net keeps only its blobs, as in Caffe
    v0 = conn.layer
    if v0.has("name"):
        new.name = v0.name
    v0_type = v0.type
    if v0.has("type"):
        if v0_type not in V0_LAYER_TYPES:
            raise NetDefinitionError(f"unknown V0 layer type '{v0_type}'", path=path, line=_line(v0, "type"),
                                     layer=v0.name or None, hint=f"Caffe knows {', '.join(sorted(V0_LAYER_TYPES))}")
        new.type = V0_LAYER_TYPES[v0_type]
    for name in ("blobs", "blobs_lr", "weight_decay"):
        if v0.has(name):
            setattr(new, name, [b.copy() for b in v0.blobs] if name == "blobs" else list(getattr(v0, name)))
    for name, targets in _V0_FIELDS.items():
        if not v0.has(name):
            continue
        target = targets.get(v0_type) or targets.get(_ANY)
        if target is None:
            log.warning("%s: V0 layer '%s': parameter '%s' does not apply to type '%s'; dropped, as Caffe drops it",
                        path, v0.name, name, v0_type)
            continue
        holder_name, field, append = target
        value: Any = getattr(v0, name)
        if isinstance(value, Message):
            value = value.copy()
        if not field:
            setattr(new, holder_name, value)
            continue
        holder = new.mutable(holder_name)
        if append:
            getattr(holder, field).append(value)
        else:
            setattr(holder, field, value)
    return new


def _upgrade_v0_net(net: Message, path: str | None) -> Message:
    """UpgradeV0Net: a net with V0 layers as a V1 net (name, layers, input, input_dim, force_backward)."""
    layers = _fold_v0_padding(net, path)
    out = _keep_pos(Message("NetParameter"), net)
    if net.has("name"):
        out.name = net.name
    out.layers = [_upgrade_v0_layer(conn, path) for conn in layers]
    out.input = list(net.input)
    out.input_dim = list(net.input_dim)
    if net.has("force_backward"):
        out.force_backward = net.force_backward
    return out


# --- V1 -> V2 ------------------------------------------------------------------------------------------
def _upgrade_v1_data_transformation(layer: Message) -> None:
    """UpgradeNetDataTransformation, on one V1 layer: preprocessing fields move to transform_param."""
    holder = _V1_DATA_HOLDERS.get(layer.type) if layer.has("type") else None
    if holder is None or not layer.has(holder):
        return
    param = getattr(layer, holder)
    for field in _TRANSFORM_FIELDS:
        if param.has(field):
            setattr(layer.mutable("transform_param"), field, getattr(param, field))
            param.clear(field)


def upgrade_v1_layer(old: Message, path: str | None = None) -> Message:
    """One V1LayerParameter as a V2 LayerParameter (UpgradeV1LayerParameter)."""
    new = _keep_pos(Message("LayerParameter"), old)
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
            spec_msg.name = old.param[i]  # an empty name is what no name means to Caffe's weight sharing
        if i < len(old.blob_share_mode):
            spec_msg.share_mode = old.blob_share_mode[i]
        if i < len(old.blobs_lr):
            spec_msg.lr_mult = float(old.blobs_lr[i])
        if i < len(old.weight_decay):
            spec_msg.decay_mult = float(old.weight_decay[i])
    return new


# --- inputs, BatchNorm ---------------------------------------------------------------------------------
def _input_layer(net: Message, path: str | None) -> Message | None:
    """UpgradeNetInput: the Input layer of ``input:`` declarations, None when they give no shapes."""
    names = list(net.input)
    has_shape, has_dim = net.has("input_shape"), net.has("input_dim")
    if not (has_shape or has_dim):
        return None  # a legacy caffemodel's inputs: Caffe drops them
    layer = Message("LayerParameter", name="input", type="Input", top=names)
    object.__setattr__(layer, "_pos", net.field_pos("input"))
    param = layer.mutable("input_param")
    if has_shape:  # input_shape wins over input_dim; shapes past the inputs' count are not read
        if len(net.input_shape) < len(names):
            raise NetDefinitionError(
                f"{len(names)} input(s) but only {len(net.input_shape)} input_shape(s)", path=path,
                line=_line(net, "input_shape"),
            )
        for shape in net.input_shape[: len(names)]:
            param.add("shape", dim=list(shape.dim))
    else:
        dims = list(net.input_dim)
        if len(dims) < 4 * len(names):
            raise NetDefinitionError(
                f"input_dim must give 4 numbers per input: {len(names)} input(s), {len(dims)} input_dim(s)",
                path=path, line=_line(net, "input_dim"),
            )
        for i in range(len(names)):
            param.add("shape", dim=dims[4 * i : 4 * i + 4])
    return layer


def _upgrade_batch_norm(layer: Message) -> None:
    """UpgradeNetBatchNorm: the three blobs of a BatchNorm layer are statistics, never learned."""
    if layer.type == "BatchNorm" and len(layer.param) == 3:
        for spec in layer.param:
            spec.lr_mult = 0.0
            spec.decay_mult = 0.0


def upgrade_net(net: Message, path: str | None = None) -> Message:
    """Return ``net`` (a NetParameter) in the V2 form: ``layer`` only, an ``Input`` layer for inputs."""
    out = net.copy()
    if any(layer.has("layer") for layer in out.layers):
        out = _upgrade_v0_net(out, path)
    if out.has("layers"):
        if out.has("layer"):  # UpgradeV1Net: LOG(FATAL) "Refusing to upgrade inconsistent NetParameter input"
            raise NetDefinitionError(
                "the net mixes V1 'layers {}' and V2 'layer {}' blocks; Caffe refuses this too", path=path,
                line=_line(out, "layer"), hint="write every layer in one form (V2: layer { type: \"ReLU\" ... })",
            )
        for layer in out.layers:
            _upgrade_v1_data_transformation(layer)
        out.layer = [upgrade_v1_layer(old, path) for old in out.layers]
        out.clear("layers")
    if out.has("input"):
        first = _input_layer(out, path)
        if first is not None:
            out.layer = [first] + list(out.layer)
    # without 'input:' names, input_dim/input_shape are never read by Caffe
    for name in ("input", "input_dim", "input_shape"):
        out.clear(name)
    for layer in out.layer:
        _upgrade_batch_norm(layer)
    return out
