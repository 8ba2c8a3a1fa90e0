"""Export a :class:`CaffeNet` to ONNX, verified in ONNX Runtime before the file is put in place.

::

    from agegender.caffe2torch import load
    from agegender.caffe2torch.export_onnx import export_onnx

    net = load("deploy.prototxt", "age_net.caffemodel")
    report = export_onnx(net, "age_net.onnx", card=model_card)   # raises ParityError on a mismatch
    print(report.summary())

What the file holds:

* **Opset 17** by default (11..20 accepted). 17 is read by every ONNX Runtime since 1.11 (2022),
  TensorRT 8.5+, OpenVINO 2022.3+ and OpenCV dnn 4.7+; the ops these nets need (Conv, MaxPool,
  AveragePool, LRN, Gemm, Softmax over one axis, Concat) have had their present semantics since opset 13,
  and nothing newer than 17 is needed.
* Graph inputs and outputs named after Caffe's blobs (``data`` -> ``prob``; GoogLeNet's three heads
  ``loss1/loss1``, ``loss2/loss1``, ``loss3/loss3``), the batch axis of each dynamic (``batch``); weights
  as initializers named ``<caffe layer>.<blob>`` (the keys of the safetensors file).
* ``metadata_props``: ``agegender.inputs``/``agegender.outputs`` and, from a model card,
  ``agegender.preprocessing`` and ``agegender.labels`` (JSON strings), so a consumer can feed it.
* The TEST-phase net in eval mode: Dropout is the identity and leaves no node (checked).

How Caffe's layers are written so that any runtime computes Caffe's numbers:

* **Pooling.** Caffe's ceil-mode windows are not what every runtime makes of ONNX's ``ceil_mode``:
  ONNX Runtime's CPU AveragePool for opsets 7-18 divided a window that runs past the padded input by the
  full kernel area until 2026 (microsoft/onnxruntime#16203, fixed by #29629; the 1.32 used here is right),
  and the extra window a ceil-mode output may start in the right padding is dropped by Caffe and PyTorch
  but was not by older runtimes. So each pooling layer is planned from its input size
  (:func:`plan_pooling`): a plain ``MaxPool``/``AveragePool`` without ``ceil_mode`` where floor rounding
  gives Caffe's windows; ``MaxPool`` with ``ceil_mode`` where the ceil windows are Caffe's and MAX ignores
  padding anyway; otherwise an exact decomposition for that layer only: ``Pad`` to exactly Caffe's windows,
  a pool without padding or ``ceil_mode``, and for AVE a constant map ``kernel area / Caffe's divisor``
  (Caffe divides by the window clipped to the padded input) -- the sum pool times a divisor map.
* **LRN** across channels is ONNX's ``LRN`` op (the same formula: ``x / (k + alpha/n * sum x^2)^beta``
  over a zero-padded channel window); within a channel it is an AveragePool of ``x^2`` (stride 1, so no
  ceil windows).
* Grouped convolutions are ``Conv`` with ``group``.

**Verification** (``verify=True``): the serialized model is checked with ``onnx.checker`` and run in ONNX
Runtime (CUDA EP with TF32 off when ``onnxruntime-gpu`` offers it, else CPU) on seeded inputs at batch
1 and 7, through the dynamic batch axis; every graph output is compared with the torch module (and with
``reference``, e.g. :func:`opencv_reference`, when given): ``max |Δ| / max |ref|`` per output within the
tolerance and the same argmax. A mismatch raises :class:`ParityError` carrying the report; nothing is
written. The file is written atomically only after it passed.

**fp16** (``fp16=True``): weights and activations in float16, inputs and outputs kept float32 (a ``Cast``
at each end), half the file size. Its tolerance is :data:`FP16_TOLERANCE`, 2e-2 of each output's
largest magnitude, about 4x the worst error measured (ONNX Runtime 1.32 CPU vs the float32 torch
module): logits within 1.2e-3 and probabilities within 5.5e-3 (a GoogLeNet head) on the eight
Adience architectures with seeded weights; on Levi's real age net, probabilities within 1.1e-3 of
real Caffe's on the 480 faces, every argmax kept. ONNX Runtime's CPU EP runs the ops it has no
float16 kernel for in float32 between inserted casts. The argmax of fp16 outputs is reported, not
required: a near-tie may flip.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from .._atomic import atomic_write
from ..errors import AgegenderError, ParityError, UnsupportedLayerError
from .converters._util import FLT_MIN
from .converters.vision import CaffePooling, LRNWithinChannel, caffe_pooled_size
from .net import CaffeNet, eval_mode
from .parity import ParityReport, _argmax_equal, _blob_parity, _report, seeded_inputs

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
OPSET_RANGE = (11, 20)  # what the TorchScript exporter of torch 2.x writes
FP32_TOLERANCE = 1e-4  # max |Δ| / max |ref| per output
FP16_TOLERANCE = 2e-2
VERIFY_BATCHES = (1, 7)
BATCH_AXIS = "batch"
_EXPORTER_ERROR = getattr(getattr(torch.onnx, "errors", None), "OnnxExporterError", RuntimeError)

# layer types that have no place in an inference graph, and why
ONNX_UNSUPPORTED = {
    "Accuracy": "a metric that needs the label input: export the deploy net",
    "SoftmaxWithLoss": "a training loss that needs the label input: export the deploy net",
    "Silence": "produces no blob",
}


# --- pooling ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PoolPlan:
    """How one Caffe pooling layer is computed exactly for a given input size.

    ``kind``: ``"floor"`` (a plain pool with symmetric padding, floor rounding), ``"ceil"`` (MAX with
    ``ceil_mode``: its windows equal Caffe's) or ``"explicit"`` (pad to exactly Caffe's windows, pool
    without padding, then for AVE multiply by ``correction``: kernel area / Caffe's divisor; for
    STOCHASTIC divide the window sum of x^2 by FLT_MIN + the window sum of x). ``pads`` are (left, right,
    top, bottom), F.pad's order.
    """

    method: str
    kind: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    crop: bool = False  # the padded pool gives more windows than Caffe: keep the first out_size
    divisors: tuple[tuple[int, ...], tuple[int, ...]] | None = None  # Caffe's window lengths per axis (AVE)

    def describe(self) -> str:
        """One line for reports: the method, the geometry and the form written."""
        forms = {"floor": "plain pool", "ceil": "pool with ceil_mode",
                 "explicit": "Pad + pool" + (" x divisor map" if self.method == "AVE" else "")}
        def pair(values: tuple[int, int]) -> str:
            return str(values[0]) if values[0] == values[1] else f"{values[0]}x{values[1]}"

        return (f"{self.method} {self.kernel[0]}x{self.kernel[1]}/{pair(self.stride)} pad {pair(self.pad)}: "
                f"{self.in_size[0]}x{self.in_size[1]} -> {self.out_size[0]}x{self.out_size[1]}, {forms[self.kind]}")

    def correction(self) -> torch.Tensor:
        """kernel area / Caffe's divisor per output position (AVE, explicit form)."""
        assert self.divisors is not None
        rows = torch.tensor(self.divisors[0], dtype=torch.float64)
        cols = torch.tensor(self.divisors[1], dtype=torch.float64)
        area = float(self.kernel[0] * self.kernel[1])
        return (area / (rows[:, None] * cols[None, :])).to(torch.float32)


