"""The papers' protocol: a model evaluated on the test split of each Adience fold, then mean ± std.

:func:`plan_evaluation` resolves, per fold, which net, weights, mean image and test images to use, from a
zoo model name or explicit files, and the data from (in this order of preference) an explicit ``data``
(an LMDB or a ``path label`` list, ``{fold}`` in the path standing for the fold), a folder built by
``agegender data build`` (``data_dir``), or the fold lists of the Lapuschkin repository with the Adience
images (``adience_root``). It also says when the figures cannot be trusted: Levi & Hassner's released
nets do not document the fold they were trained on, and one caffemodel used for several folds has seen
the test images of all but one of them.

:func:`evaluate_plan` runs it and returns a :class:`FoldsReport` (per-fold :class:`EvalResult`, the
summary of :func:`summarize_folds`, the warnings).
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import AgegenderError, MissingFileError
from ..folds.adience import NUM_FOLDS, VARIANT_FOLDERS, fold_path
from ..folds.datasets import ImageListDataset
from ..folds.lists import ImageList, OnMissing
from ..folds.transforms import CaffeTransform
from ..zoo.cards import GENDER_LABELS, LEVI_AGE_LABELS, ModelCard
from .engines import OnnxEngine, TorchEngine
from .runner import EvalResult, evaluate, summarize_folds

log = logging.getLogger(__name__)

FoldProgress = Callable[[int, int, int], None]
"""Called as ``progress(fold, images_done, images_total)``."""

ENGINES = ("torch", "onnx")
_LMDB_KEY = re.compile(r"^\d{8}_")


@dataclass
class FoldTask:
    """What one fold's evaluation uses."""

    fold: int
    prototxt: Path
    weights: Path
    mean_file: Path | None
    mean_values: tuple[float, ...] | None
    images: Any  # an LMDB folder (Path) or an ImageListDataset without a transform
    data: str  # where the test images come from, for reports
    ages: np.ndarray | None = None
    skipped_missing: int = 0


@dataclass
class EvalPlan:
    """The folds to evaluate and how (see :func:`plan_evaluation`)."""

    model: str
    target: str
    variant: str
    label_names: tuple[str, ...]
    tasks: list[FoldTask]
    warnings: list[str] = field(default_factory=list)
    card: ModelCard | None = None

    def as_dict(self) -> dict:
        return {"model": self.model, "target": self.target, "variant": self.variant,
                "labels": list(self.label_names), "warnings": list(self.warnings),
                "folds": {task.fold: {"prototxt": str(task.prototxt), "weights": str(task.weights),
                                      "mean_file": str(task.mean_file) if task.mean_file else None,
                                      "mean_values": list(task.mean_values) if task.mean_values else None,
                                      "data": task.data, "skipped_missing": task.skipped_missing}
                          for task in self.tasks}}


def _has_pattern(value: str | Path | None) -> bool:
    return value is not None and "{fold}" in str(value)


def parse_folds(text: str | Sequence[int] | None) -> list[int] | None:
    """``"0"``, ``"0,2"`` or ``"all"`` (None) as fold numbers; a bad value is an error."""
    if text is None:
        return None
    if not isinstance(text, str):
        folds = [int(k) for k in text]
    elif text.strip().lower() == "all":
        return None
    else:
        try:
            folds = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise AgegenderError(f"--fold {text!r}: expected a fold 0..{NUM_FOLDS - 1}, a list such as 0,2, or 'all'") \
                from None
    if not folds or any(not 0 <= k < NUM_FOLDS for k in folds) or len(set(folds)) != len(folds):
        raise AgegenderError(f"--fold {text!r}: expected distinct folds in 0..{NUM_FOLDS - 1}, or 'all'")
    return folds


