"""Parity with OpenCV dnn: the parity module itself (on a tiny net), then all 38 Adience deploy files.

For every deploy file in shared/adience/model_definitions, seeded weights are written as real
caffemodels in both layouts (V1 ``layers {}`` with 4-D blobs, and V2 ``layer {}``), read back with
``caffe2torch.load`` and compared layer by layer with OpenCV dnn reading the same two files.

Several deploys are byte-identical (the _mixed/_unaligned and fromscratch/finetuning variants): the
seeded weights and caffemodels are made once per distinct file content (the files are ordered so that
identical ones run back to back), but every file is loaded and compared on its own.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from agegender.caffe2torch import CaffeNet, NetState, build_ir, init_seeded, load, save_caffemodel
from agegender.caffe2torch.parity import (
    BlobParity,
    ParityReport,
    compare_with_blobs,
    compare_with_opencv,
    seeded_inputs,
)
from agegender.errors import AgegenderError, MissingFileError, ParityError
from agegender.prototxt import parse_text, read_caffemodel, upgrade_net, write_prototxt

from .conftest import require_shared, shared_root
from .helpers import (
    LAYOUTS, SeededModel, assert_state_dicts_equal, deploy_files, file_digest, macs_per_image,
    write_seeded_caffemodels,
)

TOLERANCE = 1e-4

# --- the parity module on a tiny net (no shared files needed) ---------------------------------------------
TINY = """
name: "tiny"
input: "data"
input_shape { dim: 1 dim: 3 dim: 12 dim: 12 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 6 kernel_size: 3 stride: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc.out" type: "InnerProduct" bottom: "pool1" top: "fc"
        inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""
TINY_LAYERS = ["conv1", "relu1", "pool1", "fc.out", "prob"]


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[CaffeNet, Path, Path]:
    """A seeded tiny net with its prototxt and a V2 caffemodel of its weights."""
    prototxt = tmp_path / "tiny.prototxt"
    prototxt.write_text(TINY)
    net = load(prototxt)
    init_seeded(net, seed=5)
    caffemodel = tmp_path / "tiny.caffemodel"
    save_caffemodel(net, net.net_def, caffemodel, layout="V2")
    return net, prototxt, caffemodel


def test_seeded_inputs_are_deterministic_and_shaped() -> None:
    net = CaffeNet(build_ir(upgrade_net(parse_text(TINY, "NetParameter")), "tiny", NetState()))
    a = seeded_inputs(net, batch=3, seed=1)
    assert list(a) == ["data"] and a["data"].shape == (3, 3, 12, 12) and a["data"].dtype == np.float32
    assert np.array_equal(a["data"], seeded_inputs(net, batch=3, seed=1)["data"])
    assert not np.array_equal(a["data"], seeded_inputs(net, batch=3, seed=2)["data"])
    assert 40 < float(a["data"].std()) < 60  # scale 50
    assert float(seeded_inputs(net, batch=3, seed=1, scale=1.0)["data"].std()) < 2


def test_opencv_parity_compares_each_layers_own_output(tiny) -> None:
    net, prototxt, caffemodel = tiny
    inputs = seeded_inputs(net, batch=2, seed=0)
    report = compare_with_opencv(net, prototxt, caffemodel, inputs, tolerance=TOLERANCE)
    assert report.passed, report.summary()
    assert report.reference.startswith("opencv-dnn ")
    assert [b.name for b in report.blobs] == TINY_LAYERS  # Caffe layer names, net order ('.' kept)
    assert report.skipped == [] and report.first_failure is None and report.argmax_equal is True
    assert report.blob("fc.out").shape == (2, 5)
    # conv1 is compared before relu1 overwrites it: its own output has negatives, so matching it
    # within 1e-4 of its scale means OpenCV's conv1 was the pre-ReLU value too
    with torch.no_grad():
        _, own = net.run(torch.from_numpy(inputs["data"]), record_layers=True)
    assert float(own["conv1"][0].min()) < -0.1
    assert report.blob("conv1").ok
    summary = report.summary()
    assert "\n" not in summary and summary.startswith("PASS") and "argmax equal" in summary
    data = json.loads(json.dumps(report.as_dict()))
    assert data["passed"] is True and [b["name"] for b in data["blobs"]] == TINY_LAYERS


def test_opencv_parity_names_the_first_failing_layer(tiny) -> None:
    net, prototxt, caffemodel = tiny
    with torch.no_grad():
        net.get_submodule("fc_out").weight[0, :3] += 0.5
    report = compare_with_opencv(net, prototxt, caffemodel, seeded_inputs(net), tolerance=TOLERANCE)
    assert not report.passed
    assert report.first_failure == "fc.out"
    assert [b.name for b in report.blobs if not b.ok][0] == "fc.out"
    assert all(b.ok for b in report.blobs[:3])  # conv1, relu1, pool1 untouched
    assert report.blob("fc.out").max_rel > TOLERANCE
    assert report.summary().startswith("FAIL") and "fc.out" in report.summary()
    assert report.as_dict()["first_failure"] == "fc.out"


def test_opencv_parity_wraps_reader_errors_naming_the_file(tiny, tmp_path: Path) -> None:
    net, prototxt, caffemodel = tiny
    inputs = seeded_inputs(net)
    with pytest.raises(MissingFileError) as missing:
        compare_with_opencv(net, prototxt, tmp_path / "nope.caffemodel", inputs)
    assert "nope.caffemodel" in str(missing.value)
    garbage = tmp_path / "garbage.caffemodel"
    garbage.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ParityError) as bad:
        compare_with_opencv(net, prototxt, garbage, inputs)
    assert "garbage.caffemodel" in str(bad.value) and bad.value.path == str(prototxt)
    with pytest.raises(ParityError):  # OpenCV refuses an input of the wrong shape
        compare_with_opencv(net, prototxt, caffemodel, {"data": np.zeros((1, 3, 5, 5), np.float32)})
    with pytest.raises(AgegenderError, match="no input"):
        compare_with_opencv(net, prototxt, caffemodel, {"image": inputs["data"]})
    with pytest.raises(AgegenderError, match="tolerance"):
        compare_with_opencv(net, prototxt, caffemodel, inputs, tolerance=0.0)


