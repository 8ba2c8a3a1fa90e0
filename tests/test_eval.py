"""Evaluation (issue #5): the metric functions on hand-computed cases, Levi's real nets through our whole
pipeline against REAL Caffe's predictions on the 480 UTKFace faces (center crop and ten crops), the ONNX
Runtime engine, a 2-fold ``agegender eval --fold all`` over a generated Adience-shaped tree, and predict."""

from __future__ import annotations

import csv
import inspect
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from agegender.caffe2torch import load
from agegender.cli import app
from agegender.errors import AgegenderError
from agegender.evaluation import (
    OnnxEngine,
    classification_metrics,
    confusion_matrix,
    evaluate,
    exact_accuracy,
    expected_age,
    group_midpoints,
    mean_absolute_error,
    one_off_accuracy,
    per_class_accuracy,
    summarize_folds,
    summarize_values,
)
from agegender.evaluation.protocol import parse_folds, plan_evaluation
from agegender.folds import CaffeTransform, ImageList, ImageListDataset
from agegender.prototxt import write_blobproto
from agegender.zoo.cards import GENDER_LABELS, LEVI_AGE_LABELS

from .conftest import require_shared
from .helpers import write_seeded_caffemodels

_RUNNER_KW = {"mix_stderr": False} if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters else {}
PROB_ATOL = 1e-5  # probabilities vs real Caffe (float32 round-off; measured ~4e-6)


def run_cli(*args: object, env: dict[str, str] | None = None):
    return CliRunner(**_RUNNER_KW).invoke(app, [str(a) for a in args], env=env)


# --- metrics on hand-computed cases ----------------------------------------------------------------------
def test_exact_and_one_off_at_the_ends_of_the_range() -> None:
    labels = [0, 0, 0, 7, 7, 7, 3, 3]
    preds = [0, 1, 2, 7, 6, 0, 5, 4]
    assert exact_accuracy(labels, preds) == pytest.approx(2 / 8)
    # hits: 0->0, 0->1 (neighbour), 7->7, 7->6 (neighbour), 3->4; misses: 0->2, 7->0 (no wrap-around), 3->5
    assert one_off_accuracy(labels, preds) == pytest.approx(5 / 8)
    assert exact_accuracy([], []) is None and one_off_accuracy([], []) is None
    with pytest.raises(AgegenderError, match="2 labels but 3 predictions"):
        exact_accuracy([0, 1], [0, 1, 2])


def test_confusion_matrix_and_empty_classes() -> None:
    confusion = confusion_matrix([0, 0, 1, 3, 3, 3], [0, 1, 1, 3, 0, 3], num_classes=4)
    assert confusion.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 2]]
    assert per_class_accuracy(confusion) == [0.5, 1.0, None, pytest.approx(2 / 3)]  # class 2 has no image
    with pytest.raises(AgegenderError, match="label 4 is outside the 4 classes"):
        confusion_matrix([4], [0], num_classes=4)


def test_expected_age_and_mae() -> None:
    midpoints = group_midpoints(LEVI_AGE_LABELS)
    assert midpoints.tolist() == [1.0, 5.0, 10.0, 17.5, 28.5, 40.5, 50.5, 80.0]
    assert group_midpoints(["(8, 13)"]).tolist() == [10.5]
    probs = np.zeros((2, 8), np.float32)
    probs[0, 0] = 1.0
    probs[1, 4], probs[1, 5] = 0.5, 0.5
    years = expected_age(probs, midpoints)
    assert years.tolist() == [1.0, 34.5]
    assert mean_absolute_error(years, [3.0, 30.5]) == pytest.approx(3.0)
    with pytest.raises(AgegenderError, match="not of the form"):
        group_midpoints(["m", "f"])


