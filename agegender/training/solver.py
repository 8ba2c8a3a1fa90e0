"""Caffe's solver file as a typed config, and its learning-rate policies, exactly as Caffe computes them.

:func:`read_solver_config` reads a solver prototxt (``agegender.prototxt.read_solver``, Caffe's defaults
from our schema) into a :class:`SolverConfig` and refuses what the SGD solvers here cannot do (another
solver ``type``, an unknown ``lr_policy`` or ``regularization_type``, a missing ``stepsize``), naming the
file, the line and the field.

:class:`LearningRateSchedule` is Caffe's ``SGDSolver::GetLearningRate`` at iteration ``iter`` (0-based, the
iteration whose update is being computed):

* ``fixed``: ``base_lr``
* ``step``: ``base_lr * gamma ^ floor(iter / stepsize)``
* ``exp``: ``base_lr * gamma ^ iter``
* ``inv``: ``base_lr * (1 + gamma * iter) ^ (-power)``
* ``multistep``: ``base_lr * gamma ^ current_step``, ``current_step`` advancing by one when
  ``iter >= stepvalue[current_step]`` (at most one step per call, as in Caffe: it is solver state)
* ``poly``: ``base_lr * (1 - iter / max_iter) ^ power``
* ``sigmoid``: ``base_lr / (1 + exp(-gamma * (iter - stepsize)))``

The solver's numbers are float32 protobuf fields and the rate is a float32 ``Dtype``; the arithmetic
follows Caffe's C++: ``pow(float, int)`` (step, exp, multistep) is evaluated in double and rounded to
float32, the other policies in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TrainingError
from ..prototxt.files import read_solver
from ..prototxt.message import Message

LR_POLICIES: tuple[str, ...] = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")
SOLVER_TYPES: tuple[str, ...] = ("SGD", "Nesterov")
REGULARIZATION_TYPES: tuple[str, ...] = ("L2", "L1")

_f32 = np.float32


@dataclass(frozen=True)
class SolverConfig:
    """The fields of a Caffe ``SolverParameter`` that training uses, with Caffe's defaults.

    Floats hold the float32 values Caffe reads (e.g. ``base_lr`` 0.001 is 0.0010000000474974513).
    ``path`` is the solver file (``None`` for a config made in code).
    """

    base_lr: float
    lr_policy: str
    max_iter: int
    gamma: float = 0.0
    power: float = 0.0
    stepsize: int = 0
    stepvalue: tuple[int, ...] = ()
    momentum: float = 0.0
    weight_decay: float = 0.0
    regularization_type: str = "L2"
    iter_size: int = 1
    clip_gradients: float = -1.0
    type: str = "SGD"
    test_iter: tuple[int, ...] = ()
    test_interval: int = 0
    test_initialization: bool = True
    display: int = 0
    average_loss: int = 1
    snapshot: int = 0
    snapshot_prefix: str = ""
    snapshot_after_train: bool = True
    random_seed: int = -1
    net: str = ""
    path: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("base_lr", "gamma", "power", "momentum", "weight_decay", "clip_gradients"):
            object.__setattr__(self, name, float(_f32(getattr(self, name))))
        object.__setattr__(self, "stepvalue", tuple(int(v) for v in self.stepvalue))
        object.__setattr__(self, "test_iter", tuple(int(v) for v in self.test_iter))
        self.validate()

    # --- checks ---------------------------------------------------------------------------------------
    def validate(self, lines: dict[str, int] | None = None) -> None:
        """Refuse what Caffe's solver CHECKs refuse and what this implementation does not do; ``lines``
        (field -> line in the solver file) make the error point at the field."""
        lines = lines or {}

        def fail(message: str, name: str, hint: str | None = None) -> None:
            raise TrainingError(f"{name}: {message}", path=self.path, line=lines.get(name), hint=hint)

        if self.type not in SOLVER_TYPES:
            fail(f"solver type '{self.type}' is not supported", "type",
                 hint="only Caffe's SGD and Nesterov solvers are implemented; use type: \"SGD\"")
        if self.lr_policy not in LR_POLICIES:
            fail(f"unknown learning rate policy '{self.lr_policy}'" if self.lr_policy else "lr_policy is not set",
                 "lr_policy", hint="one of " + ", ".join(LR_POLICIES))
        if self.regularization_type not in REGULARIZATION_TYPES:
            fail(f"unknown regularization type '{self.regularization_type}'", "regularization_type",
                 hint="L2 or L1")
        if self.max_iter <= 0:
            fail(f"max_iter must be positive, not {self.max_iter}", "max_iter")
        if self.iter_size <= 0:
            fail(f"iter_size must be positive, not {self.iter_size}", "iter_size")
        if self.lr_policy in ("step", "sigmoid") and self.stepsize <= 0:
            fail(f"the '{self.lr_policy}' policy needs a positive stepsize (got {self.stepsize})", "stepsize")
        if self.lr_policy in ("step", "exp", "inv", "multistep", "sigmoid") and self.gamma < 0:
            fail(f"gamma must not be negative (got {self.gamma:g})", "gamma")
        if self.lr_policy == "multistep" and list(self.stepvalue) != sorted(self.stepvalue):
            fail(f"stepvalue must increase, got {list(self.stepvalue)}", "stepvalue")
        if self.average_loss < 1:
            fail(f"average_loss must be at least 1, not {self.average_loss}", "average_loss")
        if self.snapshot < 0:
            fail(f"snapshot must not be negative, not {self.snapshot}", "snapshot")

    def with_overrides(self, **values: Any) -> "SolverConfig":
        """A copy with some fields replaced (e.g. ``max_iter`` from the command line); the replaced
        fields are recorded in ``overrides``."""
        given = {k: v for k, v in values.items() if v is not None}
        if not given:
            return self
        return replace(self, overrides={**self.overrides, **given}, **given)

    def as_dict(self) -> dict:
        """A JSON-ready description."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "overrides"}
        out["stepvalue"], out["test_iter"] = list(self.stepvalue), list(self.test_iter)
        out["overrides"] = dict(self.overrides)
        return out


