"""Benchmark: the CPU data path, images/s of LMDB read + decode + transform into float32 crops.

From the 3,000 UTKFace chips of ``faces/utkface_full`` (200 x 200 JPEGs) it builds, in ``bench/_work/data``
(deleted at the end unless ``--keep``), the LMDBs the Adience nets read: resized to 256 x 256 as
``convert_imageset --resize_height=256 --resize_width=256`` does, one raw (C x H x W bytes) and one
encoded (JPEG), with ``agegender.folds.build.build_from_list``, and the raw one's mean image. Those
builds are timed too (images/s of the builder and of ``compute_image_mean``).

Then, for each LMDB (raw, encoded) and crop (227, 224), full passes over the LMDB in batches of
``--batch`` float32 N x 3 x crop x crop tensors, mean image subtracted at the crop offset, through a
``torch.utils.data.DataLoader``, with ``1 core`` (``num_workers=0``, all in this process) and
``all cores`` (``num_workers`` = the usable cores, ``--workers``; persistent worker processes):

* ``read + decode``: :class:`agegender.folds.datasets.LMDBDataset` without a transform (Datum parsed, a
  JPEG decoded) and ``datasets.collate`` (uint8 batches): the floor of the pipelines below;
* ``LMDBDataset + CaffeTransform TEST|TRAIN, per item``: :class:`agegender.folds.transforms.CaffeTransform`
  on each record (TEST: center crop; TRAIN: random crop and mirror), then the default collate;
* ``LMDBDataset uint8 + TransformCollate TRAIN, per batch``: the transform run once per batch in the worker.

:class:`~agegender.folds.datasets.GPUResidentDataset` (the raw LMDB's uint8 images held on ``--device``,
default cuda when there is one, else the CPU) is timed the same way over shuffled ``iterate`` passes;
its load time (``from_lmdb``) is printed.

Every case is warmed up with one pass, then the cases run interleaved: ``--repeats`` rounds of one timed
pass each, the order rotating every round, so that a busy shared machine slows every case alike. The
median is reported with the min..max spread and the load average. Goal (issue #4), on a GPU machine
only: >= 20k images/s of 224/227 crops in GPU-resident mode; without a GPU it is reported as not measured.

    python bench/bench_data.py                         # 10-20 minutes on 2 cores (3000 images, 32 cases)
    python bench/bench_data.py --images 1000 --repeats 5 --keep
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import common

SIZE = 256
CROPS = (227, 224)
GOAL_GPU = 20_000.0


@dataclass
class Row:
    lmdb: str
    pipeline: str
    crop: str
    workers: str
    times: list[float] = field(default_factory=list)
    images: int = 0

    def rate(self) -> float:
        return self.images / common.median(self.times)

    def cells(self) -> list[str]:
        rates = [self.images / t for t in self.times]
        return [self.lmdb, self.pipeline, self.crop, self.workers, f"{self.rate():,.0f}",
                f"{min(rates):,.0f}..{max(rates):,.0f}"]


# --- the LMDBs ------------------------------------------------------------------------------------------
def build_lmdbs(images: int, work: Path, kinds: tuple[str, ...] = ("raw", "encoded")
                ) -> tuple[dict[str, Path], Path, list[str]]:
    """The raw and encoded 256 x 256 LMDBs of the first ``images`` UTKFace chips, and the raw one's mean."""
    from agegender.folds import DatumLMDB
    from agegender.folds.build import build_from_list
    from agegender.folds.lmdb_io import compute_image_mean

    faces = common.shared_root() / "faces" / "utkface_full"
    labels_file = common.require_file(faces / "labels.tsv")
    rows = [line.split("\t") for line in labels_file.read_text().splitlines()[1:] if line.strip()]
    rows = sorted(rows)[:images]
    list_file = work / f"utkface_{len(rows)}.txt"
    list_file.write_text("".join(f"{name} {0 if gender == 'm' else 1}\n" for name, _, gender, _ in rows))
    notes = []
    paths = {}
    for kind in kinds:
        out = work / f"utkface_{len(rows)}_{kind}_lmdb"
        if out.exists():
            with DatumLMDB(out) as db:
                if len(db) == len(rows):
                    notes.append(f"{kind} LMDB reused from {out} (--keep)")
                    paths[kind] = out
                    continue
            shutil.rmtree(out)
        start = time.perf_counter()
        build_from_list(list_file, faces, out, resize=SIZE, encoded=kind == "encoded")
        seconds = time.perf_counter() - start
        size = sum(f.stat().st_size for f in out.iterdir()) / common.MIB
        notes.append(f"built the {kind} LMDB ({len(rows)} images, {size:.0f} MiB): {seconds:.1f} s, "
                     f"{len(rows) / seconds:,.0f} images/s (imread + resize{' + imencode' if kind == 'encoded' else ''}"
                     " + write, 1 core)")
        paths[kind] = out
    mean_file = work / f"utkface_{len(rows)}_mean.binaryproto"
    start = time.perf_counter()
    compute_image_mean(paths["raw"], mean_file)
    seconds = time.perf_counter() - start
    notes.append(f"compute_image_mean of the raw LMDB: {seconds:.2f} s, {len(rows) / seconds:,.0f} images/s")
    return paths, mean_file, notes


