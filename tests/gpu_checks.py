"""The GPU paths on a CUDA device. Not collected by the CPU suite (the file name is not ``test_*.py``):
``bench/gpu_run.sh`` runs it on a GPU machine with ``pytest tests/gpu_checks.py``; without a GPU every test skips.

* the captured CUDA-graph step equals the eager step (iter_size 1 and 2, channels-last and NCHW), its warm-up
  leaves no trace, and each replay draws new dropout masks (the default generator is graph-safe);
* bf16 training runs captured with float32 weights; no host synchronisation inside the step loop
  (``torch.cuda.set_sync_debug_mode``: only the read-back of each log window waits for the device);
* the GPU-resident transform equals the CPU (numpy) transform bit for bit, crops, mirrors and mean image;
* bf16 evaluation gives fp32's argmax; fp32 evaluation on the GPU is float32 (TF32 off);
* DistributedDataParallel over NCCL on one GPU equals the plain run; the ONNX engine asked for CUDA runs;
* ``slow``: torch.compile (inductor inside our capture, and reduce-overhead's own CUDA graphs) equals eager.

This file is also the DDP worker: ``python tests/gpu_checks.py ddp FOLDER`` (what the test launches).
"""

from __future__ import annotations

import copy
import inspect
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as the DDP worker script
    sys.path.insert(0, str(REPO))

from agegender import caffe2torch  # noqa: E402
from agegender.caffe2torch.net import eval_mode  # noqa: E402
from agegender.evaluation import OnnxEngine, TorchEngine  # noqa: E402
from agegender.folds import CaffeTransform, GPUResidentDataset  # noqa: E402
from agegender.prototxt import write_blobproto  # noqa: E402
from agegender.training import (BatchPlan, TrainBatches, Trainer, TrainerCallback, TrainOptions,  # noqa: E402
                                build_net, initialise, load_checkpoint, read_solver_config, read_train_val)
from tests.training_nets import tiny_images, write_tiny  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DROPOUT = 'layer { name: "drop" type: "Dropout" bottom: "pool1" top: "pool1" dropout_param { dropout_ratio: 0.5 } }\n'


def _cuda_resident(phase: str = "TRAIN", count: int = 24) -> GPUResidentDataset:
    images, labels = tiny_images(count)
    transform = CaffeTransform.from_values(crop_size=10, mirror=phase == "TRAIN", mean_value=100, phase=phase)
    return GPUResidentDataset(images, labels, transform, "cuda")


def _tiny(folder: Path, *, dropout: bool = False, **solver) -> Path:
    train_val, _ = write_tiny(folder, **solver)
    if dropout:  # before the inner product, in place on pool1
        text = train_val.read_text()
        anchor = 'layer {\n  name: "fc"'
        assert anchor in text
        train_val.write_text(text.replace(anchor, DROPOUT + anchor))
    return folder


def _train(folder: Path, out: Path, *, overrides: dict | None = None, callbacks=(), dist=None, **options):
    train_val, solver_file = folder / "train_val.prototxt", folder / "solver.prototxt"
    solver = read_solver_config(solver_file)
    if overrides:
        solver = solver.with_overrides(**overrides)
    net = build_net(read_train_val(train_val), train_val, input_shapes={"data": (4, 3, 10, 10)})
    initialise(net, None, seed=0)
    dataset = _cuda_resident()
    plan = BatchPlan(len(dataset), 4, iter_size=solver.iter_size, seed=0)
    options = {"device": "cuda", "handle_signals": False, **options}
    trainer = Trainer(net, solver, TrainBatches(dataset, plan), out, options=TrainOptions(**options),
                      callbacks=callbacks, dist=dist)
    result = trainer.run()
    return net, trainer, result


def _assert_close_weights(a, b, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key].float().cpu(), sb[key].float().cpu(), rtol=rtol, atol=atol, msg=key)


