"""Predictions for face crops: each image decoded and resized as ``convert_imageset`` does (256 x 256),
transformed as the model was tested (center crop minus the mean, or ten crops), and classified."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..caffe2torch.net import CaffeNet
from ..errors import AgegenderError
from ..folds.datasets import ImageListDataset
from ..folds.lists import ImageList
from ..folds.transforms import CaffeTransform
from .engines import Engine, TorchEngine
from .metrics import expected_age, group_midpoints
from .runner import ProgressCallback, image_source, run_probabilities


@dataclass(frozen=True)
class Prediction:
    """One image's prediction by one model: the top class, its probability, the ``top_k`` classes and
    (age models) the expected age in years."""

    path: str
    model: str
    target: str
    label: str
    index: int
    probability: float
    top_k: tuple[tuple[str, float], ...]
    probs: tuple[float, ...]
    expected_age: float | None = None

    def as_dict(self) -> dict:
        data = {"path": self.path, "model": self.model, "target": self.target, "label": self.label,
                "index": self.index, "probability": self.probability,
                "top_k": [{"label": name, "probability": p} for name, p in self.top_k], "probs": list(self.probs)}
        if self.expected_age is not None:
            data["expected_age"] = self.expected_age
        return data


def predict_faces(net: CaffeNet | Engine, paths: Sequence[str | Path], transform: CaffeTransform, *, target: str,
                  label_names: Sequence[str], model: str = "", top_k: int = 3, oversample: bool = False,
                  resize: tuple[int, int] | None = (256, 256), batch_size: int = 64,
                  progress: ProgressCallback | None = None) -> list[Prediction]:
    """Classify face crops (image files); see the module docstring. Missing files fail with their count."""
    if not paths:
        raise AgegenderError("no images given")
    if top_k < 1:
        raise AgegenderError(f"top_k must be at least 1, not {top_k}")
    engine = TorchEngine(net) if isinstance(net, CaffeNet) else net
    entries = ImageList([str(p) for p in paths], np.zeros(len(paths), dtype=np.int64))
    dataset = ImageListDataset(entries, Path("."), None, resize=resize)
    probs = run_probabilities(engine, image_source(dataset), transform, oversample=oversample, batch_size=batch_size,
                              progress=progress)
    scores = probs.oversampled if probs.oversampled is not None else probs.center
    if scores.shape[1] != len(label_names):
        raise AgegenderError(f"the net gives {scores.shape[1]} classes but {len(label_names)} labels are named")
    years = expected_age(scores, group_midpoints(label_names)) if target == "age" else None
    k = min(top_k, len(label_names))
    out = []
    for i, path in enumerate(entries.paths):
        order = np.argsort(-scores[i], kind="stable")
        best = int(order[0])
        out.append(Prediction(
            path=path, model=model, target=target, label=label_names[best], index=best,
            probability=float(scores[i, best]),
            top_k=tuple((label_names[int(j)], float(scores[i, int(j)])) for j in order[:k]),
            probs=tuple(float(p) for p in scores[i]), expected_age=None if years is None else float(years[i]),
        ))
    return out


__all__ = ["Prediction", "predict_faces"]
