"""Engines that turn a batch of preprocessed crops into class probabilities: our torch module (CPU or GPU,
optionally under bf16/fp16 autocast) or ONNX Runtime on the net's verified ONNX export.

An engine is called as ``engine(batch)`` with an N x C x h x w float32 batch (a numpy array, or a tensor
for the torch engine) and returns N x classes float32 probabilities as a numpy array.

Which blob holds the probabilities (:func:`probability_blob`): the net's output named ``prob`` if there
is one, else its last output made by a ``Softmax`` layer (GoogLeNet's deploys have three heads; the last,
``loss3/loss3``, is the classifier). A train_val TEST net ends in Accuracy/SoftmaxWithLoss: then the
scores fed to its ``SoftmaxWithLoss`` are taken and a softmax is applied to them, as that layer does.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..caffe2torch.net import CaffeNet, eval_mode
from ..errors import AgegenderError

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Engine(Protocol):
    """What :func:`agegender.evaluation.evaluate` needs from an engine."""

    name: str
    device: torch.device

    def __call__(self, batch: Any) -> np.ndarray: ...


@dataclass(frozen=True)
class ProbabilityBlob:
    """Where a net's class probabilities are: ``blob``, and whether a softmax must still be applied to it."""

    blob: str
    apply_softmax: bool
    num_classes: int


def probability_blob(net: CaffeNet, blob: str | None = None) -> ProbabilityBlob:
    """The blob holding ``net``'s class probabilities (see the module docstring); ``blob`` names it."""
    producer = {top: info for info in net.layer_info for top in info.tops}
    if blob is not None:
        if blob not in net.blob_shapes:
            raise AgegenderError(f"no blob named {blob!r}", path=net.ir.path, hint="blobs: " + ", ".join(net.blob_shapes))
        info = producer.get(blob)
        softmax = info is None or info.type != "Softmax"
        return ProbabilityBlob(blob, softmax, _classes(net, blob))
    outputs = [name for name in net.output_names if not name.endswith("(automatic)")]
    if "prob" in outputs and producer["prob"].type == "Softmax":
        return ProbabilityBlob("prob", False, _classes(net, "prob"))
    softmaxes = [name for name in outputs if producer[name].type == "Softmax"]
    if softmaxes:
        return ProbabilityBlob(softmaxes[-1], False, _classes(net, softmaxes[-1]))
    losses = [info for info in net.layer_info if info.type == "SoftmaxWithLoss"]
    if losses:
        scores = losses[-1].bottoms[0]
        return ProbabilityBlob(scores, True, _classes(net, scores))
    raise AgegenderError(
        f"cannot tell which blob holds the class probabilities (outputs: {', '.join(outputs) or 'none'})",
        path=net.ir.path, hint="name it (--output BLOB)",
    )


def _classes(net: CaffeNet, blob: str) -> int:
    shape = net.blob_shapes[blob]
    if len(shape) < 2:
        raise AgegenderError(f"blob {blob!r} of shape {list(shape)} holds no per-class scores", path=net.ir.path)
    return int(np.prod(shape[1:]))


