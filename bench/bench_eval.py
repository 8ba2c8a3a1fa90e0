"""Benchmark: evaluation throughput (issue #5), single center crop and ten-crop over-sampling, per architecture.

What is timed is a whole :func:`agegender.evaluation.evaluate` call on a Datum LMDB: opening it, reading the
labels, reading and parsing every record, Caffe's TEST transform (center crop minus the mean image at the
crop offset, or the ten crops), the forward passes and the metrics. The LMDB holds ``--images`` UTKFace chips
of ``faces/utkface_full`` resized to 256 x 256 (built once in ``bench/_work/eval`` by
``agegender.folds.build.build_from_list``, repeated when more images are asked for than there are faces);
the mean image is Adience's fold-0 mean. Each architecture's deploy (``adience/model_definitions``) gets
``init_seeded`` weights.

Engines, interleaved in one run (the order rotating every round; medians and min..max spreads):

* ``torch``: our module (channels-last) through :class:`~agegender.evaluation.TorchEngine` on ``--device``
  (default: cuda when available, else cpu), ``--precision`` fp32 (and bf16 on a GPU);
* ``onnxruntime``: :class:`~agegender.evaluation.OnnxEngine` (the verified ONNX export), CPU runs only unless
  ``--onnx yes`` (on a GPU it asks for the CUDA provider and prints the fallback when it runs on the CPU).

On a GPU the images are also evaluated from a :class:`~agegender.folds.GPUResidentDataset` (uint8 images
on the GPU, crops made there); its load time from the LMDB is printed and counted in the goal's figure.
Goal (on a GPU machine): a fold's ~3.5k test faces with ten crops (35k VGG16 forwards) in under 3 s
including data loading (``--images 3500 --archs vgg16``).

    python bench/bench_eval.py                                  # CPU: 4 archs, small image counts, ~10 min
    python bench/bench_eval.py --archs adiencenet --images 64 --repeats 5
    python bench/bench_eval.py --device cuda --images 3500 --archs vgg16,googlenet --precision bf16
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import common

# CPU image counts that keep one ten-crop pass of each architecture to some seconds on 2 cores
CPU_IMAGES = {"adiencenet": 48, "caffenet": 48, "googlenet": 24, "vgg16": 6}
GOAL_SECONDS = 3.0
GOAL_IMAGES = 3500


def build_lmdb(images: int, work: Path) -> Path:
    """An LMDB of ``images`` UTKFace chips resized to 256 x 256 (the faces repeated when there are fewer)."""
    from agegender.folds.build import build_from_list

    faces = common.shared_root() / "faces" / "utkface_full"
    names = sorted(p.name for p in faces.glob("*.jpg"))
    if not names:
        sys.exit(f"no faces in {faces}: the benchmarks need the project's shared files (set AGEGENDER_SHARED)")
    out = work / f"faces_{images}_lmdb"
    if not (out / "data.mdb").is_file():
        work.mkdir(parents=True, exist_ok=True)
        listing = work / f"faces_{images}.txt"
        listing.write_text("".join(f"{names[i % len(names)]} {i % 8}\n" for i in range(images)))
        build_from_list(listing, faces, out, resize=256)
    return out


def write_json(path: str, rows: list[list], notes: list[dict], device, batch: int) -> None:
    """The rows of the tables (and the notes) as JSON."""
    import json

    import torch

    header = ["arch", "case", "faces", "runs", "faces_per_s", "forwards_per_s", "median_s", "spread_s",
              "with_resident_load_s"]
    gpu = device.type == "cuda"
    payload = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if gpu else None,
               "torch": torch.__version__, "batch": batch, "goal_s": GOAL_SECONDS, "goal_images": GOAL_IMAGES,
               "notes": notes, "rows": [dict(zip(header, r)) for r in rows]}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default=",".join(common.ARCHS), help=f"from {', '.join(common.ARCHS)}")
    parser.add_argument("--images", type=int, default=None, help="faces per pass (default: per arch on CPU, "
                        f"{GOAL_IMAGES} on a GPU)")
    parser.add_argument("--device", default=None, help="torch engine device (default cuda if available, else cpu)")
    parser.add_argument("--precision", default=None, help="comma-separated torch precisions (default fp32; "
                        "fp32,bf16 on a GPU)")
    parser.add_argument("--batch", type=int, default=None, help="net inputs per forward (default 50 CPU, 500 GPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=120.0, help="seconds per architecture, roughly")
    parser.add_argument("--threads", type=int, default=None, help="torch / ORT threads (default: usable cores)")
    parser.add_argument("--onnx", choices=("auto", "yes", "no"), default="auto",
                        help="the ONNX Runtime engine too (auto: on a CPU only; on a GPU it asks for the CUDA "
                             "provider and says so when it falls back to the CPU)")
    parser.add_argument("--centre-only", action="store_true", help="center-crop cases only (no ten crops)")
    parser.add_argument("--ten-crops-only", action="store_true", help="ten-crop cases only")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep bench/_work/eval")
    args = parser.parse_args(argv)

    import torch

    from agegender import caffe2torch
    from agegender.evaluation import OnnxEngine, TorchEngine, evaluate
    from agegender.folds import CaffeTransform, GPUResidentDataset

    archs = common.parse_list(args.archs, tuple(common.ARCHS))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    precisions = common.parse_list(args.precision or ("fp32,bf16" if gpu else "fp32"), ("fp32", "tf32", "bf16", "fp16"))
    threads = args.threads or common.usable_cores()
    torch.set_num_threads(threads)
    batch = args.batch or (500 if gpu else 50)
    mean_file = common.require_file(common.shared_root() / "adience" / "mean_images" / "mean_image" / "Test_fold_is_0"
                                    / "mean.binaryproto")
    print("\n".join(common.machine_lines()))
    if gpu:
        print(f"GPU: {torch.cuda.get_device_name(device)}")
    print(f"device {device}, precisions {precisions}, {threads} thread(s), {batch} net inputs per forward, "
          f"{args.repeats} timed pass(es) per case\n")
    work = common.WORK_DIR / "eval"
    rows: list[list] = []
    notes: list[dict] = []
    try:
        for arch in archs:
            images = args.images or (GOAL_IMAGES if gpu else CPU_IMAGES[arch])
            lmdb = build_lmdb(images, work)
            deploy = common.require_file(common.model_definitions() / common.ARCHS[arch] / "deploy.prototxt")
            net = caffe2torch.load(deploy)
            caffe2torch.init_seeded(net, 0)
            crop = int(net.blob_shapes["data"][-1])
            transform = CaffeTransform.from_values(crop_size=crop, mean_file=mean_file)
            engines = {f"torch {p}": TorchEngine(net, device=device, precision=p) for p in precisions}
            if args.onnx == "yes" or (args.onnx == "auto" and not gpu):
                onnx = OnnxEngine(net, threads=threads, device=device)
                print(f"{arch}: ONNX engine {onnx.name}" + (f"; {onnx.fallback}" if onnx.fallback else ""))
                notes.append({"arch": arch, "onnx_engine": onnx.name, "onnx_fallback": onnx.fallback})
                engines["onnxruntime"] = onnx
            resident = None
            if gpu:
                start = time.perf_counter()
                resident = GPUResidentDataset.from_lmdb(lmdb, transform, device)
                torch.cuda.synchronize()
                resident_load = time.perf_counter() - start
                print(f"{arch}: {images} faces loaded onto {device} in {resident_load:.2f} s")
            cases = {}
            modes = (False,) if args.centre_only else (True,) if args.ten_crops_only else (False, True)
            for name, engine in engines.items():
                for oversample in modes:
                    label = f"{name}, {'10 crops' if oversample else 'center'}"
                    cases[label] = (lambda e=engine, o=oversample: evaluate(e, lmdb, transform, "age", oversample=o,
                                                                              batch_size=batch))
                    if resident is not None:
                        cases[label + ", resident"] = (lambda e=engine, o=oversample: evaluate(
                            e, resident, transform, "age", oversample=o, batch_size=batch))
            times = common.interleaved_times(cases, warmup=1, repeats=args.repeats, min_repeats=1,
                                             budget=args.budget)
            for label, values in times.items():
                seconds = common.median(values)
                forwards = images * (10 if "10 crops" in label else 1)
                total = seconds + (resident_load if "resident" in label else 0.0)
                rows.append([common.ARCH_NAMES[arch], label, images, len(values), f"{images / seconds:,.1f}",
                             f"{forwards / seconds:,.1f}", f"{seconds:.2f}", common.spread(values),
                             f"{total:.2f}" if "resident" in label else ""])
            print(common.table(["arch", "case", "faces", "runs", "faces/s", "forwards/s", "median s", "spread s",
                                "with resident load s"], rows[-len(times):]) + "\n")
            if args.json:  # after each architecture: a timeout keeps what was measured
                write_json(args.json, rows, notes, device, batch)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("all cases:\n" + common.table(["arch", "case", "faces", "runs", "faces/s", "forwards/s", "median s",
                                           "spread s", "with resident load s"], rows))
    print(common.load_line())
    if args.json:
        write_json(args.json, rows, notes, device, batch)
        print(f"wrote {args.json}")
    if gpu:
        best = [r for r in rows if r[0] == "VGG16" and "10 crops" in r[1] and "resident" in r[1]
                and int(r[2]) >= GOAL_IMAGES]
        for r in best:
            verdict = "met" if float(r[8]) < GOAL_SECONDS else "NOT met"
            print(f"goal: {GOAL_IMAGES} faces x 10 crops of VGG16 in < {GOAL_SECONDS} s incl. loading: "
                  f"{r[8]} s ({r[1]}): {verdict}")
    else:
        print(f"goal ({GOAL_IMAGES} faces x 10 crops of VGG16 in < {GOAL_SECONDS} s on a GPU): not measured "
              "(no GPU here)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
