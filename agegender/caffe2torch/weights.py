"""Loading caffemodel blobs into a :class:`CaffeNet`, and writing a CaffeNet's weights as a caffemodel.

Loading matches layers by name, checks each blob's shape strictly (V1 4-D legacy shapes are
reconciled as Caffe's ``Blob::ShapeEquals`` does), refuses a caffemodel of another net naming the
first mismatching layer, refuses NaN/inf weights, and reports blobs of layers the net does not have.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import CaffemodelError, WeightsMismatchError
from ..prototxt.files import CaffeWeights, array_to_blob, write_message_binary
from ..prototxt.message import Message
from ..prototxt.upgrade import V1_LAYER_TYPES
from .net import CaffeNet

log = logging.getLogger(__name__)


@dataclass
class WeightsReport:
    """What loading a caffemodel did: layers loaded, layers of the net left without weights, and
    layers of the caffemodel the net does not use (e.g. train-only heads)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    n_values: int = 0

    def as_dict(self) -> dict:
        return {"source": self.source, "loaded": self.loaded, "missing": self.missing, "extra": self.extra,
                "n_values": self.n_values}


def shapes_match(expected: tuple[int, ...], stored: tuple[int, ...], legacy: bool) -> bool:
    """Caffe's Blob::ShapeEquals: a legacy 4-D blob matches a shape of up to 4 axes padded with 1s."""
    if tuple(expected) == tuple(stored):
        return True
    if legacy and len(expected) <= 4:
        return (1,) * (4 - len(expected)) + tuple(expected) == tuple(stored)
    return False


def load_weights(net: CaffeNet, weights: CaffeWeights, *, allow_missing: bool = False) -> WeightsReport:
    """Copy the blobs of ``weights`` into ``net``'s parameters; see the module docstring for the checks.

    ``allow_missing`` leaves layers without weights uninitialised instead of failing (the caller is
    expected to initialise them, e.g. a new fc8 head before fine-tuning); they are listed in the report.
    """
    report = WeightsReport(source=weights.path)
    param_layers = net.parameter_layers()
    if param_layers and not any(info.name in weights.layers for info in param_layers):
        first = param_layers[0]
        raise WeightsMismatchError(
            f"the caffemodel (net '{weights.name}') has no weights for any layer of net '{net.net_name}'; "
            f"first layer with parameters: '{first.name}' ({first.type})",
            path=weights.path, layer=first.name, hint="are the prototxt and the caffemodel of the same net?",
        )
    with open(weights.path, "rb", buffering=0) as reader:
        _load_layers(net, weights, param_layers, report, reader)
    known = {info.name for info in net.layer_info}
    report.extra = [name for name in weights.layers if name not in known]
    if report.missing and not allow_missing:
        raise WeightsMismatchError(
            f"{len(report.missing)} layer(s) of the net have no weights in the caffemodel: "
            + ", ".join(report.missing[:5]) + ("..." if len(report.missing) > 5 else ""),
            path=weights.path, layer=report.missing[0],
            hint="are the prototxt and the caffemodel of the same net?",
        )
    if report.extra:
        log.warning("%s: weights of %d layer(s) not in the net were not used: %s", weights.path,
                    len(report.extra), ", ".join(report.extra))
    return report


def _load_layers(net: CaffeNet, weights: CaffeWeights, param_layers: list, report: WeightsReport, reader) -> None:
    for info in param_layers:
        stored = weights.layers.get(info.name)
        if stored is None:
            report.missing.append(info.name)
            continue
        if stored.type and stored.type != info.type:
            raise WeightsMismatchError(
                f"is of type {info.type} in the prototxt but {stored.type} in the caffemodel",
                path=weights.path, layer=info.name, hint="are the prototxt and the caffemodel of the same net?",
            )
        tensors = net.caffe_tensors(info.name)
        if len(stored.blobs) != len(tensors):
            names = ", ".join(info.caffe_blobs)
            raise WeightsMismatchError(
                f"expects {len(tensors)} blob(s) ({names}) but the caffemodel has {len(stored.blobs)}",
                path=weights.path, layer=info.name,
                hint="bias_term differs between the prototxt and the caffemodel?" if info.type in (
                    "Convolution", "InnerProduct", "Deconvolution") else None,
            )
        for i, (tensor, array, legacy) in enumerate(zip(tensors, stored.blobs, stored.legacy_shape)):
            expected = tuple(tensor.shape)
            if not shapes_match(expected, array.shape, legacy):
                raise WeightsMismatchError(
                    f"blob {i} ({info.caffe_blobs[i]}) has shape {list(array.shape)} in the caffemodel but the "
                    f"prototxt needs {list(expected)}",
                    path=weights.path, layer=info.name, hint="are the prototxt and the caffemodel of the same net?",
                )
            offset = stored.file_offsets[i] if i < len(stored.file_offsets) else None
            with torch.no_grad():
                _copy_blob(tensor, array, expected, offset, weights.path, reader)
                _check_finite(tensor, weights.path, info.name, f"blob {i} ({info.caffe_blobs[i]})")
            report.n_values += array.size
        report.loaded.append(info.name)


