"""Benchmark: training throughput (images/s) and MFU of the Adience architectures, and the time of a
5-fold paper-schedule run, with the real training loop (:class:`agegender.training.Trainer`).

For each architecture (the TRAIN phase of its fold-0 train_val in ``adience/model_definitions``, its
solver), batch size and precision: the net is built and filled from its fillers, a synthetic fold of
uint8 256 x 256 faces is put on the device (``GPUResidentDataset``, the train_val's random crop and
mirror, per-channel means), and the Trainer runs ``--warmup`` + ``--steps`` iterations with the solver's
update (momentum, weight decay, lr_mult/decay_mult). Losses are read back every ``--warmup`` iterations
only; the time between the first and the last read-back gives the step rate (CUDA-graph capture, cuDNN
autotuning and compilation happen in the warm-up).

* images/s = batch * iter_size * timed iterations / seconds;
* MFU = 3 x forward FLOPs per image (``count_flops`` of the deploy net: multiply-add = 2) x images/s /
  peak FLOP/s (``--peak-tflops``, or the table below for known GPUs at the run's precision). On a CPU
  (no peak known) the achieved GFLOP/s are printed instead;
* data img/s: the resident batch gather + crop + mirror + mean alone, to show it is not the bottleneck.

``--schedule NAME`` times a whole cross-validation run instead: for each of ``--folds`` folds a fresh
model of zoo model NAME (e.g. ``gender_imdbwiki_vgg16``: 2400 iterations x batch 10 per fold, its solver)
trained on a synthetic fold of ``--fold-images`` faces, build and data upload included.

    python bench/bench_train.py                                         # all archs, defaults per device
    python bench/bench_train.py --archs vgg16,googlenet --batches 10,64,128 --precisions bf16,tf32
    python bench/bench_train.py --schedule gender_imdbwiki_vgg16 --folds 5 --precisions bf16
    python bench/bench_train.py --archs adiencenet --batches 8 --steps 4 --warmup 2   # a quick CPU look
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import common

# dense peak FLOP/s (TFLOP/s) per precision of known GPUs (tensor cores for bf16/tf32; fp32: CUDA cores)
PEAK_TFLOPS = {
    "H200": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 362.1, "tf32": 183.0, "fp32": 91.6},
    "L4": {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3},
}


def peak_tflops(device, precision: str, given: float | None) -> tuple[float | None, str]:
    """(peak TFLOP/s, where it comes from) for ``device`` at ``precision``."""
    import torch

    if given is not None:
        return given, "--peak-tflops"
    if device.type != "cuda":
        return None, "unknown (CPU)"
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return peaks[precision], f"{key} {precision} dense (table)"
    return None, f"unknown GPU {name!r}: give --peak-tflops"


def _synthetic_fold(count: int, transform, device, seed: int = 0):
    import numpy as np
    import torch

    from agegender.folds import GPUResidentDataset

    generator = torch.Generator(device=device).manual_seed(seed)  # made on the device: no host copy of the fold
    images = torch.randint(0, 256, (count, 3, 256, 256), dtype=torch.uint8, generator=generator, device=device)
    labels = np.arange(count) % 2
    return GPUResidentDataset(images, labels, transform, device)


def _arch_files(folder: str) -> tuple[Path, Path, Path]:
    base = common.model_definitions() / folder
    return (common.require_file(base / "train_val_test_fold_is_0.prototxt"),
            common.require_file(base / "solver_test_fold_is_0.prototxt"), common.require_file(base / "deploy.prototxt"))


def _forward_flops(deploy: Path) -> int:
    from agegender.caffe2torch.api import load
    from agegender.caffe2torch.flops import count_flops

    return count_flops(load(deploy)).total_flops


def _prepare(train_val: Path, batch: int, channels_last: bool):
    from agegender.folds import CaffeTransform
    from agegender.training import build_net, initialise, read_train_val
    from agegender.training.runs import _data_layers

    net_def = read_train_val(train_val)
    layer = _data_layers(net_def, "TRAIN")[0]
    crop = int(layer.transform_param.crop_size)
    transform = CaffeTransform.from_values(crop_size=crop, mirror=True, mean_value=[104.0, 117.0, 123.0], phase="TRAIN")
    net = build_net(net_def, train_val, input_shapes={"data": (batch, 3, crop, crop)}, channels_last=channels_last)
    initialise(net, None, seed=0)  # the prototxt's fillers (Caffe's default 0 where there is none)
    return net, transform


class _Clock:
    """Records (iteration, time) at each read-back of the losses."""

    def __init__(self) -> None:
        self.marks: list[tuple[int, float]] = []

    def callback(self):
        from agegender.training import TrainerCallback

        clock = self

        class Callback(TrainerCallback):
            def on_records(self, trainer, records, images_per_second):  # type: ignore[no-untyped-def]
                clock.marks.append((trainer.iteration, time.perf_counter()))

        return Callback()


def measure(arch: str, batch: int, precision: str, args, device) -> dict:
    """One (architecture, batch, precision) case: images/s, MFU or GFLOP/s, data img/s."""
    import torch

    from agegender.training import BatchPlan, TrainBatches, Trainer, TrainOptions, read_solver_config

    train_val, solver_file, deploy = _arch_files(common.ARCHS[arch])
    flops = _forward_flops(deploy)
    net, transform = _prepare(train_val, batch, not args.nchw)
    total = args.warmup + args.steps
    solver = read_solver_config(solver_file).with_overrides(max_iter=total, snapshot=0, test_interval=0,
                                                            snapshot_after_train=False)
    fold = _synthetic_fold(max(4 * batch, 64), transform, device)
    plan = BatchPlan(len(fold), batch, seed=0)
    batches = TrainBatches(fold, plan)
    clock = _Clock()
    options = TrainOptions(device=str(device), precision=precision, channels_last=not args.nchw, compile=args.compile,
                           cuda_graphs=not args.no_cuda_graphs, log_every=args.warmup, handle_signals=False,
                           keep_checkpoints=1)
    out = common.WORK_DIR / "train" / f"{arch}_{batch}_{precision}"
    Trainer(net, solver, batches, out, options=options, callbacks=[clock.callback()]).run()
    (first_it, first_t), (last_it, last_t) = clock.marks[0], clock.marks[-1]
    seconds = last_t - first_t
    images_per_second = (last_it - first_it) * batch / seconds if seconds > 0 else math.nan
    # the data pipeline alone: the same gathers the step does, synchronised once at the end
    started = time.perf_counter()
    for it in range(args.steps):
        images, _ = batches.batch(it)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    data_rate = args.steps * batch / (time.perf_counter() - started)
    peak, peak_source = peak_tflops(device, precision, args.peak_tflops)
    achieved = 3 * flops * images_per_second
    return {"arch": common.ARCH_NAMES[arch], "batch": batch, "precision": precision,
            "images_per_second": images_per_second,
            "gflops_per_image_fwd": flops / 1e9, "achieved_tflops": achieved / 1e12,
            "mfu": achieved / (peak * 1e12) if peak else None, "peak": peak_source, "data_images_per_second": data_rate,
            "step_ms": 1000 * seconds / max(last_it - first_it, 1)}


def paper_schedule(name: str, args, device) -> None:
    """Time a whole cross-validation run of zoo model ``name`` (its solver's schedule) on synthetic folds."""
    import torch

    from agegender.training import BatchPlan, TrainBatches, Trainer, TrainOptions, read_solver_config

    train_val, solver_file, _ = (common.require_file(common.model_definitions() / name / f)
                                 for f in ("train_val_test_fold_is_0.prototxt", "solver_test_fold_is_0.prototxt",
                                           "deploy.prototxt"))
    precision = args.precisions.split(",")[0]
    solver = read_solver_config(solver_file)
    overrides = {"snapshot": 0, "test_interval": 0, "snapshot_after_train": False}
    if args.max_iter:
        overrides["max_iter"] = args.max_iter
    solver = solver.with_overrides(**overrides)
    from agegender.training import read_train_val
    from agegender.training.runs import _data_layers

    batch = args.schedule_batch or int(_data_layers(read_train_val(train_val), "TRAIN")[0].data_param.batch_size)
    print(f"{name}: {args.folds} fold(s) x {solver.max_iter} iterations x batch {batch} ({precision}, "
          f"{args.fold_images} synthetic faces per fold, on {device})")
    started = time.perf_counter()
    rows = []
    for fold in range(args.folds):
        began = time.perf_counter()
        net, transform = _prepare(train_val, batch, not args.nchw)
        data = _synthetic_fold(args.fold_images, transform, device, seed=fold)
        options = TrainOptions(device=str(device), precision=precision, channels_last=not args.nchw,
                               compile=args.compile, cuda_graphs=not args.no_cuda_graphs, handle_signals=False,
                               log_every=max(solver.display, 100), keep_checkpoints=1)
        result = Trainer(net, solver, TrainBatches(data, BatchPlan(len(data), batch, seed=fold)),
                         common.WORK_DIR / "schedule" / f"fold_{fold}", options=options).run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rows.append([fold, f"{time.perf_counter() - began:.1f}", f"{result.seconds:.1f}",
                     f"{result.images_per_second:,.0f}", f"{result.smoothed_loss:.4f}"])
    total = time.perf_counter() - started
    print(common.table(["fold", "wall s (build + data + train)", "train s", "img/s", "final loss"], rows))
    print(f"total: {total:.1f} s for {args.folds} fold(s) (goal on one H100: under 120 s for 5 folds)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="adiencenet,caffenet,googlenet,vgg16")
    parser.add_argument("--batches", default=None, help="comma-separated (default: 10,64,128 on CUDA, 4 on CPU)")
    parser.add_argument("--precisions", default=None, help="fp32,tf32,bf16 (default: bf16,tf32 on CUDA, fp32 on CPU)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--warmup", type=int, default=None, help="iterations before timing (default 10 CUDA, 2 CPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed iterations (default 50 CUDA, 4 CPU)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak TFLOP/s for the MFU")
    parser.add_argument("--compile", action="store_true", help="torch.compile the net")
    parser.add_argument("--no-cuda-graphs", action="store_true")
    parser.add_argument("--nchw", action="store_true", help="plain NCHW instead of channels-last")
    parser.add_argument("--schedule", default=None, help="time a paper-schedule run of this zoo model instead")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--fold-images", type=int, default=12000, help="synthetic faces per fold (--schedule)")
    parser.add_argument("--max-iter", type=int, default=None, help="--schedule: override the solver's max_iter")
    parser.add_argument("--schedule-batch", type=int, default=None, help="--schedule: override the batch size")
    parser.add_argument("--keep", action="store_true", help="keep bench/_work/ (checkpoints and logs)")
    args = parser.parse_args()

    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    args.batches = args.batches or ("10,64,128" if cuda else "4")
    args.precisions = args.precisions or ("bf16,tf32" if cuda else "fp32")
    args.warmup = args.warmup or (10 if cuda else 2)
    args.steps = args.steps or (50 if cuda else 4)
    for line in common.machine_lines():
        print(line)
    if cuda:
        print(f"GPU: {torch.cuda.get_device_name(device)}")
    print(f"device: {device}; channels_last {not args.nchw}; compile {args.compile}; "
          f"CUDA graphs {cuda and not args.no_cuda_graphs}")
    try:
        if args.schedule:
            paper_schedule(args.schedule, args, device)
            return
        rows = []
        for arch in common.parse_list(args.archs, list(common.ARCHS)):
            for precision in common.parse_list(args.precisions, ["fp32", "tf32", "bf16"]):
                for batch in (int(b) for b in common.parse_list(args.batches)):
                    case = measure(arch, batch, precision, args, device)
                    efficiency = (f"{100 * case['mfu']:.1f}%" if case["mfu"] is not None
                                  else f"{1000 * case['achieved_tflops']:.1f} GFLOP/s")
                    rows.append([case["arch"], case["batch"], case["precision"], f"{case['images_per_second']:,.1f}",
                                 f"{case['step_ms']:.1f}", efficiency, f"{case['data_images_per_second']:,.0f}"])
                    print(f"  {case['arch']} batch {batch} {precision}: {case['images_per_second']:,.1f} img/s, "
                          f"{efficiency} ({case['peak']})", flush=True)
        print(common.table(["arch", "batch", "precision", "train img/s", "ms/step", "MFU (or achieved)",
                            "data img/s"], rows))
        print("MFU = 3 x forward FLOPs/image (multiply-add = 2) x images/s / peak; "
              "goal: >= 50% for VGG16 in bf16 at large batch; data img/s >> train img/s")
        print(common.load_line())
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(common.WORK_DIR / "train", ignore_errors=True)
            shutil.rmtree(common.WORK_DIR / "schedule", ignore_errors=True)


if __name__ == "__main__":
    main()
