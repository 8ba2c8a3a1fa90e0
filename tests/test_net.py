"""CaffeNet structure: phases, inputs and outputs, in-place blob semantics, module naming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from agegender.caffe2torch import CaffeNet, NetState, build_ir, init_seeded, load
from agegender.errors import NetDefinitionError, UnsupportedLayerError
from agegender.prototxt import parse_text, upgrade_net

from .conftest import require_shared

TINY = """
name: "tiny"
input: "data"
input_shape { dim: 1 dim: 3 dim: 9 dim: 9 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc.out" type: "InnerProduct" bottom: "conv1" top: "fc"
        inner_product_param { num_output: 3 } }
layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" include { phase: TRAIN } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def tiny_net(phase: str = "TEST", text: str = TINY) -> CaffeNet:
    net_def = upgrade_net(parse_text(text, "NetParameter"))
    net = CaffeNet(build_ir(net_def, "tiny.prototxt", NetState(phase=phase)))
    init_seeded(net, seed=3)
    return net


def test_inputs_outputs_and_state_dict_keys() -> None:
    net = tiny_net()
    assert net.input_names == ["data"]
    assert net.output_names == ["prob"]
    # '.' is not allowed in torch module names: it becomes '_'
    assert set(net.state_dict()) == {"conv1.weight", "conv1.bias", "fc_out.weight", "fc_out.bias"}
    assert net.blob_shapes["conv1"] == (1, 4, 7, 7)
    assert net.blob_shapes["fc"] == (1, 3)
    assert not net.training  # TEST nets start in eval mode


@torch.no_grad()
def test_in_place_blobs_hold_the_value_after_the_in_place_layer() -> None:
    net = tiny_net()
    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    blobs = net(x, outputs=["conv1", "fc", "prob"])
    assert float(blobs["conv1"].min()) >= 0.0  # conv1 as Caffe holds it: after relu1
    _, layer_outputs = net.run(x, record_layers=True)
    own = layer_outputs["conv1"][0]
    assert float(own.min()) < 0.0  # the convolution's own output, before relu1
    assert torch.equal(torch.relu(own), blobs["conv1"])
    assert torch.allclose(blobs["prob"], torch.softmax(blobs["fc"], dim=1))
    assert torch.equal(net(x), blobs["prob"])  # batch size is free at run time


def test_phase_filtering() -> None:
    assert "drop" not in [info.name for info in tiny_net("TEST").layer_info]
    train = tiny_net("TRAIN")
    assert "drop" in [info.name for info in train.layer_info]
    assert train.training


def test_unknown_blob_request_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="no blob named 'nope'"):
        tiny_net()(torch.zeros(1, 3, 9, 9), outputs=["nope"])


def test_unknown_layer_type_names_layer_type_and_file() -> None:
    text = TINY.replace('type: "Softmax"', 'type: "Frobnicate"')
    with pytest.raises(UnsupportedLayerError) as info:
        tiny_net(text=text)
    err = info.value
    assert err.layer == "prob" and err.path == "tiny.prototxt" and "Frobnicate" in str(err)
    assert err.line == 11  # TINY starts with a newline


def test_missing_bottom_is_named() -> None:
    text = TINY.replace('bottom: "fc" top: "prob"', 'bottom: "fc9" top: "prob"')
    with pytest.raises(NetDefinitionError, match="bottom blob 'fc9'") as info:
        tiny_net(text=text)
    assert info.value.layer == "prob"


def test_input_shape_override_and_unknown_override() -> None:
    net_def = upgrade_net(parse_text(TINY, "NetParameter"))
    net = CaffeNet(build_ir(net_def), {"data": (5, 3, 11, 11)})
    assert net.blob_shapes["conv1"] == (5, 4, 9, 9)
    with pytest.raises(Exception, match="names no input"):
        CaffeNet(build_ir(net_def), {"image": (1, 3, 9, 9)})


def _model_dirs() -> list[Path]:
    root = require_shared("adience", "model_definitions")
    return sorted(p for p in root.iterdir() if p.is_dir())


@pytest.mark.shared
def test_every_train_val_builds_in_both_phases() -> None:
    """Train_val files: the TEST phase has the test Data layer, accuracy (and loss where included); the TRAIN
    phase has the train Data layer and the loss. Shapes are inferred everywhere."""
    count = 0
    for folder in _model_dirs():
        files = sorted(folder.glob("*test_fold_is_*.prototxt"))
        files = [f for f in files if "solver" not in f.name]
        assert files, folder
        for path in files[:1]:  # the five folds differ only in data paths
            for phase in ("TEST", "TRAIN"):
                net = load(path, phase=phase)
                types = {info.type for info in net.layer_info}
                assert "Data" in types, path
                assert net.input_names[:2] == ["data", "label"], (path, net.input_names)
                if phase == "TRAIN":
                    assert "SoftmaxWithLoss" in types, path
                else:
                    assert "Accuracy" in types, path
                scalar_tops = [top for info in net.layer_info if info.type in ("Accuracy", "SoftmaxWithLoss")
                               for top in info.tops]
                named = [top for top in scalar_tops if not top.endswith("(automatic)")]
                assert scalar_tops and set(named) <= set(net.output_names), path
                for name in scalar_tops:
                    assert net.blob_shapes[name] == (), (path, name)  # accuracy and loss are scalars
                count += 1
    assert count == 2 * 38


