"""Parity of a :class:`CaffeNet` with a reference engine: OpenCV dnn, or blobs stored from real Caffe.

Every comparison is one forward pass on each side and a per-blob error in the blob's own scale::

    max_rel = max |ours - ref| / max |ref|

so that a tolerance of 1e-4 means "agrees to 1e-4 of the blob's largest magnitude", whatever the
blob's range (raw 0..255 inputs, logits, probabilities).

Two kinds of reference, compared like with like:

* :func:`compare_with_opencv` runs ``cv2.dnn.readNetFromCaffe`` with fusion off and compares each
  layer's *own* output (OpenCV reports ``fc6`` before the in-place ``relu6``) with our layer's own
  output from ``CaffeNet.run(..., record_layers=True)``. OpenCV is a reference only: it is imported
  here, never on the conversion path.
* :func:`compare_with_blobs` compares blobs as Caffe holds them after the forward pass (in-place
  layers have overwritten their input), e.g. the arrays pycaffe's ``net.blobs`` gave.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ..errors import AgegenderError, MissingFileError, ParityError
from .net import CaffeNet


@dataclass
class BlobParity:
    """The agreement of one blob (or one layer's own output) with the reference."""

    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float  # max_abs / max|ref| (max_abs itself when the reference blob is all zeros)
    ok: bool

    def as_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "max_abs": _json_float(self.max_abs),
                "max_rel": _json_float(self.max_rel), "ok": self.ok}


