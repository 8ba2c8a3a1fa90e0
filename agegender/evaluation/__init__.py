"""The Adience evaluation protocol: metrics, engines, evaluation runs, per-fold protocol and predictions.

::

    from agegender.evaluation import evaluate, summarize_folds
    result = evaluate(net, "age_test_lmdb", transform, "age", oversample=True)
    result.metrics["exact"], result.metrics["one_off"], result.metrics["oversampled"]["exact"]
"""

from .engines import Engine, OnnxEngine, ProbabilityBlob, TorchEngine, probability_blob
from .metrics import (
    classification_metrics,
    confusion_matrix,
    exact_accuracy,
    expected_age,
    group_midpoints,
    mean_absolute_error,
    one_off_accuracy,
    per_class_accuracy,
    predictions_of,
    summarize_values,
)
from .runner import EvalResult, ImageSource, Probabilities, evaluate, image_source, run_probabilities, summarize_folds

__all__ = [
    "Engine", "EvalResult", "ImageSource", "OnnxEngine", "Probabilities", "ProbabilityBlob", "TorchEngine",
    "classification_metrics", "confusion_matrix", "evaluate", "exact_accuracy", "expected_age", "group_midpoints",
    "image_source", "mean_absolute_error", "one_off_accuracy", "per_class_accuracy", "predictions_of",
    "probability_blob", "run_probabilities", "summarize_folds", "summarize_values",
]
