"""The prototxt layer: every shared net and solver reads, upgrades V1 -> V2 as Caffe does, and round-trips
through text and binary; caffemodels decode without copies, in both blob layouts, and past 512 MiB;
the protobuf text format's corner cases parse."""

from __future__ import annotations

import gc
import mmap
import re
import struct
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agegender.caffe2torch import init_seeded, load, save_caffemodel
from agegender.errors import FileFormatError, PrototxtSyntaxError
from agegender.prototxt import (
    Message,
    array_to_blob,
    decode_message,
    encode_message,
    format_message,
    parse_text,
    read_blobproto,
    read_caffemodel,
    read_net,
    read_solver,
    read_text_message,
    write_message_binary,
    write_prototxt,
)
from agegender.prototxt.schema import INT_TYPES, FieldSpec, MessageType, caffe_schema

from .conftest import require_shared

# Caffe's V1 layer type enum names -> the V2 type strings (upgrade_proto.cpp), for the types the shared
# files use; written out here so the test does not read the table it checks.
V1_TO_V2 = {
    "ACCURACY": "Accuracy", "CONVOLUTION": "Convolution", "DATA": "Data", "DROPOUT": "Dropout",
    "INNER_PRODUCT": "InnerProduct", "LRN": "LRN", "POOLING": "Pooling", "RELU": "ReLU", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
}
_TOP_LAYER = re.compile(r"^[ \t]*(layers?)\s*\{", re.MULTILINE)
_V1_TYPE = re.compile(r"^\s*type:\s*([A-Z_]+)\s*$", re.MULTILINE)
_INPUT = re.compile(r'^input:\s*"([^"]*)"', re.MULTILINE)
_INPUT_DIM = re.compile(r"^input_dim:\s*(\d+)", re.MULTILINE)
_INPUT_SHAPE = re.compile(r"^input_shape\s*\{([^}]*)\}", re.MULTILINE)


@dataclass
class NetFile:
    path: Path
    text: str
    net: Message  # read_net: upgraded to V2
    raw: Message | None  # the message as written (V1 files only)


@dataclass
class SolverFile:
    path: Path
    text: str
    solver: Message


@lru_cache(maxsize=1)
def _read_all(root: Path) -> tuple[list[NetFile], list[SolverFile]]:
    nets, solvers = [], []
    for path in sorted(root.rglob("*.prototxt")):
        text = path.read_text()
        if path.name.startswith("solver"):
            solvers.append(SolverFile(path, text, read_solver(path)))
        else:
            first = _TOP_LAYER.search(text)
            is_v1 = first is not None and first.group(1) == "layers"
            raw = read_text_message(path, "NetParameter", "net prototxt") if is_v1 else None
            nets.append(NetFile(path, text, read_net(path), raw))
    return nets, solvers


def _find(files: list[NetFile], suffix: str) -> NetFile:
    return next(f for f in files if f.path.as_posix().endswith(suffix))


@pytest.fixture(scope="module")
def shared_prototxts() -> tuple[list[NetFile], list[SolverFile]]:
    return _read_all(require_shared())


# --- every shared file ------------------------------------------------------------------------------
def test_every_shared_net_reads_with_the_layers_the_file_declares(shared_prototxts) -> None:
    nets, _ = shared_prototxts
    # adience (38 configurations), levi (2 x 6), caffe-reference (4)
    assert len(nets) >= 200
    assert sum(1 for f in nets if f.raw is not None) >= 40  # the V1 files
    for f in nets:
        n_declared = len(_TOP_LAYER.findall(f.text))
        inputs = _INPUT.findall(f.text)
        assert len(f.net.layer) == n_declared + (1 if inputs else 0), f.path
        assert not f.net.has("layers") and not f.net.has("input") and not f.net.has("input_dim"), f.path
        assert all(layer.type and layer.name for layer in f.net.layer), f.path
        if inputs:
            first = f.net.layer[0]
            assert (first.name, first.type, list(first.top)) == ("input", "Input", inputs), f.path
            dims = [int(d) for d in _INPUT_DIM.findall(f.text)]
            shapes = _INPUT_SHAPE.findall(f.text)
            if shapes:
                dims = [int(d) for d in re.findall(r"dim:\s*(\d+)", shapes[0])]
            assert dims and len(dims) == 4, f.path
            assert [list(s.dim) for s in first.input_param.shape] == [dims], f.path