def test_classification_metrics_and_fold_summary() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], np.float32)
    metrics = classification_metrics(probs, [0, 1, 1], "gender", GENDER_LABELS)
    assert metrics["n"] == 3 and metrics["exact"] == pytest.approx(2 / 3)
    assert metrics["confusion"] == [[1, 0], [1, 1]] and "one_off" not in metrics
    age = np.eye(8, dtype=np.float32)[[0, 2, 7]]
    age_metrics = classification_metrics(age, [0, 3, 7], "age", LEVI_AGE_LABELS)
    assert age_metrics["exact"] == pytest.approx(2 / 3) and age_metrics["one_off"] == 1.0
    assert age_metrics["mae_reference"] == "group midpoints"
    assert age_metrics["mae_years"] == pytest.approx((17.5 - 10.0) / 3)
    with pytest.raises(AgegenderError, match="other target"):
        classification_metrics(probs, [0, 1, 1], "age", LEVI_AGE_LABELS)
    stats = summarize_values([0.5, None, 0.7])
    assert stats["mean"] == pytest.approx(0.6) and stats["std"] == pytest.approx(0.1)
    assert stats["std_sample"] == pytest.approx(np.std([0.5, 0.7], ddof=1)) and stats["n"] == 2
    assert summarize_values([None])["mean"] is None


def test_parse_folds() -> None:
    assert parse_folds("0") == [0] and parse_folds("0,3") == [0, 3] and parse_folds("all") is None
    for bad in ("5", "x", "1,1", ""):
        with pytest.raises(AgegenderError):
            parse_folds(bad)


