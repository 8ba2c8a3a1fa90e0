"""Fine-tuning Levi & Hassner's real age net on real faces (UTKFace, labels = the Adience group of the age):
the training loss goes down, the checkpoint and the final weights reload, and a run interrupted and
resumed from its checkpoint ends with the same weights as an uninterrupted run, bit for bit (CPU)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from agegender.caffe2torch import load
from agegender.card import load_safetensors
from agegender.folds import ImageList
from agegender.training import (DataOptions, FoldJob, Overrides, TrainerCallback, TrainOptions, age_group_list,
                                latest_checkpoint, load_checkpoint, train_fold)
from agegender.training.logs import read_csv_rows
from agegender.zoo.cards import LEVI_AGE_LABELS

from .conftest import require_shared


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """200 training faces and 40 test faces of utkface_full whose ages lie inside an Adience group, in a
    seeded random order (Caffe reads a list in order: a list sorted by age would train on one group at a
    time), as list files."""
    folder = require_shared("faces", "utkface_full")
    with open(folder / "labels.tsv") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    listed = age_group_list([r["file"] for r in rows], [float(r["age"]) for r in rows], LEVI_AGE_LABELS)
    assert len(listed) == 2400 and set(listed.labels.tolist()) == set(range(8))
    order = np.random.default_rng(0).permutation(len(listed))
    out = tmp_path_factory.mktemp("utk")
    lists = {}
    for name, picks in (("train", order[:200]), ("val", order[:30]), ("test", order[200:240]),
                        ("small", order[300:340])):
        path = out / f"{name}.txt"
        ImageList.from_pairs([(listed.paths[i], int(listed.labels[i])) for i in picks]).write(path)
        lists[name] = path
    lists["images"] = folder
    return lists


def _levi_job(faces: dict[str, Path], out: Path, *, train: str = "train", **overrides) -> FoldJob:
    levi = require_shared("levi")
    definitions = levi / "age_net_definitions"
    return FoldJob(
        train_val=definitions / "train_val_test_fold_is_0.prototxt",
        solver=definitions / "solver_test_fold_is_0.prototxt",
        out_dir=out, fold=0, weights=levi / "models" / "age_net.caffemodel", deploy=definitions / "deploy.prototxt",
        data=DataOptions(mean_file=levi / "models" / "mean.binaryproto", train_list=faces[train],
                         val_list=faces["val"], test_list=faces["test"], images=faces["images"]),
        overrides=Overrides(**overrides), options=TrainOptions(device="cpu", seed=1))


def test_fine_tuning_levis_age_net_on_utkface_lowers_the_loss_and_reloads(faces, tmp_path: Path) -> None:
    # base_lr 1e-4 instead of the solver's 1e-3 (Levi trained from scratch; a fine-tune takes smaller steps)
    job = _levi_job(faces, tmp_path / "run", max_iter=18, batch_size=10, base_lr=1e-4, snapshot=9,
                    test_interval=18, test_iter=3, display=6)
    job = FoldJob(**{**job.__dict__, "evaluate_before": True})
    result = train_fold(job)
    assert result.status == "finished" and result.train["iteration"] == 18
    rows = read_csv_rows(tmp_path / "run" / "train_log.csv")
    assert [int(r["iteration"]) for r in rows] == list(range(18))
    losses = [r["loss"] for r in rows]
    assert np.mean(losses[-6:]) < np.mean(losses[:6])
    # the solver's validation at iteration 0 and at max_iter (test_interval 18): the TEST net's loss on 30
    # training faces, centre crops, dropout off
    validations = read_csv_rows(tmp_path / "run" / "val_log.csv")
    assert [int(v["iteration"]) for v in validations] == [0, 18]
    assert validations[1]["val_loss"] < validations[0]["val_loss"]
    assert set(validations[0]) >= {"val_accuracy", "val_loss"}
    # evaluation of the test split before and after, with the eval protocol
    assert result.before.metrics["n"] == result.after.metrics["n"] == 40
    for key in ("exact", "one_off"):
        assert 0 <= result.after.metrics[key] <= 1
    # the checkpoint reloads into a fresh net and holds the trained weights
    checkpoint = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert checkpoint["iteration"] == 18 and checkpoint["data"]["position"] == 180
    deploy = load(job.deploy, tmp_path / "run" / "final.caffemodel")
    trained = load(job.deploy)
    load_safetensors(trained, tmp_path / "run" / "final.safetensors")
    original = load(job.deploy, job.weights)
    for name in ("conv1", "fc6", "fc8"):
        state = checkpoint["model"][f"{name}.weight"]
        assert torch.equal(deploy.layer_module(name).weight.detach(), state)
        assert torch.equal(trained.layer_module(name).weight.detach(), state)
        assert not torch.equal(original.layer_module(name).weight.detach(), state)
    assert (tmp_path / "run" / "training_curve.png").stat().st_size > 10_000
    summary = (tmp_path / "run" / "summary.json").read_text()
    assert '"status": "finished"' in summary and '"one_off"' in summary


class _StopAt(TrainerCallback):
    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def on_records(self, trainer, records, images_per_second) -> None:  # type: ignore[no-untyped-def]
        if trainer.iteration >= self.iteration:
            trainer.request_stop()


def test_interrupted_and_resumed_run_ends_with_the_same_weights_bit_for_bit(faces, tmp_path: Path) -> None:
    settings = dict(max_iter=6, batch_size=4, snapshot=3, display=1, test_interval=0)
    whole = _levi_job(faces, tmp_path / "whole", train="small", **settings)
    whole = FoldJob(**{**whole.__dict__, "evaluate": False})
    train_fold(whole)
    parts = FoldJob(**{**whole.__dict__, "out_dir": tmp_path / "parts"})
    stopped = train_fold(parts, callbacks=[_StopAt(4)])
    assert stopped.status == "interrupted" and stopped.train["iteration"] == 4
    assert [int(r["iteration"]) for r in read_csv_rows(tmp_path / "parts" / "train_log.csv")] == [0, 1, 2, 3]
    resumed = train_fold(parts, resume=True)
    assert resumed.status == "finished" and resumed.train["start_iteration"] == 4
    a = load_checkpoint(tmp_path / "whole" / "checkpoints" / "iter_0000006.pt")
    b = load_checkpoint(tmp_path / "parts" / "checkpoints" / "iter_0000006.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for group_a, group_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(group_a["history"], group_b["history"])
    # the resumed log reads as one run: the rows of both parts, each iteration once, the same losses
    rows_a = read_csv_rows(tmp_path / "whole" / "train_log.csv")
    rows_b = read_csv_rows(tmp_path / "parts" / "train_log.csv")
    assert [r["iteration"] for r in rows_b] == [float(i) for i in range(6)]
    assert [r["loss"] for r in rows_b] == [r["loss"] for r in rows_a]