def _field_lines(solver: Message) -> dict[str, int]:
    """The line of each field set in a solver read from text (the deprecated ``solver_type`` stands for
    ``type``)."""
    lines = {}
    for spec, _ in solver.set_fields():
        position = solver.field_pos(spec.name)
        if position:
            lines[spec.name] = position[0]
    if "solver_type" in lines and "type" not in lines:
        lines["type"] = lines["solver_type"]
    return lines


def solver_from_message(solver: Message, path: str | Path | None = None,
                        lines: dict[str, int] | None = None) -> SolverConfig:
    """A :class:`SolverConfig` from a ``SolverParameter`` message (see :func:`read_solver_config`);
    ``lines`` (field -> line) point errors at the file's lines."""
    lines = dict(lines) if lines is not None else _field_lines(solver)
    values = dict(
        base_lr=float(solver.base_lr), lr_policy=str(solver.lr_policy), max_iter=int(solver.max_iter),
        gamma=float(solver.gamma), power=float(solver.power), stepsize=int(solver.stepsize),
        stepvalue=tuple(int(v) for v in solver.stepvalue), momentum=float(solver.momentum),
        weight_decay=float(solver.weight_decay), regularization_type=str(solver.regularization_type),
        iter_size=int(solver.iter_size), clip_gradients=float(solver.clip_gradients), type=str(solver.type),
        test_iter=tuple(int(v) for v in solver.test_iter), test_interval=int(solver.test_interval),
        test_initialization=bool(solver.test_initialization), display=int(solver.display),
        average_loss=int(solver.average_loss), snapshot=int(solver.snapshot),
        snapshot_prefix=str(solver.snapshot_prefix), snapshot_after_train=bool(solver.snapshot_after_train),
        random_seed=int(solver.random_seed), net=str(solver.net or solver.train_net),
    )
    config = SolverConfig.__new__(SolverConfig)
    # validate with the fields' lines (a plain construction validates without them)
    for name, value in values.items():
        object.__setattr__(config, name, value)
    object.__setattr__(config, "path", str(path) if path is not None else None)
    object.__setattr__(config, "overrides", {})
    for name in ("base_lr", "gamma", "power", "momentum", "weight_decay", "clip_gradients"):
        object.__setattr__(config, name, float(_f32(getattr(config, name))))
    config.validate(lines)
    if solver.has("net_param") or solver.has("train_net_param"):
        raise TrainingError("a net given inside the solver file (net_param) is not supported", path=path,
                            line=lines.get("net_param") or lines.get("train_net_param"),
                            hint="put the net in a train_val prototxt and name it with net: or --train-val")
    return config