class TorchEngine:
    """Our :class:`CaffeNet` as an engine, in eval mode, on ``device`` (the net is moved there).

    ``precision`` ``"bf16"``/``"fp16"`` runs under ``torch.autocast`` (faster on GPUs, not bit-exact);
    the probabilities are returned as float32. Inputs other than the image (a train_val net's ``label``)
    are fed zeros.
    """

    def __init__(self, net: CaffeNet, *, blob: str | None = None, device: str | torch.device | None = None,
                 precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise AgegenderError(f"unknown precision {precision!r}", hint="fp32, bf16 or fp16")
        self.net = net
        self.output = probability_blob(net, blob)
        self.device = torch.device(device) if device is not None else _net_device(net)
        self.precision = precision
        image_inputs = [name for name in net.input_names if len(net.blob_shapes[name]) == 4]
        if len(image_inputs) != 1:
            raise AgegenderError(f"the net has {len(image_inputs)} image inputs ({image_inputs}); evaluation "
                                 "feeds exactly one", path=net.ir.path)
        self.input_name = image_inputs[0]
        self.input_shape = tuple(net.blob_shapes[self.input_name][1:])
        net.to(self.device)
        suffix = "" if precision == "fp32" else f" {precision} autocast"
        self.name = f"torch {torch.__version__} {self.device}{suffix}"

    @torch.inference_mode()
    def __call__(self, batch: Any) -> np.ndarray:
        x = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(batch))
        x = x.to(self.device, torch.float32, non_blocking=True)
        feeds = {self.input_name: x}
        for name in self.net.input_names:
            if name != self.input_name:  # e.g. the label of a train_val TEST net: not used for scores
                feeds[name] = torch.zeros(x.shape[0], device=self.device)
        dtype = PRECISIONS[self.precision]
        autocast = (torch.autocast(self.device.type, dtype=dtype) if dtype is not None
                    else contextlib.nullcontext())
        with eval_mode(self.net), autocast:
            out = self.net(outputs=[self.output.blob], **feeds)[self.output.blob]
        scores = out.float().reshape(out.shape[0], -1)
        if self.output.apply_softmax:
            scores = torch.softmax(scores, dim=1)
        return scores.cpu().numpy()


def _net_device(net: CaffeNet) -> torch.device:
    for tensor in net.parameters():
        return tensor.device
    return torch.device("cpu")


class OnnxEngine:
    """ONNX Runtime on an ONNX file: the net's own export (made and verified by
    :func:`~agegender.caffe2torch.export_onnx.export_onnx` into a temporary file), or a given ``.onnx``."""

    def __init__(self, net: CaffeNet | None = None, *, onnx_path: str | Path | None = None, blob: str | None = None,
                 providers: list | None = None, threads: int | None = None) -> None:
        import onnxruntime as ort

        from ..caffe2torch.export_onnx import export_onnx, ort_session

        if (net is None) == (onnx_path is None):
            raise AgegenderError("give the net or an ONNX file, not both")
        if net is not None:
            self.output = probability_blob(net, blob)
            if self.output.apply_softmax:
                raise AgegenderError("the ONNX engine needs a deploy net ending in a Softmax", path=net.ir.path,
                                     hint="evaluate the deploy prototxt, or use the torch engine")
            with tempfile.TemporaryDirectory(prefix="agegender-eval-") as folder:
                path = Path(folder) / "model.onnx"
                export_onnx(net, path, outputs=[self.output.blob], providers=providers)
                self.session = ort_session(path, providers, threads)
        else:
            self.session = ort_session(Path(onnx_path), providers, threads)  # type: ignore[arg-type]
            outputs = [o.name for o in self.session.get_outputs()]
            name = blob or ("prob" if "prob" in outputs else outputs[-1])
            if name not in outputs:
                raise AgegenderError(f"the ONNX model has no output {name!r} (outputs: {', '.join(outputs)})",
                                     path=onnx_path)
            shape = next(o.shape for o in self.session.get_outputs() if o.name == name)
            self.output = ProbabilityBlob(name, False, int(shape[-1]) if isinstance(shape[-1], int) else 0)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise AgegenderError(f"the ONNX model has {len(inputs)} inputs; evaluation feeds exactly one")
        self.input_name = inputs[0].name
        self.input_shape = tuple(inputs[0].shape[1:])
        self.device = torch.device("cpu")  # inputs are handed over as host arrays
        self.name = f"onnxruntime {ort.__version__} {self.session.get_providers()[0]}"

    def __call__(self, batch: Any) -> np.ndarray:
        if isinstance(batch, torch.Tensor):
            batch = batch.cpu().numpy()
        out = self.session.run([self.output.blob], {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.asarray(out[0], dtype=np.float32).reshape(len(batch), -1)


__all__ = ["Engine", "OnnxEngine", "PRECISIONS", "ProbabilityBlob", "TorchEngine", "probability_blob"]