# --- the cases -----------------------------------------------------------------------------------------
class Case:
    """One pipeline, timed over full passes: ``run()`` makes one pass and returns the images it gave."""

    def __init__(self, lmdb: str, pipeline: str, crop: str, workers: str, run: Callable[[], int]) -> None:
        self.row = Row(lmdb, pipeline, crop, workers)
        self.run = run


def loader_case(lmdb: str, pipeline: str, crop: str, workers: int, dataset, batch: int,
                collate: Callable | None) -> Case:
    """A DataLoader pass over ``dataset``; ``workers`` > 0 keeps its worker processes between passes."""
    from torch.utils.data import DataLoader

    extra = {"persistent_workers": True} if workers else {}
    loader = DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=workers, collate_fn=collate, **extra)

    def run() -> int:
        return sum(int(images.shape[0]) for images, _ in loader)

    label = "1 core (in-process)" if workers == 0 else f"all cores ({workers} workers)"
    return Case(lmdb, pipeline, crop, label, run)


def resident_case(dataset, pipeline: str, crop: str, batch: int, sync: Callable[[], None]) -> Case:
    """A pass of ``GPUResidentDataset.iterate`` (shuffled, as for training); ``sync`` waits for the device."""
    import numpy as np

    generator = np.random.default_rng(0)

    def run() -> int:
        count = sum(int(b.images.shape[0]) for b in dataset.iterate(batch, shuffle=True, generator=generator))
        sync()
        return count

    return Case("raw", pipeline, crop, "in-process", run)


def make_cases(paths: dict[str, Path], mean_file: Path, crops: list[int], args: argparse.Namespace,
               notes: list[str]) -> list[Case]:
    import torch

    from agegender.folds.datasets import GPUResidentDataset, LMDBDataset, TransformCollate, collate
    from agegender.folds.transforms import CaffeTransform

    def transform(crop: int, phase: str) -> CaffeTransform:
        return CaffeTransform.from_values(crop, mirror=phase == "TRAIN", mean_file=mean_file, phase=phase)

    cases = []
    for kind, path in ({} if args.resident_only else paths).items():
        for workers in (0, args.workers):
            cases.append(loader_case(kind, "read + decode (uint8, collate)", "-", workers, LMDBDataset(path),
                                     args.batch, collate))
            for crop in crops:
                for phase in ("TEST", "TRAIN"):
                    cases.append(loader_case(kind, f"LMDBDataset + CaffeTransform {phase}, per item", str(crop),
                                             workers, LMDBDataset(path, transform(crop, phase)), args.batch, None))
                cases.append(loader_case(kind, "LMDBDataset uint8 + TransformCollate TRAIN, per batch", str(crop),
                                         workers, LMDBDataset(path), args.batch,
                                         TransformCollate(transform(crop, "TRAIN"))))

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    start = time.perf_counter()
    loaded = GPUResidentDataset.from_lmdb(paths["raw"], transform(crops[0], "TEST"), device)
    sync()
    seconds = time.perf_counter() - start
    notes.append(f"GPUResidentDataset.from_lmdb on {device.type}: {seconds:.1f} s for {len(loaded)} images "
                 f"({len(loaded) / seconds:,.0f} images/s), {loaded.nbytes / common.MIB:.0f} MiB held")
    for batch in args.resident_batches:
        for crop in crops:
            for phase in ("TEST", "TRAIN"):
                dataset = GPUResidentDataset(loaded.images, loaded.labels, transform(crop, phase), device)
                cases.append(resident_case(dataset, f"GPUResidentDataset {phase} on {device.type}, batch {batch}",
                                           str(crop), batch, sync))
    return cases


