"""Training runs per cross-validation fold: resolve a fold's files, plan it, train it, evaluate it.

A :class:`FoldJob` names everything one fold needs (train_val and solver prototxts, initial weights, where
the data is, overrides and run options); it is a plain picklable value, so folds can run in other
processes (:func:`~agegender.training.distributed.run_on_devices`).

* :func:`prepare_fold` reads the files and resolves the data (the train_val's LMDB paths remapped under
  ``data_root``, or ``path label`` lists of new faces), without loading images or weights;
* :func:`plan_fold` is the dry run: net, parameters, FLOPs per image, the solver's schedule with the rate at
  each boundary, data sources and counts, initialisation, checkpoints;
* :func:`train_fold` trains (a fresh model per fold), writes the final weights (caffemodel and
  safetensors), evaluates the fold's test split with :func:`agegender.evaluation.evaluate`, and writes
  ``summary.json``; :func:`train_folds` runs several folds and writes the cross-validation summary.

The output folder of a fold::

    plan.json  checkpoints/iter_N.pt  train_log.csv  val_log.csv  training_curve.png
    final.caffemodel  final.safetensors  evaluation.json  summary.json
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..caffe2torch.ir import NetState
from ..caffe2torch.net import CaffeNet
from ..errors import AgegenderError, MissingFileError, NetDefinitionError, TrainingError
from ..folds.adience import fold_path
from ..folds.remap import remap_data_paths
from ..folds.transforms import DATA_LAYER_TYPES, CaffeTransform
from ..prototxt.message import Message
from . import checkpoint as ckpt
from .data import BatchPlan, SplitSource, TrainBatches, eval_images, load_split
from .loop import Trainer, TrainerCallback, TrainOptions, TrainResult
from .solver import LearningRateSchedule, SolverConfig, read_solver_config
from .trainable import (build_net, classifier_classes, copy_weights, initialise, phase_net_def,
                        plan_initialisation, read_train_val)

log = logging.getLogger(__name__)

SUMMARY_JSON = "summary.json"
PLAN_JSON = "plan.json"
EVALUATION_JSON = "evaluation.json"
FINAL_CAFFEMODEL = "final.caffemodel"
FINAL_SAFETENSORS = "final.safetensors"
TARGET_OF_CLASSES = {8: "age", 2: "gender"}
# the solver fields that decide the weights' trajectory (max_iter, snapshot, display... may change on resume)
TRAJECTORY_FIELDS = ("base_lr", "lr_policy", "gamma", "power", "stepsize", "stepvalue", "momentum", "weight_decay",
                     "regularization_type", "iter_size", "clip_gradients", "type")


@dataclass(frozen=True)
class DataOptions:
    """Where a fold's images are. Paths may hold ``{fold}``, replaced by the fold number.

    LMDB mode (the train_val's own data layers): ``data_root`` is the folder the published LMDB paths are
    looked up under (e.g. the output of ``agegender data build``), ``mean_root`` the same for mean images;
    the test split is ``test_lmdb``, else the train LMDB's sibling named ``*_test_lmdb``. List mode (new
    faces): ``train_list`` (and ``val_list``, ``test_list``) with ``images``, the folder their paths are
    relative to, each image resized to ``resize`` x ``resize`` as ``convert_imageset`` does. ``mean_file``
    replaces the data layers' mean image in both modes.
    """

    data_root: Path | None = None
    mean_root: Path | None = None
    mean_file: Path | None = None
    test_lmdb: Path | None = None
    train_list: Path | None = None
    val_list: Path | None = None
    test_list: Path | None = None
    images: Path | None = None
    resize: int = 256
    skip_missing: bool = False


@dataclass(frozen=True)
class Overrides:
    """Values that replace the solver's or the data layer's (None: keep the file's)."""

    max_iter: int | None = None
    batch_size: int | None = None  # of the TRAIN and the TEST data layer
    iter_size: int | None = None
    base_lr: float | None = None
    snapshot: int | None = None
    test_interval: int | None = None
    test_iter: int | None = None
    display: int | None = None


@dataclass(frozen=True)
class FoldJob:
    """Everything one fold's training needs (see the module docstring)."""

    train_val: Path
    solver: Path
    out_dir: Path
    fold: int | None = None
    weights: Path | None = None
    deploy: Path | None = None
    target: str | None = None
    labels: tuple[str, ...] | None = None
    name: str = ""
    data: DataOptions = field(default_factory=DataOptions)
    overrides: Overrides = field(default_factory=Overrides)
    options: TrainOptions = field(default_factory=TrainOptions)
    evaluate: bool = True
    evaluate_before: bool = False
    oversample: bool = False
    eval_batch_size: int = 64


@dataclass
class PreparedFold:
    """A fold's files read and its data resolved (no images or weights loaded)."""

    job: FoldJob
    solver: SolverConfig
    net_def: Message
    train_transform: CaffeTransform
    test_transform: CaffeTransform
    batch_size: int
    val_batch_size: int
    train_source: SplitSource
    val_source: SplitSource | None
    test_source: SplitSource | None
    image_shape: tuple[int, int, int]
    target: str
    deploy: Path | None
    notes: list[str] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """The TRAIN net's data blob: batch x C x crop x crop."""
        return (self.batch_size, *self.train_transform.output_shape(*self.image_shape))

    def train_net(self) -> CaffeNet:
        """The TRAIN-phase net (parameters allocated, not filled)."""
        shapes = {_data_top(self.net_def, "TRAIN"): self.input_shape}
        return build_net(self.net_def, self.job.train_val, phase="TRAIN", input_shapes=shapes,
                         channels_last=self.job.options.channels_last)

    def val_net(self) -> CaffeNet:
        """The TEST-phase train_val net (for the solver's periodic validation)."""
        shape = (self.val_batch_size, *self.test_transform.output_shape(*self.image_shape))
        return build_net(self.net_def, self.job.train_val, phase="TEST",
                         input_shapes={_data_top(self.net_def, "TEST"): shape},
                         channels_last=self.job.options.channels_last)

    def test_net(self) -> CaffeNet:
        """The net evaluated at the end: the deploy prototxt when there is one, else the TEST-phase
        train_val net."""
        if self.deploy is not None:
            from ..caffe2torch.api import load

            return load(self.deploy, channels_last=self.job.options.channels_last)
        return self.val_net()


def _data_layers(net_def: Message, phase: str) -> list[Message]:
    state = NetState(phase=phase)
    return [layer for layer in net_def.layer if layer.type in DATA_LAYER_TYPES and state.includes(layer)]


def _data_top(net_def: Message, phase: str) -> str:
    layers = _data_layers(net_def, phase)
    return str(layers[0].top[0]) if layers and layers[0].top else "data"


def _layer_source(layer: Message, path: Path) -> tuple[str, int]:
    """(LMDB path, batch size) of a Data layer."""
    if layer.type == "Data":
        return str(layer.data_param.source), int(layer.data_param.batch_size)
    position = layer.pos[0] if layer.pos else None
    raise NetDefinitionError(f"{layer.type} data layers are not supported for training", path=path, line=position,
                             layer=str(layer.name), hint="use a Data (LMDB) layer, or give the images as --train-list")


def _set_mean_file(net_def: Message, mean_file: Path) -> None:
    for layer in net_def.layer:
        if layer.type in DATA_LAYER_TYPES or layer.has("transform_param"):
            param = layer.mutable("transform_param")
            param.clear("mean_value")
            param.mean_file = str(mean_file)


def _image_shape(source: SplitSource) -> tuple[int, int, int]:
    if source.lmdb is not None:
        from ..folds.lmdb_io import DatumLMDB

        with DatumLMDB(source.lmdb) as db:
            if len(db) == 0:
                raise AgegenderError("the LMDB holds no records", path=source.lmdb)
            _, image, _ = db[0]
            return tuple(int(d) for d in image.shape)  # type: ignore[return-value]
    return (3, source.resize, source.resize)


def prepare_fold(job: FoldJob, *, require_data: bool = True) -> PreparedFold:
    """Read a fold's train_val and solver and resolve its data (see :class:`DataOptions`). A missing train
    split is an error, unless ``require_data`` is false (a plan: it is then noted)."""
    fold = job.fold
    data = job.data
    notes: list[str] = []
    o = job.overrides
    solver = read_solver_config(job.solver).with_overrides(
        max_iter=o.max_iter, iter_size=o.iter_size, base_lr=o.base_lr, snapshot=o.snapshot,
        test_interval=o.test_interval, display=o.display,
        test_iter=(o.test_iter,) if o.test_iter is not None else None)
    net_def = read_train_val(job.train_val)
    data_root, mean_root = fold_path(data.data_root, fold), fold_path(data.mean_root, fold)
    if data_root is not None or mean_root is not None:
        net_def, _ = remap_data_paths(net_def, data_root=data_root, mean_root=mean_root, net_path=job.train_val)
    if data.mean_file is not None:
        mean_file = fold_path(data.mean_file, fold)
        assert mean_file is not None
        if not mean_file.is_file():
            raise MissingFileError("mean image not found", path=mean_file)
        _set_mean_file(net_def, mean_file)
    train_layers, test_layers = _data_layers(net_def, "TRAIN"), _data_layers(net_def, "TEST")
    if len(train_layers) != 1:
        raise NetDefinitionError(f"the TRAIN net has {len(train_layers)} data layers; training needs one",
                                 path=job.train_val, hint="is this a train_val prototxt?")
    train_transform = CaffeTransform.from_layer(train_layers[0], "TRAIN", net_path=job.train_val)
    test_transform = (CaffeTransform.from_layer(test_layers[0], "TEST", net_path=job.train_val) if test_layers
                      else dataclasses.replace(train_transform, phase="TEST", mirror=False))
    train_path, batch_size = _layer_source(train_layers[0], job.train_val)
    val_path, val_batch = _layer_source(test_layers[0], job.train_val) if test_layers else (None, batch_size)
    if o.batch_size is not None:  # both data layers': the validation batches are the TEST net's
        batch_size = val_batch = int(o.batch_size)
    if batch_size <= 0:
        raise NetDefinitionError("the TRAIN data layer's batch_size is not set", path=job.train_val,
                                 hint="give --batch-size")
    if data.train_list is not None:
        images = fold_path(data.images, fold)
        if images is None:
            raise AgegenderError("--train-list needs --images (the folder its paths are relative to)")

        def listed(path: Path | None) -> SplitSource | None:
            resolved = fold_path(path, fold)
            return None if resolved is None else SplitSource(image_list=resolved, images=images, resize=data.resize)

        train_source = listed(data.train_list)
        assert train_source is not None
        val_source, test_source = listed(data.val_list), listed(data.test_list)
    else:
        train_source = SplitSource(lmdb=Path(train_path))
        val_source = SplitSource(lmdb=Path(val_path)) if val_path else None
        test_lmdb = fold_path(data.test_lmdb, fold)
        if test_lmdb is None and "train" in Path(train_path).name:
            sibling = Path(train_path).with_name(Path(train_path).name.replace("train", "test"))
            test_lmdb = sibling if sibling.exists() else None
            if test_lmdb is None:
                notes.append(f"no test split ({sibling} does not exist): give --test-lmdb to evaluate")
        test_source = SplitSource(lmdb=test_lmdb) if test_lmdb is not None else None
    for what, source in (("train", train_source), ("val", val_source), ("test", test_source)):
        path = source.lmdb if source is not None and source.lmdb is not None else (
            source.image_list if source is not None else None)
        if path is not None and not Path(path).exists():
            if what == "train" and not require_data:
                notes.append(f"the train data {path} does not exist (yet)")
            elif what == "train":
                raise MissingFileError(f"the {what} data is not found: {path}", path=job.train_val,
                                       hint="give --data-root (where `agegender data build` wrote the LMDBs), or "
                                       "--train-list with --images")
            else:
                notes.append(f"the {what} split {path} does not exist: skipped")
            if what == "train":
                continue
            if what == "val":
                val_source = None
            else:
                test_source = None
    image_shape = _image_shape(train_source) if Path(train_source.lmdb or train_source.image_list).exists() else (
        3, data.resize, data.resize)
    train_transform.check_input(*image_shape)
    deploy = job.deploy
    if deploy is None:
        sibling = Path(job.train_val).with_name("deploy.prototxt")
        deploy = sibling if sibling.is_file() else None
    prepared = PreparedFold(job=job, solver=solver, net_def=net_def, train_transform=train_transform,
                            test_transform=test_transform, batch_size=batch_size,
                            val_batch_size=val_batch or batch_size,
                            train_source=train_source, val_source=val_source, test_source=test_source,
                            image_shape=image_shape, target=job.target or "", deploy=deploy, notes=notes)
    if not prepared.target:
        classes = classifier_classes(prepared.train_net())
        if classes not in TARGET_OF_CLASSES:
            raise AgegenderError(f"the net predicts {classes} classes: give --target age or gender",
                                 path=job.train_val)
        prepared.target = TARGET_OF_CLASSES[classes]
    return prepared


def fingerprint(prepared: PreparedFold) -> dict:
    """What identifies a run, checked when it is resumed."""
    job = prepared.job

    def digest(path: Path | None) -> str | None:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] if path is not None else None

    solver = prepared.solver
    weights = job.weights
    return {
        "train_val": digest(job.train_val),
        "solver": {name: getattr(solver, name) for name in TRAJECTORY_FIELDS},
        "weights": None if weights is None else f"{Path(weights).name}:{Path(weights).stat().st_size}",
        "batch_size": prepared.batch_size, "seed": job.options.seed, "train": prepared.train_source.describe(),
    }


