"""Lapuschkin et al.'s train_val files in the TRAIN phase: every one builds a trainable net (losses, loss
weights, dropout in train mode); a V1 AdienceNet, a V2 CaffeNet fine-tuned from a caffemodel with another
head, and GoogLeNet with its three weighted losses train for a few iterations on small LMDBs this test builds
in their published layout (data paths remapped), with their TRAIN transform (random crop and mirror) and
their mean images from ../shared/adience/mean_images; VGG16's gradients reach every layer."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from agegender.caffe2torch import init_seeded, save_caffemodel
from agegender.caffe2torch.api import load
from agegender.folds import ImageList
from agegender.folds.build import build_from_list
from agegender.prototxt import read_caffemodel
from agegender.training import (BatchPlan, DataOptions, FoldJob, Overrides, TrainBatches, Trainer, TrainOptions,
                                build_net, caffe_params, initialise, load_split, loss_terms, plan_fold, prepare_fold,
                                read_train_val, train_fold)
from agegender.training.logs import read_csv_rows
from agegender.training.trainable import data_inputs
from agegender.zoo.cards import LEVI_AGE_LABELS

from .conftest import require_shared


def _definitions() -> Path:
    return require_shared("adience", "model_definitions")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Age and gender train/val/test LMDBs of UTKFace faces (256 x 256, as convert_imageset writes them) in
    the layout of Lapuschkin's train_val paths: ROOT/lmdb/Test_fold_is_0/{age,gender}_{train,val,test}_lmdb."""
    faces = require_shared("faces", "utkface")
    with open(faces / "labels.tsv") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    order = np.random.default_rng(0).permutation(len(rows))
    root = tmp_path_factory.mktemp("adience-data")
    fold_dir = root / "lmdb" / "Test_fold_is_0"
    splits = {"train": order[:12], "val": order[12:16], "test": order[16:22]}
    for target in ("age", "gender"):
        for split, picks in splits.items():
            pairs = []
            for i in picks:
                row = rows[i]
                label = (LEVI_AGE_LABELS.index(next(g for g in LEVI_AGE_LABELS if _inside(float(row["age"]), g)))
                         if target == "age" else int(row["gender"] == "f"))
                pairs.append((row["file"], label))
            listing = root / f"{target}_{split}.txt"
            ImageList.from_pairs(pairs).write(listing)
            build_from_list(listing, faces, fold_dir / f"{target}_{split}_lmdb", resize=256)
    return root


def _inside(age: float, group: str) -> bool:
    low, high = (float(v) for v in group.strip("()").split(","))
    return low <= age <= high


def _job(name: str, data_root: Path, out: Path, **kwargs) -> FoldJob:
    folder = _definitions() / name
    overrides = kwargs.pop("overrides", {})
    return FoldJob(train_val=folder / "train_val_test_fold_is_0.prototxt",
                   solver=folder / "solver_test_fold_is_0.prototxt", out_dir=out, fold=0, name=name,
                   data=DataOptions(data_root=data_root, mean_root=require_shared("adience", "mean_images")),
                   overrides=Overrides(**{"batch_size": 4, "snapshot": 0, "test_interval": 0, **overrides}),
                   options=TrainOptions(device="cpu", seed=2), **kwargs)


def test_every_train_val_builds_a_trainable_train_phase_net() -> None:
    files = sorted(_definitions().glob("*/train_val_test_fold_is_0.prototxt"))
    assert len(files) == 38
    for path in files:
        net = build_net(read_train_val(path), path)
        assert net.training and net.ir.state.phase == "TRAIN"
        assert data_inputs(net) == ("data", "label")
        dropouts = [m for m in net.modules() if isinstance(m, torch.nn.Dropout)]
        assert dropouts and all(m.training for m in dropouts), path  # Caffe's TRAIN phase drops
        terms = [(t.top, t.weight) for t in loss_terms(net)]
        if "googlenet" in path.parent.name:
            assert [w for _, w in terms] == pytest.approx([0.3, 0.3, 1.0])
        else:
            assert [w for _, w in terms] == [1.0]
        multipliers = {(e.lr_mult, e.decay_mult) for e in caffe_params(net)}
        assert (1.0, 1.0) in multipliers and (2.0, 0.0) in multipliers


def test_v1_adiencenet_train_val_trains_from_scratch_on_remapped_lmdbs(data_root: Path, tmp_path: Path) -> None:
    job = _job("age_net_definitions", data_root, tmp_path / "run",
               overrides={"max_iter": 2, "test_interval": 2, "test_iter": 1})
    prepared = prepare_fold(job)
    assert prepared.train_source.lmdb == data_root / "lmdb" / "Test_fold_is_0" / "age_train_lmdb"
    assert prepared.val_source.lmdb.name == "age_val_lmdb" and prepared.test_source.lmdb.name == "age_test_lmdb"
    transform = prepared.train_transform
    assert (transform.phase, transform.crop_size, transform.mirror) == ("TRAIN", 227, True)
    assert transform.mean.source.endswith("mean_images/mean_image/Test_fold_is_0/mean.binaryproto")
    assert (prepared.test_transform.phase, prepared.test_transform.mirror) == ("TEST", False)
    plan = plan_fold(job, prepared)
    assert plan["data"]["train"]["count"] == 12 and plan["initialisation"]["filled"][0] == "conv1"
    before = prepared.train_net()
    result = train_fold(job)
    assert result.status == "finished" and result.after.metrics["n"] == 6
    trained = load(job.train_val.with_name("deploy.prototxt"), tmp_path / "run" / "final.caffemodel")
    assert trained.layer_module("fc8").weight.shape == (8, 512)
    validations = read_csv_rows(tmp_path / "run" / "val_log.csv")
    assert [v["iteration"] for v in validations] == [0.0, 2.0] and "val_accuracy" in validations[0]
    assert before.net_name == trained.net_name