def test_blob_parity_compares_blobs_after_in_place_layers(tiny) -> None:
    net, _, _ = tiny
    inputs = seeded_inputs(net, batch=2, seed=3)
    with torch.no_grad():
        held = {k: v.numpy().copy() for k, v in net(torch.from_numpy(inputs["data"]),
                                                      outputs=["data", "conv1", "pool1", "fc", "prob"]).items()}
    assert float(held["conv1"].min()) == 0.0  # conv1 as Caffe holds it: after relu1
    reference = dict(held, label=np.zeros(2, np.float32))
    report = compare_with_blobs(net, reference, inputs, reference_name="mine")
    assert report.passed and report.reference == "mine"
    assert [b.name for b in report.blobs] == ["data", "conv1", "pool1", "fc", "prob"]
    assert all(b.max_abs == 0.0 for b in report.blobs)
    assert [s.split()[0] for s in report.skipped] == ["label"]
    # inputs missing from ``inputs`` are taken from the reference
    assert compare_with_blobs(net, reference, {}).passed

    # the pre-ReLU value is not what Caffe holds in conv1: it must fail there first
    with torch.no_grad():
        _, own = net.run(torch.from_numpy(inputs["data"]), record_layers=True)
    wrong = dict(reference, conv1=own["conv1"][0].numpy())
    failed = compare_with_blobs(net, wrong, inputs)
    assert not failed.passed and failed.first_failure == "conv1"
    assert [b.name for b in failed.blobs if not b.ok] == ["conv1"]

    # probabilities within tolerance but with the winning class swapped: argmax differs
    swapped = dict(reference, prob=held["prob"][:, ::-1].copy())
    assert compare_with_blobs(net, swapped, inputs, tolerance=10.0).argmax_equal is False
    assert not compare_with_blobs(net, swapped, inputs, tolerance=10.0).passed