@dataclass
class ParityReport:
    """The result of one comparison: per-blob errors in net order, argmax agreement on the outputs."""

    reference: str
    tolerance: float
    blobs: list[BlobParity]
    argmax_equal: bool | None  # on the net's output blob(s); None if none could be compared
    first_failure: str | None  # first blob (in net order) over tolerance
    # layers (OpenCV) or reference blobs (stored blobs) that could not be compared, and why not
    skipped: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when at least one blob was compared, all are within tolerance and no argmax differs."""
        return bool(self.blobs) and self.first_failure is None and self.argmax_equal is not False

    @property
    def worst(self) -> BlobParity | None:
        """The blob with the largest relative error (None when nothing was compared)."""
        if not self.blobs:
            return None
        return max(self.blobs, key=lambda b: b.max_rel if not math.isnan(b.max_rel) else math.inf)

    def blob(self, name: str) -> BlobParity:
        """The entry of blob (or layer) ``name``."""
        for entry in self.blobs:
            if entry.name == name:
                return entry
        raise KeyError(name)

    def as_dict(self) -> dict:
        """A JSON-ready dict (non-finite errors are written as the strings "inf"/"nan")."""
        worst = self.worst
        return {
            "reference": self.reference,
            "tolerance": self.tolerance,
            "passed": self.passed,
            "argmax_equal": self.argmax_equal,
            "first_failure": self.first_failure,
            "worst": worst.name if worst else None,
            "max_rel": _json_float(worst.max_rel) if worst else None,
            "blobs": [b.as_dict() for b in self.blobs],
            "skipped": list(self.skipped),
        }

    def summary(self) -> str:
        """One line: verdict, reference, how many blobs, the worst one, argmax, failure."""
        verdict = "PASS" if self.passed else "FAIL"
        worst = self.worst
        text = f"{verdict} vs {self.reference}: {len(self.blobs)} blob(s)"
        if worst is not None:
            text += f", worst {worst.name} max_rel {worst.max_rel:.3g} (max_abs {worst.max_abs:.3g})"
        text += f", tolerance {self.tolerance:g}"
        if self.argmax_equal is not None:
            text += ", argmax " + ("equal" if self.argmax_equal else "DIFFERS")
        if self.first_failure is not None:
            text += f", first failure {self.first_failure}"
        if self.skipped:
            text += f", {len(self.skipped)} not compared"
        return text


def _json_float(value: float) -> float | str:
    return float(value) if math.isfinite(value) else str(value)


def _blob_parity(name: str, ours: np.ndarray, ref: np.ndarray, tolerance: float) -> BlobParity:
    """Compare one blob; shapes must agree up to reshaping (OpenCV may keep or drop trailing 1-axes)."""
    shape = tuple(int(d) for d in ref.shape)
    if ours.size != ref.size:
        return BlobParity(name, shape, math.inf, math.inf, False)
    ours = ours.reshape(ref.shape).astype(np.float32, copy=False)
    ref = ref.astype(np.float32, copy=False)
    if ref.size == 0:
        return BlobParity(name, shape, 0.0, 0.0, True)
    max_abs = float(np.max(np.abs(ours - ref)))
    scale = float(np.max(np.abs(ref)))
    max_rel = max_abs / scale if scale > 0 else max_abs
    ok = bool(max_rel <= tolerance)  # NaN compares False: a NaN anywhere fails
    return BlobParity(name, shape, max_abs, max_rel, ok)


def _argmax_equal(pairs: list[tuple[np.ndarray, np.ndarray]]) -> bool | None:
    """Argmax over axis 1 (the class axis) of every (ours, ref) pair with at least 2 axes."""
    compared = False
    for ours, ref in pairs:
        if ref.ndim < 2 or ours.size != ref.size or ref.shape[1] < 2:
            continue
        compared = True
        if not np.array_equal(np.argmax(ours.reshape(ref.shape), axis=1), np.argmax(ref, axis=1)):
            return False
    return True if compared else None


def _report(reference: str, tolerance: float, blobs: list[BlobParity], argmax_equal: bool | None,
            skipped: list[str]) -> ParityReport:
    first = next((b.name for b in blobs if not b.ok), None)
    return ParityReport(reference=reference, tolerance=tolerance, blobs=blobs, argmax_equal=argmax_equal,
                        first_failure=first, skipped=skipped)


def _check_tolerance(tolerance: float) -> None:
    if not (tolerance > 0 and math.isfinite(tolerance)):
        raise AgegenderError(f"tolerance must be a positive number, not {tolerance!r}")


def _input_tensors(net: CaffeNet, inputs: Mapping[str, np.ndarray],
                   fallback: Mapping[str, np.ndarray] | None = None) -> dict[str, torch.Tensor]:
    """Our inputs as float32 tensors by name; every net input must be given (or be in ``fallback``)."""
    unknown = [name for name in inputs if name not in net.input_names]
    if unknown:
        raise AgegenderError(f"inputs name no input of the net: {unknown} (inputs: {net.input_names})",
                             path=net.ir.path)
    tensors = {}
    for name in net.input_names:
        if name in inputs:
            value = inputs[name]
        elif fallback is not None and name in fallback:
            value = fallback[name]
        else:
            raise AgegenderError(f"no array given for the net's input '{name}'", path=net.ir.path,
                                 hint="seeded_inputs(net) makes one")
        tensors[name] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    return tensors


def _run(net: CaffeNet, tensors: Mapping[str, torch.Tensor], record_layers: bool):
    try:
        with torch.no_grad():
            return net.run(record_layers=record_layers, **tensors)
    except AgegenderError:
        raise
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ParityError(f"our forward pass failed: {str(exc).splitlines()[0]}", path=net.ir.path,
                          hint="do the inputs have the shape the net expects?") from None


def seeded_inputs(net: CaffeNet, batch: int = 2, seed: int = 0, scale: float = 50.0) -> dict[str, np.ndarray]:
    """Seeded normal inputs for every input blob of ``net``: the declared shape with ``batch`` first,
    float32, standard deviation ``scale`` (about the spread of mean-subtracted 0..255 pixels)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name in net.input_names:
        shape = tuple(net.blob_shapes[name])
        shape = (batch,) + shape[1:] if shape else (batch,)
        out[name] = (rng.standard_normal(shape) * scale).astype(np.float32)
    return out


# --- OpenCV dnn -----------------------------------------------------------------------------------------
def _opencv_net(prototxt: Path, caffemodel: Path):
    try:
        import cv2
    except ImportError:  # pragma: no cover - a dependency of the package
        raise ParityError("OpenCV (cv2) is needed as the reference engine",
                          hint="pip install opencv-python-headless") from None
    for path, what in ((prototxt, "prototxt"), (caffemodel, "caffemodel")):
        if not path.is_file():
            raise MissingFileError(f"{what} not found", path=path)
    try:
        cv_net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    except cv2.error as exc:
        raise ParityError(f"OpenCV dnn cannot read the net with caffemodel {caffemodel}: "
                          f"{_cv_message(exc)}", path=prototxt) from None
    if cv_net.empty():
        raise ParityError(f"OpenCV dnn read an empty net (caffemodel {caffemodel})", path=prototxt)
    cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cv_net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    cv_net.enableFusion(False)  # keep every layer's own output (no conv+relu or conv+bn fusion)
    return cv2, cv_net