# --- the dry run ----------------------------------------------------------------------------------------
def plan_fold(job: FoldJob, prepared: PreparedFold | None = None) -> dict:
    """Everything a run would do, without training (and without loading the images): see the module
    docstring. A JSON-ready dict."""
    from ..caffe2torch.flops import count_flops
    from .sgd import caffe_params

    prepared = prepared or prepare_fold(job, require_data=False)
    solver = prepared.solver
    net = prepared.train_net()
    entries = caffe_params(net)
    trainable = sum(e.parameter.numel() for e in entries if e.lr_mult != 0)
    total = sum(e.parameter.numel() for e in entries)
    flops = count_flops(prepared.test_net()).total_flops
    report, _ = plan_initialisation(net, job.weights, seed=job.options.seed)
    counts = {}
    for what, source in (("train", prepared.train_source), ("val", prepared.val_source),
                         ("test", prepared.test_source)):
        if source is not None:
            exists = Path(source.lmdb or source.image_list).exists()  # type: ignore[arg-type]
            counts[what] = {"source": source.describe(), "count": source.count() if exists else None}
    records = prepared.batch_size * solver.iter_size
    snapshots = [it for it in range(solver.snapshot, solver.max_iter + 1, solver.snapshot)] if solver.snapshot else []
    if solver.snapshot_after_train and (not snapshots or snapshots[-1] != solver.max_iter):
        snapshots.append(solver.max_iter)
    train_count = counts["train"]["count"]
    multipliers = sorted({(e.lr_mult, e.decay_mult) for e in entries})
    return {
        "fold": job.fold, "name": job.name, "train_val": str(job.train_val), "solver_file": str(job.solver),
        "deploy": str(prepared.deploy) if prepared.deploy else None, "target": prepared.target,
        "net": net.net_name, "layers": len(net.layer_info), "parameters": total, "trainable_parameters": trainable,
        "lr_decay_multipliers": [list(m) for m in multipliers],
        "flops_per_image": flops, "train_flops_per_iteration": 3 * flops * records,
        "input_shape": list(prepared.input_shape),
        "train_transform": prepared.train_transform.describe(), "test_transform": prepared.test_transform.describe(),
        "solver": solver.as_dict(), "schedule": [[it, lr] for it, lr in LearningRateSchedule(solver).boundaries()],
        "batch_size": prepared.batch_size, "iter_size": solver.iter_size, "images_per_iteration": records,
        "epochs": solver.max_iter * records / train_count if train_count else None,
        "data": counts, "initialisation": report.as_dict(), "initialisation_summary": report.describe(),
        "checkpoints": {"every": solver.snapshot, "iterations": snapshots, "keep": job.options.keep_checkpoints,
                        "folder": str(Path(job.out_dir) / ckpt.CHECKPOINT_DIR)},
        "validation": ({"every": solver.test_interval, "batches": solver.test_iter[0] if solver.test_iter else 0,
                        "at_start": solver.test_initialization}
                       if solver.test_interval and prepared.val_source is not None else None),
        "out_dir": str(job.out_dir), "options": dataclasses.asdict(job.options), "notes": prepared.notes,
    }