# --- the captured step -------------------------------------------------------------------------------------
@pytest.mark.parametrize("iter_size,channels_last", [(1, True), (2, False)])
def test_cuda_graph_step_equals_the_eager_step(tmp_path: Path, iter_size: int, channels_last: bool) -> None:
    folder = _tiny(tmp_path / "net", max_iter=6, iter_size=iter_size)
    eager, eager_trainer, eager_result = _train(folder, tmp_path / "eager", cuda_graphs=False,
                                                channels_last=channels_last)
    graph, graph_trainer, graph_result = _train(folder, tmp_path / "graph", channels_last=channels_last)
    assert eager_trainer.step_fn is None
    assert graph_trainer.step_fn is not None and graph_trainer.step_fn.graph is not None, "the step was not captured"
    # the capture's warm-up steps were undone: had they not been, the weights would be 3 updates further
    _assert_close_weights(graph, eager)
    assert graph_result.last_loss == pytest.approx(eager_result.last_loss, rel=1e-4, abs=1e-6)
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in graph.parameters())


def _replays(trainer: Trainer, count: int = 3) -> list[torch.Tensor]:
    step = trainer.step_fn
    assert step is not None and step.graph is not None
    outs = []
    for _ in range(count):
        step.graph.replay()
        outs.append(step.out.clone())
    torch.cuda.synchronize()
    return outs


def test_cuda_graph_replays_draw_new_dropout_masks(tmp_path: Path) -> None:
    # rate, momentum and decay 0: a replay on the same static inputs changes no weight, so its loss moves only
    # when its dropout mask does (torch.cuda.graph registers the default generator: a new offset per replay)
    still = {"base_lr": 0.0, "momentum": 0.0, "weight_decay": 0.0}
    _, with_dropout, _ = _train(_tiny(tmp_path / "drop", dropout=True, max_iter=2), tmp_path / "a", overrides=still)
    losses = [float(o[0]) for o in _replays(with_dropout)]
    assert len(set(losses)) == len(losses), losses
    _, without, _ = _train(_tiny(tmp_path / "plain", max_iter=2), tmp_path / "b", overrides=still)
    plain = [float(o[0]) for o in _replays(without)]
    assert max(plain) - min(plain) <= 1e-6 * max(1.0, abs(plain[0])), plain


def test_bf16_training_is_captured_and_keeps_float32_weights(tmp_path: Path) -> None:
    folder = _tiny(tmp_path / "net", max_iter=4)
    _, _, fp32 = _train(folder, tmp_path / "fp32")
    net, trainer, bf16 = _train(folder, tmp_path / "bf16", precision="bf16")
    assert trainer.step_fn is not None and trainer.step_fn.graph is not None
    assert bf16.status == "finished" and np.isfinite(bf16.last_loss)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert bf16.first_smoothed_loss == pytest.approx(fp32.first_smoothed_loss, rel=0.05)


class _SyncWatch(TrainerCallback):
    """Turns on ``torch.cuda.set_sync_debug_mode("warn")`` after the first log window (the capture and the
    cuDNN autotuning are behind) and off at the end."""

    def __init__(self) -> None:
        self.enabled_at: int | None = None

    def on_records(self, trainer, records, images_per_second) -> None:  # type: ignore[no-untyped-def]
        if self.enabled_at is None:
            self.enabled_at = trainer.iteration
            torch.cuda.set_sync_debug_mode("warn")

    def on_end(self, trainer, result) -> None:  # type: ignore[no-untyped-def]
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize("cuda_graphs", [True, False])
def test_no_host_synchronisation_inside_the_step_loop(tmp_path: Path, cuda_graphs: bool) -> None:
    # 12 iterations logged every 4: after the first window, two more read-backs (iterations 8 and 12), each one
    # synchronisation; a per-step one (.item(), a pageable copy of the crop offsets, bool(tensor)) would be 8
    folder = _tiny(tmp_path / "net", max_iter=12)
    watch = _SyncWatch()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _train(folder, tmp_path / "run", overrides={"display": 4, "snapshot": 0, "snapshot_after_train": False},
                   callbacks=[watch], cuda_graphs=cuda_graphs)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert watch.enabled_at == 4
    syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(syncs) <= 2, syncs


