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

SCHEDULE_GOAL_S = 120.0

# Dense (no 2:4 sparsity) peak TFLOP/s per precision of known GPUs, from NVIDIA's datasheets (tensor cores
# for bf16/tf32, CUDA cores for fp32; the datasheets print the sparse figures, twice these). The H200 SXM
# (torch names it plainly "NVIDIA H200") has the H100 SXM's rates: bf16 989.4, tf32 494.7. The most specific
# name comes first: "H100 PCIe" and the NVL parts run at lower clocks/power.
PEAK_TFLOPS = {
    "H200 NVL": {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "H100 NVL": {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "H100 PCIe": {"bf16": 756.5, "tf32": 378.0, "fp32": 51.2},
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
        if key.lower() in name.lower():
            return peaks[precision], f"{key} {precision} dense, datasheet: {peaks[precision]} TFLOP/s"
    return None, f"unknown GPU {name!r}: give --peak-tflops"


def measured_ceiling(device, precision: str, size: int = 8192, repeats: int = 10) -> float | None:
    """TFLOP/s of a ``size``^3 matrix product at ``precision`` on ``device`` (random data, CUDA events,
    mean of ``repeats`` after 3 warm-ups): the rate this GPU actually reaches, beside the datasheet's."""
    import torch

    if device.type != "cuda":
        return None
    from agegender.evaluation.engines import backend_flags

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    with backend_flags(device, tf32=precision != "fp32"):
        for _ in range(3):
            a @ b
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            a @ b
        end.record()
        end.synchronize()
    seconds = start.elapsed_time(end) / 1000 / repeats
    return 2 * size ** 3 / seconds / 1e12


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
    trainer = Trainer(net, solver, batches, out, options=options, callbacks=[clock.callback()])
    trainer.run()
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
    ceiling = args.ceilings.get(precision) if args.ceilings else None
    return {"arch": common.ARCH_NAMES[arch], "batch": batch, "precision": precision,
            "images_per_second": images_per_second,
            "gflops_per_image_fwd": flops / 1e9, "achieved_tflops": achieved / 1e12,
            "mfu": achieved / (peak * 1e12) if peak else None, "peak": peak_source, "peak_tflops": peak,
            "measured_matmul_tflops": ceiling, "of_measured_matmul": achieved / (ceiling * 1e12) if ceiling else None,
            "data_images_per_second": data_rate, "step_ms": 1000 * seconds / max(last_it - first_it, 1),
            "cuda_graph": _captured(trainer)}


def _captured(trainer) -> bool:
    """Whether the run's step was a replayed CUDA graph (a failed capture falls back with a warning)."""
    step = getattr(trainer, "step_fn", None)
    return bool(step is not None and step.graph is not None)


def paper_schedule(name: str, args, device) -> None:
    """Time a whole cross-validation run of zoo model ``name`` (its solver's schedule) on synthetic folds."""
    import torch

    from agegender.training import BatchPlan, TrainBatches, Trainer, TrainOptions, read_solver_config

    train_val, solver_file, _ = (common.require_file(common.model_definitions() / name / f)
                                 for f in ("train_val_test_fold_is_0.prototxt", "solver_test_fold_is_0.prototxt",
                                           "deploy.prototxt"))
    precision = args.precisions.split(",")[0]
    solver = read_solver_config(solver_file)
    overrides = {"snapshot": args.snapshot, "test_interval": 0, "snapshot_after_train": False}
    if args.max_iter:
        overrides["max_iter"] = args.max_iter
    solver = solver.with_overrides(**overrides)
    from agegender.training import read_train_val
    from agegender.training.runs import _data_layers

    batch = args.schedule_batch or int(_data_layers(read_train_val(train_val), "TRAIN")[0].data_param.batch_size)
    print(f"{name}: {args.folds} fold(s) x {solver.max_iter} iterations x batch {batch} ({precision}, "
          f"{args.fold_images} synthetic faces per fold, on {device})")
    started = time.perf_counter()
    rows, records = [], []
    for fold in range(args.folds):
        began = time.perf_counter()
        net, transform = _prepare(train_val, batch, not args.nchw)
        data = _synthetic_fold(args.fold_images, transform, device, seed=fold)
        options = TrainOptions(device=str(device), precision=precision, channels_last=not args.nchw,
                               compile=args.compile, cuda_graphs=not args.no_cuda_graphs, handle_signals=False,
                               log_every=max(solver.display, 100), keep_checkpoints=1)
        trainer = Trainer(net, solver, TrainBatches(data, BatchPlan(len(data), batch, seed=fold)),
                          common.WORK_DIR / "schedule" / f"fold_{fold}", options=options)
        result = trainer.run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - began
        loss = f"{result.smoothed_loss:.4f}" if result.smoothed_loss is not None else "-"
        rows.append([fold, f"{wall:.1f}", f"{result.seconds:.1f}", f"{result.images_per_second:,.0f}", loss,
                     _captured(trainer)])
        print(f"  fold {fold}: {wall:.1f} s wall, {result.seconds:.1f} s training, {result.images_per_second:,.0f} img/s, "
              f"loss {loss}, CUDA graph {_captured(trainer)}; {time.perf_counter() - started:.1f} s so far", flush=True)
        records.append({"fold": fold, "wall_s": wall, "train_s": result.seconds,
                        "images_per_second": result.images_per_second, "smoothed_loss": result.smoothed_loss,
                        "first_smoothed_loss": result.first_smoothed_loss, "cuda_graph": _captured(trainer)})
        del trainer, net, data
    total = time.perf_counter() - started
    print(common.table(["fold", "wall s (build + data + train)", "train s", "img/s", "final loss", "CUDA graph"],
                       rows))
    verdict = "met" if total < SCHEDULE_GOAL_S else "NOT met"
    print(f"total: {total:.1f} s for {args.folds} fold(s) x {solver.max_iter} iterations x batch {batch} "
          f"(goal on one H100/H200: under {SCHEDULE_GOAL_S:.0f} s for 5 folds: {verdict if args.folds == 5 else 'n/a'})")
    _write_json(args.json, {"schedule": name, "precision": precision, "folds": args.folds, "batch": batch,
                            "max_iter": solver.max_iter, "snapshot": args.snapshot, "device": str(device),
                            "total_s": total, "goal_s": SCHEDULE_GOAL_S, "per_fold": records})


def _write_json(path: str | None, payload: dict, quiet: bool = False) -> None:
    if not path:
        return
    import json

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2, default=str) + "\n")
    if not quiet:
        print(f"wrote {path}")


def _train_payload(args, device, cases: list) -> dict:
    import torch

    cuda = device.type == "cuda"
    return {"device": str(device), "gpu": torch.cuda.get_device_name(device) if cuda else None,
            "torch": torch.__version__, "channels_last": not args.nchw, "compile": args.compile,
            "ceilings_tflops": args.ceilings, "cases": cases}


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
    parser.add_argument("--snapshot", type=int, default=0,
                        help="--schedule: checkpoint every N iterations (default 0: none; the paper's solver says 100)")
    parser.add_argument("--ceiling", action="store_true",
                        help="on CUDA, also time an 8192^3 matrix product per precision and report the step's "
                             "FLOP/s against it (besides the datasheet MFU)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
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
    precisions = common.parse_list(args.precisions, ["fp32", "tf32", "bf16"])
    args.ceilings = {}
    if args.ceiling and cuda:
        for precision in precisions:
            args.ceilings[precision] = measured_ceiling(device, precision)
            print(f"measured ceiling: 8192^3 {precision} matmul {args.ceilings[precision]:,.0f} TFLOP/s "
                  f"(datasheet {peak_tflops(device, precision, args.peak_tflops)[1]})", flush=True)
    try:
        if args.schedule:
            paper_schedule(args.schedule, args, device)
            return
        rows, cases = [], []
        for arch in common.parse_list(args.archs, list(common.ARCHS)):
            for precision in precisions:
                for batch in (int(b) for b in common.parse_list(args.batches)):
                    try:
                        case = measure(arch, batch, precision, args, device)
                    except Exception as exc:  # one failing case (out of memory, say) must not cost the others
                        print(f"  {common.ARCH_NAMES[arch]} batch {batch} {precision}: FAILED "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", flush=True)
                        cases.append({"arch": common.ARCH_NAMES[arch], "batch": batch, "precision": precision,
                                      "error": f"{type(exc).__name__}: {exc}"})
                        _write_json(args.json, _train_payload(args, device, cases), quiet=True)
                        if cuda:
                            torch.cuda.empty_cache()
                        continue
                    cases.append(case)
                    _write_json(args.json, _train_payload(args, device, cases), quiet=True)  # a timeout keeps these
                    if cuda:  # the case's net, graph pool and fold go before the next one is built
                        import gc

                        gc.collect()
                        torch.cuda.empty_cache()
                    efficiency = (f"{100 * case['mfu']:.1f}%" if case["mfu"] is not None
                                  else f"{1000 * case['achieved_tflops']:.1f} GFLOP/s")
                    measured = (f"{100 * case['of_measured_matmul']:.1f}%" if case["of_measured_matmul"] is not None
                                else "-")
                    rows.append([case["arch"], case["batch"], case["precision"], f"{case['images_per_second']:,.1f}",
                                 f"{case['step_ms']:.2f}", efficiency, measured,
                                 f"{case['data_images_per_second']:,.0f}", case["cuda_graph"]])
                    print(f"  {case['arch']} batch {batch} {precision}: {case['images_per_second']:,.1f} img/s, "
                          f"{efficiency} ({case['peak']})", flush=True)
        print(common.table(["arch", "batch", "precision", "train img/s", "ms/step", "MFU (or achieved)",
                            "of measured matmul", "data img/s", "CUDA graph"], rows))
        print("MFU = 3 x forward FLOPs/image (multiply-add = 2) x images/s / dense datasheet peak; "
              "goal: >= 50% for VGG16 in bf16 at large batch; data img/s >> train img/s")
        print(common.load_line())
        _write_json(args.json, _train_payload(args, device, cases))
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(common.WORK_DIR / "train", ignore_errors=True)
            shutil.rmtree(common.WORK_DIR / "schedule", ignore_errors=True)


if __name__ == "__main__":
    main()