# --- training one fold ------------------------------------------------------------------------------------
@dataclass
class FoldResult:
    """One fold's outcome: the training result, the evaluations (None when not run) and the files."""

    fold: int | None
    out_dir: Path
    status: str  # "finished" | "interrupted" | "failed" | "skipped"
    train: dict
    before: Any = None  # EvalResult of the initial weights (evaluate_before)
    after: Any = None  # EvalResult of the trained weights
    files: dict = field(default_factory=dict)
    init: dict = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict:
        target = getattr(self.after, "target", None) or getattr(self.before, "target", None)
        return {"fold": self.fold, "out_dir": str(self.out_dir), "status": self.status, "target": target,
                "train": self.train,
                "init": self.init, "error": self.error, "files": self.files,
                "before": _metrics(self.before), "after": _metrics(self.after)}


def _metrics(result: Any) -> dict | None:
    if result is None:
        return None
    metrics = dict(result.metrics)
    return metrics


def _write_json(data: Any, path: Path) -> None:
    from .._atomic import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def _evaluate(net: CaffeNet, prepared: PreparedFold, images: Any, device: str) -> Any:
    from ..evaluation import evaluate

    return evaluate(net, images, prepared.test_transform, target=prepared.target, oversample=prepared.job.oversample,
                    batch_size=prepared.job.eval_batch_size, device=device, label_names=prepared.job.labels)