def test_blob_parity_error_measures() -> None:
    zeros = np.zeros((2, 3), np.float32)
    report = ParityReport("x", 1e-4, [BlobParity("a", (2, 3), 0.0, 0.0, True)], None, None)
    assert report.passed and report.argmax_equal is None
    assert not ParityReport("x", 1e-4, [], None, None).passed  # nothing compared is no pass
    from agegender.caffe2torch.parity import _blob_parity  # the measure itself

    assert _blob_parity("z", zeros, zeros, 1e-4).ok  # an all-zero reference: no division by zero
    ref = np.array([[10.0, -20.0, 5.0]], np.float32)
    entry = _blob_parity("r", ref + np.float32(0.001), ref, 1e-4)
    assert math.isclose(entry.max_rel, 0.001 / 20, rel_tol=1e-3) and entry.ok
    assert not _blob_parity("r", ref + np.float32(0.01), ref, 1e-4).ok
    assert not _blob_parity("n", np.full((1, 3), np.nan, np.float32), ref, 1e-4).ok
    bad_shape = _blob_parity("s", np.zeros((1, 4), np.float32), ref, 1e-4)
    assert not bad_shape.ok and math.isinf(bad_shape.max_rel)
    assert json.dumps(ParityReport("x", 1e-4, [bad_shape], None, "s").as_dict())  # inf as a string


# --- all 38 Adience deploy files ------------------------------------------------------------------------------
DEFINITIONS = shared_root() / "adience" / "model_definitions"
N_DEPLOYS = 38
HEAVY_MACS = 5e9  # per image; VGG16 is ~15.5 G multiply-adds, GoogLeNet ~1.6 G, CaffeNet ~0.7 G


DEPLOYS = deploy_files(DEFINITIONS)