@pytest.mark.shared
@torch.no_grad()
def test_train_val_test_phase_runs_with_label() -> None:
    path = require_shared("adience", "model_definitions", "age_net_definitions", "train_val_test_fold_is_0.prototxt")
    net = load(path, phase="TEST", input_shapes={"data": (4, 3, 227, 227)})
    init_seeded(net, seed=0)
    data = torch.from_numpy(np.random.default_rng(0).normal(0, 50, (4, 3, 227, 227)).astype(np.float32))
    label = torch.tensor([0.0, 1.0, 2.0, 7.0])
    out = net(data, label)
    values = out if isinstance(out, tuple) else (out,)
    for value in values:
        assert value.shape == () and torch.isfinite(value)
    accuracy = dict(zip(net.output_names, values))["accuracy"]
    probs_argmax = net(data, label, outputs=["fc8"])["fc8"].argmax(1)
    assert float(accuracy) == pytest.approx(float((probs_argmax == label.long()).float().mean()))


def test_deepcopy_and_pickle_of_a_net() -> None:
    import copy
    import pickle

    net = tiny_net()
    twin = copy.deepcopy(net)
    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(net(x), twin(x))
    net_def = upgrade_net(parse_text(TINY, "NetParameter"))
    assert pickle.loads(pickle.dumps(net_def)) == net_def


@torch.no_grad()
def test_channels_last_gives_the_same_values() -> None:
    net = tiny_net()
    x = torch.randn(3, 3, 9, 9, generator=torch.Generator().manual_seed(2))
    expected = net(x, outputs=["conv1", "prob"])
    fast = copy_net = tiny_net().to_channels_last()
    got = copy_net(x, outputs=["conv1", "prob"])
    assert fast.channels_last and got["conv1"].is_contiguous(memory_format=torch.channels_last)
    for name in expected:
        assert torch.allclose(got[name], expected[name], rtol=1e-5, atol=1e-6), name


def test_safetensors_files_of_the_same_net_are_identical(tmp_path: Path) -> None:
    """safetensors writes its metadata in hash-map order; ours sorts it, so a conversion is reproducible."""
    from safetensors import safe_open

    from agegender.card import load_safetensors, save_safetensors

    net = tiny_net()
    metadata = {name: str(i) for i, name in enumerate("zyxwvutsrq")}
    digests = {save_safetensors(net, tmp_path / f"{i}.safetensors", metadata) for i in range(6)}
    assert len(digests) == 1
    with safe_open(str(tmp_path / "0.safetensors"), "pt") as handle:
        stored = handle.metadata()
    assert stored["z"] == "0" and stored["net"] == "tiny" and stored["format"] == "pt"
    other = tiny_net()
    torch.nn.init.zeros_(other.conv1.weight)
    load_safetensors(other, tmp_path / "0.safetensors")
    x = torch.randn(1, 3, 9, 9, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(other(x), net(x))


INPLACE = """
name: "inplace"
input: "data"
input_shape { dim: 2 dim: 3 dim: 8 dim: 8 }
layer { name: "relu0" type: "ReLU" bottom: "data" top: "data" }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "drop1" type: "Dropout" bottom: "conv1" top: "conv1" }
layer { name: "relu2" type: "ReLU" bottom: "conv1" top: "conv1" relu_param { negative_slope: 0.1 } }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu3" type: "ReLU" bottom: "conv2" top: "conv2" relu_param { negative_slope: 0.1 } }
layer { name: "relu4" type: "ReLU" bottom: "conv2" top: "relu4" }
"""


def test_in_place_relus_at_inference_overwrite_only_fresh_blobs() -> None:
    """Without autograd, a ReLU Caffe runs in place writes over its bottom when that bottom is a new tensor
    of a Convolution (and the like): same values as the out-of-place path, the caller's input untouched."""
    net = tiny_net(text=INPLACE)
    steps = {net._plan[i][0] for i in net._relu_in_place}
    assert steps == {"relu1", "relu3"}  # not after the input, not after Dropout (identity), not out of place
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    given = x.clone()
    with torch.enable_grad():
        reference, recorded = net.run(x, record_layers=True)
    with torch.inference_mode():
        fast, _ = net.run(x)
    assert torch.equal(x, given)
    assert set(fast) == set(reference)
    for name in reference:
        assert torch.equal(fast[name], reference[name].detach()), name
    # the layers' own outputs are still recorded before later in-place layers change them
    assert (recorded["conv1"][0] < 0).any() and (reference["conv1"] >= 0).all()
