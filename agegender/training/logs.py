"""A run's logs: one CSV row per iteration (``train_log.csv``) and per validation (``val_log.csv``), a
training-curve PNG, and TensorBoard scalars when the ``tensorboard`` package is installed.

Rows are appended and flushed as the run goes, so a crash keeps every row logged so far; a resumed run
first drops the rows at and after the iteration it resumes from (and any partial last line), so the log
reads as one uninterrupted run.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Mapping, Sequence

from .._atomic import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

TRAIN_LOG = "train_log.csv"
VAL_LOG = "val_log.csv"
CURVE_PNG = "training_curve.png"


class CSVLog:
    """Append-only CSV rows with a fixed header (``iteration`` first)."""

    def __init__(self, path: str | Path, columns: Sequence[str], *, resume_from: int | None = None) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        if resume_from is not None and self.path.exists():
            self._truncate(resume_from)
        elif self.path.exists():
            self.path.unlink()
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, ",".join(self.columns) + "\n")

    def _truncate(self, iteration: int) -> None:
        text = self.path.read_text()
        lines = text.split("\n")
        if lines and lines[0].split(",") != self.columns:
            log.warning("%s: other columns than this run's; starting a new log", self.path)
            atomic_write_text(self.path, ",".join(self.columns) + "\n")
            return
        kept = [lines[0]]
        for line in lines[1:]:
            cells = line.split(",")
            if len(cells) != len(self.columns):
                continue  # blank or cut short by a crash
            try:
                if int(cells[0]) >= iteration:
                    continue
            except ValueError:
                continue
            kept.append(line)
        atomic_write_text(self.path, "\n".join(kept) + "\n")

    def append(self, rows: Sequence[Mapping[str, object]]) -> None:
        """Write ``rows`` (missing columns empty); they are in the file (the OS's cache) when this returns."""
        if not rows:
            return
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        for row in rows:
            writer.writerow([_cell(row.get(column)) for column in self.columns])
        with open(self.path, "a") as handle:  # no fsync: a step loop on a GPU must not wait for the disk
            handle.write(buffer.getvalue())

    def read(self) -> list[dict[str, float]]:
        """The rows logged so far, numbers as floats (empty cells left out)."""
        return read_csv_rows(self.path)


def read_csv_rows(path: str | Path) -> list[dict[str, float]]:
    """The rows of a log CSV as dicts of floats (empty or non-numeric cells left out)."""
    with open(path) as handle:
        rows = []
        for row in csv.DictReader(handle):
            parsed = {}
            for key, value in row.items():
                if value not in ("", None):
                    try:
                        parsed[key] = float(value)
                    except (TypeError, ValueError):
                        pass
            rows.append(parsed)
        return rows


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return str(value)


class TensorBoardLog:
    """TensorBoard scalars under ``folder`` when ``torch.utils.tensorboard`` can be imported (the
    ``tensorboard`` package), else nothing."""

    def __init__(self, folder: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard is optional
            self.writer = None
            return
        self.writer = SummaryWriter(str(folder))

    @property
    def enabled(self) -> bool:
        return self.writer is not None

    def scalars(self, prefix: str, rows: Sequence[Mapping[str, object]]) -> None:
        if self.writer is None:
            return
        for row in rows:
            step = int(row["iteration"])  # type: ignore[arg-type]
            for key, value in row.items():
                if key != "iteration" and isinstance(value, (int, float)) and math.isfinite(float(value)):
                    self.writer.add_scalar(f"{prefix}/{key}", float(value), step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_training_curve(train_rows: Sequence[Mapping[str, float]], val_rows: Sequence[Mapping[str, float]],
                        path: str | Path, *, loss_columns: Sequence[str] = ("loss", "smoothed_loss"),
                        accuracy_columns: Sequence[str] = (), title: str = "") -> Path | None:
    """Draw the loss (and smoothed loss), the accuracies and the learning rate against the iteration, with
    the validation points, into a PNG (atomically). Returns the path, or None with nothing to draw."""
    if not train_rows:
        return None
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    figure = Figure(figsize=(9, 7), dpi=100)
    axes = figure.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2, 1]})
    iterations = [row["iteration"] for row in train_rows]
    for column in loss_columns:
        values = [row.get(column, math.nan) for row in train_rows]
        axes[0].plot(iterations, values, label=column, linewidth=1.0 if column == "loss" else 1.8,
                     alpha=0.5 if column == "loss" else 1.0)
    for column in (c for c in val_rows[0] if c.startswith("val_") and "loss" in c) if val_rows else ():
        axes[0].plot([row["iteration"] for row in val_rows], [row.get(column, math.nan) for row in val_rows],
                     "o-", label=column)
    axes[0].set_ylabel("loss")
    axes[0].legend(loc="upper right", fontsize=8)
    for column in accuracy_columns:
        axes[1].plot(iterations, [row.get(column, math.nan) for row in train_rows], label=column, linewidth=1.0)
    for column in (c for c in val_rows[0] if c.startswith("val_") and "loss" not in c) if val_rows else ():
        axes[1].plot([row["iteration"] for row in val_rows], [row.get(column, math.nan) for row in val_rows],
                     "o-", label=column)
    axes[1].set_ylabel("accuracy")
    if accuracy_columns or val_rows:
        axes[1].legend(loc="lower right", fontsize=8)
    axes[2].plot(iterations, [row.get("lr", math.nan) for row in train_rows], color="gray")
    axes[2].set_ylabel("lr")
    axes[2].set_xlabel("iteration")
    if title:
        axes[0].set_title(title, fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


__all__ = ["CSVLog", "CURVE_PNG", "TRAIN_LOG", "TensorBoardLog", "VAL_LOG", "plot_training_curve", "read_csv_rows"]