def run_interleaved(cases: list[Case], repeats: int) -> None:
    """Warm every case up with one pass, then ``repeats`` rounds of one timed pass per case, the order
    rotating each round: on a shared machine, load changes hit every case alike."""
    for case in cases:
        case.run()  # workers started, pages cached, kernels loaded
    for round_number in range(repeats):
        shift = round_number % len(cases)
        for case in cases[shift:] + cases[:shift]:
            start = time.perf_counter()
            case.row.images = case.run()
            case.row.times.append(time.perf_counter() - start)
        print(f"round {round_number + 1}/{repeats} done; {common.load_line()}", flush=True)


# --- main -----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000, help="how many UTKFace chips (at most 3000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per case")
    parser.add_argument("--batch", type=int, default=64, help="batch size")
    parser.add_argument("--workers", type=int, default=common.usable_cores(), help="DataLoader workers for 'all cores'")
    parser.add_argument("--crops", default=",".join(map(str, CROPS)), help="comma-separated crop sizes")
    parser.add_argument("--device", default=None, help="device of GPUResidentDataset (default: cuda if any, else cpu)")
    parser.add_argument("--resident-only", action="store_true",
                        help="only the GPUResidentDataset cases (no encoded LMDB, no DataLoader cases): the GPU check")
    parser.add_argument("--resident-batches", default=None,
                        help="comma-separated batch sizes of the GPUResidentDataset cases (default: --batch)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the LMDBs in bench/_work/data for the next run")
    args = parser.parse_args(argv)
    args.resident_batches = [int(b) for b in (args.resident_batches or str(args.batch)).split(",") if b.strip()]

    import torch

    crops = [int(c) for c in args.crops.split(",") if c.strip()]
    work = common.WORK_DIR / "data"
    work.mkdir(parents=True, exist_ok=True)
    print("\n".join(common.machine_lines()))
    print(f"torch threads: {torch.get_num_threads()}, DataLoader workers for 'all cores': {args.workers}, "
          f"batch {args.batch}, {args.repeats} timed passes per case, interleaved (median reported)")
    try:
        paths, mean_file, notes = build_lmdbs(args.images, work, ("raw",) if args.resident_only else ("raw", "encoded"))
        cases = make_cases(paths, mean_file, crops, args, notes)
        for note in notes:
            print(note)
        run_interleaved(cases, args.repeats)
        print()
        print(common.table(["LMDB", "pipeline", "crop", "workers", "images/s", "spread"],
                           [case.row.cells() for case in cases]))
        on_gpu = torch.cuda.is_available() and (args.device or "cuda").startswith("cuda")
        if on_gpu:
            for case in cases:
                if case.row.pipeline.startswith("GPUResidentDataset"):
                    rate = case.row.rate()
                    print(f"{case.row.pipeline} crop {case.row.crop}: {rate:,.0f} images/s, goal {GOAL_GPU:,.0f}: "
                          + ("met" if rate >= GOAL_GPU else "NOT met"))
        else:
            print(f"GPU-resident mode on a GPU: NOT MEASURED (no GPU here); goal >= {GOAL_GPU:,.0f} images/s of "
                  "224/227 crops. The GPUResidentDataset rows above ran on the CPU.")
        print(common.load_line())
        if args.json:
            import json

            payload = {"device": args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
                       "gpu": torch.cuda.get_device_name() if on_gpu else None, "images": args.images,
                       "goal_gpu_images_per_second": GOAL_GPU, "notes": notes,
                       "cases": [{"lmdb": c.row.lmdb, "pipeline": c.row.pipeline, "crop": c.row.crop,
                                  "workers": c.row.workers, "images_per_second": c.row.rate(),
                                  "times_s": c.row.times} for c in cases]}
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
            print(f"wrote {args.json}")
    finally:
        del_cases = locals().get("cases")
        if del_cases:
            del_cases.clear()  # stop persistent DataLoader workers before the LMDBs go
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
