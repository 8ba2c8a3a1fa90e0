"""Evaluating a net on a set of faces: stored uint8 images -> Caffe's TEST transform -> engine -> metrics.

:func:`evaluate` reads the images in order (an LMDB, a list file's images, an array), transforms them
exactly as Caffe's TEST-phase Data layer does (the center crop minus the mean image at the crop offset),
or over-samples them (the four corners and the center, each mirrored: ten crops whose probabilities are
averaged, as pycaffe's ``Classifier`` does), runs the engine in batches and computes the papers' figures.
With over-sampling the center-crop figures come from the same pass (crop 4 is the center crop).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ..caffe2torch.net import CaffeNet
from ..errors import AgegenderError
from ..folds.datasets import GPUResidentDataset, ImageListDataset, LMDBDataset
from ..folds.lmdb_io import DatumLMDB
from ..folds.transforms import CaffeTransform
from ..zoo.cards import GENDER_LABELS, LEVI_AGE_LABELS
from .engines import Engine, TorchEngine
from .metrics import classification_metrics, expected_age, group_midpoints, predictions_of, summarize_values

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(images_done, images_total)``."""

OVERSAMPLE_CROPS = 10
CENTER_CROP_INDEX = 4  # in oversample_offsets' order: four corners, the center, then the five mirrored
TARGETS = ("age", "gender")


# --- image sources ------------------------------------------------------------------------------------
class ImageSource:
    """Stored images in order, with their labels and ids, read ``count`` at a time as uint8 N x C x H x W.

    Made by :func:`image_source` from an LMDB, a dataset without a transform, a device-resident fold or an
    ``(images, labels)`` pair.
    """

    def __init__(self, ids: Sequence[str], labels: np.ndarray, read: Callable[[int, int], Any],
                 description: str) -> None:
        self.ids = list(ids)
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self._read = read
        self.description = description
        if len(self.ids) != self.labels.size:
            raise AgegenderError(f"{len(self.ids)} images but {self.labels.size} labels")

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, start: int, stop: int) -> Any:
        """Images ``start:stop`` as one uint8 N x C x H x W array (or tensor, for a resident fold)."""
        return self._read(start, stop)


def _stack(images: list[np.ndarray], ids: Sequence[str]) -> np.ndarray:
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        first = images[0].shape
        odd = next(i for i, image in enumerate(images) if image.shape != first)
        raise AgegenderError(
            f"images differ in size: '{ids[odd]}' is {' x '.join(map(str, images[odd].shape))}, '{ids[0]}' "
            f"{' x '.join(map(str, first))}", hint="store the faces resized, e.g. `agegender data build --resize 256`",
        )
    return np.stack(images)