def test_input_layer_from_input_dim_and_from_input_shape(shared_prototxts) -> None:
    nets, _ = shared_prototxts
    levi = _find(nets, "levi/age_net_definitions/deploy.prototxt").net  # input: + input_dim:
    vgg = _find(nets, "adience/model_definitions/age_finetuning_vgg16/deploy.prototxt").net  # input_shape {}
    for net, dims in ((levi, [1, 3, 227, 227]), (vgg, [1, 3, 224, 224])):
        layer = net.layer[0]
        assert layer.type == "Input" and list(layer.top) == ["data"]
        assert [list(s.dim) for s in layer.input_param.shape] == [dims]
        assert net.layer[1].bottom[0] == "data"


def test_v1_files_upgrade_types_and_params(shared_prototxts) -> None:
    nets, _ = shared_prototxts
    v1 = [f for f in nets if f.raw is not None]
    n_param_checked = 0
    for f in v1:
        assert [layer.type for layer in f.net.layer if layer.type != "Input"] == [
            V1_TO_V2[t] for t in _V1_TYPE.findall(f.text)
        ], f.path
        offset = 1 if f.raw.has("input") else 0
        for old, new in zip(f.raw.layers, f.net.layer[offset:]):
            assert (new.name, list(new.bottom), list(new.top)) == (old.name, list(old.bottom), list(old.top))
            assert list(new.include) == list(old.include) and list(new.exclude) == list(old.exclude)
            # every layer parameter message moves across unchanged
            for spec, value in old.set_fields():
                if spec.name.endswith("_param") and spec.name != "data_param":
                    assert getattr(new, spec.name) == value, (f.path, old.name, spec.name)
            # blobs_lr / weight_decay -> param { lr_mult decay_mult }
            if old.blobs_lr:
                assert [p.lr_mult for p in new.param] == [float(v) for v in old.blobs_lr]
                assert [p.decay_mult for p in new.param] == [float(v) for v in old.weight_decay]
                n_param_checked += 1
            else:
                assert not new.param
    assert n_param_checked >= 100


def test_levi_train_val_facts(shared_prototxts) -> None:
    nets, _ = shared_prototxts
    f = _find(nets, "/levi/age_net_definitions/train_val_test_fold_is_0.prototxt")
    net = f.net
    assert [layer.name for layer in net.layer][:3] == ["data", "data", "conv1"]
    train, test = net.layer[0], net.layer[1]
    assert [r.phase for r in train.include] == ["TRAIN"] and [r.phase for r in test.include] == ["TEST"]
    assert (test.transform_param.crop_size, test.transform_param.mirror) == (227, False)
    assert test.data_param.backend == "LMDB" and test.data_param.batch_size == 50
    conv1 = net.layer[2]
    assert [(p.lr_mult, p.decay_mult) for p in conv1.param] == [(1.0, 1.0), (2.0, 0.0)]
    assert conv1.convolution_param.weight_filler.type == "gaussian"
    assert conv1.convolution_param.weight_filler.std == pytest.approx(0.01)