def train_fold(job: FoldJob, *, callbacks: Sequence[TrainerCallback] = (), resume: bool | str | Path = False,
               dist: Any = None, device: str | None = None) -> FoldResult:
    """Train one fold from a fresh model (or resume it), save its final weights, evaluate its test split
    and write ``summary.json`` (also when training fails or is interrupted). ``resume=True`` continues
    from the newest checkpoint of the fold's folder when there is one; a path resumes from that file."""
    from ..card import save_safetensors
    from ..caffe2torch.weights import save_caffemodel

    if device is not None:
        job = dataclasses.replace(job, options=dataclasses.replace(job.options, device=device))
    out_dir = Path(job.out_dir)
    is_main = dist is None or dist.rank == 0
    prepared = prepare_fold(job)
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_json(plan_fold(job, prepared), out_dir / PLAN_JSON)
    options = job.options
    target_device = options.device or (str(dist.device) if dist is not None else (
        "cuda" if torch.cuda.is_available() else "cpu"))
    options = dataclasses.replace(options, device=target_device)
    torch.manual_seed(options.seed + (dist.rank if dist is not None else 0))
    net = prepared.train_net()
    init = initialise(net, job.weights, seed=options.seed)
    log.info("fold %s: %s", job.fold, init.describe())
    test_images = eval_images(prepared.test_source, on_missing=_on_missing(job)) if (
        prepared.test_source is not None and job.evaluate and is_main) else None
    result = FoldResult(fold=job.fold, out_dir=out_dir, status="failed", train={}, init=init.as_dict())
    test_net = None
    if test_images is not None and job.evaluate_before:
        test_net = prepared.test_net()
        copy_weights(net, test_net)
        result.before = _evaluate(test_net, prepared, test_images, target_device)
    world = 1 if dist is None else dist.world_size
    rank = 0 if dist is None else dist.rank
    train_data = load_split(prepared.train_source, prepared.train_transform, target_device,
                            on_missing=_on_missing(job))
    plan = BatchPlan(len(train_data), prepared.batch_size, iter_size=prepared.solver.iter_size, world_size=world,
                     rank=rank, seed=options.seed)
    val_data, val_net = None, None
    solver = prepared.solver
    if solver.test_interval and solver.test_iter and prepared.val_source is not None and is_main:
        val_data = load_split(prepared.val_source, prepared.test_transform, target_device, on_missing=_on_missing(job))
        val_net = prepared.val_net()
    resume_from = None
    if resume is True:
        resume_from = ckpt.latest_checkpoint(out_dir)
    elif resume:
        resume_from = Path(resume)
    trainer = Trainer(net, solver, TrainBatches(train_data, plan), out_dir, options=options, val=val_data,
                      val_net=val_net, val_batch_size=prepared.val_batch_size, callbacks=callbacks,
                      fingerprint=fingerprint(prepared), dist=dist, net_def=prepared.net_def)
    try:
        trained: TrainResult = trainer.run(resume=resume_from)
    except (TrainingError, KeyboardInterrupt) as exc:
        if is_main:
            result.error = exc.one_line() if isinstance(exc, TrainingError) else "interrupted"
            result.status = "failed" if isinstance(exc, TrainingError) else "interrupted"
            result.files = _files(out_dir)
            _write_json(result.as_dict(), out_dir / SUMMARY_JSON)
        raise
    result.train = trained.as_dict()
    result.status = trained.status
    if not is_main:
        return result
    if trained.status == "finished":
        net_def = phase_net_def(prepared.net_def, "TRAIN")
        save_caffemodel(net, net_def, out_dir / FINAL_CAFFEMODEL)
        metadata = {"name": job.name or net.net_name, "fold": str(job.fold), "iterations": str(trained.iteration)}
        save_safetensors(net, out_dir / FINAL_SAFETENSORS, metadata)
        if test_images is not None:
            test_net = test_net or prepared.test_net()
            copy_weights(net, test_net)
            result.after = _evaluate(test_net, prepared, test_images, target_device)
            _write_json({"after": result.after.as_dict(),
                         "before": result.before.as_dict() if result.before is not None else None},
                        out_dir / EVALUATION_JSON)
    result.files = _files(out_dir)
    _write_json(result.as_dict(), out_dir / SUMMARY_JSON)
    return result