def _cv_message(exc: Exception) -> str:
    """The informative line of a cv2.error (its text starts with the C++ source location)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def compare_with_opencv(
    net: CaffeNet,
    prototxt: str | Path,
    caffemodel: str | Path,
    inputs: Mapping[str, np.ndarray],
    tolerance: float = 1e-4,
) -> ParityReport:
    """Compare every layer's own output of ``net`` with OpenCV dnn running ``prototxt`` + ``caffemodel``.

    One forward pass each on ``inputs`` (by input blob name). Layers OpenCV does not expose (and
    layers with several tops, whose other outputs OpenCV does not name) are listed in
    ``report.skipped``; the argmax is compared on the net's output blobs.
    """
    _check_tolerance(tolerance)
    prototxt, caffemodel = Path(prototxt), Path(caffemodel)
    tensors = _input_tensors(net, inputs)
    cv2, cv_net = _opencv_net(prototxt, caffemodel)
    exposed = set(cv_net.getLayerNames())

    compared, skipped = [], []
    for info in net.layer_info:
        if info.module_name is None:
            continue  # input layers: their blobs are the inputs themselves
        if info.name not in exposed:
            skipped.append(f"{info.name} (not exposed by OpenCV)")
        elif len(info.tops) != 1:
            skipped.append(f"{info.name} ({len(info.tops)} tops; OpenCV names only the first)")
        else:
            compared.append(info)
    if not compared:
        raise ParityError("OpenCV exposes none of the net's layers", path=prototxt)

    try:
        for name, tensor in tensors.items():
            cv_net.setInput(tensor.numpy(), name)
        cv_outputs = cv_net.forward([info.name for info in compared])
    except cv2.error as exc:
        raise ParityError(f"OpenCV dnn forward failed (caffemodel {caffemodel}): {_cv_message(exc)}",
                          path=prototxt) from None
    reference = {info.name: np.asarray(out) for info, out in zip(compared, cv_outputs)}

    _, layer_outputs = _run(net, tensors, record_layers=True)
    ours = {info.name: layer_outputs[info.module_name][0].numpy() for info in compared}  # type: ignore[index]
    blobs = [_blob_parity(info.name, ours[info.name], reference[info.name], tolerance) for info in compared]

    # the final value of an output blob is the own output of the last layer that writes it
    last_writer: dict[str, str] = {}
    for info in net.layer_info:
        for top in info.tops:
            last_writer[top] = info.name
    pairs = [(ours[last_writer[o]], reference[last_writer[o]]) for o in net.output_names
             if last_writer.get(o) in reference]
    return _report(f"opencv-dnn {cv2.__version__}", tolerance, blobs, _argmax_equal(pairs), skipped)


# --- stored blobs (real Caffe) ----------------------------------------------------------------------------
def compare_with_blobs(
    net: CaffeNet,
    reference: Mapping[str, np.ndarray],
    inputs: Mapping[str, np.ndarray],
    tolerance: float = 1e-4,
    reference_name: str = "stored blobs",
) -> ParityReport:
    """Compare ``net``'s blobs, as Caffe holds them after the forward pass, with ``reference``
    (blob name -> array, e.g. pycaffe's ``net.blobs`` saved to an npz).

    Inputs missing from ``inputs`` are taken from ``reference``. Reference blobs the net does not
    have (e.g. a Data layer's ``label``) are listed in ``report.skipped``.
    """
    _check_tolerance(tolerance)
    tensors = _input_tensors(net, inputs, fallback=reference)
    blobs_now, _ = _run(net, tensors, record_layers=False)

    order: list[str] = []  # blobs in net order: inputs, then each new top
    for info in net.layer_info:
        for top in info.tops:
            if top not in order:
                order.append(top)
    compared = [name for name in order if name in reference and name in blobs_now]
    skipped = [f"{name} (not a blob of the net)" for name in reference if name not in blobs_now]
    entries = [_blob_parity(name, blobs_now[name].numpy(), np.asarray(reference[name]), tolerance)
               for name in compared]
    pairs = [(blobs_now[o].numpy(), np.asarray(reference[o])) for o in net.output_names if o in reference]
    return _report(reference_name, tolerance, entries, _argmax_equal(pairs), skipped)


__all__ = ["BlobParity", "ParityReport", "compare_with_blobs", "compare_with_opencv", "seeded_inputs"]