def image_source(images: Any, *, workers: int | None = None) -> ImageSource:
    """An :class:`ImageSource` over ``images``: an LMDB folder path, a :class:`DatumLMDB`, an
    :class:`LMDBDataset` or :class:`ImageListDataset` made without a transform, a
    :class:`GPUResidentDataset`, or an ``(uint8 N x C x H x W array, labels)`` pair.

    Image files are decoded by ``workers`` threads (OpenCV releases the GIL; default: the CPU count).
    """
    if isinstance(images, ImageSource):
        return images
    if isinstance(images, (str, Path)):
        images = DatumLMDB(images)
    if isinstance(images, LMDBDataset):
        if images.transform is not None:
            raise AgegenderError("give the dataset without a transform: evaluation applies the TEST transform")
        images = images.db
    if isinstance(images, DatumLMDB):
        db = images
        labels = np.fromiter((int(db.datum(i).label) for i in range(len(db))), dtype=np.int64, count=len(db))
        keys = db.keys

        def read_lmdb(start: int, stop: int) -> np.ndarray:
            return _stack([db[i].image for i in range(start, stop)], keys[start:stop])

        return ImageSource(keys, labels, read_lmdb, f"LMDB {db.path} ({len(db)} records)")
    if isinstance(images, ImageListDataset):
        if images.transform is not None:
            raise AgegenderError("give the dataset without a transform: evaluation applies the TEST transform")
        dataset = images
        pool_size = max(1, workers if workers is not None else (torch.get_num_threads() or 1))
        paths = list(dataset.list.paths)

        def read_files(start: int, stop: int) -> np.ndarray:
            if pool_size == 1 or stop - start == 1:
                loaded = [dataset.load(i) for i in range(start, stop)]
            else:
                with ThreadPoolExecutor(pool_size) as pool:
                    loaded = list(pool.map(dataset.load, range(start, stop)))
            return _stack(loaded, paths[start:stop])

        where = f" ({dataset.list.source})" if dataset.list.source else ""
        return ImageSource(paths, dataset.list.labels, read_files,
                           f"{len(dataset)} images under {dataset.root}{where}")
    if isinstance(images, GPUResidentDataset):
        resident = images
        ids = [str(i) for i in range(len(resident))]
        return ImageSource(ids, resident.labels.cpu().numpy(), lambda a, b: resident.images[a:b],
                           f"{len(resident)} images resident on {resident.device}")
    if isinstance(images, tuple) and len(images) == 2:
        array, labels = images
        if isinstance(array, torch.Tensor):
            data = array
        else:
            data = np.asarray(array)
        if data.ndim != 4 or data.dtype not in (np.uint8, torch.uint8):
            raise AgegenderError(f"expected uint8 N x C x H x W images, got {data.dtype} of shape "
                                 f"{list(data.shape)}")
        labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
        return ImageSource([str(i) for i in range(data.shape[0])], labels, lambda a, b: data[a:b],
                           f"{data.shape[0]} images in memory")
    raise AgegenderError(f"cannot evaluate on a {type(images).__name__}",
                         hint="give an LMDB path, a DatumLMDB, an LMDBDataset/ImageListDataset without a transform, "
                              "a GPUResidentDataset or an (images, labels) pair")


# --- running ------------------------------------------------------------------------------------------
@dataclass
class Probabilities:
    """What a pass over the images gave: center-crop probabilities and, with over-sampling, the ten-crop
    mean (N x classes float32), plus the time the pass took."""

    center: np.ndarray
    oversampled: np.ndarray | None
    seconds: float


def _as_engine(net: CaffeNet | Engine, device: str | torch.device | None, precision: str) -> Engine:
    if isinstance(net, CaffeNet):
        return TorchEngine(net, device=device, precision=precision)
    if device is not None or precision != "fp32":
        raise AgegenderError("device and precision are set on the engine itself when an engine is given")
    return net


def _to_engine_device(images: Any, engine: Engine) -> Any:
    """Host arrays become tensors on a torch engine's device, so the transform runs there."""
    if isinstance(engine, TorchEngine):
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images)
        return images.to(engine.device, non_blocking=True)
    if isinstance(images, torch.Tensor):
        return images.cpu().numpy()
    return images