def read_ages(path: str | Path) -> dict[str, float]:
    """True ages by image file name from a tab-separated file with ``file`` and ``age`` columns (the
    ``labels.tsv`` of the UTKFace folders)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError("ages file not found", path=path)
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        if not reader.fieldnames or "file" not in reader.fieldnames or "age" not in reader.fieldnames:
            raise AgegenderError("expected a tab-separated file with a header naming 'file' and 'age' columns",
                                 path=path)
        ages: dict[str, float] = {}
        for number, row in enumerate(reader, start=2):
            try:
                ages[Path(row["file"]).name] = float(row["age"])
            except (TypeError, ValueError):
                raise AgegenderError(f"age {row.get('age')!r} is not a number", path=path, line=number) from None
    return ages


def _ages_for(ids: Sequence[str], ages: dict[str, float], source: str) -> np.ndarray:
    names = [Path(_LMDB_KEY.sub("", image_id)).name for image_id in ids]
    missing = [name for name in names if name not in ages]
    if missing:
        raise AgegenderError(f"{len(missing)} of {len(names)} images of {source} have no age in the ages file, "
                             f"e.g. {missing[0]}")
    return np.asarray([ages[name] for name in names], dtype=np.float64)


def infer_target(prototxt: Path) -> str:
    """``"age"`` or ``"gender"`` from the number of classes the deploy net scores (8 or 2)."""
    from ..caffe2torch.api import load
    from .engines import probability_blob

    classes = probability_blob(load(prototxt, channels_last=False)).num_classes
    if classes == len(LEVI_AGE_LABELS):
        return "age"
    if classes == len(GENDER_LABELS):
        return "gender"
    raise AgegenderError(f"the net has {classes} classes: neither age (8 groups) nor gender (2)", path=prototxt,
                         hint="give --target")


def plan_evaluation(
    *,
    model: str | None = None,
    prototxt: str | Path | None = None,
    weights: str | Path | None = None,
    mean: str | Path | None = None,
    mean_values: Sequence[float] | None = None,
    zoo: str | Path | None = None,
    folds: Sequence[int] | None = None,
    target: str | None = None,
    variant: str | None = None,
    data: str | Path | None = None,
    images: str | Path | None = None,
    data_dir: str | Path | None = None,
    adience_root: str | Path | None = None,
    ages_file: str | Path | None = None,
    on_missing: OnMissing = "fail",
    fetch: bool = True,
) -> EvalPlan:
    """Resolve the files of each fold's evaluation (see the module docstring).

    ``model``: a zoo name (``levi_age``, ``gender_imdbwiki_vgg16`` ...), or give ``prototxt`` + ``weights``.
    ``weights``, ``mean`` and ``data`` may contain ``{fold}``. ``folds=None`` means every fold the data
    offer. ``images`` is the folder a ``data`` list's paths are relative to; ``ages_file`` a ``labels.tsv``.
    """
    from ..zoo import get_card, resolve

    if (model is None) == (prototxt is None):
        raise AgegenderError("give a zoo model name or --prototxt with --weights")
    warnings: list[str] = []
    card: ModelCard | None = None
    levi_files = None
    if model is not None:
        card = get_card(model, zoo)
        if card.family == "levi":
            levi_files = resolve(model, zoo=zoo, fetch=fetch)  # --weights, if given, is used per fold below
            card = levi_files.card
            warnings += list(levi_files.warnings)
        deploy = Path(levi_files.prototxt) if levi_files else card.deploy()
        target = target or card.target
        if target != card.target:
            raise AgegenderError(f"model '{model}' is a {card.target} model, not {target}")
        variant = variant or card.alignment
        label_names = tuple(card.labels)
        name = model
    else:
        deploy = Path(prototxt)  # type: ignore[arg-type]
        if not deploy.is_file():
            raise MissingFileError("net prototxt not found", path=deploy)
        if weights is None:
            raise AgegenderError("--prototxt needs --weights (a caffemodel, '{fold}' for one per fold)")
        target = target or infer_target(deploy)
        variant = variant or "aligned"
        label_names = LEVI_AGE_LABELS if target == "age" else GENDER_LABELS
        name = deploy.parent.name or deploy.stem
    if variant not in VARIANT_FOLDERS:
        raise AgegenderError(f"unknown variant {variant!r}", hint="aligned, mixed or unaligned")
    if mean is not None and mean_values:
        raise AgegenderError("give --mean or --mean-values, not both")

    sources = [flag for flag, value in (("--data", data), ("--data-dir", data_dir), ("--adience-root", adience_root))
               if value is not None]
    if len(sources) > 1:
        raise AgegenderError(f"give one source of test images, not {' and '.join(sources)}")
    if not sources:
        raise AgegenderError("no test images given",
                             hint="give --adience-root DIR (the Adience faces, with the fold lists from --zoo), "
                                  "--data-dir DIR (built by `agegender data build`) or --data LMDB|LIST")
    if images is not None and data is None:
        raise AgegenderError("--images is the folder of a --data list's images: give --data LIST too")
    lists = _fold_lists(zoo) if data is None and data_dir is None else None
    chosen = _available_folds(folds, data=data, data_dir=data_dir, lists=lists, variant=variant, target=target)
    ages = read_ages(ages_file) if ages_file is not None else None

    tasks: list[FoldTask] = []
    for fold in chosen:
        if levi_files is not None and weights is None:
            fold_weights = Path(levi_files.caffemodel)
        else:
            fold_weights = fold_path(weights, fold)
        if fold_weights is None:
            assert card is not None
            raise AgegenderError(f"model '{model}' needs its caffemodel", hint=card.weights_hint()
                                 + " ('{fold}' in the path for one per fold)")
        fold_mean, fold_values = _fold_mean(fold, mean, mean_values, card, levi_files)
        if not fold_weights.is_file():
            raise MissingFileError(f"caffemodel of fold {fold} not found", path=fold_weights)
        if fold_mean is None and not fold_values:
            raise AgegenderError("evaluation needs the mean the net was trained with",
                                 hint="give --mean mean.binaryproto ('{fold}' for one per fold) or --mean-values B,G,R")
        task_images, description, skipped = _test_images(fold, data=data, images=images, data_dir=data_dir,
                                                         adience_root=adience_root, lists=lists, variant=variant,
                                                         target=target, on_missing=on_missing)
        task = FoldTask(fold=fold, prototxt=deploy, weights=fold_weights, mean_file=fold_mean,
                        mean_values=fold_values, images=task_images, data=description, skipped_missing=skipped)
        if ages is not None:
            ids = task_images.list.paths if isinstance(task_images, ImageListDataset) else _lmdb_ids(task_images)
            task.ages = _ages_for(ids, ages, description)
        tasks.append(task)
        if skipped:
            warnings.append(f"fold {fold}: {skipped} listed image(s) are missing and were skipped")

    if card is not None and card.family == "levi":
        warnings.append("Levi & Hassner's released nets were trained on Adience and do not document which fold was "
                        "held out: on an Adience test fold the test images may have been in their training data, so "
                        "such figures may be optimistic")
    distinct = {task.weights.resolve() for task in tasks}
    if len(tasks) > 1 and len(distinct) < len(tasks) and not (card is not None and card.family == "levi"):
        warnings.append(f"{len(tasks)} folds evaluated with {len(distinct)} caffemodel(s): a model trained with one "
                        "fold held out has seen the other folds' test images (give one caffemodel per fold with "
                        "'{fold}' in --weights)")
    return EvalPlan(model=name, target=target, variant=variant, label_names=label_names, tasks=tasks,
                    warnings=warnings, card=card)


def _fold_mean(fold: int, mean: str | Path | None, mean_values: Sequence[float] | None, card: ModelCard | None,
               levi_files: Any) -> tuple[Path | None, tuple[float, ...] | None]:
    """(mean image, per-channel values) of ``fold``: the user's (``--mean-values``, else ``--mean``), else the
    model's own (Levi's mean image or, without it, its channel means; the Lapuschkin fold's mean image)."""
    if mean_values:
        return None, tuple(mean_values)
    if mean is not None:
        return fold_path(mean, fold), None
    if levi_files is not None:
        if levi_files.mean_file is not None:
            return Path(levi_files.mean_file), None
        return None, tuple(levi_files.preprocessing.mean_values or ()) or None
    if card is not None:
        return card.mean_file(fold), None
    return None, None


