"""Benchmark: CPU inference of the Adience architectures, our CaffeNet module vs OpenCV dnn.

For each architecture's deploy prototxt (from ``adience/model_definitions``) the net is built with
``caffe2torch.load``, filled with ``init_seeded`` and written as a caffemodel (``bench/_work/``, deleted
at the end unless ``--keep``) that OpenCV reads with ``cv2.dnn.readNetFromCaffe``: both engines hold the
same weights. For each batch size, one seeded input batch is run by both engines in the same process
with the same thread count (``torch.set_num_threads`` = ``cv2.setNumThreads``):

* ours: ``net(torch.from_numpy(x))`` under ``torch.inference_mode()``, float32;
* OpenCV: ``setInput(x)`` + ``forward(all output layers)`` (OpenCV's defaults: its own backend, CPU,
  layer fusion on). All outputs are requested, so nets with several heads (GoogLeNet) run whole.

Before timing, the outputs are compared (max |diff| of the probabilities, and of the last InnerProduct
before each softmax relative to its largest magnitude) so that a wrong result is never timed. Then
each engine is warmed up, and the engines run interleaved (the order rotates every repeat) until
``--repeats`` runs each or the per-case time budget is spent (at least ``--min-repeats``): the machine
may be shared and noisy, so medians are reported. Goal (issue #2): ours / OpenCV >= 1.0x.

``--variants`` adds other ways of running our module (plain NCHW, a frozen TorchScript trace, ...)
to the same interleaved rotation, to find what would help; they are checked against our plain output.

    python bench/bench_inference.py                                # all four archs, batches 1 and 16
    python bench/bench_inference.py --archs adiencenet,vgg16 --batches 1 --repeats 20
    python bench/bench_inference.py --variants nchw,jit_freeze
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import common

if TYPE_CHECKING:
    import numpy as np

    from agegender.caffe2torch import CaffeNet

ARCHS = common.ARCHS
VARIANTS = ("nchw", "jit_freeze", "relu_out_of_place", "compile")
INPUT_SCALE = 50.0  # about the spread of mean-subtracted 0..255 pixels
LOGIT_TOLERANCE = 1e-4  # relative to the blob's largest magnitude (OpenCV vs Caffe: 1.7e-5, see shared README)
GOAL_RATIO = 1.0


@dataclass
class Case:
    """One (architecture, batch) measurement."""

    arch: str
    batch: int
    times: dict[str, list[float]] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)
    ok: bool = True


# --- building the engines -------------------------------------------------------------------------------
def _output_layers(net: CaffeNet) -> list[str]:
    """The names of the layers that last write each output blob (OpenCV names outputs by layer)."""
    names = []
    for blob in net.output_names:
        writers = [info.name for info in net.layer_info if blob in info.tops]
        names.append(writers[-1])
    return names


def _logit_layers(net: CaffeNet) -> dict[str, str]:
    """For each Softmax producing an output: {softmax layer: the layer writing its input (the logits)}."""
    out = {}
    for layer_name in _output_layers(net):
        info = net.layer(layer_name)
        if info.type == "Softmax":
            writers = [i.name for i in net.layer_info if info.bottoms[0] in i.tops and i.name != info.name]
            out[layer_name] = writers[-1]
    return out


def _clone(net: CaffeNet, deploy: Path, channels_last: bool = True) -> CaffeNet:
    """A second CaffeNet with ``net``'s weights (``copy.deepcopy`` of a CaffeNet fails: its ``net_def``
    Message cannot be deep-copied)."""
    from agegender import caffe2torch

    twin = caffe2torch.load(deploy, channels_last=channels_last)
    twin.load_state_dict(net.state_dict())
    return twin.eval()


def _make_variant(name: str, net: CaffeNet, deploy: Path, example: Any) -> Callable[[Any], tuple]:
    """A callable running our net one way (see VARIANTS); returns a tuple of outputs like ``net``."""
    import torch

    def as_tuple(out):
        return out if isinstance(out, tuple) else (out,)

    if name == "ours":
        return lambda x: as_tuple(net(x))
    if name == "nchw":  # the plain layout: load(..., channels_last=False)
        model = _clone(net, deploy, channels_last=False)
        return lambda x: as_tuple(model(x))
    if name == "relu_out_of_place":  # the default overwrites a Convolution's (...) output in place at inference
        model = _clone(net, deploy)
        model._relu_in_place = set()
        return lambda x: as_tuple(model(x))
    if name == "jit_freeze":
        with torch.no_grad():
            traced = torch.jit.trace(_clone(net, deploy), example, check_trace=False)
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
        return lambda x: as_tuple(frozen(x))
    if name == "compile":
        compiled = torch.compile(_clone(net, deploy), dynamic=False)
        return lambda x: as_tuple(compiled(x))
    raise SystemExit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")


def _write_model(arch: str, seed: int) -> tuple[Path, Path, CaffeNet]:
    """Our net with seeded weights, and the caffemodel OpenCV will read (same weights)."""
    from agegender import caffe2torch

    deploy = common.require_file(common.model_definitions() / ARCHS[arch] / "deploy.prototxt")
    net = caffe2torch.load(deploy)
    caffe2torch.init_seeded(net, seed)
    net.eval()
    model = common.WORK_DIR / f"bench_inference_{ARCHS[arch]}_seed{seed}.caffemodel"
    caffe2torch.save_caffemodel(net, net.net_def, model, layout="V2")
    return deploy, model, net


# --- one case ---------------------------------------------------------------------------------------------
def _verify(case: Case, net: CaffeNet, cv_net: Any, x: np.ndarray, out_layers: list[str],
            variant_fns: dict[str, Callable]) -> None:
    """Compare OpenCV and our outputs (and each variant with ours) before anything is timed."""
    import numpy as np
    import torch

    xt = torch.from_numpy(x)
    with torch.inference_mode():
        blobs, own = net.run(xt, record_layers=True)
    logit_layers = _logit_layers(net)
    cv_names = out_layers + [logit_layers[n] for n in out_layers if n in logit_layers]
    cv_net.setInput(x)
    cv_outs = dict(zip(cv_names, cv_net.forward(cv_names)))
    for layer_name, blob in zip(out_layers, net.output_names):
        ours = blobs[blob].numpy()
        theirs = cv_outs[layer_name].reshape(ours.shape)
        diff = float(np.max(np.abs(ours - theirs)))
        same_argmax = bool(np.array_equal(ours.argmax(axis=1), theirs.argmax(axis=1)))
        line = f"{layer_name}: max|diff| {diff:.2e}, argmax {'equal' if same_argmax else 'DIFFERS'}"
        ok = diff <= 1e-3 and same_argmax
        if layer_name in logit_layers:
            logits = logit_layers[layer_name]
            module = net.layer(logits).module_name
            ours_l = own[module][0].numpy()
            theirs_l = cv_outs[logits].reshape(ours_l.shape)
            rel = float(np.max(np.abs(ours_l - theirs_l)) / max(float(np.max(np.abs(theirs_l))), 1e-30))
            line += f"; logits {logits}: max|diff|/max|x| {rel:.2e}"
            ok = ok and rel <= LOGIT_TOLERANCE
        case.checks.append(("ok   " if ok else "FAIL ") + line)
        case.ok = case.ok and ok
    with torch.inference_mode():
        reference = variant_fns["ours"](xt)
        for name, fn in variant_fns.items():
            if name == "ours":
                continue
            outs = fn(xt)
            diff = max(float((a - b).abs().max()) for a, b in zip(reference, outs))
            ok = diff <= 1e-4
            case.checks.append(f"{'ok   ' if ok else 'FAIL '}variant {name} vs ours: max|diff| {diff:.2e}")
            case.ok = case.ok and ok


def _run_case(arch: str, batch: int, deploy: Path, net: CaffeNet, cv_net: Any, out_layers: list[str],
              variants: list[str], args: argparse.Namespace) -> Case:
    """Check, warm up and time one (architecture, batch) with OpenCV, ours and the variants interleaved."""
    import numpy as np
    import torch

    case = Case(arch, batch)
    shape = net.blob_shapes[net.input_names[0]]
    x = (np.random.default_rng(args.seed).standard_normal((batch, *shape[1:])) * INPUT_SCALE).astype(np.float32)
    xt = torch.from_numpy(x)

    variant_fns: dict[str, Callable] = {"ours": _make_variant("ours", net, deploy, xt)}
    for name in variants:
        start = time.perf_counter()
        variant_fns[name] = _make_variant(name, net, deploy, xt)
        setup = time.perf_counter() - start
        if setup > 1:
            case.checks.append(f"variant {name}: setup {setup:.1f} s (not timed below)")
    _verify(case, net, cv_net, x, out_layers, variant_fns)

    def run_opencv() -> None:
        cv_net.setInput(x)
        cv_net.forward(out_layers)

    engines: dict[str, Callable[[], object]] = {"opencv": run_opencv}
    for name, fn in variant_fns.items():
        engines[name] = (lambda f: lambda: f(xt))(fn)
    case.times = common.interleaved_times(engines, args.warmup, args.repeats, args.min_repeats, args.budget,
                                          wrap=torch.inference_mode)
    return case


# --- main -----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default=",".join(ARCHS), help=f"comma-separated, from {', '.join(ARCHS)}")
    parser.add_argument("--batches", default="1,16", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per engine and case (at most)")
    parser.add_argument("--min-repeats", type=int, default=3, help="timed runs per engine and case (at least)")
    parser.add_argument("--budget", type=float, default=30.0,
                        help="seconds of timed runs per case, beyond which repeats drop to --min-repeats")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per engine before timing")
    parser.add_argument("--threads", type=int, default=common.usable_cores(), help="threads for both engines")
    parser.add_argument("--variants", default="", help=f"extra ways to run ours, from {', '.join(VARIANTS)}")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs")
    parser.add_argument("--keep", action="store_true", help="keep the caffemodels in bench/_work/")
    args = parser.parse_args(argv)
    archs = common.parse_list(args.archs, tuple(ARCHS))
    batches = [int(b) for b in common.parse_list(args.batches)]
    variants = common.parse_list(args.variants, VARIANTS)

    import cv2
    import torch

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    print("\n".join(common.machine_lines()))
    print(f"threads: torch {torch.get_num_threads()}, OpenCV {cv2.getNumThreads()} "
          f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}); "
          f"batches {batches}; up to {args.repeats} timed runs per engine (at least {args.min_repeats}, "
          f"budget {args.budget:.0f} s per case), {args.warmup} warm-up runs; medians")

    cases: list[Case] = []
    written: list[Path] = []
    try:
        for arch in archs:
            start = time.perf_counter()
            deploy, model, net = _write_model(arch, args.seed)
            written.append(model)
            cv_net = cv2.dnn.readNetFromCaffe(str(deploy), str(model))
            cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
            cv_net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
            out_layers = _output_layers(net)
            missing = set(out_layers) - set(cv_net.getUnconnectedOutLayersNames())
            if missing:
                sys.exit(f"{arch}: OpenCV's outputs {cv_net.getUnconnectedOutLayersNames()} lack {sorted(missing)}")
            print(f"\n{arch} ({ARCHS[arch]}): {model.stat().st_size / common.MIB:.0f} MiB of weights, "
                  f"outputs {out_layers}; set up in {time.perf_counter() - start:.1f} s", flush=True)
            for batch in batches:
                case = _run_case(arch, batch, deploy, net, cv_net, out_layers, variants, args)
                cases.append(case)
                for line in case.checks:
                    print(f"  batch {batch}: {line}")
                med = {name: common.median(t) for name, t in case.times.items()}
                cv_ips = batch / med["opencv"]
                line = f"  batch {batch}: opencv {cv_ips:.1f} img/s"
                for name, m in med.items():
                    if name != "opencv":
                        line += f", {name} {batch / m:.1f} img/s ({med['opencv'] / m:.2f}x)"
                print(line + f" [{len(case.times['opencv'])} runs]", flush=True)
            del net, cv_net
    finally:
        if not args.keep:
            for path in written:
                path.unlink(missing_ok=True)

    engines = ["ours"] + variants
    header = ["arch", "batch", "runs", "OpenCV img/s", "ours img/s", "ours / OpenCV", "goal >= 1.0"]
    header += [f"{v} / OpenCV" for v in variants]
    rows = []
    for case in cases:
        med = {name: common.median(t) for name, t in case.times.items()}
        ratio = med["opencv"] / med["ours"]
        row = [case.arch, case.batch, len(case.times["ours"]), f"{case.batch / med['opencv']:.1f}",
               f"{case.batch / med['ours']:.1f}", f"{ratio:.2f}x", "met" if ratio >= GOAL_RATIO else "MISSED"]
        row += [f"{med['opencv'] / med[v]:.2f}x" for v in variants]
        rows.append(row)
    print("\n" + common.table(header, rows))
    print("\nspread of the timed runs (s, min..max): " + "; ".join(
        f"{c.arch}/{c.batch}: " + ", ".join(f"{n} {common.spread(c.times[n])}" for n in ["opencv"] + engines)
        for c in cases))
    print(f"at the end: {common.load_line()}")
    bad = [f"{c.arch}/{c.batch}" for c in cases if not c.ok]
    if bad:
        print(f"\nOUTPUT CHECKS FAILED for {', '.join(bad)}: the figures above time a wrong result")
        return 1
    print("\nall outputs checked: OpenCV and ours agree (and every variant agrees with ours)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