def _on_missing(job: FoldJob) -> str:
    return "skip" if job.data.skip_missing else "fail"


def _files(out_dir: Path) -> dict:
    names = (PLAN_JSON, "train_log.csv", "val_log.csv", "training_curve.png", FINAL_CAFFEMODEL, FINAL_SAFETENSORS,
             EVALUATION_JSON)
    files = {name: str(out_dir / name) for name in names if (out_dir / name).exists()}
    checkpoints = ckpt.list_checkpoints(out_dir)
    if checkpoints:
        files["checkpoints"] = [str(path) for _, path in checkpoints]
    return files


def read_fold_summary(out_dir: str | Path) -> dict | None:
    """A fold folder's ``summary.json``, or None."""
    path = Path(out_dir) / SUMMARY_JSON
    if not path.is_file():
        return None
    return json.loads(path.read_text())


# --- several folds -----------------------------------------------------------------------------------------
def _train_fold_job(job: FoldJob, device: str) -> FoldResult:
    """:func:`train_fold` for :func:`~agegender.training.distributed.run_on_devices` (module-level: picklable)."""
    return train_fold(job, device=device, resume=False)


def summarize(results: Sequence[FoldResult]) -> dict:
    """The cross-validation summary: per fold and mean/std of each metric, before and after training
    (:func:`agegender.evaluation.summarize_folds`)."""
    from ..evaluation import summarize_folds

    summary: dict[str, Any] = {"folds": [r.as_dict() for r in results]}
    for key in ("before", "after"):
        evaluated = {r.fold if r.fold is not None else i: getattr(r, key) for i, r in enumerate(results)
                     if getattr(r, key) is not None}
        if evaluated:
            summary[key] = summarize_folds(evaluated)
    return summary