def _lmdb_ids(path: Path) -> list[str]:
    from ..folds.lmdb_io import DatumLMDB

    with DatumLMDB(path) as db:
        return db.keys


def _available_folds(folds: Sequence[int] | None, *, data, data_dir, lists, variant: str, target: str) -> list[int]:
    """The folds to run: those asked for, or (``folds=None``) every fold whose test data exist."""
    if data is not None and not _has_pattern(data):
        if folds is None:
            raise AgegenderError("--fold all needs one test set per fold: put '{fold}' in --data")
        if len(folds) > 1:
            raise AgegenderError(f"{len(folds)} folds but one --data: put '{{fold}}' in --data for one test set per fold")
        return list(folds)
    if folds is not None:
        return list(folds)
    found = []
    for fold in range(NUM_FOLDS):
        if data is not None:
            exists = fold_path(data, fold).exists()  # type: ignore[union-attr]
        elif data_dir is not None:
            from ..folds.build import fold_layout

            exists = fold_layout(data_dir, fold, variant).lmdb(target, "test").is_dir()
        else:
            exists = lists.list_path(variant, fold, target, "test").is_file()
        if exists:
            found.append(fold)
    if not found:
        raise AgegenderError("no fold has test data here", hint="check --data / --data-dir / --zoo")
    if len(found) < NUM_FOLDS:
        log.warning("only fold(s) %s have test data: the summary covers %d of the %d folds",
                    ", ".join(map(str, found)), len(found), NUM_FOLDS)
    return found


def _fold_lists(zoo: str | Path | None):
    """The Adience fold lists of the Lapuschkin clone (``zoo`` or ``$AGEGENDER_ZOO``), opened once per plan
    (an archive is extracted on first use)."""
    from ..folds.build import open_folds

    return open_folds(Path(zoo) if zoo is not None else None)


