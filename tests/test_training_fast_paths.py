"""The training loop's fast and robust paths, on the CPU: the static-buffer step that CUDA captures as a
graph equals the plain step; bf16 autocast and torch.compile run; a NaN loss stops with TrainingError;
DistributedDataParallel with gloo (2 processes) equals one process with iter_size 2; folds spread over two
"devices"; the CLI's dry run and a real run; logs, curve and checkpoints."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from agegender.cli import app
from agegender.errors import TrainingError
from agegender.folds import ImageList
from agegender.training import (BatchPlan, DataOptions, FoldJob, Overrides, TrainBatches, Trainer, TrainOptions,
                                build_net, initialise, latest_checkpoint, load_checkpoint, read_solver_config,
                                read_train_val, train_folds)
from agegender.training.distributed import assign_to_devices
from agegender.training.logs import read_csv_rows

from .conftest import REPO
from .training_nets import tiny_resident, write_tiny, write_tiny_faces

_RUNNER_KW = {"mix_stderr": False} if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters else {}


def _run(folder: Path, out: Path, *, iter_size: int = 1, max_iter: int = 5, base_lr: float = 0.01,
         snapshot: int = 0, **options):
    train_val, solver_file = folder / "train_val.prototxt", folder / "solver.prototxt"
    solver = read_solver_config(solver_file).with_overrides(iter_size=iter_size, max_iter=max_iter, base_lr=base_lr,
                                                            snapshot=snapshot)
    net = build_net(read_train_val(train_val), train_val, input_shapes={"data": (4, 3, 10, 10)})
    initialise(net, None, seed=0)
    dataset = tiny_resident()
    trainer = Trainer(net, solver, TrainBatches(dataset, BatchPlan(len(dataset), 4, iter_size=iter_size, seed=0)), out,
                      options=TrainOptions(device="cpu", **options))
    return net, trainer.run()


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    write_tiny(tmp_path / "net")
    return tmp_path / "net"


def _assert_same_weights(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_static_buffer_step_equals_the_plain_step(tiny: Path, tmp_path: Path) -> None:
    # the step CUDA captures once and replays: static input buffers, the rate in a device tensor; on the CPU
    # it is called directly, and must do exactly what the plain step does
    plain, plain_result = _run(tiny, tmp_path / "plain", iter_size=2)
    static, static_result = _run(tiny, tmp_path / "static", iter_size=2, static_step=True)
    _assert_same_weights(plain, static)
    assert static_result.last_loss == plain_result.last_loss


def test_bf16_autocast_runs_on_the_cpu_and_keeps_float32_weights(tiny: Path, tmp_path: Path) -> None:
    reference, _ = _run(tiny, tmp_path / "fp32", max_iter=3)
    net, result = _run(tiny, tmp_path / "bf16", max_iter=3, precision="bf16")
    assert result.status == "finished" and np.isfinite(result.last_loss)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    first = read_csv_rows(tmp_path / "bf16" / "train_log.csv")[0]["loss"]
    assert first == pytest.approx(read_csv_rows(tmp_path / "fp32" / "train_log.csv")[0]["loss"], rel=0.05)
    assert not torch.equal(net.layer_module("fc").weight, reference.layer_module("fc").weight)  # bf16 did run


def test_torch_compile_path_equals_eager(tiny: Path, tmp_path: Path) -> None:
    # the "eager" backend traces the net with dynamo (what --compile does) without inductor's slow CPU codegen
    eager, _ = _run(tiny, tmp_path / "eager", max_iter=2)
    compiled, _ = _run(tiny, tmp_path / "compiled", max_iter=2, compile=True, compile_backend="eager")
    _assert_same_weights(eager, compiled)


def test_nan_loss_stops_with_a_training_error_naming_iteration_rate_and_checkpoint(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError) as info:
        _run(tiny, tmp_path / "run", base_lr=1e30, max_iter=6, snapshot=1)
    message = info.value.one_line()
    assert "loss became nan at iteration 1 (lr 1e+30)" in message
    assert "last good checkpoint: " + str(tmp_path / "run" / "checkpoints" / "iter_0000001.pt") in message
    assert info.value.exit_code == 8
    rows = read_csv_rows(tmp_path / "run" / "train_log.csv")
    assert [r["iteration"] for r in rows] == [0.0]  # the good iteration is kept
    good = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert good["iteration"] == 1 and all(torch.isfinite(v).all() for v in good["model"].values())
    assert (tmp_path / "run" / "training_curve.png").exists()


def test_ddp_with_gloo_on_two_processes_equals_one_process_with_iter_size_2(tiny: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ddp"
    write_tiny(folder, max_iter=4, snapshot=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(REPO / "tests" / "ddp_train_worker.py"), str(folder)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0 = torch.load(folder / "rank0.pt", weights_only=True)
    rank1 = torch.load(folder / "rank1.pt", weights_only=True)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key  # the same averaged gradients on both ranks
    single, _ = _run(folder, tmp_path / "single", iter_size=2, max_iter=4)
    for key, value in single.state_dict().items():
        torch.testing.assert_close(rank0[key], value, rtol=1e-5, atol=1e-6)
    # rank 0 alone wrote the checkpoints and the log; the data position counts both processes' records
    checkpoint = load_checkpoint(folder / "run" / "checkpoints" / "iter_0000004.pt")
    assert checkpoint["world_size"] == 2 and checkpoint["data"]["position"] == 4 * 2 * 4
    assert len(checkpoint["rng"]) == 2


def test_batch_plan_reads_like_caffes_data_layer_and_splits_across_processes() -> None:
    plan = BatchPlan(10, 4)
    assert [plan.records(it).tolist() for it in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]
    two = [BatchPlan(10, 4, world_size=2, rank=r) for r in range(2)]
    accumulated = BatchPlan(10, 4, iter_size=2)
    for it in range(3):
        for r in range(2):
            assert np.array_equal(two[r].records(it), accumulated.records(it, sub=r))
    shuffled = BatchPlan(10, 5, shuffle=True, seed=3)
    epoch = np.concatenate([shuffled.records(0), shuffled.records(1)])
    assert sorted(epoch.tolist()) == list(range(10)) and epoch.tolist() != list(range(10))
    assert assign_to_devices(5, ["cuda:0", "cuda:1"]) == [[0, 2, 4], [1, 3]]


# --- whole runs: folds, devices, the command line -------------------------------------------------------------
@pytest.fixture
def tiny_folds(tmp_path: Path) -> dict[str, Path]:
    """The tiny net, and two folds of PNG faces as list files (train_K.txt, test_K.txt)."""
    train_val, solver = write_tiny(tmp_path / "net", max_iter=3, snapshot=2)
    images, labels = write_tiny_faces(tmp_path / "faces")
    everything = ImageList.read(tmp_path / "faces" / "all.txt")
    for fold in range(2):
        test = np.arange(len(everything)) % 2 == fold
        everything.select(~test).write(tmp_path / "faces" / f"train_{fold}.txt")
        everything.select(test).write(tmp_path / "faces" / f"test_{fold}.txt")
    return {"train_val": train_val, "solver": solver, "images": images, "lists": tmp_path / "faces",
            "out": tmp_path / "runs"}


def _fold_jobs(tiny_folds: dict[str, Path]) -> list[FoldJob]:
    lists = tiny_folds["lists"]
    data = DataOptions(train_list=lists / "train_{fold}.txt", test_list=lists / "test_{fold}.txt",
                       images=tiny_folds["images"], resize=12)
    return [FoldJob(train_val=tiny_folds["train_val"], solver=tiny_folds["solver"], fold=k,
                    out_dir=tiny_folds["out"] / f"fold_{k}", data=data,
                    options=TrainOptions(device="cpu"), overrides=Overrides(batch_size=4)) for k in range(2)]


def test_folds_spread_over_two_devices_in_their_own_processes(tiny_folds: dict[str, Path]) -> None:
    jobs = _fold_jobs(tiny_folds)
    summary = train_folds(jobs, tiny_folds["out"], devices=["cpu", "cpu"])
    assert [f["status"] for f in summary["folds"]] == ["finished", "finished"]
    assert summary["after"]["folds"] == [0, 1] and summary["after"]["n"] == 24
    for k in range(2):
        assert (tiny_folds["out"] / f"fold_{k}" / "final.safetensors").exists()
        assert json.loads((tiny_folds["out"] / f"fold_{k}" / "summary.json").read_text())["fold"] == k
    assert json.loads((tiny_folds["out"] / "summary.json").read_text())["after"]["mean_std"]["exact"]["mean"] >= 0


def _cli(*args: object):
    return CliRunner(**_RUNNER_KW).invoke(app, ["train", *[str(a) for a in args]])


def test_cli_dry_run_prints_the_plan_and_trains_nothing(tiny_folds: dict[str, Path]) -> None:
    lists = tiny_folds["lists"]
    common = ["--train-val", tiny_folds["train_val"], "--train-list", lists / "train_{fold}.txt",
              "--test-list", lists / "test_{fold}.txt", "--images", tiny_folds["images"], "--resize", 12,
              "--fold", "0,1", "--out", tiny_folds["out"], "--max-iter", 5]
    result = _cli(*common, "--dry-run")
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert "fold 0:" in text and "fold 1:" in text and "dry run" in text
    assert "iter 0: lr 0.01; iter 2: lr 0.005; iter 4: lr 0.0025" in text  # the step boundaries of the solver
    assert "12 images" in text and "0/1, 1/1, 2/0, 10/1, 20/0" in text  # lr_mult/decay_mult of the blobs
    assert not tiny_folds["out"].exists()
    plan = json.loads(_cli(*common, "--dry-run", "--json").stdout)
    assert [p["fold"] for p in plan] == [0, 1]
    assert plan[0]["data"]["train"]["count"] == 12 and plan[0]["data"]["test"]["count"] == 12
    assert plan[0]["checkpoints"]["iterations"] == [2, 4, 5] and plan[0]["parameters"] == 112 + 20 + 2 * 64 + 2
    assert plan[0]["schedule"] == [[0, pytest.approx(0.01)], [2, pytest.approx(0.005)], [4, pytest.approx(0.0025)]]


def test_cli_trains_two_folds_with_a_summary_and_resumes_finished_folds(tiny_folds: dict[str, Path]) -> None:
    lists = tiny_folds["lists"]
    common = ["--train-val", tiny_folds["train_val"], "--train-list", lists / "train_{fold}.txt",
              "--test-list", lists / "test_{fold}.txt", "--images", tiny_folds["images"], "--resize", 12,
              "--fold", "0,1", "--out", tiny_folds["out"], "--device", "cpu"]
    result = _cli(*common)
    assert result.exit_code == 0, result.stderr
    assert "training summary" in result.stdout and "mean" in result.stdout
    summary = json.loads((tiny_folds["out"] / "summary.json").read_text())
    assert [f["train"]["iteration"] for f in summary["folds"]] == [3, 3]
    fold0 = tiny_folds["out"] / "fold_0"
    assert {p.name for p in fold0.iterdir()} >= {"plan.json", "checkpoints", "train_log.csv", "training_curve.png",
                                               "final.caffemodel", "final.safetensors", "evaluation.json",
                                               "summary.json"}
    stamp = (fold0 / "final.safetensors").stat().st_mtime_ns
    again = _cli(*common, "--resume")
    assert again.exit_code == 0, again.stderr
    assert (fold0 / "final.safetensors").stat().st_mtime_ns == stamp  # finished folds are not trained again


def test_cli_nan_loss_exits_with_code_8_and_one_error_line(tiny_folds: dict[str, Path]) -> None:
    lists = tiny_folds["lists"]
    result = _cli("--train-val", tiny_folds["train_val"], "--train-list", lists / "train_0.txt", "--images",
                  tiny_folds["images"], "--resize", 12, "--out", tiny_folds["out"], "--base-lr", 1e30,
                  "--device", "cpu")
    assert result.exit_code == 8
    lines = [line for line in result.stderr.splitlines() if line.startswith("agegender: error:")]
    assert len(lines) == 1 and "loss became nan at iteration 1" in lines[0]
    assert json.loads((tiny_folds["out"] / "summary.json").read_text())["status"] == "failed"


def test_cli_refuses_contradictory_options(tiny_folds: dict[str, Path]) -> None:
    assert _cli("--dry-run").exit_code == 2
    assert _cli("--train-val", tiny_folds["train_val"], "--model", "levi_age", "--dry-run").exit_code == 2
    assert _cli("--train-val", tiny_folds["train_val"], "--images", tiny_folds["images"]).exit_code == 2
    bad = tiny_folds["lists"] / "solver.prototxt"
    bad.write_text('base_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 3\ntype: "Adam"\n')
    result = _cli("--train-val", tiny_folds["train_val"], "--solver", bad, "--train-list",
                  tiny_folds["lists"] / "train_0.txt", "--images", tiny_folds["images"], "--dry-run")
    assert result.exit_code == 8 and f"{bad}:4: type: solver type 'Adam' is not supported" in result.stderr
