"""The confusion-matrix figure of an evaluation (matplotlib, written atomically as PNG)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

from .._atomic import atomic_write_bytes


def plot_confusion(confusion: Sequence[Sequence[int]] | np.ndarray, label_names: Sequence[str], path: str | Path,
                   title: str = "") -> Path:
    """Draw ``confusion`` (rows: true class, columns: predicted) with counts and row-normalised shading."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    counts = np.asarray(confusion, dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=np.float64), where=totals > 0)
    size = 1.8 + 0.75 * len(label_names)
    figure = Figure(figsize=(size + 1.5, size))
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the true class")
    ticks = np.arange(len(label_names))
    axes.set_xticks(ticks, labels=list(label_names), rotation=45, ha="right")
    axes.set_yticks(ticks, labels=list(label_names))
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    for row in range(counts.shape[0]):
        for col in range(counts.shape[1]):
            axes.text(col, row, str(counts[row, col]), ha="center", va="center", fontsize=8,
                      color="white" if shares[row, col] > 0.5 else "black")
    if title:
        axes.set_title(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


__all__ = ["plot_confusion"]