def _test_images(fold: int, *, data, images, data_dir, adience_root, lists, variant: str, target: str,
                 on_missing: OnMissing) -> tuple[Any, str, int]:
    """(the test images of ``fold``, a description, how many listed images were missing and skipped)."""
    if data is not None:
        path = fold_path(data, fold)
        assert path is not None
        if path.is_dir():
            return path, f"LMDB {path}", 0
        if not path.exists():
            raise MissingFileError(f"test data of fold {fold} not found", path=path)
        if images is None:
            raise AgegenderError("a list file needs --images DIR (the folder its paths are relative to)", path=path)
        return _list_dataset(ImageList.read(path), Path(images), on_missing, f"{path} under {images}")
    if data_dir is not None:
        from ..folds.build import fold_layout

        path = fold_layout(data_dir, fold, variant).lmdb(target, "test")
        if not path.is_dir():
            raise MissingFileError(f"test LMDB of fold {fold} not found (build it with `agegender data build`)",
                                   path=path)
        return path, f"LMDB {path}", 0
    assert adience_root is not None and lists is not None  # plan_evaluation checked that a source is given
    test = lists.split(variant, fold, target, "test")
    return _list_dataset(test, Path(adience_root), on_missing,
                         f"{variant} fold {fold} {target}_test.txt ({lists.list_path(variant, fold, target, 'test')}) "
                         f"under {adience_root}")


def _list_dataset(entries: ImageList, root: Path, on_missing: OnMissing, description: str) -> tuple[Any, str, int]:
    if not root.is_dir():
        raise MissingFileError("image folder not found", path=root)
    dataset = ImageListDataset(entries, root, None, on_missing=on_missing)
    return dataset, description, dataset.skipped


# --- running ------------------------------------------------------------------------------------------
@dataclass
class FoldsReport:
    """The evaluation of a plan: one :class:`EvalResult` per fold and their summary."""

    plan: EvalPlan
    results: dict[int, EvalResult]
    summary: dict
    engine: str

    def as_dict(self, per_image: bool = True) -> dict:
        """Every figure of every fold (with each image's prediction when ``per_image``), JSON-ready."""
        return {"format": "agegender-eval/1", **self.plan.as_dict(), "engine": self.engine,
                "summary": self.summary,
                "results": {fold: result.as_dict(per_image) for fold, result in self.results.items()}}


def evaluate_plan(plan: EvalPlan, *, engine: str = "torch", device: str | None = None, precision: str = "fp32",
                  oversample: bool = False, batch_size: int = 64, workers: int | None = None,
                  progress: FoldProgress | None = None) -> FoldsReport:
    """Run every fold of ``plan`` (each fold's net loaded fresh) and summarize across folds."""
    from ..caffe2torch.api import load

    if engine not in ENGINES:
        raise AgegenderError(f"unknown engine {engine!r}", hint="torch or onnx")
    results: dict[int, EvalResult] = {}
    engine_name = engine
    for task in plan.tasks:
        net = load(task.prototxt, task.weights)
        net.card = plan.card  # type: ignore[attr-defined]
        runner = (TorchEngine(net, device=device, precision=precision) if engine == "torch"
                  else OnnxEngine(net))
        engine_name = runner.name
        transform = CaffeTransform.from_values(crop_size=_crop_of(net), mean_file=task.mean_file,
                                               mean_value=task.mean_values)
        callback = (lambda done, total, fold=task.fold: progress(fold, done, total)) if progress else None
        result = evaluate(runner, task.images, transform, plan.target, oversample=oversample, batch_size=batch_size,
                          progress=callback, label_names=plan.label_names, ages=task.ages, workers=workers)
        result.extra["fold"] = task.fold
        result.extra["weights"] = str(task.weights)
        results[task.fold] = result
    return FoldsReport(plan=plan, results=results, summary=summarize_folds(results), engine=engine_name)


def _crop_of(net) -> int:
    """The crop size a net takes: the height (= width) of its image input."""
    images = [name for name in net.input_names if len(net.blob_shapes[name]) == 4]
    if len(images) != 1:
        raise AgegenderError(f"the net has {len(images)} image inputs", path=net.ir.path)
    height, width = net.blob_shapes[images[0]][2:]
    if height != width:
        raise AgegenderError(f"the net's input is {height} x {width}: Caffe's crops are square", path=net.ir.path)
    return int(height)


__all__ = ["ENGINES", "EvalPlan", "FoldTask", "FoldsReport", "evaluate_plan", "infer_target", "parse_folds",
           "plan_evaluation", "read_ages"]
