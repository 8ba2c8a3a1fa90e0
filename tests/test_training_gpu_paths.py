"""The GPU paths' decisions, checked on the CPU (what a GPU-less machine can say about them): the TF32 and
cuDNN flags of a CUDA run, which runs capture the step as a CUDA graph, no host synchronisation inside the
step loop, the ONNX engine falling back from a CUDA provider it does not have, resident batches from tensor
indices. The CUDA runs themselves are in ``gpu_checks.py`` (CUDA only: not collected by the suite, run by ``bench/gpu_run.sh``)."""

from __future__ import annotations

import collections
import inspect
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agegender import caffe2torch
from agegender.evaluation import OnnxEngine, TorchEngine
from agegender.evaluation.engines import backend_flags
from agegender.training import (BatchPlan, TrainBatches, Trainer, TrainerCallback, TrainOptions, build_net, initialise,
                                read_solver_config, read_train_val)
from agegender.training.data import validation_batches

from .conftest import REPO
from .training_nets import tiny_resident, write_tiny

CUDA = torch.device("cuda")  # setting the backend flags needs no GPU: they are process-wide switches

DEPLOY = """name: "small"
input: "data"
input_shape { dim: 1 dim: 3 dim: 16 dim: 16 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc8" type: "InnerProduct" bottom: "conv1" top: "fc8" inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" }
"""


def _legacy_flags() -> tuple[bool, bool, bool]:
    return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)


# --- TF32 and cuDNN ---------------------------------------------------------------------------------------
def test_fp32_on_cuda_switches_tf32_off_for_convolutions_too_and_restores_the_flags() -> None:
    # PyTorch's default is TF32 ON for cuDNN convolutions: an "fp32" run on a GPU that does not switch it off
    # is a TF32 run. The flags are process-wide, so this needs no GPU.
    before = _legacy_flags()
    with backend_flags(CUDA, tf32=False):
        assert _legacy_flags() == (False, False, True)
    assert _legacy_flags() == before
    with backend_flags(CUDA, tf32=True, benchmark=False):
        assert _legacy_flags() == (True, True, False)
    assert _legacy_flags() == before
    with backend_flags("cpu", tf32=True):  # nothing changes for a CPU run
        assert _legacy_flags() == before


def test_the_trainer_and_the_eval_engine_use_those_flags_on_cuda() -> None:
    assert "backend_flags(self.device, tf32=self.options.precision in (\"tf32\", \"bf16\")" in inspect.getsource(
        Trainer._backend_flags)
    assert "backend_flags(self.device, tf32=self.precision != \"fp32\")" in inspect.getsource(TorchEngine.__call__)


@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"), reason="PyTorch < 2.9: one TF32 API")
@pytest.mark.parametrize("newer", ["torch.backends.fp32_precision = 'tf32'",
                                   "torch.backends.cuda.matmul.fp32_precision = 'tf32'",
                                   "torch.backends.cudnn.fp32_precision = 'tf32'"])
def test_flags_work_in_a_process_that_used_the_newer_tf32_api(newer: str) -> None:
    # since PyTorch 2.9 the legacy getters raise "mix of the legacy and new APIs" once the newer API was used
    # (torch.backends.cudnn.flags() too): the run must neither crash nor leave TF32 on. A fresh process:
    # these switches cannot be undone in this one.
    code = f"""
import torch
{newer}
from agegender.evaluation.engines import backend_flags
b = torch.backends
with backend_flags(torch.device("cuda"), tf32=False):
    inside = (b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision)
    assert inside[0] == "ieee" and inside[1] in ("ieee", "none"), inside
    if inside[1] == "none":  # the legacy switch was used: it must read False
        assert b.cudnn.allow_tf32 is False
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_tf32_is_an_eval_precision_and_exact_float32_on_a_cpu(tmp_path: Path) -> None:
    (tmp_path / "deploy.prototxt").write_text(DEPLOY)
    net = caffe2torch.load(tmp_path / "deploy.prototxt")
    caffe2torch.init_seeded(net, 0)
    batch = np.random.default_rng(0).normal(0, 50, (4, 3, 16, 16)).astype(np.float32)
    fp32 = TorchEngine(net, device="cpu", precision="fp32")(batch)
    tf32 = TorchEngine(net, device="cpu", precision="tf32")
    assert tf32.name.endswith("cpu tf32")
    assert np.array_equal(tf32(batch), fp32)


# --- which runs are captured -------------------------------------------------------------------------------
def _trainer(tiny: Path, tmp_path: Path, **options) -> Trainer:
    train_val, solver_file = tiny / "train_val.prototxt", tiny / "solver.prototxt"
    net = build_net(read_train_val(train_val), train_val, input_shapes={"data": (4, 3, 10, 10)})
    initialise(net, None, seed=0)
    dataset = tiny_resident()
    return Trainer(net, read_solver_config(solver_file), TrainBatches(dataset, BatchPlan(len(dataset), 4, seed=0)),
                   tmp_path / "run", options=TrainOptions(handle_signals=False, **options))


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    write_tiny(tmp_path / "net", max_iter=8)
    return tmp_path / "net"


def test_cuda_graph_capture_is_left_to_torch_compile_when_its_mode_makes_cuda_graphs(tiny: Path, tmp_path: Path) -> None:
    # capturing torch.compile's own CUDA graphs (reduce-overhead, max-autotune, the cudagraphs backend) inside
    # our capture fails; they are then the only graphs, and each step is marked for them. Decided from the
    # options alone: no GPU needed to construct a CUDA trainer.
    assert _trainer(tiny, tmp_path, device="cuda")._use_graphs()
    assert _trainer(tiny, tmp_path, device="cuda", compile=True)._use_graphs()  # default inductor: captured here
    assert not _trainer(tiny, tmp_path, device="cuda", cuda_graphs=False)._use_graphs()
    for options in ({"compile_mode": "reduce-overhead"}, {"compile_mode": "max-autotune"},
                    {"compile_backend": "cudagraphs"}):
        trainer = _trainer(tiny, tmp_path, device="cuda", compile=True, **options)
        assert not trainer._use_graphs() and trainer._compile_graphs(), options
    assert not _trainer(tiny, tmp_path, device="cuda", compile_mode="reduce-overhead")._compile_graphs()  # no compile
    assert not _trainer(tiny, tmp_path, device="cpu")._use_graphs()


# --- no host synchronisation in the step loop ----------------------------------------------------------------
_SYNCING = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")


class _CountSyncs(TrainerCallback):
    """Counts the tensor methods that wait for the device (on a GPU) from the run's start to its end."""

    def __init__(self) -> None:
        self.calls: collections.Counter = collections.Counter()
        self.saved = {name: getattr(torch.Tensor, name) for name in _SYNCING}

    def _wrap(self, name: str):
        original, calls = self.saved[name], self.calls

        def counted(tensor, *args, **kwargs):
            calls[name] += 1
            return original(tensor, *args, **kwargs)

        return counted

    def on_start(self, trainer, start_iteration) -> None:  # type: ignore[no-untyped-def]
        for name in _SYNCING:
            setattr(torch.Tensor, name, self._wrap(name))

    def restore(self) -> None:
        for name, method in self.saved.items():
            setattr(torch.Tensor, name, method)

    def on_end(self, trainer, result) -> None:  # type: ignore[no-untyped-def]
        self.restore()


