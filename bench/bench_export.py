"""Benchmark: the exported ONNX files in ONNX Runtime (CPU) vs OpenCV dnn vs our torch module, and the
time each export takes.

For each architecture's deploy prototxt (``adience/model_definitions``, as ``bench_inference.py``) the
net gets ``init_seeded`` weights, written as a caffemodel (``bench/_work/``, deleted at the end unless
``--keep``) that OpenCV reads, and is exported with ``export_onnx`` (timed: the trace + serialization +
``onnx.checker``, and the built-in verification in ONNX Runtime at batch 1 and 7 separately) and with
``export_python`` (timed, verification included). Then, per batch size, one seeded input batch is run by
the three engines in one process with the same thread count (``torch.set_num_threads`` =
``cv2.setNumThreads`` = ORT's ``intra_op_num_threads``; ``inter_op_num_threads`` 1):

* ``onnxruntime``: ``session.run`` on the exported file, CPU EP, default graph optimizations;
* ``opencv``: ``setInput`` + ``forward(every output layer)``, its default backend, fusion on;
* ``torch``: ``net(x)`` under ``torch.inference_mode()``.

Outputs are compared before anything is timed (ORT vs torch and vs OpenCV, max |Δ| / max |ref| of every
output within 1e-4 and the same argmax); a failed check is printed as ``FAIL`` and the script exits 1.
Then warm-up rounds and interleaved timed rounds (the order rotating every round) until ``--repeats``
or the per-case ``--budget``; medians. Goal (issue #3): ORT >= 1.0x OpenCV dnn everywhere.

    python bench/bench_export.py                                  # 4 archs x batches 1, 16
    python bench/bench_export.py --archs adiencenet,googlenet --batches 1 --repeats 20
    python bench/bench_export.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import common

ARCHS = common.ARCHS
ENGINES = ("onnxruntime", "opencv", "torch")
INPUT_SCALE = 50.0
TOLERANCE = 1e-4
GOAL_RATIO = 1.0


@dataclass
class Case:
    arch: str
    batch: int
    times: dict[str, list[float]] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)
    ok: bool = True


@dataclass
class Exported:
    arch: str
    deploy: Path
    caffemodel: Path
    onnx_path: Path
    net: object
    weights_mib: float
    onnx_mib: float
    export_s: float  # trace, serialize, check
    verify_s: float  # ONNX Runtime at batch 1 and 7 vs torch
    onnx_total_s: float
    python_s: float  # source + weights, verification included


def _export(arch: str, seed: int, threads: int) -> Exported:
    from agegender import caffe2torch
    from agegender.caffe2torch.export_onnx import export_onnx
    from agegender.caffe2torch.export_python import export_python

    deploy = common.require_file(common.model_definitions() / ARCHS[arch] / "deploy.prototxt")
    net = caffe2torch.load(deploy)
    caffe2torch.init_seeded(net, seed)
    net.eval()
    caffemodel = common.WORK_DIR / f"bench_export_{ARCHS[arch]}_seed{seed}.caffemodel"
    caffe2torch.save_caffemodel(net, net.net_def, caffemodel, layout="V2")
    onnx_path = common.WORK_DIR / f"bench_export_{ARCHS[arch]}.onnx"
    start = time.perf_counter()
    report = export_onnx(net, onnx_path)
    onnx_total = time.perf_counter() - start
    start = time.perf_counter()
    export_python(net, common.WORK_DIR / f"bench_export_{arch}.py")
    python_s = time.perf_counter() - start
    return Exported(arch, deploy, caffemodel, onnx_path, net, caffemodel.stat().st_size / common.MIB,
                    report.bytes / common.MIB, report.export_seconds, report.verify_seconds, onnx_total, python_s)


def _output_layers(net) -> list[str]:
    """The layer that last writes each output blob (OpenCV names outputs by layer)."""
    return [[info.name for info in net.layer_info if blob in info.tops][-1] for blob in net.output_names]


def _check(case: Case, outs: dict[str, tuple], names: list[str]) -> None:
    import numpy as np

    ref = outs["torch"]
    for engine in ("onnxruntime", "opencv"):
        for name, ours, theirs in zip(names, outs[engine], ref):
            ours = np.asarray(ours).reshape(theirs.shape)
            rel = float(np.max(np.abs(ours - theirs)) / max(float(np.max(np.abs(theirs))), 1e-30))
            same = bool(np.array_equal(ours.argmax(1), theirs.argmax(1)))
            ok = rel <= TOLERANCE and same
            case.checks.append(f"{'ok   ' if ok else 'FAIL '}{engine} vs torch, {name}: max|Δ|/max|ref| {rel:.1e}, "
                               f"argmax {'equal' if same else 'DIFFERS'}")
            case.ok = case.ok and ok
    rel = max(float(np.max(np.abs(np.asarray(a).reshape(b.shape) - b)) / max(float(np.max(np.abs(b))), 1e-30))
              for a, b in zip(outs["onnxruntime"], outs["opencv"]))
    case.checks.append(f"{'ok   ' if rel <= TOLERANCE else 'FAIL '}onnxruntime vs opencv: worst {rel:.1e}")
    case.ok = case.ok and rel <= TOLERANCE


def _run_case(exported: Exported, batch: int, session, cv_net, args: argparse.Namespace) -> Case:
    import numpy as np
    import torch

    net = exported.net
    case = Case(exported.arch, batch)
    shape = net.blob_shapes[net.input_names[0]]
    x = (np.random.default_rng(args.seed).standard_normal((batch, *shape[1:])) * INPUT_SCALE).astype(np.float32)
    xt = torch.from_numpy(x)
    input_name = net.input_names[0]
    out_layers = _output_layers(net)
    ort_names = [o.name for o in session.get_outputs()]

    def run_ort():
        return tuple(session.run(ort_names, {input_name: x}))

    def run_opencv():
        cv_net.setInput(x)
        return tuple(cv_net.forward(out_layers))

    def run_torch():
        with torch.inference_mode():
            out = net(xt)
        return tuple(o.numpy() for o in (out if isinstance(out, tuple) else (out,)))

    engines: dict[str, Callable[[], tuple]] = {"onnxruntime": run_ort, "opencv": run_opencv, "torch": run_torch}
    _check(case, {name: fn() for name, fn in engines.items()}, list(net.output_names))
    case.times = common.interleaved_times(engines, args.warmup, args.repeats, args.min_repeats, args.budget)
    return case


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default=",".join(ARCHS), help=f"comma-separated, from {', '.join(ARCHS)}")
    parser.add_argument("--batches", default="1,16", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per engine and case (at most)")
    parser.add_argument("--min-repeats", type=int, default=3, help="timed runs per engine and case (at least)")
    parser.add_argument("--budget", type=float, default=30.0, help="seconds of timed runs per case")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per engine before timing")
    parser.add_argument("--threads", type=int, default=common.usable_cores(), help="threads for every engine")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs")
    parser.add_argument("--keep", action="store_true", help="keep the caffemodels and exports in bench/_work/")
    args = parser.parse_args(argv)
    archs = common.parse_list(args.archs, tuple(ARCHS))
    batches = [int(b) for b in common.parse_list(args.batches)]

    import cv2
    import onnxruntime as ort
    import torch

    from agegender.caffe2torch.export_onnx import ort_session

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    common.WORK_DIR.mkdir(parents=True, exist_ok=True)
    print("\n".join(common.machine_lines()))
    print(f"onnxruntime {ort.__version__} (providers: {', '.join(ort.get_available_providers())}); threads: torch "
          f"{torch.get_num_threads()}, OpenCV {cv2.getNumThreads()}, ORT intra-op {args.threads} "
          f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}); batches {batches}; up to "
          f"{args.repeats} timed runs per engine (at least {args.min_repeats}, budget {args.budget:.0f} s per case), "
          f"{args.warmup} warm-up runs; medians")

    cases: list[Case] = []
    exports: list[Exported] = []
    written: list[Path] = []
    try:
        for arch in archs:
            exported = _export(arch, args.seed, args.threads)
            exports.append(exported)
            written += [exported.caffemodel, exported.onnx_path, common.WORK_DIR / f"bench_export_{arch}.py",
                        common.WORK_DIR / f"bench_export_{arch}.pt"]
            session = ort_session(exported.onnx_path, ["CPUExecutionProvider"], threads=args.threads)
            cv_net = cv2.dnn.readNetFromCaffe(str(exported.deploy), str(exported.caffemodel))
            cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
            cv_net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
            print(f"\n{arch} ({ARCHS[arch]}): {exported.weights_mib:.0f} MiB caffemodel, {exported.onnx_mib:.0f} MiB "
                  f"ONNX; export {exported.export_s:.1f} s + verification {exported.verify_s:.1f} s "
                  f"(total {exported.onnx_total_s:.1f} s); Python export {exported.python_s:.1f} s", flush=True)
            for batch in batches:
                case = _run_case(exported, batch, session, cv_net, args)
                cases.append(case)
                for line in case.checks:
                    print(f"  batch {batch}: {line}")
                med = {name: common.median(t) for name, t in case.times.items()}
                print(f"  batch {batch}: " + ", ".join(f"{n} {batch / m:.1f} img/s" for n, m in med.items())
                      + f" [{len(case.times['opencv'])} runs]", flush=True)
            del session, cv_net
            exported.net = None
    finally:
        if not args.keep:
            for path in written:
                path.unlink(missing_ok=True)

    header = ["arch", "batch", "runs", "ORT img/s", "OpenCV img/s", "torch img/s", "ORT / OpenCV", "goal >= 1.0",
              "torch / OpenCV"]
    rows = []
    for case in cases:
        med = {name: common.median(t) for name, t in case.times.items()}
        ratio = med["opencv"] / med["onnxruntime"]
        rows.append([case.arch, case.batch, len(case.times["opencv"]), f"{case.batch / med['onnxruntime']:.1f}",
                     f"{case.batch / med['opencv']:.1f}", f"{case.batch / med['torch']:.1f}", f"{ratio:.2f}x",
                     "met" if ratio >= GOAL_RATIO else "MISSED", f"{med['opencv'] / med['torch']:.2f}x"])
    print("\n" + common.table(header, rows))
    print("\n" + common.table(
        ["arch", "caffemodel MiB", "ONNX MiB", "ONNX export s", "ONNX verification s", "ONNX total s",
         "Python export s"],
        [[e.arch, f"{e.weights_mib:.0f}", f"{e.onnx_mib:.0f}", f"{e.export_s:.1f}", f"{e.verify_s:.1f}",
          f"{e.onnx_total_s:.1f}", f"{e.python_s:.1f}"] for e in exports]))
    print("\nspread of the timed runs (s, min..max): " + "; ".join(
        f"{c.arch}/{c.batch}: " + ", ".join(f"{n} {common.spread(c.times[n])}" for n in ENGINES) for c in cases))
    print(f"at the end: {common.load_line()}")
    bad = [f"{c.arch}/{c.batch}" for c in cases if not c.ok]
    if bad:
        print(f"\nOUTPUT CHECKS FAILED for {', '.join(bad)}: the figures above time a wrong result")
        return 1
    print("\nall outputs checked: ONNX Runtime, OpenCV and torch agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