def _caffemodel_with_another_head(tmp_path: Path) -> Path:
    """A caffemodel holding CaffeNet's conv1 (fits) and an 8-class fc8_agexgender (the gender net's head has 2
    classes)."""
    deploy = tmp_path / "partial.prototxt"
    deploy.write_text("""name: "partial"
layer { name: "input" type: "Input" top: "data" top: "feat"
  input_param { shape { dim: 1 dim: 3 dim: 227 dim: 227 } shape { dim: 1 dim: 4096 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 96 kernel_size: 11 stride: 4 } }
layer { name: "fc8_agexgender" type: "InnerProduct" bottom: "feat" top: "fc8" inner_product_param { num_output: 8 } }
""")
    net = load(deploy)
    init_seeded(net, 7)
    path = tmp_path / "partial.caffemodel"
    save_caffemodel(net, net.net_def, path)
    return path


def test_v2_caffereference_fine_tunes_from_a_caffemodel_with_another_head(data_root: Path, tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    weights = _caffemodel_with_another_head(tmp_path)
    job = _job("gender_finetuning_caffereference", data_root, tmp_path / "run", weights=weights,
               overrides={"max_iter": 2})
    prepared = prepare_fold(job)
    assert prepared.target == "gender" and prepared.train_source.lmdb.name == "gender_train_lmdb"
    net = prepared.train_net()
    with caplog.at_level("WARNING"):
        report = initialise(net, weights, seed=2)
    assert report.copied == ["conv1"]
    assert list(report.reinitialised) == ["fc8_agexgender"]
    assert "[8, 4096] in the caffemodel, [2, 4096]" in report.reinitialised["fc8_agexgender"]
    assert "conv2" in report.filled
    assert any("fc8_agexgender" in r.getMessage() and "re-initialised" in r.getMessage() for r in caplog.records)
    stored = read_caffemodel(weights).layers["conv1"].blobs[0]
    assert np.array_equal(net.layer_module("conv1").weight.detach().numpy(), stored)
    head = net.layer_module("fc8_agexgender").weight.detach().clone()
    assert abs(float(head.std()) - 0.01) < 0.001  # the prototxt's gaussian filler, std 0.01
    # a CaffeNet of 61M parameters: no checkpoint or final weights written here (train_fold does, see above)
    solver = prepared.solver.with_overrides(snapshot_after_train=False)
    train = load_split(prepared.train_source, prepared.train_transform, "cpu")
    result = Trainer(net, solver, TrainBatches(train, BatchPlan(len(train), prepared.batch_size, seed=2)),
                     tmp_path / "run", options=TrainOptions(device="cpu")).run()
    assert result.status == "finished" and result.checkpoint is None
    rows = read_csv_rows(tmp_path / "run" / "train_log.csv")
    assert len(rows) == 2 and all(np.isfinite(r["loss"]) for r in rows) and "train_accuracy" in rows[0]
    assert not torch.equal(net.layer_module("fc8_agexgender").weight.detach(), head)


def test_googlenet_trains_with_its_three_weighted_losses_and_every_layer_learns(data_root: Path,
                                                                                tmp_path: Path) -> None:
    job = _job("age_fromscratch_googlenet", data_root, tmp_path / "run",
               overrides={"max_iter": 1, "batch_size": 2, "base_lr": 0.01}, evaluate=False)
    prepared = prepare_fold(job)
    assert prepared.train_transform.crop_size == 224
    result = train_fold(job)
    assert result.status == "finished"
    row = read_csv_rows(tmp_path / "run" / "train_log.csv")[0]
    total = 0.3 * row["loss1/loss1"] + 0.3 * row["loss2/loss1"] + row["loss3/loss3"]
    assert row["loss"] == pytest.approx(total, rel=1e-5)
    # every trainable bias moved: biases have decay_mult 0, so only a gradient moves them
    start = prepared.train_net()
    initialise(start, None, seed=2)
    final = torch.load(tmp_path / "run" / "checkpoints" / "iter_0000001.pt", weights_only=True)["model"]
    moved = [key for key, value in start.state_dict().items() if key.endswith(".bias")
             and not torch.equal(value, final[key])]
    biases = [key for key in start.state_dict() if key.endswith(".bias")]
    assert len(biases) > 50 and sorted(moved) == sorted(biases)


def test_vgg16_gradients_reach_every_layer() -> None:
    path = _definitions() / "gender_imdbwiki_vgg16" / "train_val_test_fold_is_0.prototxt"
    net = build_net(read_train_val(path), path, input_shapes={"data": (1, 3, 64, 64)})  # small input: fast
    init_seeded(net, 0)  # the fine-tuning file gives no fillers for the ImageNet layers (Caffe's default: 0)
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 20
    net.eval()  # no dropout while picking the wrong label
    with torch.no_grad():
        wrong = net(images, torch.tensor([0]), outputs=["fc8-gender"])["fc8-gender"].argmin(1)
    net.train()
    net(images, wrong, outputs=["loss(automatic)"])["loss(automatic)"].backward()
    for entry in caffe_params(net):
        grad = entry.parameter.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, entry.name
