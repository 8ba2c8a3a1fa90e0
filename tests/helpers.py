"""Shared test utilities: seeded caffemodels written as real files, file digests, error measures."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from agegender.caffe2torch import CaffeNet, init_seeded, load, save_caffemodel

LAYOUTS = ("V1", "V2")


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def deploy_files(definitions: Path) -> list[Path]:
    """The deploy files under ``definitions``, identical contents next to each other (so per-content work
    is done once)."""
    files = sorted(definitions.glob("*/deploy.prototxt")) if definitions.is_dir() else []
    return sorted(files, key=lambda p: (file_digest(p), p.parent.name))


def macs_per_image(net: CaffeNet) -> float:
    """Multiply-adds of the convolutions and inner products for one image."""
    total = 0.0
    for info in net.parameter_layers():
        if info.type in ("Convolution", "InnerProduct"):
            weight = net.caffe_tensors(info.name)[0]
            out = info.out_shapes[0]
            total += weight.numel() * (float(np.prod(out[2:])) if info.type == "Convolution" else 1.0)
    return total


@dataclass
class SeededModel:
    """A net with seeded weights and the caffemodels it was written to, one per layout."""

    deploy: Path
    net: CaffeNet
    caffemodels: dict[str, Path]  # layout ("V1" or "V2") -> file
    layouts_checked: bool = False  # for callers that check the files' layouts once

    def remove_files(self) -> None:
        for path in self.caffemodels.values():
            path.unlink(missing_ok=True)


def write_seeded_caffemodels(deploy: str | Path, folder: str | Path, seed: int = 0,
                             layouts: tuple[str, ...] = LAYOUTS) -> SeededModel:
    """Build ``deploy``, fill it with :func:`init_seeded` weights and write them as real caffemodels
    (``folder/seeded_<layout>.caffemodel``) in each of ``layouts``."""
    deploy, folder = Path(deploy), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    net = load(deploy)
    init_seeded(net, seed)
    paths = {}
    for layout in layouts:
        path = folder / f"seeded_{layout}.caffemodel"
        save_caffemodel(net, net.net_def, path, layout=layout)
        paths[layout] = path
    return SeededModel(deploy=deploy, net=net, caffemodels=paths)


def assert_state_dicts_equal(a: CaffeNet, b: CaffeNet) -> None:
    """Same keys, shapes and values, bit for bit."""
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].shape == sb[key].shape, key
        assert torch.equal(sa[key], sb[key]), key


def max_rel_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / max |ref| (the measure of :mod:`agegender.caffe2torch.parity`)."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape
    scale = float(np.max(np.abs(ref)))
    return float(np.max(np.abs(ours - ref))) / (scale if scale > 0 else 1.0)


@torch.no_grad()
def forward_batched(net: CaffeNet, data: np.ndarray, outputs: list[str], chunk: int = 96) -> dict[str, np.ndarray]:
    """Run ``net`` on ``data`` (N x ...) in chunks, returning the requested blobs concatenated."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
    for start in range(0, len(data), chunk):
        blobs = net(torch.from_numpy(np.ascontiguousarray(data[start:start + chunk])), outputs=outputs)
        for name in outputs:
            parts[name].append(blobs[name].numpy())
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}
