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
from typing import Any, Callable, Protocol

import numpy as np
import torch

from ..caffe2torch.net import CaffeNet, eval_mode
from ..errors import AgegenderError

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "tf32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Autocast dtype per precision: ``fp32`` is exact float32 (TF32 off on CUDA, where PyTorch's default lets
cuDNN convolutions use TF32), ``tf32`` float32 with TF32 matmuls and convolutions on CUDA (float32 on a
CPU), ``bf16``/``fp16`` autocast."""


@contextlib.contextmanager
def backend_flags(device: str | torch.device, *, tf32: bool, benchmark: bool = True):
    """On a CUDA ``device``, for the block: TF32 for float32 matmuls and cuDNN convolutions on or off, and
    cuDNN autotuning (``benchmark``); the previous settings are restored afterwards. Elsewhere it does nothing.

    PyTorch's own default is TF32 *on* for cuDNN convolutions (off for matmuls), so "float32" on a GPU
    is not float32 unless it is switched off. Since PyTorch 2.9 there are two APIs for these settings and a
    process that used the newer ``fp32_precision`` one gets a RuntimeError from the older getters
    (``torch.backends.cudnn.flags`` reads them too): the older API is used, and the newer one alone where
    the older one refuses.
    """
    if torch.device(device).type != "cuda":
        yield
        return
    restore: list = []

    def newer_in_use(*parents: Callable[[], Any]) -> bool:
        """Whether the process set one of the newer API's parent switches (the global one, a backend's): the
        legacy setters then leave the operators on the old mode, so the newer API alone must be used."""
        for parent in parents:
            try:
                if parent() not in ("none", None):
                    return True
            except (AttributeError, RuntimeError, TypeError):  # older PyTorch: no such switch
                continue
        return False

    global_mode = lambda: torch.backends.fp32_precision  # noqa: E731
    cuda_mode = lambda: torch._C._get_fp32_precision_getter("cuda", "all")  # noqa: E731

    def swap(legacy: Any, newer_module: Callable[[], Any], parents: tuple) -> None:
        """``legacy.allow_tf32 = tf32``, or the newer ``fp32_precision`` where the process uses that API."""
        if not newer_in_use(*parents):
            try:
                previous = legacy.allow_tf32
                legacy.allow_tf32 = tf32
                restore.append(lambda: setattr(legacy, "allow_tf32", previous))
                return
            except RuntimeError:  # this process used the newer API (PyTorch >= 2.9): keep to it
                pass
        newer = newer_module()
        mode = newer.fp32_precision
        newer.fp32_precision = "tf32" if tf32 else "ieee"
        restore.append(lambda: setattr(newer, "fp32_precision", mode))

    try:
        swap(torch.backends.cuda.matmul, lambda: torch.backends.cuda.matmul, (global_mode, cuda_mode))
        swap(torch.backends.cudnn, lambda: torch.backends.cudnn.conv,
             (global_mode, cuda_mode, lambda: torch.backends.cudnn.fp32_precision))
        previous_benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = benchmark
        restore.append(lambda: setattr(torch.backends.cudnn, "benchmark", previous_benchmark))
        yield
    finally:
        for undo in reversed(restore):
            undo()


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
    the probabilities are returned as float32. On CUDA ``"fp32"`` is exact float32 (TF32 switched off for
    the call, :func:`backend_flags`) and ``"tf32"`` lets matmuls and convolutions use TF32; cuDNN
    autotuning is on (the first batch of each shape is slower). Inputs other than the image (a train_val
    net's ``label``) are fed zeros.
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
        suffix = {"fp32": "", "tf32": " tf32"}.get(precision, f" {precision} autocast")
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
        with eval_mode(self.net), backend_flags(self.device, tf32=self.precision != "fp32"), autocast:
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
    :func:`~agegender.caffe2torch.export_onnx.export_onnx` into a temporary file), or a given ``.onnx``.

    ``device`` ``"cuda"``/``"cuda:N"`` asks for the CUDA execution provider (TF32 off), with the CPU one
    behind it; ``providers`` gives the list itself; neither: CUDA when the installed onnxruntime offers
    it, else the CPU. A provider asked for but not running (the CPU build ``onnxruntime`` is installed,
    which has no CUDA provider: ``onnxruntime-gpu`` has; or the provider failed to load its CUDA/cuDNN
    libraries) is no error: the session runs on what it got, and :attr:`fallback` says what happened
    (also logged as a warning and shown in :attr:`name`).
    """

    def __init__(self, net: CaffeNet | None = None, *, onnx_path: str | Path | None = None, blob: str | None = None,
                 providers: list | None = None, threads: int | None = None,
                 device: str | torch.device | None = None) -> None:
        import warnings

        import onnxruntime as ort

        from ..caffe2torch.export_onnx import ort_providers

        if (net is None) == (onnx_path is None):
            raise AgegenderError("give the net or an ONNX file, not both")
        if device is not None and providers is None:
            target = torch.device(device)
            if target.type == "cuda":
                providers = [("CUDAExecutionProvider", {"device_id": str(target.index or 0), "use_tf32": "0"}),
                             "CPUExecutionProvider"]
            elif target.type == "cpu":
                providers = ["CPUExecutionProvider"]
            else:
                raise AgegenderError(f"the ONNX engine runs on cpu or cuda, not {target.type}")
        if providers is None:
            providers = ort_providers()  # CUDA when this onnxruntime offers it, then the CPU
        requested = [p if isinstance(p, str) else p[0] for p in providers]
        with warnings.catch_warnings():  # onnxruntime's "not in available provider names": said below, clearer
            warnings.filterwarnings("ignore", message=".*provider.*", category=UserWarning)
            self._open(net, onnx_path, blob, providers, threads)
        running = list(self.session.get_providers())
        missing = [p for p in requested if p not in running]
        self.fallback: str | None = None
        if missing:
            available = ort.get_available_providers()
            if "CUDAExecutionProvider" in missing and "CUDAExecutionProvider" not in available:
                why = (f"this onnxruntime {ort.__version__} has no CUDA provider (the CPU build 'onnxruntime' is "
                       "installed; the CUDA provider comes with 'onnxruntime-gpu')")
            else:
                why = ("onnxruntime could not start it (its CUDA/cuDNN libraries missing or of another version: "
                       "see onnxruntime's log)")
            self.fallback = f"{', '.join(missing)} asked for but not running: {why}; running on {running[0]}"
            log.warning("ONNX engine: %s", self.fallback)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise AgegenderError(f"the ONNX model has {len(inputs)} inputs; evaluation feeds exactly one")
        self.input_name = inputs[0].name
        self.input_shape = tuple(inputs[0].shape[1:])
        self.device = torch.device("cpu")  # inputs are handed over as host arrays
        self.providers = running
        self.name = f"onnxruntime {ort.__version__} {running[0]}"
        if self.fallback:
            self.name += f" (fallback: {', '.join(missing)} unavailable)"

    def _open(self, net: CaffeNet | None, onnx_path: str | Path | None, blob: str | None, providers: list | None,
              threads: int | None) -> None:
        """The ONNX Runtime session (:attr:`session`) and the probability output (:attr:`output`)."""
        from ..caffe2torch.export_onnx import export_onnx, ort_session

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

    def __call__(self, batch: Any) -> np.ndarray:
        if isinstance(batch, torch.Tensor):
            batch = batch.cpu().numpy()
        out = self.session.run([self.output.blob], {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.asarray(out[0], dtype=np.float32).reshape(len(batch), -1)


__all__ = ["Engine", "OnnxEngine", "PRECISIONS", "ProbabilityBlob", "TorchEngine", "backend_flags", "probability_blob"]