def test_caffe_reference_data_net_layer_types(shared_prototxts) -> None:
    """The layer list that real Caffe reported for the V1 data net after its upgrade (caffe-reference README)."""
    nets, _ = shared_prototxts
    f = _find(nets, "caffe-reference/levi/data_net_age.prototxt")
    caffe_says = (
        "data (Data), conv1 (Convolution), relu1 (ReLU), pool1 (Pooling), norm1 (LRN), conv2 (Convolution), "
        "relu2 (ReLU), pool2 (Pooling), norm2 (LRN), conv3 (Convolution), relu3 (ReLU), pool5 (Pooling), "
        "fc6 (InnerProduct), relu6 (ReLU), drop6 (Dropout), fc7 (InnerProduct), relu7 (ReLU), drop7 (Dropout), "
        "fc8 (InnerProduct), prob (Softmax)"
    )
    expected = [tuple(item.rstrip(")").split(" (")) for item in caffe_says.split(", ")]
    assert [(layer.name, layer.type) for layer in f.net.layer] == expected
    data = f.net.layer[0]
    assert data.transform_param.mean_file == "levi/models/mean.binaryproto"
    assert data.transform_param.crop_size == 227 and data.data_param.batch_size == 16


def test_every_shared_solver_reads_its_values(shared_prototxts) -> None:
    _, solvers = shared_prototxts
    assert len(solvers) >= 200
    for f in solvers:
        pairs = dict(re.findall(r"^(\w+):\s*(.+?)\s*$", f.text, re.MULTILINE))
        s = f.solver
        assert s.base_lr == float(pairs["base_lr"]), f.path
        assert s.lr_policy == pairs["lr_policy"].strip('"')
        assert s.stepsize == int(pairs["stepsize"]) and s.max_iter == int(pairs["max_iter"])
        assert s.gamma == float(pairs["gamma"]) and s.momentum == float(pairs["momentum"])
        assert s.weight_decay == float(pairs["weight_decay"])
        assert list(s.test_iter) == [int(pairs["test_iter"])] and s.test_interval == int(pairs["test_interval"])
        assert s.net == pairs["net"].strip('"') and s.snapshot_prefix == pairs["snapshot_prefix"].strip('"')
        assert s.solver_mode == pairs["solver_mode"]
        assert s.display == int(pairs["display"]) and s.snapshot == int(pairs["snapshot"])


def test_text_round_trip_of_every_shared_file(shared_prototxts) -> None:
    nets, solvers = shared_prototxts
    for f in nets:
        assert parse_text(format_message(f.net), "NetParameter") == f.net, f.path
        if f.raw is not None:
            assert parse_text(format_message(f.raw), "NetParameter") == f.raw, f.path
    for f in solvers:
        assert parse_text(format_message(f.solver), "SolverParameter") == f.solver, f.path


