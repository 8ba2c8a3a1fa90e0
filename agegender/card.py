"""The artefacts of a conversion: the weights as safetensors and a model card JSON.

The safetensors file holds every Caffe blob of the net under ``<caffe layer name>.<blob>``
(``conv1.weight``, ``conv1.bias``, ``inception_3a/1x1.weight``), in Caffe's stored shapes, so it loads
back with :func:`load_safetensors` (and, for nets whose layer names have no ``.``, with
``net.load_state_dict``). The model card records what was converted (source files with sha256), the
net's structure (layers, shapes, parameter and FLOP counts), how to feed it and the weights report.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from . import __version__
from ._atomic import atomic_write, atomic_write_text
from .caffe2torch.flops import count_flops
from .caffe2torch.net import CaffeNet
from .errors import AgegenderError, FileFormatError, MeanFileError, WeightsMismatchError
from .prototxt.files import read_blobproto
from .zoo.cards import ModelCard, Preprocessing
from .zoo.fetch import sha256_file

CARD_FORMAT = "agegender-model-card/1"
CARD_FILE = "card.json"


def caffe_state_dict(net: CaffeNet) -> dict[str, torch.Tensor]:
    """Every Caffe blob of ``net`` keyed ``<caffe layer name>.<blob name>``, in net order."""
    tensors: dict[str, torch.Tensor] = {}
    for info in net.parameter_layers():
        for attr, tensor in zip(info.caffe_blobs, net.caffe_tensors(info.name)):
            tensors[f"{info.name}.{attr}"] = tensor.detach().cpu().contiguous()
    return tensors


def save_safetensors(net: CaffeNet, path: str | Path, metadata: Mapping[str, str] | None = None) -> str:
    """Write ``net``'s Caffe blobs (see :func:`caffe_state_dict`) as safetensors, atomically.
    Returns the file's sha256."""
    from safetensors.torch import save

    meta = {"format": "pt", "producer": f"agegender {__version__}", "net": net.net_name}
    meta.update(metadata or {})
    data = _sorted_metadata(save(caffe_state_dict(net), metadata=meta))
    with atomic_write(path, "wb") as handle:
        handle.write(data)
    return sha256_file(path)


def _sorted_metadata(data: bytes) -> bytes:
    """``data`` with its ``__metadata__`` keys in sorted order.

    safetensors writes the metadata from a hash map, in an order that changes from run to run, so two
    identical conversions would differ in sha256. Sorting keeps the header's length (same characters),
    so the tensor offsets stay valid.
    """
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > size:  # not the layout this function knows: leave the file as safetensors wrote it
        return data
    return data[:8] + text.ljust(size, b" ") + data[8 + size:]