# --- the resident data ---------------------------------------------------------------------------------------
def test_gpu_resident_transform_equals_the_cpu_transform_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 3, 256, 256), dtype=np.uint8)
    labels = np.arange(16) % 8
    mean_file = tmp_path / "mean.binaryproto"
    write_blobproto(rng.uniform(90, 130, (1, 3, 256, 256)).astype(np.float32), mean_file)
    indices = np.array([5, 0, 15, 5, 3, 9, 12, 1])
    transforms = [CaffeTransform.from_values(227, mirror=True, mean_file=mean_file, phase="TRAIN"),
                  CaffeTransform.from_values(224, mirror=True, mean_file=mean_file, phase="TRAIN", scale=0.00390625),
                  CaffeTransform.from_values(224, mean_file=mean_file, phase="TEST"),
                  CaffeTransform.from_values(227, mirror=True, mean_value=[104.0, 117.0, 123.0], phase="TRAIN")]
    for transform in transforms:
        resident = GPUResidentDataset(images, labels, transform, "cuda")
        params = transform.sample_params(len(indices), 256, 256, np.random.default_rng(1))
        out = resident.batch(indices, params)
        reference = transform.apply_indexed(images, indices, params)
        assert out.images.device.type == "cuda" and out.images.dtype == torch.float32
        assert torch.equal(out.images.cpu(), torch.from_numpy(reference)), transform
        assert out.labels.cpu().tolist() == labels[indices].tolist()
    test = transforms[2]
    assert torch.equal(test.oversample(torch.from_numpy(images[:4]).cuda()).cpu(),
                       torch.from_numpy(test.oversample(images[:4])))
    # crops drawn from a CPU torch generator and from a CUDA one: both work on a CUDA fold
    resident = GPUResidentDataset(images, labels, transforms[0], "cuda")
    for generator in (torch.Generator().manual_seed(0), torch.Generator(device="cuda").manual_seed(0)):
        batch = next(resident.iterate(4, shuffle=True, generator=generator))
        assert batch.images.shape == (4, 3, 227, 227) and batch.images.device.type == "cuda"


# --- evaluation ------------------------------------------------------------------------------------------------
EVAL_DEPLOY = """name: "small"
input: "data"
input_shape { dim: 1 dim: 3 dim: 32 dim: 32 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 16 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc8" type: "InnerProduct" bottom: "pool1" top: "fc8" inner_product_param { num_output: 8 } }
layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" }
"""


def _eval_net(tmp_path: Path):
    (tmp_path / "deploy.prototxt").write_text(EVAL_DEPLOY)
    net = caffe2torch.load(tmp_path / "deploy.prototxt")
    caffe2torch.init_seeded(net, 0)
    batch = np.random.default_rng(0).normal(0, 50, (256, 3, 32, 32)).astype(np.float32)
    with torch.no_grad(), eval_mode(net):  # logits of spread ~5: most images have a clear winner
        logits = net(data=torch.from_numpy(batch), outputs=["fc8"])["fc8"]
        fc = net.layer_module("fc8")
        factor = 5.0 / float(logits.std())
        fc.weight.mul_(factor)
        if fc.bias is not None:
            fc.bias.mul_(factor)
    return net, batch