def run_probabilities(engine: Engine, source: ImageSource, transform: CaffeTransform, *, oversample: bool = False,
                      batch_size: int = 64, progress: ProgressCallback | None = None) -> Probabilities:
    """Every image's probabilities through ``transform`` (TEST phase) and ``engine``, in order.

    ``batch_size`` counts the net's inputs per forward pass: with ``oversample`` each image takes ten.
    """
    if transform.phase != "TEST":
        raise AgegenderError("evaluation uses the TEST-phase transform (center crop, no random choices)",
                             hint="build it with phase='TEST'")
    if batch_size < 1:
        raise AgegenderError(f"batch_size must be positive, not {batch_size}")
    if oversample and not transform.crop_size:
        raise AgegenderError("over-sampling needs a crop size (the net's input is the whole image)")
    crops = OVERSAMPLE_CROPS if oversample else 1
    per_pass = max(1, batch_size // crops)
    total = len(source)
    center: list[np.ndarray] = []
    mean10: list[np.ndarray] = []
    started = time.perf_counter()
    for start in range(0, total, per_pass):
        stop = min(total, start + per_pass)
        images = _to_engine_device(source.read(start, stop), engine)
        if oversample:
            batch = transform.oversample(images)  # n x 10 x C x h x w
            n = batch.shape[0]
            probs = engine(batch.reshape(n * crops, *batch.shape[2:])).reshape(n, crops, -1)
            center.append(probs[:, CENTER_CROP_INDEX])
            mean10.append(probs.mean(axis=1, dtype=np.float32))
        else:
            center.append(engine(transform(images)))
        if progress is not None:
            progress(stop, total)
    seconds = time.perf_counter() - started
    width = center[0].shape[1] if center else 0
    joined = np.concatenate(center) if center else np.zeros((0, width), np.float32)
    joined10 = (np.concatenate(mean10) if mean10 else np.zeros((0, width), np.float32)) if oversample else None
    return Probabilities(joined, joined10, seconds)


# --- results --------------------------------------------------------------------------------------------
@dataclass
class EvalResult:
    """One evaluation: per-image probabilities and predictions in input order, and the figures.

    ``metrics`` holds the center-crop figures (see :func:`~agegender.evaluation.metrics.classification_metrics`)
    and, when over-sampled, the ten-crop figures under ``metrics["oversampled"]``.
    """

    target: str
    label_names: tuple[str, ...]
    ids: list[str]
    labels: np.ndarray
    probs: np.ndarray
    predictions: np.ndarray
    metrics: dict
    engine: str
    transform: str
    source: str
    seconds: float
    probs_oversampled: np.ndarray | None = None
    predictions_oversampled: np.ndarray | None = None
    ages: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.labels.size)

    @property
    def images_per_second(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("inf")

    def expected_ages(self, oversampled: bool = False) -> np.ndarray | None:
        """Each image's expected age in years (age models), from the center-crop or ten-crop probabilities."""
        if self.target != "age":
            return None
        probs = self.probs_oversampled if oversampled else self.probs
        return None if probs is None else expected_age(probs, group_midpoints(self.label_names))

    def per_image(self) -> list[dict]:
        """One dict per image, in input order: id, label, prediction, probabilities (and ten-crop ones)."""
        years = self.expected_ages()
        years10 = self.expected_ages(oversampled=True)
        rows = []
        for i, image_id in enumerate(self.ids):
            row: dict[str, Any] = {"id": image_id, "label": int(self.labels[i]), "prediction": int(self.predictions[i]),
                                   "prob": [float(p) for p in self.probs[i]]}
            if years is not None:
                row["expected_age"] = float(years[i])
            if self.ages is not None:
                row["age"] = float(self.ages[i])
            if self.probs_oversampled is not None:
                assert self.predictions_oversampled is not None
                row["prediction_10crop"] = int(self.predictions_oversampled[i])
                row["prob_10crop"] = [float(p) for p in self.probs_oversampled[i]]
                if years10 is not None:
                    row["expected_age_10crop"] = float(years10[i])
            rows.append(row)
        return rows

    def as_dict(self, per_image: bool = True) -> dict:
        """Every figure, and (``per_image``) every image's prediction and probabilities, JSON-ready."""
        data = {"target": self.target, "labels": list(self.label_names), "n": self.n, "engine": self.engine,
                "transform": self.transform, "source": self.source, "seconds": round(self.seconds, 3),
                "images_per_second": round(self.images_per_second, 1) if self.seconds > 0 else None,
                "oversampled": self.probs_oversampled is not None, "metrics": self.metrics, **self.extra}
        if per_image:
            data["predictions"] = self.per_image()
        return data


def _default_labels(net: Any, target: str) -> tuple[str, ...]:
    card = getattr(net, "card", None) or getattr(getattr(net, "net", None), "card", None)
    if card is not None and card.target == target:
        return tuple(card.labels)
    return LEVI_AGE_LABELS if target == "age" else GENDER_LABELS


def evaluate(
    net: CaffeNet | Engine,
    images: Any,
    transform: CaffeTransform,
    target: str = "age",
    *,
    oversample: bool = False,
    batch_size: int = 64,
    progress: ProgressCallback | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    label_names: Sequence[str] | None = None,
    ages: Sequence[float] | np.ndarray | None = None,
    workers: int | None = None,
) -> EvalResult:
    """Evaluate ``net`` (a TEST-phase :class:`CaffeNet`, or an engine such as :class:`OnnxEngine`) on ``images``.

    ``images``: anything :func:`image_source` takes (an LMDB, a dataset without a transform, a resident fold,
    ``(uint8 array, labels)``). ``transform``: the TEST-phase :class:`CaffeTransform` (the net's crop and
    mean). ``target``: ``"age"`` (eight groups) or ``"gender"``. ``label_names`` default to the zoo card's
    (``net.card``) or Levi's groups / ``m, f``. ``ages``: true ages in years, for the MAE of the expected
    age (else it is measured against the true group's midpoint). ``device``/``precision`` configure the torch
    engine made for a CaffeNet (``precision`` ``"bf16"`` is fast on GPUs, not bit-exact).
    """
    if target not in TARGETS:
        raise AgegenderError(f"unknown target {target!r}", hint="age or gender")
    engine = _as_engine(net, device, precision)
    names = tuple(label_names) if label_names is not None else _default_labels(net, target)
    source = image_source(images, workers=workers)
    if source.labels.size and (source.labels.min() < 0 or source.labels.max() >= len(names)):
        bad = int(source.labels[(source.labels < 0) | (source.labels >= len(names))][0])
        raise AgegenderError(f"label {bad} in {source.description} is outside the {len(names)} {target} classes",
                             hint="are these the labels of the other target (age vs gender)?")
    truth_ages = None if ages is None else np.asarray(ages, dtype=np.float64).reshape(-1)
    if truth_ages is not None and truth_ages.size != len(source):
        raise AgegenderError(f"{truth_ages.size} ages for {len(source)} images")
    probs = run_probabilities(engine, source, transform, oversample=oversample, batch_size=batch_size,
                              progress=progress)
    metrics = classification_metrics(probs.center, source.labels, target, names, truth_ages)
    predictions10 = None
    if probs.oversampled is not None:
        metrics["oversampled"] = classification_metrics(probs.oversampled, source.labels, target, names, truth_ages)
        predictions10 = predictions_of(probs.oversampled)
    return EvalResult(target=target, label_names=names, ids=source.ids, labels=source.labels, probs=probs.center,
                      predictions=predictions_of(probs.center) if len(source) else np.zeros(0, np.int64),
                      metrics=metrics, engine=engine.name, transform=transform.describe(), source=source.description,
                      seconds=probs.seconds, probs_oversampled=probs.oversampled,
                      predictions_oversampled=predictions10, ages=truth_ages)


# --- across folds ---------------------------------------------------------------------------------------
SCALAR_METRICS = ("exact", "one_off", "mae_years")


def _scalars(metrics: Mapping) -> dict:
    return {key: metrics[key] for key in SCALAR_METRICS if key in metrics}


def summarize_folds(results: Mapping[int, EvalResult] | Sequence[EvalResult]) -> dict:
    """Per-fold figures and their mean and standard deviation across folds (the papers' ``mean ± std``),
    plus the confusion matrices summed over the folds. Keys: ``folds``, ``per_fold``, ``mean_std`` and, when
    every fold was over-sampled, ``per_fold_oversampled`` and ``mean_std_oversampled``; ``confusion``
    (and ``confusion_oversampled``)."""
    items = list(results.items()) if isinstance(results, Mapping) else list(enumerate(results))
    if not items:
        raise AgegenderError("no fold results to summarize")
    targets = {result.target for _, result in items}
    if len(targets) != 1:
        raise AgegenderError(f"fold results of different targets: {sorted(targets)}")
    summary: dict[str, Any] = {"folds": [fold for fold, _ in items], "target": targets.pop(),
                               "n": sum(result.n for _, result in items)}
    variants = [("", lambda m: m)]
    if all(result.probs_oversampled is not None for _, result in items):
        variants.append(("_oversampled", lambda m: m["oversampled"]))
    for suffix, pick in variants:
        per_fold = {fold: {"n": result.n, **_scalars(pick(result.metrics))} for fold, result in items}
        keys = [key for key in SCALAR_METRICS if all(key in row for row in per_fold.values())]
        summary[f"per_fold{suffix}"] = per_fold
        summary[f"mean_std{suffix}"] = {key: summarize_values([row[key] for row in per_fold.values()]) for key in keys}
        summary[f"confusion{suffix}"] = np.sum([np.asarray(pick(result.metrics)["confusion"]) for _, result in items],
                                               axis=0).tolist()
    return summary


__all__ = ["EvalResult", "ImageSource", "Probabilities", "evaluate", "image_source", "run_probabilities",
           "summarize_folds"]

