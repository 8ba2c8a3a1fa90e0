"""Checkpoints of a training run: everything needed to continue it exactly where it stopped.

A checkpoint holds the iteration reached, the model's state (parameters and buffers), the solver's
momentum history, the learning-rate schedule's state, every random generator the step uses (torch's CPU
and CUDA generators, per process), the data position (:meth:`~agegender.training.data.BatchPlan.state_dict`),
the window of recent losses Caffe's smoothed loss averages, and a fingerprint of the run (train_val,
solver, weights, batch size, seed) that a resume checks. Files are written atomically
(``checkpoints/iter_0000100.pt``): a crash while writing leaves the previous checkpoint intact, never a
half-written file under a checkpoint's name.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

from .._atomic import atomic_write
from ..errors import MissingFileError, TrainingError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "agegender-checkpoint/1"
CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^iter_(\d+)\.pt$")


def checkpoint_path(out_dir: str | Path, iteration: int) -> Path:
    """Where the checkpoint of ``iteration`` goes under a run's output folder."""
    return Path(out_dir) / CHECKPOINT_DIR / f"iter_{int(iteration):07d}.pt"


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """The checkpoints of a run folder as ``(iteration, path)``, oldest first."""
    folder = Path(out_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest checkpoint of a run folder, or None."""
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def rng_state() -> dict[str, Any]:
    """This process's torch generators (CPU, and every CUDA device's when CUDA is initialised)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (the CUDA part only where CUDA is available)."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
        else:
            log.warning("the checkpoint holds the random state of %d CUDA devices, this machine has %d: not restored",
                        len(states), torch.cuda.device_count())


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors and plain Python values) atomically at ``path``; returns the path."""
    path = Path(path)
    payload = {"format": CHECKPOINT_FORMAT, **state}
    with atomic_write(path, "wb") as handle:
        torch.save(payload, handle)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors onto the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError("checkpoint not found", path=path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a damaged or foreign file
        raise TrainingError(f"not a readable checkpoint: {type(exc).__name__}: {str(exc).splitlines()[0]}",
                            path=path) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError("not an agegender training checkpoint", path=path,
                            hint=f"expected format {CHECKPOINT_FORMAT}")
    return state


def prune_checkpoints(out_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints (``keep <= 0`` keeps all); returns the removed."""
    if keep <= 0:
        return []
    removed = []
    for _, path in list_checkpoints(out_dir)[:-keep]:
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def check_fingerprint(saved: dict[str, Any], current: dict[str, Any], path: str | Path) -> None:
    """Refuse to resume a checkpoint of another run (other net, solver, weights, batch or seed)."""
    differs = [f"{key}: checkpoint {saved.get(key)!r}, now {current.get(key)!r}"
               for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]
    if differs:
        raise TrainingError("the checkpoint belongs to another run: " + "; ".join(differs), path=path,
                            hint="resume with the same files and options, or start a new output folder")


__all__ = ["CHECKPOINT_DIR", "CHECKPOINT_FORMAT", "check_fingerprint", "checkpoint_path", "latest_checkpoint",
           "list_checkpoints", "load_checkpoint", "prune_checkpoints", "rng_state", "save_checkpoint",
           "set_rng_state"]