# --- Levi's real nets vs real Caffe on the 480 UTKFace faces -----------------------------------------------
def _utkface() -> tuple[Path, list[dict], dict]:
    faces = require_shared("faces", "utkface")
    reference = require_shared("caffe-reference", "levi")
    with open(faces / "labels.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    probs = dict(np.load(reference / "utkface_probs.npz"))
    assert [row["file"] for row in rows] == list(probs["files"])
    return faces, rows, probs


def _levi_net(target: str):
    levi = require_shared("levi")
    net = load(levi / f"{target}_net_definitions" / "deploy.prototxt", levi / "models" / f"{target}_net.caffemodel")
    transform = CaffeTransform.from_values(crop_size=227, mean_file=levi / "models" / "mean.binaryproto")
    return net, transform


def _write_list(path: Path, names: list[str], labels: np.ndarray) -> Path:
    path.write_text("".join(f"{name} {int(label)}\n" for name, label in zip(names, labels)))
    return path


def test_levi_age_on_480_faces_gives_real_caffes_predictions_and_metrics(tmp_path: Path) -> None:
    faces, rows, caffe = _utkface()
    names = [row["file"] for row in rows]
    image_list = ImageList.read(_write_list(tmp_path / "age.txt", names, caffe["age_label"]))
    net, transform = _levi_net("age")
    ages = [float(row["age"]) for row in rows]
    result = evaluate(net, ImageListDataset(image_list, faces), transform, "age", ages=ages, batch_size=50)
    assert result.ids == names and np.array_equal(result.labels, caffe["age_label"])
    assert np.abs(result.probs - caffe["age_prob"]).max() <= PROB_ATOL
    assert np.array_equal(result.predictions, caffe["age_prob"].argmax(axis=1))
    expected = classification_metrics(caffe["age_prob"], caffe["age_label"], "age", LEVI_AGE_LABELS, ages)
    assert result.metrics["n"] == 480
    assert result.metrics["exact"] == expected["exact"] == 145 / 480  # the reference README's cross-check 4
    assert result.metrics["one_off"] == expected["one_off"] == 319 / 480
    assert result.metrics["confusion"] == expected["confusion"]
    assert result.metrics["mae_years"] == pytest.approx(expected["mae_years"], abs=1e-3)
    rows_out = result.as_dict()["predictions"]
    assert [r["id"] for r in rows_out] == names and rows_out[7]["prediction"] == int(caffe["age_prob"][7].argmax())


def test_levi_gender_on_480_faces_through_the_cli_json(tmp_path: Path) -> None:
    faces, rows, caffe = _utkface()
    levi = require_shared("levi")
    listing = _write_list(tmp_path / "gender.txt", [row["file"] for row in rows], caffe["gender_label"])
    out = tmp_path / "gender.json"
    result = run_cli("eval", "--prototxt", levi / "gender_net_definitions" / "deploy.prototxt",
                     "--weights", levi / "models" / "gender_net.caffemodel",
                     "--mean", levi / "models" / "mean.binaryproto", "--data", listing, "--images", faces,
                     "--json", out, "--batch-size", "50")
    assert result.exit_code == 0, result.stderr
    report = json.loads(out.read_text())
    fold = report["results"]["0"]
    assert report["target"] == "gender" and fold["n"] == 480  # target inferred from the 2 classes
    probs = np.array([row["prob"] for row in fold["predictions"]], np.float32)
    assert np.abs(probs - caffe["gender_prob"]).max() <= PROB_ATOL
    assert [row["prediction"] for row in fold["predictions"]] == caffe["gender_prob"].argmax(axis=1).tolist()
    assert fold["metrics"]["exact"] == 360 / 480  # cross-check 4 of the reference README
    assert "75.0" in result.stdout
    assert (tmp_path / "gender.confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("target", ["age", "gender"])
def test_ten_crops_of_the_first_16_faces_match_real_caffe(tmp_path: Path, target: str) -> None:
    faces, rows, caffe = _utkface()
    stored = np.load(require_shared("caffe-reference", "levi", "oversample_first16.npz"))
    labels = caffe[f"{target}_label"][:16]
    image_list = ImageList([row["file"] for row in rows[:16]], labels)
    net, transform = _levi_net(target)
    result = evaluate(net, ImageListDataset(image_list, faces), transform, target, oversample=True, batch_size=40)
    assert np.abs(result.probs_oversampled - stored[f"{target}_prob_mean"]).max() <= PROB_ATOL
    assert np.array_equal(result.predictions_oversampled, stored[f"{target}_prob_mean"].argmax(axis=1))
    # the center-crop figures come from crop 4 of the same pass: Caffe's own center crop
    assert np.abs(result.probs - stored[f"{target}_prob"][:, 4]).max() <= PROB_ATOL
    hits = int(round(result.metrics["oversampled"]["exact"] * 16))
    assert hits == {"age": 5, "gender": 11}[target]  # cross-check 4: 10-crop mean age 5/16, gender 11/16


def test_onnx_runtime_engine_gives_real_caffes_probabilities() -> None:
    faces, rows, caffe = _utkface()
    image_list = ImageList([row["file"] for row in rows[:24]], caffe["age_label"][:24])
    net, transform = _levi_net("age")
    engine = OnnxEngine(net)
    assert engine.name.startswith("onnxruntime")
    result = evaluate(engine, ImageListDataset(image_list, faces), transform, "age", batch_size=8)
    assert np.abs(result.probs - caffe["age_prob"][:24]).max() <= PROB_ATOL
    assert np.array_equal(result.predictions, caffe["age_prob"][:24].argmax(axis=1))


# --- the fold protocol on a generated Adience-shaped tree ------------------------------------------------
TINY_DEPLOY = """name: "tiny"
input: "data"
input_shape { dim: 1 dim: 3 dim: 227 dim: 227 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 11 stride: 8 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc8" type: "InnerProduct" bottom: "pool1" top: "fc8" inner_product_param { num_output: 8 } }
layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" }
"""


@pytest.fixture(scope="module")
def adience_tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two folds of Adience-shaped lists and faces, a tiny 8-class net with one caffemodel per fold."""
    root = tmp_path_factory.mktemp("adience")
    rng = np.random.default_rng(5)
    faces = root / "faces"
    lists = root / "folds" / "train_val_txt_files_per_fold"
    for fold in (0, 1):
        entries = []
        for i in range(12):
            user = f"{1000 + fold}@N0{i % 3}"
            name = f"landmark_aligned_face.{i}.{fold}_{i:03d}_o.jpg"
            (faces / user).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(faces / user / name), rng.integers(0, 256, (60 + i, 50, 3), dtype=np.uint8))
            entries.append(f"{user}/{name} {int(rng.integers(0, 8))}\n")
        folder = lists / f"test_fold_is_{fold}"
        folder.mkdir(parents=True)
        (folder / "age_test.txt").write_text("".join(entries))
    deploy = root / "deploy.prototxt"
    deploy.write_text(TINY_DEPLOY)
    for fold in (0, 1):
        write_seeded_caffemodels(deploy, root / f"w{fold}", seed=fold, layouts=("V2",))
    mean = root / "mean.binaryproto"
    write_blobproto(rng.uniform(90, 130, (1, 3, 256, 256)).astype(np.float32), mean)
    return {"root": root, "faces": faces, "folds": root / "folds", "deploy": deploy, "mean": mean,
            "weights": root / "w{fold}" / "seeded_V2.caffemodel"}


def test_eval_fold_all_runs_each_fold_and_aggregates(adience_tree: dict[str, Path], tmp_path: Path) -> None:
    tree = adience_tree
    out = tmp_path / "eval"
    result = run_cli("eval", "--prototxt", tree["deploy"], "--weights", tree["weights"], "--mean", tree["mean"],
                     "--zoo", tree["folds"], "--adience-root", tree["faces"], "--fold", "all", "--target", "age",
                     "--oversample", "--out", out, "--batch-size", "30")
    assert result.exit_code == 0, result.stderr
    assert "only fold(s) 0, 1 have test data" in result.stderr
    report = json.loads((out / "eval.json").read_text())
    assert sorted(report["results"]) == ["0", "1"] and report["summary"]["n"] == 24
    transform = CaffeTransform.from_values(crop_size=227, mean_file=tree["mean"])
    exact, exact10, confusion = [], [], np.zeros((8, 8), np.int64)
    for fold in (0, 1):
        fold_json = report["results"][str(fold)]
        image_list = ImageList.read(tree["folds"] / "train_val_txt_files_per_fold" / f"test_fold_is_{fold}" / "age_test.txt")
        net = load(tree["deploy"], str(tree["weights"]).replace("{fold}", str(fold)))
        alone = evaluate(net, ImageListDataset(image_list, tree["faces"]), transform, "age", oversample=True)
        assert [row["id"] for row in fold_json["predictions"]] == list(image_list.paths)
        assert np.allclose([row["prob_10crop"] for row in fold_json["predictions"]], alone.probs_oversampled, atol=1e-6)
        assert fold_json["metrics"]["exact"] == alone.metrics["exact"]
        assert fold_json["metrics"]["oversampled"]["one_off"] == alone.metrics["oversampled"]["one_off"]
        assert fold_json["weights"].endswith(f"w{fold}/seeded_V2.caffemodel")
        exact.append(alone.metrics["exact"])
        exact10.append(alone.metrics["oversampled"]["exact"])
        confusion += np.asarray(alone.metrics["oversampled"]["confusion"])
    summary = report["summary"]
    assert summary["mean_std"]["exact"]["mean"] == pytest.approx(np.mean(exact))
    assert summary["mean_std"]["exact"]["std"] == pytest.approx(np.std(exact))
    assert summary["mean_std_oversampled"]["exact"]["mean"] == pytest.approx(np.mean(exact10))
    assert summary["confusion_oversampled"] == confusion.tolist()
    assert "mean ± std" in result.stdout
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_one_caffemodel_for_several_folds_is_flagged(adience_tree: dict[str, Path]) -> None:
    tree = adience_tree
    shared_weights = str(tree["weights"]).replace("{fold}", "0")
    plan = plan_evaluation(prototxt=tree["deploy"], weights=shared_weights, mean=tree["mean"], zoo=tree["folds"],
                           adience_root=tree["faces"], folds=[0, 1])
    assert plan.target == "age"  # 8 classes
    assert any("2 folds evaluated with 1 caffemodel" in w for w in plan.warnings)
    per_fold = plan_evaluation(prototxt=tree["deploy"], weights=tree["weights"], mean=tree["mean"],
                               zoo=tree["folds"], adience_root=tree["faces"], folds=[0, 1])
    assert per_fold.warnings == []


def test_levi_model_eval_warns_that_its_training_fold_is_unknown(tmp_path: Path) -> None:
    levi = require_shared("levi")
    faces, rows, caffe = _utkface()
    listing = _write_list(tmp_path / "l.txt", [row["file"] for row in rows[:4]], caffe["age_label"][:4])
    env = {"AGEGENDER_CACHE": str(tmp_path / "cache")}
    assert run_cli("fetch", "levi", "--from", levi, "--offline", env=env).exit_code == 0
    result = run_cli("eval", "--data", listing, "--images", faces, "--ages", faces / "labels.tsv",
                     "--out", tmp_path / "o", env=env)  # no model named: levi_age by default
    assert result.exit_code == 0, result.stderr
    assert "levi_age" in result.stdout and "do not document which fold was held out" in result.stderr
    report = json.loads((tmp_path / "o" / "eval.json").read_text())
    fold = report["results"]["0"]
    assert fold["metrics"]["mae_reference"] == "true ages"
    assert [row["age"] for row in fold["predictions"]] == [float(row["age"]) for row in rows[:4]]


def test_levi_model_takes_given_mean_values_or_its_own_mean_image(tmp_path: Path, monkeypatch) -> None:
    levi = require_shared("levi")
    faces, rows, caffe = _utkface()
    listing = _write_list(tmp_path / "l.txt", [row["file"] for row in rows[:2]], caffe["age_label"][:2])
    monkeypatch.setenv("AGEGENDER_CACHE", str(tmp_path / "cache"))
    assert run_cli("fetch", "levi", "--from", levi, "--offline").exit_code == 0
    own = plan_evaluation(model="levi_age", data=listing, images=faces, folds=[0]).tasks[0]
    assert own.mean_file is not None and own.mean_file.name == "mean.binaryproto" and own.mean_values is None
    values = plan_evaluation(model="levi_age", data=listing, images=faces, folds=[0],
                             mean_values=[78.0, 87.0, 114.0]).tasks[0]
    assert values.mean_file is None and values.mean_values == (78.0, 87.0, 114.0)
    per_fold = tmp_path / "w{fold}.caffemodel"
    (tmp_path / "w0.caffemodel").symlink_to(levi / "models" / "age_net.caffemodel")
    pattern = plan_evaluation(model="levi_age", weights=per_fold, data=listing, images=faces, folds=[0]).tasks[0]
    assert pattern.weights == tmp_path / "w0.caffemodel"


def test_summarize_folds_needs_results() -> None:
    with pytest.raises(AgegenderError, match="no fold results"):
        summarize_folds([])


def test_eval_refuses_bad_requests(adience_tree: dict[str, Path], tmp_path: Path) -> None:
    tree = adience_tree
    base = ["eval", "--prototxt", tree["deploy"], "--weights", tree["weights"], "--mean", tree["mean"]]
    no_data = run_cli(*base)
    assert no_data.exit_code == 1 and "no test images given" in no_data.stderr
    bad_fold = run_cli(*base, "--fold", "7", "--zoo", tree["folds"], "--adience-root", tree["faces"])
    assert bad_fold.exit_code == 2
    listing = tmp_path / "l.txt"
    listing.write_text("a.jpg 0\n")
    no_images = run_cli(*base, "--data", listing)
    assert no_images.exit_code == 1 and "needs --images" in no_images.stderr
    out_of_range = tmp_path / "r.txt"
    first = next(tree["faces"].rglob("*.jpg")).relative_to(tree["faces"])
    out_of_range.write_text(f"{first} 9\n")
    bad_label = run_cli(*base, "--data", out_of_range, "--images", tree["faces"], "--out", tmp_path / "x")
    assert bad_label.exit_code == 1 and "label 9" in bad_label.stderr
    missing = run_cli(*base, "--data", listing, "--images", tree["faces"])
    assert missing.exit_code == 2 and "missing" in missing.stderr
    assert not (tmp_path / "x").exists()


# --- predict -------------------------------------------------------------------------------------------
def test_predict_gives_caffes_labels_for_face_crops(tmp_path: Path) -> None:
    levi = require_shared("levi")
    faces, rows, caffe = _utkface()
    env = {"AGEGENDER_CACHE": str(tmp_path / "cache")}
    assert run_cli("fetch", "levi", "--from", levi, "--offline", env=env).exit_code == 0
    picked = [0, 100, 300]
    paths = [faces / rows[i]["file"] for i in picked]
    result = run_cli("predict", *paths, "--json", "--top-k", "3", env=env)
    assert result.exit_code == 0, result.stderr
    predictions = json.loads(result.stdout)
    assert len(predictions) == 6  # both default models
    for p in predictions:
        i = picked[[str(path) for path in paths].index(p["path"])]
        probs = caffe[f"{p['target']}_prob"][i]
        labels = LEVI_AGE_LABELS if p["target"] == "age" else GENDER_LABELS
        assert p["label"] == labels[int(probs.argmax())]
        assert p["probability"] == pytest.approx(float(probs.max()), abs=PROB_ATOL)
        assert [t["probability"] for t in p["top_k"]] == sorted((t["probability"] for t in p["top_k"]), reverse=True)
        assert len(p["top_k"]) == (3 if p["target"] == "age" else 2)
        assert ("expected_age" in p) == (p["target"] == "age")
    table = run_cli("predict", paths[0], "--model", "levi_gender", env=env)
    assert table.exit_code == 0 and "levi_gender" in table.stdout
    missing = run_cli("predict", tmp_path / "none.jpg", "--model", "levi_gender", env=env)
    assert missing.exit_code == 2 and "none.jpg" in missing.stderr