def _copy_blob(tensor: torch.Tensor, array: np.ndarray, shape: tuple[int, ...], offset: int | None, path: str,
               reader) -> None:
    """Fill ``tensor`` with a blob's values. A float32 blob stored as such in the file is read straight
    into the tensor (``preadv``): the file's pages are not mapped into this process on top of the weights."""
    if tensor.device.type == "cpu" and tensor.dtype == torch.float32 and tensor.is_contiguous():
        target = tensor.detach().numpy()
        if offset is not None and hasattr(os, "preadv") and sys.byteorder == "little":
            view = memoryview(target.reshape(-1)).cast("B")
            done = 0
            while done < view.nbytes:  # preadv may return short counts
                got = os.preadv(reader.fileno(), [view[done:]], offset + done)
                if got <= 0:
                    raise CaffemodelError("the file shrank while it was being read", path=path)
                done += got
        else:
            np.copyto(target, array.reshape(shape), casting="same_kind")
    else:
        tensor.copy_(torch.from_numpy(np.array(array, dtype=np.float32).reshape(shape)))


def _check_finite(tensor: torch.Tensor, path: str, layer: str, what: str) -> None:
    """Refuse NaN/inf weights. ``aminmax`` reads the tensor once without temporaries (NaN and inf reach
    the min or the max)."""
    if tensor.numel() == 0:
        return
    low, high = torch.aminmax(tensor)
    if bool(torch.isfinite(low)) and bool(torch.isfinite(high)):
        return
    bad = int((~torch.isfinite(tensor)).sum())
    raise WeightsMismatchError(f"{what} holds {bad} NaN or infinite value(s)", path=path, layer=layer,
                               hint="the caffemodel is corrupted or diverged in training")


# --- seeded weights and writing caffemodels -----------------------------------------------------------
def init_seeded(net: CaffeNet, seed: int = 0) -> None:
    """Fill every Caffe blob of ``net`` with seeded values that keep activations in a sane range.

    Weights (2+ axes) are He-normal over their fan-in, biases uniform in [-0.1, 0.1]; 1-axis scales
    and variances positive, means small. For tests, benchmarks and the embedded demo model.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for info in net.parameter_layers():
            for attr, tensor in zip(info.caffe_blobs, net.caffe_tensors(info.name)):
                shape = tuple(tensor.shape)
                if attr == "weight" and len(shape) >= 2:
                    transposed = getattr(net.layer_module(info.name), "transpose", False) is True
                    fan_in = shape[0] if transposed else int(np.prod(shape[1:]))
                    if info.type == "Deconvolution":
                        fan_in = int(shape[0] * np.prod(shape[2:]))
                    values = torch.randn(shape, generator=gen) * (2.0 / max(fan_in, 1)) ** 0.5
                elif attr in ("variance", "running_var"):
                    values = torch.rand(shape, generator=gen) + 0.5
                elif attr == "scale_factor":
                    values = torch.ones(shape)
                elif attr in ("mean", "running_mean", "bias"):
                    values = (torch.rand(shape, generator=gen) - 0.5) * 0.2
                else:  # per-channel scales and slopes
                    values = torch.rand(shape, generator=gen) * 0.5 + 0.5
                tensor.copy_(values)


_V1_TYPE_OF = {v2: v1 for v1, v2 in V1_LAYER_TYPES.items() if v2}


def weights_message(net: CaffeNet, net_def: Message, layout: str = "V2") -> Message:
    """A NetParameter holding ``net_def``'s layers with ``net``'s weights as blobs.

    ``layout="V2"`` writes ``layer {}`` with BlobShape (current Caffe); ``"V1"`` writes ``layers {}`` with
    enum types and 4-D num/channels/height/width blobs, as Caffe before 2015 did (Levi's files).
    """
    if layout not in ("V1", "V2"):
        raise ValueError("layout must be 'V1' or 'V2'")
    out = Message("NetParameter", name=net_def.name or net.net_name)
    names = {info.name for info in net.layer_info}
    for layer in net_def.layer:
        if layer.type == "Input" or layer.name not in names:
            continue
        info = net.layer(layer.name)
        tensors = [t.detach().cpu().numpy() for t in net.caffe_tensors(layer.name)] if info.caffe_blobs else []
        if layout == "V2":
            new = layer.copy()
            new.blobs = [array_to_blob(t) for t in tensors]
            out.layer.append(new)
        else:
            if layer.type not in _V1_TYPE_OF:
                raise WeightsMismatchError(f"type {layer.type} has no V1 (enum) form", layer=layer.name)
            old = Message("V1LayerParameter", name=layer.name, type=_V1_TYPE_OF[layer.type],
                          bottom=list(layer.bottom), top=list(layer.top))
            for spec, value in layer.set_fields():
                if spec.name.endswith("_param") and spec.name in old.mtype.fields:
                    setattr(old, spec.name, value)
            old.blobs = [array_to_blob(t, legacy_4d=True) for t in tensors]
            out.layers.append(old)
    return out


def save_caffemodel(net: CaffeNet, net_def: Message, path: str | Path, layout: str = "V2") -> int:
    """Write ``net``'s weights as a caffemodel at ``path`` (atomically). Returns the file size."""
    return write_message_binary(weights_message(net, net_def, layout), path)
