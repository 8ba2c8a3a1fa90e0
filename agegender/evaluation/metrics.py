"""The figures the Adience papers report, computed from class probabilities and true labels.

* exact accuracy: the arg-max class is the true one;
* 1-off accuracy (age): the arg-max group is the true one or a neighbour (``|pred - true| <= 1``; the
  first and last groups have one neighbour each, there is no wrap-around), as Levi & Hassner (2015)
  define it;
* the confusion matrix (rows: true class, columns: predicted class) and each class's accuracy (recall),
  ``None`` for a class with no test image;
* for age, the expected age in years: the softmax-weighted mean of the group midpoints
  (``sum_k p_k * mid_k``), and its mean absolute error against the true ages when they are known, else
  against the midpoint of the true group.

Across folds, :func:`summarize_values` gives the mean and the standard deviation (``std``: population,
``ddof=0``; ``std_sample``: ``ddof=1``) of each figure.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import numpy as np

from ..errors import AgegenderError

_RANGE = re.compile(r"^\s*\(\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*\)\s*$")


def predictions_of(probs: np.ndarray) -> np.ndarray:
    """The arg-max class of each row (the first of equal maxima), int64."""
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[1] == 0:
        raise AgegenderError(f"expected N x classes probabilities, got shape {list(probs.shape)}")
    return probs.argmax(axis=1).astype(np.int64)


def _check_pair(labels: np.ndarray, predictions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    predictions = np.asarray(predictions, dtype=np.int64).reshape(-1)
    if labels.shape != predictions.shape:
        raise AgegenderError(f"{labels.size} labels but {predictions.size} predictions")
    return labels, predictions


def exact_accuracy(labels: Sequence[int] | np.ndarray, predictions: Sequence[int] | np.ndarray) -> float | None:
    """Fraction of predictions equal to the label; ``None`` when there is nothing to score."""
    labels, predictions = _check_pair(np.asarray(labels), np.asarray(predictions))
    return float(np.mean(labels == predictions)) if labels.size else None


def one_off_accuracy(labels: Sequence[int] | np.ndarray, predictions: Sequence[int] | np.ndarray) -> float | None:
    """Fraction of predictions at most one group away from the label (Levi & Hassner's 1-off)."""
    labels, predictions = _check_pair(np.asarray(labels), np.asarray(predictions))
    return float(np.mean(np.abs(labels - predictions) <= 1)) if labels.size else None


def confusion_matrix(labels: Sequence[int] | np.ndarray, predictions: Sequence[int] | np.ndarray,
                     num_classes: int) -> np.ndarray:
    """``num_classes`` x ``num_classes`` counts (int64): row = true class, column = predicted class."""
    labels, predictions = _check_pair(np.asarray(labels), np.asarray(predictions))
    for name, values in (("label", labels), ("prediction", predictions)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            bad = int(values[(values < 0) | (values >= num_classes)][0])
            raise AgegenderError(f"{name} {bad} is outside the {num_classes} classes 0..{num_classes - 1}")
    flat = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def per_class_accuracy(confusion: np.ndarray) -> list[float | None]:
    """Each class's accuracy (recall: the diagonal over the row sum); ``None`` for a class with no images."""
    confusion = np.asarray(confusion)
    totals = confusion.sum(axis=1)
    return [float(confusion[k, k] / totals[k]) if totals[k] else None for k in range(confusion.shape[0])]


def group_midpoints(label_names: Sequence[str]) -> np.ndarray:
    """The midpoint in years of each age group named ``"(low, high)"``, e.g. ``(25, 32)`` -> 28.5 (float64)."""
    midpoints = []
    for name in label_names:
        match = _RANGE.match(str(name))
        if not match:
            raise AgegenderError(f"age group {name!r} is not of the form '(low, high)'",
                                 hint="give the age groups' names, e.g. the model card's labels")
        low, high = float(match.group(1)), float(match.group(2))
        midpoints.append((low + high) / 2.0)
    return np.asarray(midpoints, dtype=np.float64)


def expected_age(probs: np.ndarray, midpoints: Sequence[float] | np.ndarray) -> np.ndarray:
    """The softmax-weighted mean of the group midpoints per image (float64 years)."""
    probs = np.asarray(probs, dtype=np.float64)
    midpoints = np.asarray(midpoints, dtype=np.float64).reshape(-1)
    if probs.ndim != 2 or probs.shape[1] != midpoints.size:
        raise AgegenderError(f"{probs.shape[-1] if probs.ndim else 0} classes of probabilities but "
                             f"{midpoints.size} group midpoints")
    weights = probs / np.maximum(probs.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)
    return weights @ midpoints


def mean_absolute_error(predicted: Sequence[float] | np.ndarray, truth: Sequence[float] | np.ndarray) -> float | None:
    """Mean of ``|predicted - truth|``; ``None`` when empty."""
    predicted = np.asarray(predicted, dtype=np.float64).reshape(-1)
    truth = np.asarray(truth, dtype=np.float64).reshape(-1)
    if predicted.shape != truth.shape:
        raise AgegenderError(f"{predicted.size} predicted ages but {truth.size} true ages")
    return float(np.mean(np.abs(predicted - truth))) if predicted.size else None


def classification_metrics(probs: np.ndarray, labels: Sequence[int] | np.ndarray, target: str,
                           label_names: Sequence[str], ages: Sequence[float] | np.ndarray | None = None) -> dict:
    """Every figure of one evaluation (see the module docstring) as a JSON-ready dict.

    Keys: ``n``, ``exact``, ``confusion``, ``per_class_accuracy``; for ``target="age"`` also ``one_off``,
    ``mae_years`` and ``mae_reference`` (``"true ages"`` when ``ages`` is given, else
    ``"group midpoints"``).
    """
    probs = np.asarray(probs)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    num_classes = len(label_names)
    if probs.ndim != 2 or probs.shape[1] != num_classes:
        raise AgegenderError(f"the net gives {probs.shape[-1] if probs.ndim == 2 else '?'} classes but "
                             f"{num_classes} labels are named ({', '.join(label_names)})",
                             hint="is this a model of the other target (age vs gender)?")
    predictions = predictions_of(probs) if len(probs) else np.zeros(0, dtype=np.int64)
    confusion = confusion_matrix(labels, predictions, num_classes)
    metrics: dict[str, Any] = {
        "n": int(labels.size),
        "exact": exact_accuracy(labels, predictions),
        "confusion": confusion.tolist(),
        "per_class_accuracy": per_class_accuracy(confusion),
    }
    if target == "age":
        metrics["one_off"] = one_off_accuracy(labels, predictions)
        midpoints = group_midpoints(label_names)
        years = expected_age(probs, midpoints) if len(probs) else np.zeros(0)
        if ages is not None:
            truth = np.asarray(ages, dtype=np.float64).reshape(-1)
            reference = "true ages"
        else:
            truth = midpoints[labels] if labels.size else np.zeros(0)
            reference = "group midpoints"
        metrics["mae_years"] = mean_absolute_error(years, truth)
        metrics["mae_reference"] = reference
    elif target != "gender":
        raise AgegenderError(f"unknown target {target!r}", hint="age or gender")
    return metrics


def summarize_values(values: Sequence[float | None]) -> dict:
    """``{"mean", "std", "std_sample", "min", "max", "n"}`` of the non-None values (``None`` entries are
    skipped; all ``None`` when none is left; ``std_sample`` needs two values)."""
    kept = np.asarray([v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))],
                      dtype=np.float64)
    if kept.size == 0:
        return {"mean": None, "std": None, "std_sample": None, "min": None, "max": None, "n": 0}
    return {"mean": float(kept.mean()), "std": float(kept.std()),
            "std_sample": float(kept.std(ddof=1)) if kept.size > 1 else None,
            "min": float(kept.min()), "max": float(kept.max()), "n": int(kept.size)}


__all__ = [
    "classification_metrics", "confusion_matrix", "exact_accuracy", "expected_age", "group_midpoints",
    "mean_absolute_error", "one_off_accuracy", "per_class_accuracy", "predictions_of", "summarize_values",
]
