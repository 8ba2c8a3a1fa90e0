"""Benchmark: reading a VGG16-sized caffemodel (> 512 MiB) — time and peak memory.

Writes a seeded VGG16 caffemodel (V2 layout, about 537 MB) into ``bench/_work/``, then measures, each
in a fresh subprocess so that peak RSS is clean:

  (a) ``bytes``  reading the file's bytes alone (``open().read()``), the floor;
  (b) ``read``   ``prototxt.read_caffemodel`` and touching every page of every blob;
  (c) ``load``   ``caffe2torch.load(deploy, caffemodel)``: the net built and its weights loaded into torch.

Each subprocess imports numpy, torch and agegender first and takes its RSS then as the baseline; the
figures are the wall time of the step, the peak RSS (``VmHWM``, i.e. ``ru_maxrss`` of the process image:
see ``common.peak_rss_mib``) and the peak minus the baseline.
The file is read once before the runs (page cache warm), the three steps are interleaved and each is
repeated (3 times by default); medians are reported. Goals (issue #2): load <= 2x the bytes-read time
and peak RSS growth <= 2.2x the file size.

    python bench/bench_read_caffemodel.py                 # 3 repeats, file deleted at the end
    python bench/bench_read_caffemodel.py --keep --profile
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import common

if TYPE_CHECKING:
    import numpy as np


DEFAULT_DEPLOY = "gender_imdbwiki_vgg16/deploy.prototxt"
MODES = ("bytes", "read", "load")
MODE_TITLES = {
    "bytes": "(a) open().read()",
    "read": "(b) read_caffemodel + touch every page",
    "load": "(c) caffe2torch.load(deploy, caffemodel)",
}
GOAL_TIME_RATIO = 2.0  # load time / bytes-read time
GOAL_RSS_RATIO = 2.2  # peak RSS growth / file size
FLOATS_PER_PAGE = 1024  # 4096-byte pages of float32


# --- work done in the subprocesses ---------------------------------------------------------------------
def _page_checksum(arrays: Iterable[np.ndarray]) -> float:
    """Sum of one float32 per 4 KiB page of every array: touches every page; exact (fsum) and order-free
    across arrays, so (b) and (c) must give the same number for the same file."""
    import numpy as np

    return math.fsum(float(np.sum(a.reshape(-1)[::FLOATS_PER_PAGE], dtype=np.float64)) for a in arrays)


def _child(mode: str, model: Path, deploy: Path, seed: int) -> dict:
    """Run one measured step in this (fresh) process and return its figures."""
    import numpy as np  # noqa: F401  (imported before the baseline, as in every mode)
    import torch

    from agegender import caffe2torch, prototxt

    if mode == "build":
        net = caffe2torch.load(deploy)
        caffe2torch.init_seeded(net, seed)
        size = caffe2torch.save_caffemodel(net, net.net_def, model, layout="V2")
        return {"mode": mode, "size": size}

    baseline_peak, baseline_rss = common.peak_rss_mib(), common.current_rss_mib()
    checksum = None
    start = time.perf_counter()
    if mode == "bytes":
        with open(model, "rb") as handle:
            data = handle.read()
        elapsed = time.perf_counter() - start
        checksum = len(data)
    elif mode == "read":
        weights = prototxt.read_caffemodel(model)
        checksum = _page_checksum(b for layer in weights.layers.values() for b in layer.blobs)
        elapsed = time.perf_counter() - start
    elif mode == "load":
        net = caffe2torch.load(deploy, model)
        elapsed = time.perf_counter() - start
        with torch.no_grad():  # verification, not timed: the same pages as (b) must hold the same values
            checksum = _page_checksum(
                t.detach().numpy() for info in net.parameter_layers() for t in net.caffe_tensors(info.name)
            )
    elif mode == "stages":
        return _stages(model, deploy)
    else:
        raise SystemExit(f"unknown mode {mode}")
    return {
        "mode": mode, "seconds": elapsed, "peak_mib": common.peak_rss_mib(), "baseline_peak_mib": baseline_peak,
        "baseline_rss_mib": baseline_rss, "checksum": checksum,
    }


def _stages(model: Path, deploy: Path) -> dict:
    """(c) split into its steps, each with its time and the peak RSS reached by its end."""
    from agegender import prototxt
    from agegender.caffe2torch import build_ir, load_weights
    from agegender.caffe2torch.ir import NetState
    from agegender.caffe2torch.net import CaffeNet

    stages = []
    start = time.perf_counter()

    def mark(name: str) -> None:
        nonlocal start
        now = time.perf_counter()
        stages.append({"stage": name, "seconds": now - start, "peak_mib": common.peak_rss_mib(),
                       "rss_mib": common.current_rss_mib()})
        start = time.perf_counter()

    mark("(baseline after imports)")
    net_def = prototxt.read_net(deploy)
    ir = build_ir(net_def, str(deploy), NetState(phase="TEST"))
    mark("read_net + build_ir")
    net = CaffeNet(ir)
    mark("CaffeNet(ir) (allocate parameters)")
    weights = prototxt.read_caffemodel(model)
    mark("read_caffemodel (map + decode)")
    load_weights(net, weights)
    mark("load_weights (copy + checks)")
    return {"mode": "stages", "stages": stages}


def _profile_child(model: Path, deploy: Path, top: int) -> None:
    """cProfile of (c) in this process, printed (the lead's starting point for optimising)."""
    import cProfile
    import pstats

    import torch  # noqa: F401

    from agegender import caffe2torch

    profiler = cProfile.Profile()
    profiler.enable()
    caffe2torch.load(deploy, model)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


# --- the parent --------------------------------------------------------------------------------------
def _run_child(args: list[str]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"subprocess {' '.join(args)} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _warm_page_cache(path: Path) -> None:
    with open(path, "rb") as handle:
        while handle.read(64 * common.MIB):
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each step (median reported)")
    parser.add_argument("--deploy", type=Path, default=None,
                        help=f"deploy prototxt (default: model_definitions/{DEFAULT_DEPLOY})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights")
    parser.add_argument("--keep", action="store_true", help="keep the caffemodel in bench/_work/ (reused next run)")
    parser.add_argument("--profile", action="store_true", help="also print (c)'s steps and a cProfile of it")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    deploy = common.require_file(args.deploy or common.model_definitions() / DEFAULT_DEPLOY)
    model = common.WORK_DIR / f"bench_read_{deploy.parent.name}_seed{args.seed}.caffemodel"
    if args.child:
        mode = args.child[0]
        if mode == "profile":
            _profile_child(model, deploy, int(args.child[1]))
            print(json.dumps({"mode": "profile"}))
        else:
            print(json.dumps(_child(mode, model, deploy, args.seed)))
        return 0

    print("\n".join(common.machine_lines()))
    reused = model.is_file()
    if not reused:
        start = time.perf_counter()
        _run_child(["build"])
        print(f"wrote {model.relative_to(common.REPO)} in {time.perf_counter() - start:.1f} s")
    size = model.stat().st_size
    size_mib = size / common.MIB
    print(f"caffemodel: {size:,} bytes ({size_mib:.1f} MiB){' (reused)' if reused else ''}; deploy {deploy}")
    try:
        _warm_page_cache(model)
        modes = MODES
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        for repeat in range(args.repeats):
            order = modes if repeat % 2 == 0 else modes[::-1]  # interleaved, alternating order
            for mode in order:
                runs[mode].append(_run_child([mode]))
        checks = {r["checksum"] for m in modes if m != "bytes" for r in runs[m]}
        if len(checks) != 1:
            sys.exit(f"the readers disagree on the weights' page checksums: {sorted(checks)}")

        rows = []
        t_bytes = common.median(r["seconds"] for r in runs["bytes"])
        figures = {}
        for mode in modes:
            seconds = [r["seconds"] for r in runs[mode]]
            t = common.median(seconds)
            peak = common.median(r["peak_mib"] for r in runs[mode])
            base = common.median(r["baseline_peak_mib"] for r in runs[mode])
            growth = common.median(r["peak_mib"] - r["baseline_peak_mib"] for r in runs[mode])
            figures[mode] = (t, peak, growth)
            rows.append([
                MODE_TITLES[mode], f"{t:.3f}", common.spread(seconds), f"{t / t_bytes:.2f}x",
                f"{size / common.MIB / t / 1024:.2f}", f"{peak:.0f}", f"{base:.0f}", f"{growth:.0f}",
                f"{peak / size_mib:.2f}x", f"{growth / size_mib:.2f}x",
            ])
        print(f"\n{args.repeats} run(s) of each step, each in a fresh process; medians (time spread min..max)")
        print(common.table(
            ["step", "time s", "spread s", "time / (a)", "GiB/s", "peak RSS MiB", "baseline MiB",
             "peak - baseline MiB", "peak / file", "(peak - baseline) / file"], rows))
        t_load, peak_load, growth_load = figures["load"]
        time_ok = t_load <= GOAL_TIME_RATIO * t_bytes
        rss_ok = growth_load <= GOAL_RSS_RATIO * size_mib
        print(f"\ngoal: load time <= {GOAL_TIME_RATIO}x bytes-read time: {t_load / t_bytes:.2f}x -> "
              f"{'met' if time_ok else 'MISSED'}")
        print(f"goal: load peak RSS growth <= {GOAL_RSS_RATIO}x file size: {growth_load / size_mib:.2f}x -> "
              f"{'met' if rss_ok else 'MISSED'} (absolute peak incl. the imports: {peak_load / size_mib:.2f}x)")
        print(f"weights check: the page checksums of {', '.join(m for m in modes if m != 'bytes')} agree "
              f"({checks.pop():.6g})")

        if args.profile:
            stages = _run_child(["stages"])["stages"]
            print("\n(c) step by step (one run): time, and peak / current RSS at the end of each step")
            print(common.table(
                ["step", "time s", "peak RSS MiB", "RSS now MiB"],
                [[s["stage"], f"{s['seconds']:.3f}", f"{s['peak_mib']:.0f}", f"{s['rss_mib']:.0f}"] for s in stages],
            ))
            print("\ncProfile of (c), by own time:")
            done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "profile", "15"],
                                  capture_output=True, text=True)
            print("\n".join(line for line in done.stdout.splitlines()[:-1] if line.strip()))
    finally:
        if not args.keep:
            model.unlink(missing_ok=True)
            print(f"\nremoved {model.relative_to(common.REPO)} (use --keep to keep it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