def load_safetensors(net: CaffeNet, path: str | Path) -> None:
    """Copy a file written by :func:`save_safetensors` into ``net`` (keys and shapes must match exactly)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        stored = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise FileFormatError(f"not a readable safetensors file: {exc}", path=path) from None
    expected = caffe_state_dict(net)
    missing = [k for k in expected if k not in stored]
    extra = [k for k in stored if k not in expected]
    if missing or extra:
        raise WeightsMismatchError(f"safetensors keys do not match the net: missing {missing[:5]}, extra {extra[:5]}",
                                   path=path)
    with torch.no_grad():
        for info in net.parameter_layers():
            for attr, tensor in zip(info.caffe_blobs, net.caffe_tensors(info.name)):
                value = stored[f"{info.name}.{attr}"]
                if tuple(value.shape) != tuple(tensor.shape):
                    raise WeightsMismatchError(f"blob {attr} has shape {list(value.shape)}, the net needs "
                                               f"{list(tensor.shape)}", path=path, layer=info.name)
                tensor.copy_(value)


def file_entry(path: str | Path) -> dict:
    """``{"path", "sha256", "bytes"}`` of a source file."""
    path = Path(path)
    return {"path": str(path.resolve()), "sha256": sha256_file(path), "bytes": path.stat().st_size}


def check_mean(mean_file: str | Path, net: CaffeNet) -> dict:
    """Read a mean image and check that it fits the net's (first) input; returns its description.

    A mean of shape (1, C, H, W) or (C, H, W) fits an input (N, C, h, w) when H >= h and W >= w: Caffe
    subtracts it at the crop offset. Anything else is a :class:`MeanFileError`.
    """
    mean = read_blobproto(mean_file)
    if not net.input_names:
        raise MeanFileError("the net has no input to subtract a mean image from", path=mean_file)
    input_shape = tuple(net.blob_shapes[net.input_names[0]])
    shape = mean.shape[1:] if mean.ndim == 4 and mean.shape[0] == 1 else mean.shape
    if len(shape) != 3 or len(input_shape) != 4:
        raise MeanFileError(f"a mean image must be (1,) C x H x W; this one is {list(mean.shape)}", path=mean_file)
    channels, height, width = shape
    if channels != input_shape[1] or height < input_shape[2] or width < input_shape[3]:
        raise MeanFileError(
            f"mean image {list(mean.shape)} does not fit the net's input {list(input_shape)} "
            f"(needs {input_shape[1]} channels and at least {input_shape[2]}x{input_shape[3]} pixels)",
            path=mean_file, hint="is this the mean file of another net or dataset?",
        )
    channel_means = mean.reshape(channels, -1).astype(np.float64).mean(axis=1)
    return {**file_entry(mean_file), "shape": [int(d) for d in mean.shape],
            "channel_means": [round(float(v), 4) for v in channel_means]}


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def build_model_card(
    net: CaffeNet,
    *,
    name: str,
    prototxt: str | Path,
    caffemodel: str | Path | None,
    mean_file: str | Path | None = None,
    preprocessing: Preprocessing | None = None,
    labels: Sequence[str] | None = None,
    zoo_card: ModelCard | None = None,
    fold: int = 0,
    warnings: Sequence[str] = (),
    artefacts: Mapping[str, Any] | None = None,
) -> dict:
    """The model card of a converted net as a JSON-ready dict (see the module docstring).

    Without ``preprocessing``, one is derived from the net's input size and ``mean_file``; ``labels``
    default to the zoo card's.
    """
    cost = count_flops(net)
    sources: dict[str, Any] = {"prototxt": file_entry(prototxt)}
    if caffemodel is not None:
        sources["caffemodel"] = file_entry(caffemodel)
    if mean_file is not None:
        sources["mean"] = check_mean(mean_file, net)
    if preprocessing is None and net.input_names:
        input_shape = net.blob_shapes[net.input_names[0]]
        crop = int(input_shape[-1]) if len(input_shape) == 4 else 0
        preprocessing = Preprocessing(crop=crop, mean_file=str(mean_file) if mean_file else None)
    if labels is None and zoo_card is not None:
        labels = zoo_card.labels
    layers = []
    for info, layer_cost in zip(net.layer_info, cost.layers):
        layers.append({
            "name": info.name, "type": info.type, "bottoms": list(info.bottoms), "tops": list(info.tops),
            "output_shapes": [list(s) for s in info.out_shapes], "params": layer_cost.params,
            "flops": layer_cost.flops, "line": info.line,
        })
    card = {
        "format": CARD_FORMAT,
        "producer": f"agegender {__version__}",
        "name": name,
        "net_name": net.net_name,
        "phase": net.ir.state.phase,
        "zoo": zoo_card.as_dict(fold) if zoo_card is not None else None,
        "source_files": sources,
        "inputs": [{"name": n, "shape": list(net.blob_shapes[n])} for n in net.input_names],
        "outputs": [{"name": n, "shape": list(net.blob_shapes[n])} for n in net.output_names],
        "layers": layers,
        "total_params": cost.total_params,
        "total_flops_per_image": cost.total_flops,
        "flops_convention": cost.as_dict()["convention"],
        "preprocessing": preprocessing.as_dict() if preprocessing is not None else None,
        "labels": list(labels) if labels is not None else None,
        "weights_report": net.weights_report.as_dict() if getattr(net, "weights_report", None) else None,
        "warnings": list(warnings),
        "artefacts": dict(artefacts or {}),
    }
    return _json_safe(card)


def write_json(obj: Any, path: str | Path) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(_json_safe(obj), indent=2) + "\n")


# --- a conversion's folder: complete exactly when card.json is there --------------------------------------------
# Every artefact is written atomically (old or new file, never half of one), but a folder holds several:
# a conversion killed half-way would leave new weights beside an old card. So card.json is the folder's
# completeness marker: start_output() removes it before any artefact is replaced, publish_card() writes it
# last with the sha256 of every file of the conversion, and check_output() verifies a folder against it.
def start_output(out_dir: str | Path, artefacts: Sequence[str] = ()) -> None:
    """Begin writing a conversion into ``out_dir``: remove a previous card.json (so the folder no longer
    claims to be complete) and the temporary files a killed earlier run left for ``artefacts``."""
    out_dir = Path(out_dir)
    try:
        (out_dir / CARD_FILE).unlink(missing_ok=True)
        for name in (CARD_FILE, *artefacts):
            for stale in out_dir.glob(f".{name}.*.tmp"):  # atomic_write's temporary names
                stale.unlink(missing_ok=True)
    except OSError as exc:
        raise AgegenderError(f"cannot write here: {exc.strerror}", path=out_dir / CARD_FILE) from None


def publish_card(card: dict, out_dir: str | Path, files: Sequence[str]) -> dict:
    """Write ``out_dir/card.json`` last, listing ``files`` (names in ``out_dir``, already written) with
    their sha256 under ``card["files"]``. Returns the card."""
    out_dir = Path(out_dir)
    card["files"] = {name: sha256_file(out_dir / name) for name in files}
    write_json(card, out_dir / CARD_FILE)
    return card


def check_output(out_dir: str | Path) -> dict:
    """The card of a complete conversion folder; raises :class:`FileFormatError` when ``out_dir`` has no
    card.json (an unfinished or interrupted conversion) or a file it lists is missing or differs."""
    card_path = Path(out_dir) / CARD_FILE
    if not card_path.is_file():
        raise FileFormatError("no card.json: not a finished conversion (interrupted?)", path=card_path.parent,
                              hint="run the conversion again")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
        files = card["files"]
        assert isinstance(files, dict)
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise FileFormatError("not a model card written by agegender (no file list)", path=card_path) from None
    for name, digest in files.items():
        path = card_path.parent / name
        if not path.is_file():
            raise FileFormatError(f"the card lists {name}, which is missing", path=path)
        if sha256_file(path) != digest:
            raise FileFormatError(f"{name} is not the file the card lists (sha256 differs)", path=path,
                                  hint="the folder was changed after the conversion: run it again")
    return card


__all__ = ["CARD_FILE", "CARD_FORMAT", "build_model_card", "caffe_state_dict", "check_mean", "check_output",
           "file_entry", "load_safetensors", "publish_card", "save_safetensors", "start_output", "write_json"]
