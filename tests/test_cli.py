"""The ``agegender`` CLI end to end: convert (Levi's real files), inspect with FLOPs, blobs round trip,
zoo, fetch, and the error exits (one stderr line, the error class's exit code, no traceback)."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from agegender.caffe2torch import load
from agegender.card import load_safetensors
from agegender.cli import app
from agegender.prototxt import read_caffemodel

from .conftest import REPO, require_shared

_RUNNER_KW = {"mix_stderr": False} if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters else {}


def run_cli(*args: str, env: dict[str, str] | None = None):
    """Invoke the CLI in-process; bugs (non-AgegenderError exceptions) still surface as exit 70 lines."""
    return CliRunner(**_RUNNER_KW).invoke(app, [str(a) for a in args], env=env)


def _levi() -> tuple[Path, Path, Path, Path]:
    levi = require_shared("levi")
    return (levi, levi / "age_net_definitions" / "deploy.prototxt", levi / "models" / "age_net.caffemodel",
            levi / "models" / "mean.binaryproto")


def _error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("agegender: error: ")
    return lines[0]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    _, deploy, weights, mean = _levi()
    out = tmp_path_factory.mktemp("convert") / "levi-age"
    result = run_cli("convert", "--prototxt", deploy, "--weights", weights, "--mean", mean, "--out", out)
    assert result.exit_code == 0, result.stderr
    return out, result


# --- convert --------------------------------------------------------------------------------------------
def test_convert_writes_safetensors_with_caffe_names_and_values(converted) -> None:
    out, _ = converted
    _, deploy, weights, _ = _levi()
    from safetensors.torch import load_file

    stored = load_file(str(out / "model.safetensors"))
    caffe = read_caffemodel(weights)
    expected_keys = {f"{layer}.{attr}" for layer in ("conv1", "conv2", "conv3", "fc6", "fc7", "fc8")
                     for attr in ("weight", "bias")}
    assert set(stored) == expected_keys
    for layer in ("conv1", "fc6", "fc8"):
        blobs = caffe.layers[layer].blobs
        np.testing.assert_array_equal(stored[f"{layer}.weight"].numpy().ravel(), blobs[0].ravel())
        np.testing.assert_array_equal(stored[f"{layer}.bias"].numpy().ravel(), blobs[1].ravel())
    # and it loads back into a freshly built net
    net = load(deploy)
    load_safetensors(net, out / "model.safetensors")
    reference = load(deploy, weights)
    x = torch.randn(1, 3, 227, 227, generator=torch.Generator().manual_seed(0)) * 40
    with torch.no_grad():
        assert torch.equal(net(x), reference(x))


def test_convert_model_card(converted) -> None:
    out, _ = converted
    levi, deploy, weights, mean = _levi()
    card = json.loads((out / "card.json").read_text())
    sums = dict(line.split()[::-1] for line in (levi / "SHA256SUMS").read_text().splitlines() if line.strip())
    assert card["source_files"]["caffemodel"]["sha256"] == sums["models/age_net.caffemodel"]
    assert card["source_files"]["mean"]["sha256"] == sums["models/mean.binaryproto"]
    assert card["source_files"]["mean"]["shape"] == [1, 3, 256, 256]
    assert card["source_files"]["prototxt"]["path"] == str(deploy.resolve())
    caffe = read_caffemodel(weights)
    assert card["total_params"] == sum(b.size for layer in caffe.layers.values() for b in layer.blobs)
    names = [layer["name"] for layer in card["layers"]]
    assert names[:3] == ["input", "conv1", "relu1"] and names[-1] == "prob" and len(names) == 20
    conv1 = card["layers"][1]
    assert conv1["bottoms"] == ["data"] and conv1["tops"] == ["conv1"]
    assert conv1["output_shapes"] == [[1, 96, 56, 56]] and conv1["params"] == 96 * 3 * 7 * 7 + 96
    assert card["inputs"] == [{"name": "data", "shape": [1, 3, 227, 227]}]
    assert card["outputs"] == [{"name": "prob", "shape": [1, 8]}]
    pre = card["preprocessing"]
    assert pre["crop"] == 227 and pre["crop_offset"] == [14, 14] and pre["channel_order"] == "BGR"
    assert pre["mean"] == "image" and pre["mean_file"] == str(mean)
    assert card["weights_report"]["loaded"] == ["conv1", "conv2", "conv3", "fc6", "fc7", "fc8"]
    assert card["artefacts"]["parity"]["passed"] is True
    assert card["artefacts"]["safetensors"]["file"] == "model.safetensors"


def test_convert_parity_report_and_summary(converted) -> None:
    out, result = converted
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] is True and parity["argmax_equal"] is True
    assert parity["inputs"] == {"seed": 0, "batch": 2, "shapes": {"data": [2, 3, 227, 227]}}
    compared = {b["name"] for b in parity["blobs"]}
    assert {"conv1", "norm2", "fc6", "prob"} <= compared
    assert all(b["max_rel"] <= 1e-4 for b in parity["blobs"])
    assert "PASS" in result.stdout and "11,415,048" in result.stdout


def test_convert_parity_failure_exits_6_with_reports_written(tmp_path: Path) -> None:
    _, deploy, weights, _ = _levi()
    # float32 round-off between two engines is ~1e-7..1e-5: a 1e-12 tolerance must fail
    result = run_cli("convert", "-p", deploy, "-w", weights, "-o", tmp_path, "--tolerance", "1e-12")
    assert result.exit_code == 6
    assert "parity with OpenCV dnn failed" in _error_line(result)
    parity = json.loads((tmp_path / "parity.json").read_text())
    assert parity["passed"] is False and parity["first_failure"]
    assert json.loads((tmp_path / "card.json").read_text())["artefacts"]["parity"]["passed"] is False


def test_convert_zoo_name_uses_the_cache_and_default_out_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    levi = require_shared("levi")
    cache = tmp_path / "cache"
    fetched = run_cli("fetch", "levi", "--from", levi, "--offline", env={"AGEGENDER_CACHE": str(cache)})
    assert fetched.exit_code == 0, fetched.stderr
    assert "models/gender_net.caffemodel" in fetched.stdout
    monkeypatch.chdir(tmp_path)
    result = run_cli("convert", "levi_gender", "--skip-parity", env={"AGEGENDER_CACHE": str(cache)})
    assert result.exit_code == 0, result.stderr
    out = tmp_path / "agegender-out" / "levi_gender"
    card = json.loads((out / "card.json").read_text())
    assert card["zoo"]["name"] == "levi_gender" and card["labels"] == ["m", "f"]
    assert card["source_files"]["caffemodel"]["path"] == str((cache / "levi" / "models" / "gender_net.caffemodel"))
    assert card["preprocessing"]["mean_file"] == str(cache / "levi" / "models" / "mean.binaryproto")
    assert not (out / "parity.json").exists()


def test_convert_lapuschkin_model_with_given_weights(tmp_path: Path) -> None:
    from agegender.caffe2torch import init_seeded, save_caffemodel

    adience = require_shared("adience")
    name = "age_net_definitions_mixed"
    deploy = adience / "model_definitions" / name / "deploy.prototxt"
    net = load(deploy)
    init_seeded(net, seed=5)  # Lapuschkin's weights are not here: seeded ones in a real caffemodel
    weights = tmp_path / "seeded.caffemodel"
    save_caffemodel(net, net.net_def, weights, layout="V1")
    out = tmp_path / "out"
    result = run_cli("convert", name, "--zoo", adience, "--weights", weights, "--fold", "2", "-o", out)
    assert result.exit_code == 0, result.stderr
    card = json.loads((out / "card.json").read_text())
    mean = adience / "mean_images" / "mean_image_mixed" / "Test_fold_is_2" / "mean.binaryproto"
    assert card["preprocessing"]["mean_file"] == str(mean)
    assert card["source_files"]["mean"]["path"] == str(mean.resolve())
    synset = [line.strip() for line in (adience / "synset_age.txt").read_text().splitlines() if line.strip()]
    assert card["labels"] == synset
    assert card["zoo"]["alignment"] == "mixed" and card["zoo"]["fold"] == 2
    assert card["zoo"]["train_val"].endswith(f"{name}/train_val_test_fold_is_2.prototxt")
    assert json.loads((out / "parity.json").read_text())["passed"] is True


# --- inspect --------------------------------------------------------------------------------------------
def _adience_net_flops() -> dict[str, int]:
    """AdienceNet (Levi's deploy) by hand: 2 FLOPs per multiply-add for conv/fc, per image."""
    return {
        "conv1": 2 * (96 * 56 * 56) * (3 * 7 * 7), "relu1": 96 * 56 * 56, "pool1": 9 * 96 * 28 * 28,
        "norm1": (2 * 5 + 3) * 96 * 28 * 28,
        "conv2": 2 * (256 * 28 * 28) * (96 * 5 * 5), "relu2": 256 * 28 * 28, "pool2": 9 * 256 * 14 * 14,
        "norm2": (2 * 5 + 3) * 256 * 14 * 14,
        "conv3": 2 * (384 * 14 * 14) * (256 * 3 * 3), "relu3": 384 * 14 * 14, "pool5": 9 * 384 * 7 * 7,
        "fc6": 2 * (384 * 7 * 7) * 512, "relu6": 512, "drop6": 0,
        "fc7": 2 * 512 * 512, "relu7": 512, "drop7": 0,
        "fc8": 2 * 512 * 8, "prob": 3 * 8, "input": 0,
    }


def test_inspect_flops_match_a_hand_computation() -> None:
    _, deploy, weights, _ = _levi()
    result = run_cli("inspect", "--prototxt", deploy, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    hand = _adience_net_flops()
    assert {layer["name"]: layer["flops"] for layer in data["layers"]} == hand
    assert data["total_flops"] == sum(hand.values())
    conv_fc = sum(hand[k] for k in ("conv1", "conv2", "conv3", "fc6", "fc7", "fc8"))
    assert conv_fc == 1_418_506_240  # about 1.42 GFLOPs of multiply-adds, x2
    caffe = read_caffemodel(weights)
    params = {layer["name"]: layer["params"] for layer in data["layers"] if layer["params"]}
    assert params == {name: sum(b.size for b in lb.blobs) for name, lb in caffe.layers.items()}
    assert data["inputs"] == {"data": [1, 3, 227, 227]} and data["outputs"] == {"prob": [1, 8]}
    assert data["uncounted"] == []


def test_inspect_input_shape_override_and_phase() -> None:
    _, deploy, _, _ = _levi()
    result = run_cli("inspect", "--prototxt", deploy, "--input-shape", "data=4,3,227,227", "--json")
    data = json.loads(result.stdout)
    assert data["inputs"] == {"data": [4, 3, 227, 227]}
    assert data["total_flops"] == sum(_adience_net_flops().values())  # per image, whatever the batch
    train_val = require_shared("levi", "age_net_definitions", "train_val_test_fold_is_0.prototxt")
    train = json.loads(run_cli("inspect", "--prototxt", train_val, "--phase", "TRAIN", "--json").stdout)
    test = json.loads(run_cli("inspect", "--prototxt", train_val, "--phase", "test", "--json").stdout)
    assert train["phase"] == "TRAIN" and test["phase"] == "TEST"
    assert "accuracy" in {layer["name"] for layer in test["layers"]}
    assert "accuracy" not in {layer["name"] for layer in train["layers"]}
    table = run_cli("inspect", "--prototxt", deploy)
    total = f"{sum(_adience_net_flops().values()):,}"
    assert table.exit_code == 0 and "conv2" in table.stdout and total in table.stdout
    bad = run_cli("inspect", "--prototxt", deploy, "--input-shape", "data=1,3,x")
    assert bad.exit_code == 2


def test_inspect_zoo_model(monkeypatch: pytest.MonkeyPatch) -> None:
    adience = require_shared("adience")
    result = run_cli("inspect", "age_fromscratch_googlenet", "--json", env={"AGEGENDER_ZOO": str(adience)})
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["inputs"] == {"data": [1, 3, 224, 224]}
    assert "loss3/loss3" in data["outputs"] and data["uncounted"] == []


# --- blobs ----------------------------------------------------------------------------------------------
def test_blobs_round_trip_equals_the_library(tmp_path: Path) -> None:
    _, deploy, weights, _ = _levi()
    x = (np.random.default_rng(3).standard_normal((3, 3, 227, 227)) * 50).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = run_cli("blobs", "-p", deploy, "-w", weights, "--input", tmp_path / "x.npy", "--out", tmp_path / "b.npz")
    assert result.exit_code == 0, result.stderr
    net = load(deploy, weights)
    with torch.no_grad():
        expected, _ = net.run(torch.from_numpy(x))
    with np.load(tmp_path / "b.npz") as saved:
        assert set(saved.files) == set(expected) == set(net.blob_shapes)
        for name, value in expected.items():
            np.testing.assert_array_equal(saved[name], value.numpy())  # same code, same process: bit for bit
        assert saved["conv1"].min() >= 0  # conv1 as Caffe holds it: after the in-place relu1
        assert saved["prob"].shape == (3, 8)
    subset = run_cli("blobs", "-p", deploy, "-w", weights, "-i", tmp_path / "x.npy", "-o", tmp_path / "s.npz",
                     "--blobs", "fc8, prob")
    assert subset.exit_code == 0
    with np.load(tmp_path / "s.npz") as saved:
        assert sorted(saved.files) == ["fc8", "prob"]


def test_blobs_refuses_bad_inputs(tmp_path: Path) -> None:
    _, deploy, weights, _ = _levi()
    np.save(tmp_path / "small.npy", np.zeros((1, 3, 200, 200), np.float32))
    np.save(tmp_path / "uint8.npy", np.zeros((1, 3, 227, 227), np.uint8))
    np.savez(tmp_path / "arch.npz", x=np.zeros((1, 3, 227, 227), np.float32))
    for name, needle in (("small.npy", "needs N x 3 x 227 x 227"), ("uint8.npy", "expected a float array"),
                         ("arch.npz", "found an .npz archive")):
        result = run_cli("blobs", "-p", deploy, "-w", weights, "-i", tmp_path / name, "-o", tmp_path / "o.npz")
        assert result.exit_code == 3, (name, result.stderr)
        assert needle in _error_line(result)
    missing = run_cli("blobs", "-p", deploy, "-w", weights, "-i", tmp_path / "none.npy", "-o", tmp_path / "o.npz")
    assert missing.exit_code == 2
    np.save(tmp_path / "ok.npy", np.zeros((1, 3, 227, 227), np.float32))
    unknown = run_cli("blobs", "-p", deploy, "-w", weights, "-i", tmp_path / "ok.npy", "-o", tmp_path / "o.npz",
                      "--blobs", "conv9")
    assert unknown.exit_code == 1 and "no blob named 'conv9'" in _error_line(unknown)
    assert not (tmp_path / "o.npz").exists()


# --- zoo, fetch, errors ---------------------------------------------------------------------------------
def test_zoo_listing() -> None:
    adience = require_shared("adience")
    result = run_cli("zoo", "--json", env={"AGEGENDER_ZOO": str(adience), "AGEGENDER_CACHE": "/nonexistent-cache"})
    assert result.exit_code == 0, result.stderr
    cards = json.loads(result.stdout)
    assert len(cards) == 40
    by_name = {c["name"]: c for c in cards}
    assert by_name["levi_age"]["weights_fetchable"] is True
    assert by_name["gender_imdbwiki_vgg16"]["arch"] == "VGG16"
    assert all(c["deploy"] for c in cards if c["family"] == "lapuschkin")
    table = run_cli("zoo", env={"AGEGENDER_ZOO": str(adience)})
    assert table.exit_code == 0 and "age_fromscratch_googlenet_unaligned" in table.stdout


def test_error_exits_are_one_line(tmp_path: Path) -> None:
    _, deploy, weights, _ = _levi()
    missing = run_cli("convert", "--prototxt", tmp_path / "none.prototxt", "--weights", weights)
    assert missing.exit_code == 2
    assert "none.prototxt: net prototxt not found" in _error_line(missing)
    unknown = run_cli("convert", "levi_agee")
    assert unknown.exit_code == 7 and "did you mean levi_age" in _error_line(unknown)
    swapped = run_cli("convert", "--prototxt", weights, "--weights", deploy, "-o", tmp_path)
    assert swapped.exit_code == 3 and "swap" in _error_line(swapped)
    gender = require_shared("levi", "models", "gender_net.caffemodel")
    mismatch = run_cli("convert", "--prototxt", deploy, "--weights", gender, "-o", tmp_path)
    assert mismatch.exit_code == 5 and "layer 'fc8'" in _error_line(mismatch)
    tiny_mean = tmp_path / "tiny.binaryproto"
    from agegender.prototxt import write_blobproto

    write_blobproto(np.zeros((1, 3, 100, 100), np.float32), tiny_mean)
    bad_mean = run_cli("convert", "-p", deploy, "-w", weights, "--mean", tiny_mean, "-o", tmp_path / "m")
    assert bad_mean.exit_code == 5 and "does not fit" in _error_line(bad_mean)
    assert not (tmp_path / "m").exists()  # nothing written before the checks
    not_fetchable = run_cli("fetch", "weights")
    assert not_fetchable.exit_code == 7
    lapuschkin = run_cli("convert", "age_net_definitions", env={"AGEGENDER_ZOO": str(require_shared("adience"))})
    assert lapuschkin.exit_code == 7 and "--weights" in _error_line(lapuschkin)
    usage = run_cli("convert")
    assert usage.exit_code == 2


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = run_cli("--debug", "inspect", "--prototxt", tmp_path / "none.prototxt")
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and "MissingFileError" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("agegender: error: ")


def test_console_script_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("AGEGENDER_DEBUG", None)
    command = [sys.executable, "-m", "agegender.cli", "inspect", "--prototxt", str(tmp_path / "x.prototxt")]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"agegender: error: {tmp_path / 'x.prototxt'}: net prototxt not found"
    assert proc.stdout == ""


@pytest.mark.parametrize("command", ["convert", "inspect", "blobs", "zoo", "fetch", "export", "eval", "predict", "train",
                                     "data build", "data mean", "data info"])
def test_every_command_has_help_with_examples(command: str) -> None:
    result = run_cli(*command.split(), "--help", env={"COLUMNS": "100"})
    assert result.exit_code == 0
    assert "Example" in result.stdout
    # the help is rendered as markdown (paragraphs re-flowed to the terminal): no word of the docstring may be
    # lost to it, e.g. paths with underscores read as emphasis
    click_command = typer.main.get_command(app)
    for part in command.split():
        click_command = click_command.commands[part]
    docstring_words = click_command.help.replace("`", "").split()
    shown_words = re.sub(r"[│╭╮╰╯─]", " ", result.stdout).split()
    missing = [word for word in docstring_words if word not in shown_words]
    assert not missing, missing