def plan_pooling(module: CaffePooling, in_size: tuple[int, int]) -> PoolPlan:
    """The exact computation of Caffe pooling ``module`` on an input of spatial size ``in_size``."""
    kernel, out = module.geometry(in_size)
    kernel = (int(kernel[0]), int(kernel[1]))
    stride, pad = tuple(module.stride), tuple(module.pad)
    floor_out = tuple(caffe_pooled_size(i, k, p, s, False, False) for i, k, p, s in zip(in_size, kernel, pad, stride))
    raw_ceil = tuple(-(-(i + 2 * p - k) // s) + 1 for i, k, p, s in zip(in_size, kernel, pad, stride))
    # Caffe's divisor: the window clipped to the padded input [-pad, size + pad)
    divisors = tuple(
        tuple(min(o * s - p + k, i + p) - (o * s - p) for o in range(n))
        for i, k, p, s, n in zip(in_size, kernel, pad, stride, out)
    )
    clipped = any(d != k for axis, k in zip(divisors, kernel) for d in axis)
    # torch's pooling (which the exporter traces) takes padding up to half the kernel only
    torch_pads = all(p <= k // 2 for p, k in zip(pad, kernel))
    base = dict(method=module.method, kernel=kernel, stride=stride, pad=pad, in_size=in_size, out_size=tuple(out))
    if module.method in ("MAX", "AVE") and out == floor_out and not clipped and torch_pads:
        return PoolPlan(kind="floor", **base)  # type: ignore[arg-type]
    # ceil_mode only where every runtime agrees with Caffe on the windows: the last one starts inside
    # the input or its left padding (newer ONNX Runtimes drop a window starting past it; Caffe, without
    # padding, keeps it and outputs -FLT_MAX there)
    starts_inside = all((o - 1) * s - p < i for o, s, p, i in zip(out, stride, pad, in_size))
    if module.method == "MAX" and out == raw_ceil and starts_inside and torch_pads:
        return PoolPlan(kind="ceil", **base)  # type: ignore[arg-type]
    pads: list[int] = []
    crop = False
    for axis in (1, 0):  # F.pad order: last axis first
        need = (out[axis] - 1) * stride[axis] + kernel[axis]
        right = need - in_size[axis] - pad[axis]
        crop |= right < 0
        pads += [pad[axis], max(right, 0)]
    return PoolPlan(kind="explicit", pads=tuple(pads), crop=crop,  # type: ignore[arg-type]
                    divisors=divisors if module.method == "AVE" else None, **base)


class OnnxPooling(nn.Module):
    """A :class:`CaffePooling` written out as a :class:`PoolPlan` for one input size (export only)."""

    def __init__(self, plan: PoolPlan) -> None:
        super().__init__()
        self.plan = plan
        if plan.kind == "explicit" and plan.method == "AVE":
            self.register_buffer("correction", plan.correction())
        else:
            self.correction = None

    def extra_repr(self) -> str:
        return self.plan.describe()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plan = self.plan
        if (int(x.shape[-2]), int(x.shape[-1])) != plan.in_size:
            raise AgegenderError(f"pooling planned for {plan.in_size}, got an input of {tuple(x.shape[-2:])}")
        if plan.kind == "floor":
            if plan.method == "MAX":
                return F.max_pool2d(x, plan.kernel, plan.stride, plan.pad)
            return F.avg_pool2d(x, plan.kernel, plan.stride, plan.pad, count_include_pad=True)
        if plan.kind == "ceil":
            return F.max_pool2d(x, plan.kernel, plan.stride, plan.pad, ceil_mode=True)
        oh, ow = plan.out_size
        if plan.method == "MAX":
            # Caffe starts each window at -FLT_MAX: the fill wins only in a window with no input value
            out = F.max_pool2d(F.pad(x, list(plan.pads), value=torch.finfo(x.dtype).min), plan.kernel, plan.stride)
        elif plan.method == "AVE":
            out = F.avg_pool2d(F.pad(x, list(plan.pads)), plan.kernel, plan.stride)
        else:  # STOCHASTIC at test time: sum(x^2) / (FLT_MIN + sum(x)) over the window, as Caffe's GPU kernel
            padded = F.pad(x, list(plan.pads))
            area = float(plan.kernel[0] * plan.kernel[1])
            tiny = torch.finfo(x.dtype).tiny if x.dtype == torch.float16 else FLT_MIN  # FLT_MIN is 0 in fp16
            out = (F.avg_pool2d(padded * padded, plan.kernel, plan.stride) * area
                   / (F.avg_pool2d(padded, plan.kernel, plan.stride) * area + tiny))
        if plan.crop:
            out = out[..., :oh, :ow]
        if self.correction is not None:
            out = out * self.correction.to(out.dtype)
        return out


# --- LRN --------------------------------------------------------------------------------------------------
class _LRNFunction(torch.autograd.Function):
    """Cross-channel LRN that the TorchScript exporter writes as ONNX's ``LRN`` op."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, size: int, alpha: float, beta: float,  # type: ignore[override]
                k: float) -> torch.Tensor:
        # float32 inside: torch's CPU kernels have no float16 LRN (only traced, for the fp16 export)
        return F.local_response_norm(x.float(), size, alpha, beta, k).to(x.dtype)

    @staticmethod
    def symbolic(g, x, size: int, alpha: float, beta: float, k: float):  # pragma: no cover - called by the exporter
        return g.op("LRN", x, size_i=size, alpha_f=alpha, beta_f=beta, bias_f=k)


class OnnxLRN(nn.Module):
    """``nn.LocalResponseNorm`` (Caffe's ACROSS_CHANNELS LRN) as one ONNX ``LRN`` node."""

    def __init__(self, lrn: nn.LocalResponseNorm) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = int(lrn.size), float(lrn.alpha), float(lrn.beta), float(lrn.k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LRNFunction.apply(x, self.size, self.alpha, self.beta, self.k)


class OnnxLRNWithinChannel(nn.Module):
    """Caffe's WITHIN_CHANNEL LRN without ``ceil_mode`` (stride 1 has no ceil windows)."""

    def __init__(self, lrn: LRNWithinChannel) -> None:
        super().__init__()
        self.size, self.alpha, self.beta = lrn.size, lrn.alpha, lrn.beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = (self.size - 1) // 2
        mean_sq = F.avg_pool2d(x * x, self.size, stride=1, padding=pad, count_include_pad=True)
        return x * torch.pow(1.0 + self.alpha * mean_sq, -self.beta)


# --- the graph that is traced --------------------------------------------------------------------------------
class _ExportGraph(nn.Module):
    """Runs ``net``'s layers in Caffe's order with export forms swapped in; returns ``outputs`` as a tuple.

    An explicit module (not ``CaffeNet.forward(*args, **kwargs)``, which the exporter cannot bind), with
    the net as a submodule so that its parameters become the graph's initializers.
    """

    def __init__(self, net: CaffeNet, outputs: Sequence[str], overrides: Mapping[str, nn.Module],
                 cast_to: torch.dtype | None = None) -> None:
        super().__init__()
        self.net = net
        self.outputs = list(outputs)
        self.overrides = nn.ModuleDict(dict(overrides))
        self.cast_to = cast_to

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        net = self.net
        if self.cast_to is not None:
            inputs = tuple(x.to(self.cast_to) for x in inputs)
        blobs = dict(zip(net.input_names, inputs))
        for key, bottoms, tops in net._plan:
            module = self.overrides[key] if key in self.overrides else net._modules[key]
            out = module(*[blobs[b] for b in bottoms])  # type: ignore[misc]
            outs = (out,) if len(tops) == 1 else tuple(out)
            blobs.update(zip(tops, outs))
        result = tuple(blobs[name] for name in self.outputs)
        if self.cast_to is not None:
            result = tuple(y.float() for y in result)
        return result


def _device(net: nn.Module) -> torch.device:
    tensor = next(iter(net.state_dict().values()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _check_exportable(net: CaffeNet) -> None:
    for info in net.layer_info:
        if info.module_name is None:
            continue
        why = ONNX_UNSUPPORTED.get(info.type)
        module = net._modules[info.module_name]
        if why is None and info.type == "BatchNorm" and getattr(module, "use_global_stats", None) is False:
            why = "use_global_stats: false normalises with the batch's own statistics (training behaviour)"
        if why is not None:
            raise UnsupportedLayerError(f"layer type '{info.type}' cannot be exported to ONNX: {why}",
                                        path=net.ir.path, line=info.line, layer=info.name)


def export_overrides(net: CaffeNet) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """The export forms of ``net``'s pooling and LRN layers, by module name, and a line per pooling layer
    saying which form it got (for the report)."""
    overrides: dict[str, nn.Module] = {}
    pooling: dict[str, str] = {}
    for info in net.layer_info:
        if info.module_name is None:
            continue
        module = net._modules[info.module_name]
        if isinstance(module, CaffePooling):
            in_shape = net.blob_shapes[info.bottoms[0]]
            plan = plan_pooling(module, (int(in_shape[2]), int(in_shape[3])))
            overrides[info.module_name] = OnnxPooling(plan)
            pooling[info.name] = plan.describe()
        elif isinstance(module, nn.LocalResponseNorm):
            overrides[info.module_name] = OnnxLRN(module)
        elif isinstance(module, LRNWithinChannel):
            overrides[info.module_name] = OnnxLRNWithinChannel(module)
    return overrides, pooling


# --- the report -----------------------------------------------------------------------------------------------
@dataclass
class ExportReport:
    """What an export wrote and how it was verified."""

    path: Path
    format: str
    opset: int
    fp16: bool
    inputs: dict[str, list]  # graph input name -> shape ("batch" for the dynamic axis)
    outputs: dict[str, list]
    bytes: int = 0
    sha256: str = ""
    export_seconds: float = 0.0
    verify_seconds: float = 0.0
    tolerance: float = FP32_TOLERANCE
    providers: list[str] = field(default_factory=list)
    verification: list[ParityReport] = field(default_factory=list)
    pooling: dict[str, str] = field(default_factory=dict)  # layer -> the form written
    op_counts: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def verified(self) -> bool:
        return bool(self.verification)

    @property
    def passed(self) -> bool:
        """True when verified and every comparison passed (argmax not required for fp16)."""
        return self.verified and all(_passed(r, self.fp16) for r in self.verification)

    def summary(self) -> str:
        """One line: file, opset, size and the verification's worst error."""
        text = f"{self.path.name}: ONNX opset {self.opset}{' fp16' if self.fp16 else ''}, {self.bytes / 1e6:.1f} MB"
        if not self.verification:
            return text + ", not verified"
        worst = max((r.worst.max_rel for r in self.verification if r.worst is not None), default=math.nan)
        verdict = "verified" if self.passed else "FAILED verification"
        refs = sorted({r.reference.split(",")[0] for r in self.verification})
        return (f"{text}, {verdict} ({len(self.verification)} comparisons: {'; '.join(refs)}; "
                f"worst max_rel {worst:.2g}, tolerance {self.tolerance:g})")

    def as_dict(self) -> dict:
        """A JSON-ready dict."""
        return {
            "path": str(self.path), "format": self.format, "opset": self.opset, "fp16": self.fp16,
            "inputs": self.inputs, "outputs": self.outputs, "bytes": self.bytes, "sha256": self.sha256,
            "export_seconds": round(self.export_seconds, 3), "verify_seconds": round(self.verify_seconds, 3),
            "tolerance": self.tolerance, "providers": self.providers, "passed": self.passed,
            "verification": [r.as_dict() for r in self.verification], "pooling": self.pooling,
            "op_counts": self.op_counts, "metadata": self.metadata,
        }


def _passed(report: ParityReport, fp16: bool) -> bool:
    if fp16:
        return bool(report.blobs) and report.first_failure is None
    return report.passed


# --- ONNX Runtime ---------------------------------------------------------------------------------------------
def ort_providers() -> list:
    """CUDA (TF32 off, so float32 stays float32) when onnxruntime-gpu offers it, then CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    providers: list = []
    if "CUDAExecutionProvider" in available:
        providers.append(("CUDAExecutionProvider", {"use_tf32": "0"}))
    providers.append("CPUExecutionProvider")
    return providers


def ort_session(model: bytes | str | Path, providers: Sequence | None = None, threads: int | None = None):
    """An ONNX Runtime session of a serialized model or a file (warnings kept quiet)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=list(providers or ort_providers()))


def run_onnx(session, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a session on float32 inputs by name; returns every graph output by name."""
    names = [o.name for o in session.get_outputs()]
    feed = {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in inputs.items()}
    return dict(zip(names, session.run(names, feed)))


ReferenceEngine = Callable[[Mapping[str, np.ndarray], Sequence[str]], Mapping[str, np.ndarray]]


def opencv_reference(prototxt: str | Path, caffemodel: str | Path) -> ReferenceEngine:
    """A reference engine for :func:`export_onnx`: OpenCV dnn reading the Caffe files.

    The callable takes (inputs by blob name, blob names) and returns those blobs as OpenCV holds them
    after the forward pass (the output of the last layer writing each blob; fusion off).
    """
    from .api import load
    from .parity import _cv_message, _opencv_net

    prototxt, caffemodel = Path(prototxt), Path(caffemodel)
    structure = load(prototxt)  # no weights: only the layer order, to name OpenCV's outputs
    cv2, cv_net = _opencv_net(prototxt, caffemodel)
    last_writer: dict[str, str] = {}
    for info in structure.layer_info:
        for top in info.tops:
            last_writer[top] = info.name

    def run(inputs: Mapping[str, np.ndarray], blobs: Sequence[str]) -> dict[str, np.ndarray]:
        layers = [last_writer[b] for b in blobs]
        try:
            for name, value in inputs.items():
                cv_net.setInput(np.ascontiguousarray(value, dtype=np.float32), name)
            outs = cv_net.forward(layers)
        except cv2.error as exc:
            raise ParityError(f"OpenCV dnn forward failed: {_cv_message(exc)}", path=prototxt) from None
        return {b: np.asarray(o) for b, o in zip(blobs, outs)}

    run.name = f"opencv-dnn {cv2.__version__}"  # type: ignore[attr-defined]
    return run


def compare_outputs(ours: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], names: Sequence[str],
                    tolerance: float, reference_name: str) -> ParityReport:
    """A :class:`ParityReport` of graph outputs ``names``: ``ours`` (e.g. ONNX Runtime) vs ``reference``."""
    blobs = [_blob_parity(name, np.asarray(ours[name]), np.asarray(reference[name]), tolerance) for name in names]
    pairs = [(np.asarray(ours[name]), np.asarray(reference[name])) for name in names]
    return _report(reference_name, tolerance, blobs, _argmax_equal(pairs), [])


# --- the export -------------------------------------------------------------------------------------------------
def _metadata(net: CaffeNet, inputs: dict[str, list], outputs: dict[str, list], card: Mapping[str, Any] | None,
              opset: int, fp16: bool) -> dict[str, str]:
    meta = {
        "agegender.producer": f"agegender {__version__}",
        "agegender.net_name": net.net_name,
        "agegender.source": str(net.ir.path),
        "agegender.inputs": json.dumps(inputs),
        "agegender.outputs": json.dumps(outputs),
        "agegender.precision": "float16 (float32 inputs and outputs)" if fp16 else "float32",
        "agegender.opset": str(opset),
    }
    if card:
        if card.get("preprocessing") is not None:
            meta["agegender.preprocessing"] = json.dumps(card["preprocessing"])
        if card.get("labels") is not None:
            meta["agegender.labels"] = json.dumps(list(card["labels"]))
        if card.get("name"):
            meta["agegender.model_name"] = str(card["name"])
    return meta


def _rename_initializers(model, net: CaffeNet) -> None:
    """Initializers named ``net.<module>.<attr>`` become ``<caffe layer>.<attr>``."""
    mapping = {}
    for info in net.layer_info:
        if info.module_name is not None:
            for attr in info.caffe_blobs:
                mapping[f"net.{info.module_name}.{attr}"] = f"{info.name}.{attr}"
    taken = {init.name for init in model.graph.initializer}
    renames = {}
    for init in model.graph.initializer:
        new = mapping.get(init.name)
        if new is not None and new not in taken:
            renames[init.name] = new
            taken.add(new)
            init.name = new
    if not renames:
        return
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]


def _trace_to_onnx(graph: _ExportGraph, example: tuple[torch.Tensor, ...], input_names: list[str],
                   output_names: list[str], opset: int) -> bytes:
    buffer = io.BytesIO()
    dynamic = {name: {0: BATCH_AXIS} for name in input_names + output_names}
    with warnings.catch_warnings(), torch.no_grad():
        # the TorchScript exporter's deprecation notice and tracer warnings about shapes read as ints:
        # every shape but the batch is fixed in a Caffe deploy, and verification runs two batch sizes
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, example, buffer, dynamo=False, opset_version=opset, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic, do_constant_folding=True,
                          export_params=True)
    return buffer.getvalue()


def _check_path(path: Path) -> None:
    """Fail early (before a long export) when ``path`` cannot be written."""
    if path.is_dir():
        raise AgegenderError("the output path is a folder", path=path, hint="give a file name, e.g. model.onnx")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise AgegenderError(f"cannot write here: {parent} is not a folder", path=path)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise AgegenderError(f"cannot write here: no permission to write in {parent}", path=path)


def export_onnx(
    net: CaffeNet,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    verify: bool = True,
    card: Mapping[str, Any] | None = None,
    outputs: Sequence[str] | None = None,
    reference: ReferenceEngine | None = None,
    tolerance: float | None = None,
    verify_batches: Sequence[int] = VERIFY_BATCHES,
    seed: int = 0,
    providers: Sequence | None = None,
) -> ExportReport:
    """Export ``net`` (TEST phase, eval mode) to an ONNX file at ``path``; see the module docstring.

    ``card``: a model card dict (``build_model_card``) whose ``preprocessing``, ``labels`` and ``name``
    go into ``metadata_props``. ``outputs``: the blobs to expose as graph outputs (default: the net's
    outputs; e.g. add the logits ``fc8``). ``reference``: a second engine to compare with, called as
    ``reference(inputs, output_names)`` (see :func:`opencv_reference`). ``tolerance`` defaults to
    :data:`FP32_TOLERANCE`, or :data:`FP16_TOLERANCE` for ``fp16``.

    Raises :class:`UnsupportedLayerError` for layers with no inference meaning (loss and metric layers),
    :class:`ParityError` when ONNX Runtime disagrees (nothing is written then), :class:`AgegenderError`
    for an output path that cannot be written. The module's weights and train/eval modes are unchanged.
    """
    import onnx

    path = Path(path)
    if not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        raise AgegenderError(f"opset {opset} is not supported", hint=f"use {OPSET_RANGE[0]}..{OPSET_RANGE[1]} "
                             f"(default {DEFAULT_OPSET})")
    tolerance = tolerance if tolerance is not None else (FP16_TOLERANCE if fp16 else FP32_TOLERANCE)
    if not (tolerance > 0 and math.isfinite(tolerance)):
        raise AgegenderError(f"tolerance must be a positive number, not {tolerance!r}")
    if any(b < 1 for b in verify_batches) or (verify and not verify_batches):
        raise AgegenderError(f"verify_batches must be positive batch sizes, not {list(verify_batches)}")
    _check_path(path)
    _check_exportable(net)
    output_names = list(outputs) if outputs is not None else list(net.output_names)
    if not output_names:
        raise AgegenderError("the net has no output blob to export", path=net.ir.path)
    for name in output_names:
        if name not in net.blob_shapes:
            raise AgegenderError(f"no blob named {name!r} to export", path=net.ir.path,
                                 hint="blobs: " + ", ".join(net.blob_shapes))
        if name in net.input_names:
            raise AgegenderError(f"{name!r} is an input of the net, not an output", path=net.ir.path)
    if len(set(output_names)) != len(output_names):
        raise AgegenderError(f"outputs named twice: {output_names}", path=net.ir.path)
    input_names = list(net.input_names)
    for name in input_names:
        if len(net.blob_shapes[name]) < 1:
            raise AgegenderError(f"the shape of input {name!r} is unknown", path=net.ir.path)

    overrides, pooling = export_overrides(net)
    device = _device(net)
    graph = _ExportGraph(net, output_names, overrides, cast_to=torch.float16 if fp16 else None).to(device)
    trace_batch = 2  # not 1: a batch of 1 invites the tracer to fold the batch axis away
    example = tuple(torch.from_numpy(v).to(device)
                    for v in seeded_inputs(net, batch=trace_batch, seed=seed).values())

    # net.half() swaps each parameter's .data and each buffer for a float16 copy: keep the originals to
    # put back (no copy of the weights, and their dtype and values come back untouched)
    params = [(p, p.data) for p in net.parameters()]
    buffers = [(m, key, b) for m in net.modules() for key, b in m._buffers.items()]
    started = time.perf_counter()
    try:
        with eval_mode(graph):  # dropout off, BatchNorm on its stored statistics
            if fp16:
                net.half()
            data = _trace_to_onnx(graph, example, input_names, output_names, opset)
    except AgegenderError:
        raise
    except (RuntimeError, ValueError, TypeError, _EXPORTER_ERROR) as exc:
        raise AgegenderError(f"the ONNX export failed: {str(exc).strip().splitlines()[0]}", path=net.ir.path,
                             hint="run with --debug for the traceback") from exc
    finally:
        if fp16:
            for param, original in params:
                param.data = original
            for module, key, original in buffers:
                module._buffers[key] = original

    model = onnx.load_from_string(data)
    _rename_initializers(model, net)
    op_counts: dict[str, int] = {}
    for node in model.graph.node:
        op_counts[node.op_type] = op_counts.get(node.op_type, 0) + 1
    if "Dropout" in op_counts:  # eval mode leaves none; a Dropout node would be a train-phase export
        raise AgegenderError("the exported graph still holds Dropout nodes", path=net.ir.path)
    shape_of = {name: [BATCH_AXIS, *[int(d) for d in net.blob_shapes[name][1:]]] for name in input_names + output_names}
    in_meta = {name: shape_of[name] for name in input_names}
    out_meta = {name: shape_of[name] for name in output_names}
    meta = _metadata(net, in_meta, out_meta, card, opset, fp16)
    onnx.helper.set_model_props(model, meta)
    model.producer_name, model.producer_version = "agegender", __version__
    model.doc_string = f"{net.net_name} from {Path(str(net.ir.path)).name}, exported by agegender {__version__}"
    data = model.SerializeToString()
    del model
    try:
        onnx.checker.check_model(data)  # the bytes that will be written (serialized once: VGG16 is 537 MB)
    except onnx.checker.ValidationError as exc:
        raise AgegenderError(f"the exported model fails onnx.checker: {str(exc).splitlines()[0]}",
                             path=net.ir.path) from None
    report = ExportReport(path=path, format="onnx", opset=opset, fp16=fp16, inputs=in_meta, outputs=out_meta,
                          bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), tolerance=tolerance,
                          pooling=pooling, op_counts=op_counts, metadata=meta)
    report.export_seconds = time.perf_counter() - started

    if verify:
        started = time.perf_counter()
        report.providers, report.verification = _verify(net, data, input_names, output_names, tolerance,
                                                        verify_batches, seed, reference, providers)
        report.verify_seconds = time.perf_counter() - started
        if not report.passed:
            failed = next(r for r in report.verification if not _passed(r, fp16))
            error = ParityError(f"ONNX Runtime disagrees, nothing written: {failed.summary()}", path=path)
            error.report = report  # type: ignore[attr-defined]
            raise error
    with atomic_write(path, "wb") as handle:
        handle.write(data)
    log.info("wrote %s", report.summary())
    return report


def _verify(net: CaffeNet, data: bytes, input_names: list[str], output_names: list[str], tolerance: float,
            batches: Sequence[int], seed: int, reference, providers) -> tuple[list[str], list[ParityReport]]:
    """Run the serialized model in ONNX Runtime at each batch size; compare with torch (and ``reference``)."""
    import onnxruntime as ort

    try:
        session = ort_session(data, providers)
    except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        raise ParityError(f"ONNX Runtime cannot load the exported model: {str(exc).strip().splitlines()[0]}",
                          path=net.ir.path) from None
    used = session.get_providers()
    engine = f"onnxruntime {ort.__version__} {used[0]}"
    device = _device(net)
    reports = []
    for index, batch in enumerate(batches):
        inputs = seeded_inputs(net, batch=batch, seed=seed + 1 + index)
        ours = run_onnx(session, inputs)
        with torch.no_grad(), eval_mode(net):
            torch_out = net(outputs=output_names, **{k: torch.from_numpy(v).to(device) for k, v in inputs.items()})
        torch_np = {k: v.cpu().numpy() for k, v in torch_out.items()}
        for name in output_names:
            if ours[name].shape[0] != batch:
                raise ParityError(f"ONNX Runtime returned {ours[name].shape[0]} rows of {name!r} for a batch of "
                                  f"{batch}: the batch axis is not dynamic", path=net.ir.path)
        reports.append(compare_outputs(ours, torch_np, output_names, tolerance,
                                       f"{engine} vs torch, batch {batch}"))
        if reference is not None:
            ref = reference(inputs, output_names)
            name = getattr(reference, "name", "reference engine")
            reports.append(compare_outputs(ours, ref, output_names, tolerance, f"{engine} vs {name}, batch {batch}"))
    return used, reports


__all__ = [
    "DEFAULT_OPSET", "ExportReport", "FP16_TOLERANCE", "FP32_TOLERANCE", "ONNX_UNSUPPORTED", "OnnxLRN", "ReferenceEngine",
    "OnnxPooling", "PoolPlan", "compare_outputs", "export_onnx", "export_overrides", "opencv_reference",
    "ort_providers", "ort_session", "plan_pooling", "run_onnx",
]