def train_folds(jobs: Sequence[FoldJob], out_dir: str | Path, *, devices: Sequence[str] | None = None,
                callbacks_for: Callable[[FoldJob], Sequence[TrainerCallback]] | None = None,
                resume: bool = False, dist: Any = None) -> dict:
    """Train every job (one fold each) and write ``out_dir/summary.json`` (see :func:`summarize`; not when a
    single job writes its own there).

    With ``devices`` (two or more), the folds run at the same time, one process per device (no callbacks,
    no resume); otherwise one after the other here. With ``resume`` a fold whose ``summary.json`` says
    finished is not trained again."""
    out_dir = Path(out_dir)
    results: list[FoldResult] = []
    if devices and len(devices) > 1:
        from .distributed import run_on_devices

        results = run_on_devices(_train_fold_job, list(jobs), list(devices))
    else:
        for job in jobs:
            done = read_fold_summary(job.out_dir) if resume else None
            if done is not None and done.get("status") == "finished" and done.get("after") is not None:
                results.append(_result_from_summary(job, done, done.get("target") or prepare_fold(job).target))
                continue
            callbacks = callbacks_for(job) if callbacks_for is not None else ()
            result = train_fold(job, callbacks=callbacks, resume=resume, dist=dist,
                                device=devices[0] if devices else None)
            results.append(result)
            if result.status != "finished":
                break
    summary = summarize(results) if (dist is None or dist.rank == 0) else {}
    # one run without folds writes its own summary.json in out_dir: the same file is not overwritten
    separate = all(Path(job.out_dir).resolve() != out_dir.resolve() for job in jobs)
    if (dist is None or dist.rank == 0) and separate:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_json(summary, out_dir / SUMMARY_JSON)
    return summary


@dataclass
class _StoredEval:
    """An evaluation read back from a finished fold's ``summary.json``: what :func:`summarize` reads of an
    :class:`~agegender.evaluation.EvalResult` (target, n, metrics)."""

    metrics: dict
    target: str
    probs_oversampled: Any = None

    @property
    def n(self) -> int:
        return int(self.metrics.get("n", 0))


def _result_from_summary(job: FoldJob, summary: dict, target: str) -> FoldResult:
    def stored(metrics: dict | None) -> Any:
        if metrics is None:
            return None
        return _StoredEval(metrics, target, True if "oversampled" in metrics else None)

    return FoldResult(fold=job.fold, out_dir=Path(job.out_dir), status="finished", train=summary.get("train", {}),
                      before=stored(summary.get("before")), after=stored(summary.get("after")),
                      files=summary.get("files", {}), init=summary.get("init", {}))


__all__ = ["DataOptions", "FoldJob", "FoldResult", "Overrides", "PreparedFold", "plan_fold",
           "prepare_fold", "read_fold_summary", "summarize", "train_fold", "train_folds"]