def test_write_prototxt_then_read_net(shared_prototxts, tmp_path: Path) -> None:
    nets, _ = shared_prototxts
    for f in nets[:: max(1, len(nets) // 6)]:
        out = tmp_path / "copy.prototxt"
        write_prototxt(f.net, out)
        assert read_net(out) == f.net, f.path


def test_equality_sees_a_changed_value(shared_prototxts) -> None:
    nets, _ = shared_prototxts
    net = nets[0].net
    changed = parse_text(format_message(net), "NetParameter")
    changed.layer[-1].name = changed.layer[-1].name + "_x"
    assert changed != net


# --- V1 / V2 twins ------------------------------------------------------------------------------------
TWIN_V1 = """
name: "twin"
layers {
  name: "data" type: DATA top: "data" top: "label"
  data_param { source: "train_lmdb" backend: LMDB batch_size: 8 mean_file: "mean.binaryproto" crop_size: 227
               mirror: true scale: 0.5 }
  include: { phase: TRAIN }
}
layers {
  name: "data" type: DATA top: "data" top: "label"
  data_param { source: "val_lmdb" backend: LMDB batch_size: 4 crop_size: 227 }
  transform_param { mean_value: 104 mean_value: 117 mean_value: 123 }
  include: { phase: TEST }
}
layers {
  name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 8 kernel_size: 7 stride: 4
                      weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0 } }
}
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1"
         pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layers { name: "norm1" type: LRN bottom: "pool1" top: "norm1" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layers { name: "fc" type: INNER_PRODUCT bottom: "norm1" top: "fc" param: "shared_fc" param: ""
         blobs_lr: 10 blobs_lr: 20 inner_product_param { num_output: 8 } }
layers { name: "drop" type: DROPOUT bottom: "fc" top: "fc" dropout_param { dropout_ratio: 0.5 } }
layers { name: "acc" type: ACCURACY bottom: "fc" bottom: "label" top: "accuracy" include: { phase: TEST } }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "fc" bottom: "label" top: "loss" loss_weight: 2 }
"""

TWIN_V2 = """
name: "twin"
layer {
  name: "data" type: "Data" top: "data" top: "label"
  transform_param { mean_file: "mean.binaryproto" crop_size: 227 mirror: true scale: 0.5 }
  data_param { source: "train_lmdb" backend: LMDB batch_size: 8 }
  include { phase: TRAIN }
}
layer {
  name: "data" type: "Data" top: "data" top: "label"
  transform_param { crop_size: 227 mean_value: 104 mean_value: 117 mean_value: 123 }
  data_param { source: "val_lmdb" backend: LMDB batch_size: 4 }
  include { phase: TEST }
}
layer {
  name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 8 kernel_size: 7 stride: 4
                      weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0 } }
}
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "fc" type: "InnerProduct" bottom: "norm1" top: "fc"
        param { name: "shared_fc" lr_mult: 10 } param { lr_mult: 20 } inner_product_param { num_output: 8 } }
layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" dropout_param { dropout_ratio: 0.5 } }
layer { name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "accuracy" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" loss_weight: 2 }
"""


def test_v1_net_upgrades_to_its_v2_twin(tmp_path: Path) -> None:
    (tmp_path / "v1.prototxt").write_text(TWIN_V1)
    (tmp_path / "v2.prototxt").write_text(TWIN_V2)
    v1, v2 = read_net(tmp_path / "v1.prototxt"), read_net(tmp_path / "v2.prototxt")
    for old, new in zip(v1.layer, v2.layer):
        assert old == new, (format_message(old), format_message(new))
    assert v1 == v2
    # data_param keeps only what is its own; preprocessing moved to transform_param
    assert not v1.layer[0].data_param.has("mean_file") and not v1.layer[0].data_param.has("crop_size")
    assert v1.layer[0].transform_param.mean_file == "mean.binaryproto"


def test_v2_twin_of_levi_deploy_builds_the_same_net(tmp_path: Path) -> None:
    deploy = require_shared("levi", "age_net_definitions", "deploy.prototxt")
    v1 = read_net(deploy)
    # a V2 file written from the upgrade, re-read as text: the same layers, and the same module
    write_prototxt(v1, tmp_path / "deploy_v2.prototxt")
    assert "layers {" not in (tmp_path / "deploy_v2.prototxt").read_text()
    assert read_net(tmp_path / "deploy_v2.prototxt") == v1
    net_v1, net_v2 = load(deploy), load(tmp_path / "deploy_v2.prototxt")
    assert [(i.name, i.type, i.out_shapes) for i in net_v1.layer_info] == [
        (i.name, i.type, i.out_shapes) for i in net_v2.layer_info
    ]


# --- binary -------------------------------------------------------------------------------------------
def _levi_models() -> list[Path]:
    models = require_shared("levi", "models")
    return [models / "age_net.caffemodel", models / "gender_net.caffemodel"]


def test_levi_caffemodels_round_trip_byte_for_byte() -> None:
    for path in _levi_models():
        raw = path.read_bytes()
        msg = decode_message(raw, "NetParameter", str(path))
        assert msg.has("layers") and not msg.has("layer")  # the V1 layout
        assert encode_message(msg) == raw, path
        assert decode_message(encode_message(msg), "NetParameter") == msg


def test_mean_binaryprotos_round_trip_byte_for_byte() -> None:
    root = require_shared()
    paths = [root / "levi/models/mean.binaryproto", root / "caffe-reference/lmdb_sample/mean.binaryproto",
             *sorted((root / "adience/mean_images").rglob("mean.binaryproto"))[:3]]
    for path in paths:
        raw = path.read_bytes()
        assert encode_message(decode_message(raw, "BlobProto")) == raw, path


TINY = """
name: "tiny"
input: "data"
input_shape { dim: 2 dim: 3 dim: 9 dim: 9 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tiny")
    (folder / "tiny.prototxt").write_text(TINY)
    net = load(folder / "tiny.prototxt")
    init_seeded(net, seed=7)
    out = {"prototxt": folder / "tiny.prototxt"}
    for layout in ("V1", "V2"):
        out[layout] = folder / f"tiny_{layout}.caffemodel"
        save_caffemodel(net, net.net_def, out[layout], layout=layout)
    return out


def test_generated_caffemodels_round_trip(tiny_models: dict[str, Path]) -> None:
    for layout in ("V1", "V2"):
        raw = tiny_models[layout].read_bytes()
        msg = decode_message(raw, "NetParameter")
        assert msg.has("layers" if layout == "V1" else "layer")
        assert encode_message(msg) == raw
        again = decode_message(encode_message(msg), "NetParameter")
        assert again == msg
        # and a changed weight is seen by the comparison
        blob = (again.layers if layout == "V1" else again.layer)[0].blobs[0]
        blob.data = np.array(blob.data) + np.float32(1)
        assert again != msg


def test_v1_and_v2_caffemodels_load_to_identical_tensors(tiny_models: dict[str, Path]) -> None:
    w1, w2 = read_caffemodel(tiny_models["V1"]), read_caffemodel(tiny_models["V2"])
    assert (w1.format, w2.format) == ("V1", "V2")
    assert list(w1.layers) == list(w2.layers) == ["conv1", "fc"]
    # V1 stores 4-D legacy blobs (fc weight 1 x 1 x 5 x 64, bias 1 x 1 x 1 x 5); V2 the true shapes
    # (pool1 is 4 x 4 x 4 = 64: Caffe's pooling rounds up, 7 -> 4)
    assert w1.layers["fc"].blobs[0].shape == (1, 1, 5, 64) and w2.layers["fc"].blobs[0].shape == (5, 64)
    assert w1.layers["fc"].blobs[1].shape == (1, 1, 1, 5) and w2.layers["fc"].blobs[1].shape == (5,)
    assert w1.layers["fc"].legacy_shape == [True, True] and w2.layers["fc"].legacy_shape == [False, False]
    net1 = load(tiny_models["prototxt"], tiny_models["V1"])
    net2 = load(tiny_models["prototxt"], tiny_models["V2"])
    sd1, sd2 = net1.state_dict(), net2.state_dict()
    assert list(sd1) == list(sd2) == ["conv1.weight", "conv1.bias", "fc.weight", "fc.bias"]
    for key in sd1:
        assert torch.equal(sd1[key], sd2[key]), key
    assert float(sd1["fc.weight"].abs().sum()) > 0


def test_levi_v1_caffemodel_and_its_v2_copy_load_to_identical_tensors(tmp_path: Path) -> None:
    age = _levi_models()[0]
    deploy = require_shared("levi", "age_net_definitions", "deploy.prototxt")
    net = load(deploy, age)
    save_caffemodel(net, net.net_def, tmp_path / "age_v2.caffemodel", layout="V2")
    original, copy = read_caffemodel(age), read_caffemodel(tmp_path / "age_v2.caffemodel")
    assert copy.format == "V2" and copy.layers["fc6"].blobs[0].shape == (512, 18816)
    for name, layer in original.layers.items():
        for a, b in zip(layer.blobs, copy.layers[name].blobs):
            assert np.array_equal(a.reshape(-1), b.reshape(-1)), name
    net2 = load(deploy, tmp_path / "age_v2.caffemodel")
    for (key, a), (key2, b) in zip(net.state_dict().items(), net2.state_dict().items()):
        assert key == key2 and torch.equal(a, b), key


def test_packed_floats_are_views_of_the_mapped_file() -> None:
    weights = read_caffemodel(_levi_models()[0])
    for layer in weights.layers.values():
        for blob in layer.blobs:
            assert blob.dtype == np.float32 and not blob.flags.owndata and not blob.flags.writeable
            base = blob
            while isinstance(base, np.ndarray):
                base = base.base
            assert isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)
    # decode_message on bytes: the array shares the bytes' memory
    raw = _levi_models()[0].read_bytes()
    msg = decode_message(raw, "NetParameter")
    data = msg.layers[1].blobs[0].data
    assert isinstance(data, np.ndarray) and np.shares_memory(data, np.frombuffer(raw, np.uint8))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field, written by hand (not by the encoder under test)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def test_non_packed_repeated_floats_decode(tmp_path: Path) -> None:
    values = np.array([1.5, -2.0, 3e10, np.inf, 0.0, -1e-30], np.float32)
    # BlobProto.data (field 5) written element by element (wire type 5), as old protobuf writers may
    unpacked = b"".join(b"\x2d" + struct.pack("<f", v) for v in values)
    shape = encode_message(Message("BlobProto", shape=Message("BlobShape", dim=[2, 3])))
    blob = decode_message(shape + unpacked, "BlobProto")
    assert np.array_equal(np.asarray(blob.data, np.float32), values)
    # a packed run followed by unpacked elements: one list, in order
    packed = b"\x2a" + bytes([8]) + values[:2].tobytes()
    blob = decode_message(packed + unpacked, "BlobProto")
    assert np.array_equal(np.asarray(blob.data, np.float32), np.concatenate([values[:2], values]))
    # a non-packed repeated float with a two-byte tag (V1LayerParameter.loss_weight = 35)
    layer = Message("V1LayerParameter", name="l", loss_weight=[0.5, 1.0, 2.0], blobs_lr=[1.0, 2.0])
    again = decode_message(encode_message(layer), "V1LayerParameter")
    assert list(again.loss_weight) == [0.5, 1.0, 2.0] and list(again.blobs_lr) == [1.0, 2.0]
    # the same field written packed (parsers must accept both forms)
    packed_lr = b"\x3a\x08" + np.array([1.0, 2.0], np.float32).tobytes()
    assert list(decode_message(packed_lr, "V1LayerParameter").blobs_lr) == [1.0, 2.0]
    # and a caffemodel whose blob is stored unpacked reads to the right array
    layer_msg = _len_field(1, b"l") + _len_field(2, b"InnerProduct") + _len_field(7, shape + unpacked)  # blobs
    net_msg = _len_field(1, b"n") + _len_field(100, layer_msg)  # NetParameter.layer = 100
    (tmp_path / "unpacked.caffemodel").write_bytes(net_msg)
    weights = read_caffemodel(tmp_path / "unpacked.caffemodel")
    assert np.array_equal(weights.layers["l"].blobs[0], values.reshape(2, 3))


@pytest.mark.slow
def test_caffemodel_over_512_mib_reads(tmp_path: Path) -> None:
    """Caffe and OpenCV refuse caffemodels over 512 MiB (protobuf's limit); we read them."""
    n_out, n_in = 4096, 33000  # 540.7 MB of weights
    weight = np.empty((n_out, n_in), np.float32)
    weight[:] = np.arange(n_in, dtype=np.float32) * np.float32(1e-3)
    weight += np.arange(n_out, dtype=np.float32)[:, None]
    net = Message("NetParameter", name="big")
    layer = net.add("layer", name="fc_big", type="InnerProduct", bottom=["data"], top=["fc_big"])
    layer.blobs = [array_to_blob(weight), array_to_blob(np.arange(n_out, dtype=np.float32))]
    path = tmp_path / "big.caffemodel"
    start = time.perf_counter()
    size = write_message_binary(net, path)
    assert size == path.stat().st_size > 512 * 2**20
    del net, layer
    weights = read_caffemodel(path)
    blobs = weights.layers["fc_big"].blobs
    assert blobs[0].shape == (n_out, n_in) and np.array_equal(blobs[0], weight)
    assert np.array_equal(blobs[1], np.arange(n_out, dtype=np.float32))
    elapsed = time.perf_counter() - start
    del weights, blobs, weight
    gc.collect()
    path.unlink()
    assert elapsed < 60, f"writing and reading 540 MB took {elapsed:.1f} s"


# --- text format corner cases -------------------------------------------------------------------------
def _layer(text: str) -> Message:
    return parse_text(text, "LayerParameter", "corner.prototxt")


def test_comments_everywhere() -> None:
    layer = _layer('# head\nname: "a" # after a value\n# between\ntop: "b"#glued\n  # indented\ntop: "c" # no newline')
    assert layer.name == "a" and list(layer.top) == ["b", "c"]
    assert _layer('name: "# not a comment"').name == "# not a comment"


def test_angle_bracket_messages_and_colon_before_brace() -> None:
    layer = _layer('name: "a" convolution_param < num_output: 3 weight_filler: < type: "xavier" > >\n'
                   "include: { phase: TEST }")
    assert layer.convolution_param.num_output == 3 and layer.convolution_param.weight_filler.type == "xavier"
    assert layer.include[0].phase == "TEST"
    with pytest.raises(PrototxtSyntaxError):
        _layer("convolution_param < num_output: 3 }")


def test_list_syntax() -> None:
    layer = _layer('top: ["a", "b"] bottom: [] input_param { shape: [{ dim: [1, 3] }, { dim: 7 }] }')
    assert list(layer.top) == ["a", "b"] and not layer.has("bottom")
    assert [list(s.dim) for s in layer.input_param.shape] == [[1, 3], [7]]
    with pytest.raises(PrototxtSyntaxError, match="not repeated"):
        _layer('name: ["a"]')


def test_adjacent_strings_and_escapes() -> None:
    assert _layer('name: "ab" \'cd\'\n  "ef"').name == "abcdef"
    layer = _layer(r'name: "q\"s\'b\\n\n t\t o\101\60 x\x41\x7a"')
    assert layer.name == "q\"s'b\\n\n t\t oA0 xAz"
    assert _layer(r'name: "caf\303\251"').name == "café"
    assert _layer("name: 'single \"quoted\"'").name == 'single "quoted"'
    # and our writer escapes what it must, so these come back
    for name in ['a"b', "back\\slash", "new\nline", "tab\there", "café", "\x01\x7f"]:
        msg = Message("LayerParameter", name=name)
        assert parse_text(format_message(msg), "LayerParameter").name == name


def test_integer_forms() -> None:
    p = parse_text("num_output: 0x10 group: 010 kernel_size: 0 axis: -0x2 pad: 0XfF", "ConvolutionParameter")
    assert (p.num_output, p.group, list(p.kernel_size), p.axis, list(p.pad)) == (16, 8, [0], -2, [255])
    assert parse_text("num_output: +7", "ConvolutionParameter").num_output == 7


def test_float_forms() -> None:
    def alpha(text: str) -> float:
        return parse_text(f"alpha: {text}", "LRNParameter").alpha

    assert alpha("1.5f") == 1.5 and alpha("1e-3F") == pytest.approx(1e-3) and alpha(".5") == 0.5
    assert alpha("5.") == 5.0 and alpha("-2") == -2.0 and alpha("3E2") == 300.0 and alpha("0x10") == 16.0
    assert alpha("inf") == float("inf") and alpha("-inf") == float("-inf") and alpha("Infinity") == float("inf")
    assert alpha("-Infinity") == float("-inf")
    assert np.isnan(alpha("nan")) and np.isnan(alpha("NaN"))
    # the writer's forms read back
    for value in (float("inf"), float("-inf"), 1e-30, 123456789.0, 0.1, -0.0):
        msg = Message("LRNParameter", alpha=value)
        assert parse_text(format_message(msg), "LRNParameter") == msg, format_message(msg)


def test_enum_by_name_or_number_and_bool_forms() -> None:
    assert parse_text("pool: 1", "PoolingParameter").pool == "AVE"
    assert parse_text("pool: STOCHASTIC", "PoolingParameter").pool == "STOCHASTIC"
    for text, value in (("true", True), ("True", True), ("t", True), ("1", True),
                        ("false", False), ("False", False), ("f", False), ("0", False)):
        assert parse_text(f"bias_term: {text}", "ConvolutionParameter").bias_term is value


def test_separators() -> None:
    layer = _layer('name: "a"; type: "ReLU", bottom: "x";top: "x" , include { phase: TEST; };')
    assert (layer.name, layer.type, list(layer.bottom), list(layer.top)) == ("a", "ReLU", ["x"], ["x"])
    assert layer.include[0].phase == "TEST"


def test_empty_and_whitespace_texts_parse_to_empty_messages_but_files_must_say_something(tmp_path: Path) -> None:
    assert not any(True for _ in parse_text(" \n# only a comment\n", "NetParameter").set_fields())
    (tmp_path / "empty.prototxt").write_text("# nothing here\n\n")
    with pytest.raises(FileFormatError, match="empty"):
        read_net(tmp_path / "empty.prototxt")


def test_solver_type_upgrade(tmp_path: Path) -> None:
    (tmp_path / "s.prototxt").write_text('net: "n"\nbase_lr: 0.01\nsolver_type: ADAM\n')
    solver = read_solver(tmp_path / "s.prototxt")
    assert solver.type == "Adam" and not solver.has("solver_type")
    (tmp_path / "s2.prototxt").write_text('net: "n"\nsolver_type: ADAM\ntype: "SGD"\n')
    with pytest.raises(FileFormatError, match="disagree"):
        read_solver(tmp_path / "s2.prototxt")


# --- property: random messages round-trip through text and binary --------------------------------------
_RANGES = {
    "int32": (-(2**31), 2**31 - 1), "sint32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1), "sint64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1),
}


def _scalar_strategy(spec: FieldSpec) -> st.SearchStrategy:
    if spec.kind == "enum":
        assert spec.enum is not None
        return st.sampled_from(sorted(spec.enum.values))
    if spec.type in INT_TYPES:
        lo, hi = _RANGES[spec.type]
        return st.integers(lo, hi)
    if spec.type == "float":
        return st.floats(width=32, allow_nan=False)
    if spec.type == "double":
        return st.floats(allow_nan=False)
    if spec.type == "bool":
        return st.booleans()
    if spec.type == "string":
        return st.text(max_size=12)
    return st.binary(max_size=12)


def _message_strategy(mtype: MessageType, depth: int) -> st.SearchStrategy:
    specs = [s for s in mtype.fields.values() if s.kind != "message" or depth > 0]

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        msg = Message(mtype)
        chosen = draw(st.lists(st.sampled_from(specs), max_size=5, unique_by=lambda s: s.name)) if specs else []
        for spec in chosen:
            if spec.kind == "message":
                assert spec.message is not None
                inner = _message_strategy(spec.message, depth - 1)
                value = draw(st.lists(inner, min_size=1, max_size=2)) if spec.repeated else draw(inner)
            else:
                scalar = _scalar_strategy(spec)
                value = draw(st.lists(scalar, min_size=1, max_size=4)) if spec.repeated else draw(scalar)
            setattr(msg, spec.name, value)
        return msg

    return build()


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["LayerParameter", "SolverParameter", "BlobProto", "V1LayerParameter", "NetParameter"])
       .flatmap(lambda name: _message_strategy(caffe_schema()[name], depth=2)))
def test_random_messages_round_trip(msg: Message) -> None:
    text = format_message(msg)
    assert parse_text(text, msg.mtype) == msg, text
    assert decode_message(encode_message(msg), msg.mtype) == msg


def test_binaryproto_reads_as_float32_array() -> None:
    mean = read_blobproto(require_shared("levi", "models", "mean.binaryproto"))
    assert mean.shape == (1, 3, 256, 256) and mean.dtype == np.float32 and mean.flags.owndata
    assert 0 < float(mean.min()) and float(mean.max()) < 255