def read_solver_config(path: str | Path) -> SolverConfig:
    """Read and check a Caffe solver prototxt (e.g. ``solver_test_fold_is_0.prototxt``)."""
    from ..prototxt.files import read_text_message

    solver = read_solver(path)
    as_written = read_text_message(path, "SolverParameter", "solver prototxt")  # before solver_type's upgrade
    return solver_from_message(solver, path, _field_lines(as_written))


# --- learning rate ------------------------------------------------------------------------------------
class LearningRateSchedule:
    """Caffe's ``GetLearningRate``, with its one piece of state (``current_step``, for ``multistep``;
    ``step`` sets it too) saved in checkpoints."""

    def __init__(self, solver: SolverConfig) -> None:
        self.solver = solver
        self.current_step = 0

    def rate(self, iteration: int) -> float:
        """The learning rate of the update at ``iteration`` (a float32 value), advancing
        ``current_step`` as Caffe does."""
        s = self.solver
        it = int(iteration)
        policy = s.lr_policy
        if policy == "fixed":
            rate = _f32(s.base_lr)
        elif policy == "step":
            self.current_step = it // s.stepsize
            rate = _f32(float(s.base_lr) * math.pow(float(s.gamma), self.current_step))
        elif policy == "exp":
            rate = _f32(float(s.base_lr) * math.pow(float(s.gamma), it))
        elif policy == "inv":
            base = _f32(1.0) + _f32(s.gamma) * _f32(it)
            rate = _f32(s.base_lr) * _f32(np.power(base, -_f32(s.power)))
        elif policy == "multistep":
            if self.current_step < len(s.stepvalue) and it >= s.stepvalue[self.current_step]:
                self.current_step += 1
            rate = _f32(float(s.base_lr) * math.pow(float(s.gamma), self.current_step))
        elif policy == "poly":
            rate = _f32(s.base_lr) * _f32(np.power(_f32(1.0) - _f32(it) / _f32(s.max_iter), _f32(s.power)))
        elif policy == "sigmoid":
            with np.errstate(over="ignore"):
                exponent = -_f32(s.gamma) * (_f32(it) - _f32(s.stepsize))
                rate = _f32(s.base_lr) * (_f32(1.0) / (_f32(1.0) + np.exp(exponent)))
        else:  # validated in SolverConfig
            raise TrainingError(f"unknown learning rate policy '{policy}'", path=s.path)
        return float(_f32(rate))

    def state_dict(self) -> dict:
        return {"current_step": self.current_step}

    def load_state_dict(self, state: dict) -> None:
        self.current_step = int(state["current_step"])

    def boundaries(self, max_iter: int | None = None, samples: int = 4) -> list[tuple[int, float]]:
        """``(iteration, rate)`` where the rate changes, for a plan: every step of ``step``/``multistep``
        below ``max_iter``, the first iteration for ``fixed``, and a few evenly spaced iterations for the
        continuous policies (``exp``, ``inv``, ``poly``, ``sigmoid``), the last one included."""
        end = int(max_iter if max_iter is not None else self.solver.max_iter)
        probe = LearningRateSchedule(self.solver)
        s = self.solver
        if s.lr_policy == "fixed":
            return [(0, probe.rate(0))]
        if s.lr_policy == "step":
            return [(it, probe.rate(it)) for it in range(0, end, s.stepsize)]
        if s.lr_policy == "multistep":
            out: list[tuple[int, float]] = []
            for it in range(end):  # current_step advances one call at a time, as in Caffe
                rate = probe.rate(it)
                if not out or rate != out[-1][1]:
                    out.append((it, rate))
            return out
        picks = sorted({int(round(i * (end - 1) / samples)) for i in range(samples + 1)})
        return [(it, probe.rate(it)) for it in picks]


__all__ = ["LR_POLICIES", "LearningRateSchedule", "SOLVER_TYPES", "SolverConfig", "read_solver_config",
           "solver_from_message"]