def test_bf16_eval_gives_fp32_argmax_and_fp32_on_cuda_is_float32(tmp_path: Path) -> None:
    net, batch = _eval_net(tmp_path)
    cpu = TorchEngine(copy.deepcopy(net), device="cpu")(batch)
    fp32 = TorchEngine(net, device="cuda", precision="fp32")(batch)
    tf32 = TorchEngine(net, device="cuda", precision="tf32")(batch)
    bf16 = TorchEngine(net, device="cuda", precision="bf16")(batch)
    assert np.abs(fp32 - cpu).max() < 1e-5  # float32 (TF32 convolutions would land near 1e-3)
    assert np.abs(tf32 - cpu).max() < 5e-2
    ordered = np.sort(fp32, axis=1)
    clear = ordered[:, -1] - ordered[:, -2] > 0.3
    assert clear.mean() > 0.3, clear.mean()
    assert np.array_equal(bf16.argmax(1)[clear], fp32.argmax(1)[clear])
    assert (bf16.argmax(1) == fp32.argmax(1)).mean() > 0.9


def test_onnx_engine_asked_for_cuda_runs_on_this_machine(tmp_path: Path) -> None:
    net, batch = _eval_net(tmp_path)
    reference = TorchEngine(copy.deepcopy(net), device="cpu")(batch[:16])
    engine = OnnxEngine(net, device="cuda")
    print(f"ONNX engine: {engine.name}; fallback: {engine.fallback}")
    if engine.fallback is not None:
        assert engine.providers[0] == "CPUExecutionProvider" and "CUDAExecutionProvider" in engine.fallback
    assert np.abs(engine(batch[:16]) - reference).max() < 1e-4


# --- DDP over NCCL ----------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ddp_with_nccl_on_one_gpu_equals_the_plain_run(tmp_path: Path) -> None:
    # one process (a second one on the same GPU is refused by NCCL): the DDP wrapper, NCCL's all_reduce of the
    # logged values, the stop vote, the barrier and the gathered random states of each checkpoint
    folder = _tiny(tmp_path / "ddp", max_iter=4, snapshot=2)
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "ddp", str(folder)], env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    ddp = torch.load(folder / "ddp.pt", weights_only=True)
    single, _, _ = _train(folder, tmp_path / "single", cuda_graphs=False)
    for key, value in single.state_dict().items():
        torch.testing.assert_close(ddp[key], value.cpu(), rtol=1e-4, atol=1e-5, msg=key)
    checkpoint = load_checkpoint(folder / "run" / "checkpoints" / "iter_0000004.pt")
    assert checkpoint["world_size"] == 1 and len(checkpoint["rng"]) == 1


def _ddp_worker(folder: Path) -> None:
    import torch.distributed as dist

    from agegender.training.distributed import DistContext, shutdown_distributed

    torch.cuda.set_device(0)
    device = torch.device("cuda", 0)
    kwargs = {"device_id": device} if "device_id" in inspect.signature(dist.init_process_group).parameters else {}
    dist.init_process_group("nccl", **kwargs)
    context = DistContext(rank=0, world_size=1, local_rank=0, backend="nccl", device=device)
    net, trainer, _ = _train(folder, folder / "run", dist=context, device=None)
    from torch.nn.parallel import DistributedDataParallel

    assert isinstance(trainer.model, DistributedDataParallel) and trainer.step_fn is None
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, folder / "ddp.pt")
    shutdown_distributed(context)


# --- torch.compile (slow: inductor compiles for a minute) --------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_cuda_torch_compile_equals_eager(tmp_path: Path, mode: str | None) -> None:
    folder = _tiny(tmp_path / "net", max_iter=4)
    eager, _, _ = _train(folder, tmp_path / "eager", cuda_graphs=False)
    compiled, trainer, result = _train(folder, tmp_path / "compiled", compile=True, compile_mode=mode)
    assert result.status == "finished"
    if mode is None:  # inductor's kernels inside our captured step
        assert trainer.step_fn is not None and trainer.step_fn.graph is not None
    else:  # its own CUDA graphs, no capture of ours
        assert trainer.step_fn is None
    _assert_close_weights(compiled, eager, rtol=1e-3, atol=1e-4)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "ddp":
        _ddp_worker(Path(sys.argv[2]))
    else:
        sys.exit("usage: python tests/gpu_checks.py ddp FOLDER")