@pytest.mark.parametrize("static_step", [False, True])
def test_the_step_loop_reads_the_device_only_once_per_log_window(tiny: Path, tmp_path: Path, static_step: bool) -> None:
    # 8 iterations logged every 4: two read-backs (the losses' buffer, .cpu().tolist()); none per step (no
    # .item(), float(tensor), bool(tensor), .numpy() in the loop, the NaN check included)
    train_val, solver_file = tiny / "train_val.prototxt", tiny / "solver.prototxt"
    solver = read_solver_config(solver_file).with_overrides(max_iter=8, display=4, snapshot=0,
                                                            snapshot_after_train=False)
    net = build_net(read_train_val(train_val), train_val, input_shapes={"data": (4, 3, 10, 10)})
    initialise(net, None, seed=0)
    dataset = tiny_resident()
    counter = _CountSyncs()
    try:
        Trainer(net, solver, TrainBatches(dataset, BatchPlan(len(dataset), 4, seed=0)), tmp_path / "run",
                options=TrainOptions(device="cpu", static_step=static_step, handle_signals=False),
                callbacks=[counter]).run()
    finally:
        counter.restore()
    assert dict(counter.calls) == {"cpu": 2, "tolist": 2}


def test_validation_batches_are_made_as_they_are_consumed() -> None:
    dataset = tiny_resident(phase="TEST")
    batches = validation_batches(dataset, 4, 3, 1)
    assert inspect.isgenerator(batches)  # not test_iter batches of crops held on the device at once
    indices = [labels.tolist() for _, labels in batches]
    expected = [dataset.labels[(np.arange(4) + (3 + k) * 4) % len(dataset)].tolist() for k in range(3)]
    assert indices == expected


def test_resident_batches_take_tensor_indices() -> None:
    dataset = tiny_resident(phase="TEST")
    from_numpy = dataset.batch(np.array([3, 1, 7]))
    from_tensor = dataset.batch(torch.tensor([3, 1, 7]))
    assert torch.equal(from_numpy.images, from_tensor.images) and torch.equal(from_numpy.labels, from_tensor.labels)


# --- ONNX Runtime without its CUDA provider ------------------------------------------------------------------
def test_onnx_engine_asked_for_cuda_says_it_runs_on_the_cpu_and_does_not_crash(tmp_path: Path, caplog) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here: no fallback to see")
    (tmp_path / "deploy.prototxt").write_text(DEPLOY)
    net = caffe2torch.load(tmp_path / "deploy.prototxt")
    caffe2torch.init_seeded(net, 0)
    batch = np.random.default_rng(0).normal(0, 50, (4, 3, 16, 16)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="agegender.evaluation.engines"):
        engine = OnnxEngine(net, device="cuda")
    assert engine.providers == ["CPUExecutionProvider"]
    assert "fallback: CUDAExecutionProvider unavailable" in engine.name
    assert engine.fallback is not None and "onnxruntime-gpu" in engine.fallback
    assert any("onnxruntime-gpu" in r.getMessage() for r in caplog.records)
    reference = TorchEngine(net, device="cpu")(batch)
    assert np.abs(engine(batch) - reference).max() < 1e-5
    plain = OnnxEngine(net)  # the default asks for what this onnxruntime has: no fallback to report
    assert plain.fallback is None and "fallback" not in plain.name