class SeededCache:
    """Seeded weights and caffemodels per distinct deploy content, and the nets loaded from them for
    the current file. Holds one architecture at a time (VGG16's caffemodels are 537 MB each)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.digest: str | None = None
        self.model: SeededModel | None = None
        self.loaded: dict[tuple[str, str], CaffeNet] = {}

    def seeded(self, deploy: Path) -> SeededModel:
        digest = file_digest(deploy)
        if digest != self.digest:
            self.clear()
            self.model = write_seeded_caffemodels(deploy, self.folder / digest[:12], seed=int(digest[:6], 16) % 1000)
            self.digest = digest
        assert self.model is not None
        return self.model

    def net(self, deploy: Path, layout: str) -> CaffeNet:
        """``caffe2torch.load(deploy, <seeded caffemodel in layout>)``, once per file and layout."""
        key = (str(deploy), layout)
        if key not in self.loaded:
            self.loaded = {k: v for k, v in self.loaded.items() if k[0] == str(deploy)}
            self.loaded[key] = load(deploy, self.seeded(deploy).caffemodels[layout])
        return self.loaded[key]

    def clear(self) -> None:
        if self.model is not None:
            self.model.remove_files()
        self.model, self.digest, self.loaded = None, None, {}


@pytest.fixture(scope="module")
def seeded_cache(tmp_path_factory: pytest.TempPathFactory):
    cache = SeededCache(tmp_path_factory.mktemp("seeded_caffemodels"))
    yield cache
    cache.clear()


@pytest.fixture(scope="module", params=DEPLOYS or [None], ids=[p.parent.name for p in DEPLOYS] or ["absent"])
def deploy(request: pytest.FixtureRequest) -> Path:
    """Each Adience deploy file (module-scoped, so that all tests of one file run together)."""
    require_shared("adience", "model_definitions")
    assert request.param is not None
    return request.param


@pytest.mark.shared
def test_all_38_deploy_files_are_found() -> None:
    require_shared("adience", "model_definitions")
    assert len(DEPLOYS) == N_DEPLOYS
    assert len({file_digest(p) for p in DEPLOYS}) == 8  # CaffeNet, Levi, GoogLeNet, VGG16 x age/gender


@pytest.mark.shared
def test_v1_and_v2_caffemodels_load_to_identical_state_dicts(deploy: Path, seeded_cache: SeededCache) -> None:
    model = seeded_cache.seeded(deploy)
    v1, v2 = seeded_cache.net(deploy, "V1"), seeded_cache.net(deploy, "V2")
    assert_state_dicts_equal(v1, v2)
    assert_state_dicts_equal(v1, model.net)  # and both are exactly the weights that were written
    assert v1.weights_report is not None and not v1.weights_report.missing and not v1.weights_report.extra
    assert v1.weights_report.loaded == [info.name for info in v1.parameter_layers()]
    # the files really are the two layouts (checked once per written pair: identical files share it)
    if not model.layouts_checked:
        stored_v1, stored_v2 = (read_caffemodel(model.caffemodels[layout]) for layout in LAYOUTS)
        assert (stored_v1.format, stored_v2.format) == ("V1", "V2")
        assert all(all(blobs.legacy_shape) for blobs in stored_v1.layers.values())
        assert not any(any(blobs.legacy_shape) for blobs in stored_v2.layers.values())
        model.layouts_checked = True


@pytest.mark.shared
@pytest.mark.parametrize("layout", LAYOUTS)
def test_deploy_matches_opencv(deploy: Path, layout: str, seeded_cache: SeededCache) -> None:
    model = seeded_cache.seeded(deploy)
    net = seeded_cache.net(deploy, layout)
    caffemodel = model.caffemodels[layout]
    compute_layers = [info for info in net.layer_info if info.module_name is not None]
    logits = [info.name for info in net.layer_info if info.type == "InnerProduct"][-1]
    # Identical files share their caffemodels: the first file of each content gets both seeds, the
    # others one seed each, alternating over files and layouts; VGG16 (~15.5 GMAC/image) runs 1 image.
    same = [p for p in DEPLOYS if file_digest(p) == seeded_cache.digest]
    index = same.index(deploy)
    heavy = macs_per_image(net) > HEAVY_MACS
    if index == 0 and not heavy:
        runs = [(2, 0), (2, 1)]
    else:
        runs = [(1 if heavy else 2, (index + LAYOUTS.index(layout)) % 2)]
    for batch, seed in runs:
        report = compare_with_opencv(net, deploy, caffemodel, seeded_inputs(net, batch=batch, seed=seed),
                                     tolerance=TOLERANCE)
        context = f"{deploy.parent.name} {layout} seed {seed}: {report.summary()}"
        assert report.passed, context
        assert report.skipped == [], context  # OpenCV exposes every layer of these nets
        assert [b.name for b in report.blobs] == [info.name for info in compute_layers], context
        assert report.blob(logits).max_rel <= TOLERANCE and report.blob(logits).shape[0] == batch, context
        assert report.argmax_equal is True, context


@pytest.mark.shared
def test_v1_deploy_text_round_trips_through_opencv(tmp_path: Path) -> None:
    """A V1 (``layers {}``) deploy rewritten by us as V2 text still matches OpenCV reading the original."""
    deploy = require_shared("levi", "age_net_definitions", "deploy.prototxt")
    model = write_seeded_caffemodels(deploy, tmp_path, seed=11, layouts=("V2",))
    rewritten = tmp_path / "deploy_v2.prototxt"
    write_prototxt(model.net.net_def, rewritten)
    assert "layers {" in deploy.read_text() and "layers {" not in rewritten.read_text()
    net = load(rewritten, model.caffemodels["V2"])
    report = compare_with_opencv(net, deploy, model.caffemodels["V2"], seeded_inputs(net, batch=2, seed=4))
    assert report.passed, report.summary()
