"""Build Caffe Datum LMDBs and mean images: per Adience fold, or from any ``path label`` list.

:func:`build_fold` writes one fold's train/val/test LMDBs and its mean image in the layout of
Lapuschkin et al.'s train_val files (so their ``data_param.source``/``mean_file`` paths map onto it)::

    OUT/lmdb{,_mixed,_unaligned}/Test_fold_is_K/{age,gender}_{train,val,test}_lmdb
    OUT/mean_image{,_mixed,_unaligned}/Test_fold_is_K/mean.binaryproto

The mean is computed from the train LMDB, as ``compute_image_mean`` was run in the papers. One mean
serves both targets of a fold (as in Lapuschkin's files): it is computed from the train LMDB of the
first target built and kept afterwards.

Every step can be interrupted and re-run: a finished LMDB is skipped (after checking it was written
with the same settings), an unfinished one (``<name>.partial``) resumes from its committed records,
and the mean is written atomically once the train LMDB is complete. :func:`build_from_list` does the
same for one list file and one output LMDB.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from ..errors import AgegenderError, FileFormatError, MissingFileError, ZooError
from .adience import NUM_FOLDS, TARGETS, VARIANT_FOLDERS, AdienceFolds
from .lists import ImageList, MissingImagesReport, OnMissing
from .lmdb_io import PARTIAL_SUFFIX, DatumLMDB, compute_image_mean, write_datum_lmdb

log = logging.getLogger(__name__)

BUILT_SPLITS: tuple[str, ...] = ("train", "val", "test")
VARIANT_SUFFIXES = {"aligned": "", "mixed": "_mixed", "unaligned": "_unaligned"}
ZOO_ENV = "AGEGENDER_ZOO"

BuildProgress = Callable[[str, int, int], None]
"""Called as ``progress(stage, done, total)``: ``stage`` names the output being made (an LMDB's folder
name, or ``"mean"``); raising from it interrupts the build, which a re-run resumes."""

LMDBStatus = Literal["built", "resumed", "kept"]


# --- reports --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LMDBBuildResult:
    """One LMDB of a build: where it is, how many records it holds and what this run did to it.

    ``status`` is ``"built"`` (written from scratch), ``"resumed"`` (an interrupted write completed) or
    ``"kept"`` (already complete, left alone). ``missing`` and ``unreadable`` are the images skipped
    (with ``on_missing="skip"``): listed images that do not exist, and files OpenCV could not decode.
    """

    path: Path
    records: int
    status: LMDBStatus
    written: int = 0
    resumed: int = 0
    missing: MissingImagesReport | None = None
    unreadable: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line: ``"age_train_lmdb: 11823 records (built)"`` plus what was skipped."""
        text = f"{self.path.name}: {self.records} records ({self.status}"
        if self.status == "resumed":
            text += f", {self.resumed} were already written"
        text += ")"
        if self.missing is not None and not self.missing.ok:
            text += f"; skipped {self.missing.missing} missing image(s)"
        if self.unreadable:
            text += f"; skipped {len(self.unreadable)} unreadable image(s): " + ", ".join(self.unreadable[:5])
        return text


@dataclasses.dataclass(frozen=True)
class FoldBuildReport:
    """What :func:`build_fold` made for one fold, target and variant."""

    fold: int
    target: str
    variant: str
    lmdbs: dict[str, LMDBBuildResult]  # split -> result
    mean_file: Path
    mean_status: Literal["computed", "kept"]

    def describe(self) -> str:
        """A few lines for a log or the CLI."""
        lines = [f"{self.variant} fold {self.fold} {self.target}:"]
        lines += ["  " + result.describe() for result in self.lmdbs.values()]
        source = ("computed from " + self.lmdbs["train"].path.name if self.mean_status == "computed"
                  else "kept (already there)")
        lines.append(f"  {self.mean_file.name}: {source}")
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class FoldLayout:
    """Where :func:`build_fold` puts one fold's files (Lapuschkin's layout, see the module docstring)."""

    lmdb_dir: Path
    mean_file: Path

    def lmdb(self, target: str, split: str) -> Path:
        """The LMDB folder of ``target`` and ``split``, e.g. ``.../Test_fold_is_0/age_train_lmdb``."""
        return self.lmdb_dir / f"{target}_{split}_lmdb"


def fold_layout(out_dir: str | Path, fold: int, variant: str) -> FoldLayout:
    """The paths of fold ``fold``'s LMDBs and mean image for ``variant`` under ``out_dir``."""
    if variant not in VARIANT_SUFFIXES:
        raise AgegenderError(f"unknown variant {variant!r}", hint="choose one of " + ", ".join(VARIANT_SUFFIXES))
    suffix, fold_dir = VARIANT_SUFFIXES[variant], f"Test_fold_is_{fold}"
    out_dir = Path(out_dir)
    return FoldLayout(out_dir / f"lmdb{suffix}" / fold_dir, out_dir / f"mean_image{suffix}" / fold_dir / "mean.binaryproto")


# --- building ---------------------------------------------------------------------------------------
def open_folds(folds: str | Path | AdienceFolds | None = None) -> AdienceFolds:
    """The Adience fold lists: ``folds`` (a Lapuschkin clone, its ``folds/`` folder, or an
    :class:`AdienceFolds`), else the clone named by ``$AGEGENDER_ZOO``."""
    if isinstance(folds, AdienceFolds):
        return folds
    if folds is None:
        folds = os.environ.get(ZOO_ENV) or None
        if folds is None:
            raise ZooError(
                "no fold lists given",
                hint=f"pass the Lapuschkin repository clone (or its folds/ folder) with --zoo, or set {ZOO_ENV}",
            )
    return AdienceFolds(Path(folds).expanduser())


def build_fold(
    adience_root: str | Path,
    fold: int,
    target: str,
    variant: str,
    out_dir: str | Path,
    resize: int | tuple[int, int] | None = 256,
    encoded: bool = False,
    on_missing: OnMissing = "fail",
    progress: BuildProgress | None = None,
    *,
    folds: str | Path | AdienceFolds | None = None,
    gray: bool = False,
) -> FoldBuildReport:
    """Write fold ``fold``'s ``{target}_{train,val,test}_lmdb`` and its ``mean.binaryproto`` under
    ``out_dir`` (layout: :func:`fold_layout`), from the images under ``adience_root``.

    ``adience_root`` holds the images at the paths the list files give (``USER/landmark_aligned_face.
    ID.NAME.jpg``; for ``mixed`` also ``USER/coarse_tilt_aligned_face...``). The lists are read with
    :class:`AdienceFolds` from ``folds`` (default: ``$AGEGENDER_ZOO``). Images are resized to ``resize``
    (an int for a square, ``(height, width)``, or None to keep their size) and stored raw, or as image
    files with ``encoded``; ``gray`` reads them as one grey channel (``convert_imageset --gray``).

    Missing images are found before anything is written. ``on_missing="fail"`` raises
    MissingFileError with their count and the first few; ``"skip"`` leaves them out (and images that
    OpenCV cannot decode too), reported in the result. Re-running skips finished LMDBs and resumes
    interrupted ones; see the module docstring.
    """
    folds_obj = open_folds(folds)
    _check_fold(fold)
    if target not in TARGETS:
        raise AgegenderError(f"unknown target {target!r}", hint="choose one of " + ", ".join(TARGETS))
    if variant not in VARIANT_FOLDERS:
        raise AgegenderError(f"unknown variant {variant!r}", hint="choose one of " + ", ".join(VARIANT_FOLDERS))
    _check_on_missing(on_missing)
    size = _resize_pair(resize)
    root = _image_root(adience_root)
    layout = fold_layout(out_dir, fold, variant)
    label = f"{variant} fold {fold} {target}"

    lists = {split: folds_obj.split(variant, fold, target, split) for split in BUILT_SPLITS}
    todo = [split for split in BUILT_SPLITS if not layout.lmdb(target, split).exists()]
    reports = {split: lists[split].check_images(root) for split in todo}
    missing_total = sum(report.missing for report in reports.values())
    if missing_total and on_missing == "fail":
        raise _missing_error(label, reports, root)

    results: dict[str, LMDBBuildResult] = {}
    for split in BUILT_SPLITS:
        out = layout.lmdb(target, split)
        if split not in todo:
            results[split] = _kept(out, size, encoded, len(lists[split]) if on_missing == "fail" else None, gray)
            continue
        entries = lists[split]
        if not reports[split].ok:
            log.warning("%s %s: %s; skipping them", label, split, reports[split].describe())
            entries = entries.select(_present_mask(entries, root))
        results[split] = _write(out, entries, root, size, encoded, on_missing, progress, reports[split], gray=gray)

    mean_status: Literal["computed", "kept"]
    if layout.mean_file.exists():
        _check_kept_mean(layout.mean_file, results["train"].path)
        mean_status = "kept"
    else:
        stage = "mean"
        compute_image_mean(results["train"].path, layout.mean_file,
                           progress=(lambda done, total: progress(stage, done, total)) if progress else None)
        mean_status = "computed"
    report = FoldBuildReport(fold, target, variant, results, layout.mean_file, mean_status)
    log.info("%s", report.describe())
    return report


def build_from_list(
    list_path: str | Path,
    images_root: str | Path,
    out: str | Path,
    resize: int | tuple[int, int] | None = None,
    encoded: bool = False,
    shuffle: bool = False,
    on_missing: OnMissing = "fail",
    *,
    seed: int = 0,
    overwrite: bool = False,
    progress: BuildProgress | None = None,
    gray: bool = False,
    encode_type: str | None = None,
) -> LMDBBuildResult:
    """Write the images of a ``path label`` list file (paths relative to ``images_root``) into the LMDB
    ``out``, as ``convert_imageset`` does (see :func:`~agegender.folds.lmdb_io.write_datum_lmdb`).

    ``resize`` is an int (square), ``(height, width)`` or None; ``shuffle`` permutes the records with
    ``seed``; ``gray`` and ``encode_type`` are convert_imageset's ``--gray`` and ``--encode_type`` (which
    implies ``encoded``). Keys are numbered by the list file's lines, as convert_imageset's. Missing
    images fail (listed, with a count) or, with ``on_missing="skip"``, are left out together with files
    OpenCV cannot decode (their key numbers stay unused, as in Caffe). An existing ``out`` is refused unless ``overwrite``; an
    interrupted write of the same list and settings resumes.
    """
    _check_on_missing(on_missing)
    size = _resize_pair(resize)
    root = _image_root(images_root)
    out = Path(out)
    entries = ImageList.read(list_path)
    if len(entries) == 0:
        raise FileFormatError("the image list holds no images", path=list_path)
    report = entries.check_images(root)
    if not report.ok:
        if on_missing == "fail":
            raise MissingFileError(report.describe(), path=list_path,
                                   hint="fix the image folder, or skip the missing images (--skip-missing)")
        log.warning("%s: %s; skipping them", list_path, report.describe())
        entries = entries.select(_present_mask(entries, root))
    if out.exists() and not overwrite:
        raise AgegenderError("the output already exists", path=out, hint="remove it, or pass --overwrite")
    return _write(out, entries, root, size, encoded, on_missing, progress, report, shuffle=shuffle, seed=seed,
                  overwrite=overwrite, gray=gray, encode_type=encode_type)


def _write(out: Path, entries: ImageList, root: Path, size: tuple[int, int] | None, encoded: bool,
           on_missing: OnMissing, progress: BuildProgress | None, missing: MissingImagesReport,
           shuffle: bool = False, seed: int = 0, overwrite: bool = False, gray: bool = False,
           encode_type: str | None = None) -> LMDBBuildResult:
    if len(entries) == 0:
        raise MissingFileError(f"no image of the list is left to write to {out.name}", path=entries.source)
    stage = out.name
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    resuming = partial.exists()
    try:
        report = write_datum_lmdb(
            out, entries, size, encoded, shuffle, seed, root=root, skip_unreadable=on_missing == "skip",
            gray=gray, encode_type=encode_type,
            overwrite=overwrite, progress=(lambda done, total: progress(stage, done, total)) if progress else None,
        )
    except FileFormatError as exc:
        if exc.hint is None and exc.path is not None and Path(exc.path).is_relative_to(root):  # an image
            raise FileFormatError(
                exc.message, path=exc.path,
                hint="replace or remove the image, or skip such images with on_missing='skip' (--skip-missing); "
                     "a re-run resumes where this one stopped",
            ) from None
        raise
    records = report.written + report.resumed
    status: LMDBStatus = "resumed" if resuming and report.resumed else "built"
    return LMDBBuildResult(out, records, status, report.written, report.resumed,
                           None if missing.ok else missing, tuple(report.unreadable))


def _kept(out: Path, size: tuple[int, int] | None, encoded: bool, expected: int | None,
          gray: bool = False) -> LMDBBuildResult:
    """A finished LMDB from an earlier run, checked against this run's settings."""
    with DatumLMDB(out) as db:
        count = len(db)
        if count == 0:
            raise FileFormatError("the LMDB is empty", path=out, hint="delete it to rebuild it")
        was_encoded = bool(db.datum(0).encoded)
        channels, height, width = db[0].image.shape
    problems = []
    if not was_encoded and (channels == 1) != gray:
        problems.append(f"{channels}-channel images")
    if was_encoded != encoded:
        problems.append("encoded images" if was_encoded else "raw images")
    if size is not None and (height, width) != size:
        problems.append(f"{height} x {width} images")
    if expected is not None and count != expected:
        problems.append(f"{count} records where the list has {expected}")
    if problems:
        raise AgegenderError(
            "an LMDB from an earlier build is in the way, with other settings: " + ", ".join(problems),
            path=out, hint="delete it to rebuild it with these settings",
        )
    log.info("keeping %s (%d records, already complete)", out, count)
    return LMDBBuildResult(out, count, "kept")


def _check_kept_mean(mean_file: Path, train_lmdb: Path) -> None:
    """A mean from an earlier run must fit the images of the train LMDB."""
    from ..prototxt import read_blobproto

    shape = tuple(read_blobproto(mean_file).shape)
    with DatumLMDB(train_lmdb) as db:
        image_shape = tuple(db[0].image.shape)
    if shape[-3:] != image_shape:
        raise AgegenderError(
            f"the mean image from an earlier build is {' x '.join(map(str, shape[-3:]))} but the images of "
            f"{train_lmdb.name} are {' x '.join(map(str, image_shape))}", path=mean_file,
            hint="delete it to recompute it",
        )


# --- what an LMDB holds -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LMDBInfo:
    """What :func:`lmdb_info` found: record count, image shapes (C, H, W) with their counts, how many
    records are encoded or float, and the label histogram (label -> count, sorted by label)."""

    path: Path
    records: int
    shapes: dict[tuple[int, int, int], int]
    encoded: int
    float_data: int
    labels: dict[int, int]
    first_key: str
    last_key: str


def lmdb_info(path: str | Path, progress: BuildProgress | None = None) -> LMDBInfo:
    """Count the records of a Datum LMDB, their shapes (encoded images are decoded for it) and labels."""
    import cv2

    path = Path(path)
    shapes: Counter[tuple[int, int, int]] = Counter()
    encoded = float_data = 0
    with DatumLMDB(path) as db:
        total = len(db)
        if total == 0:
            raise FileFormatError("the LMDB holds no records", path=path)
        labels = np.empty(total, dtype=np.int64)
        keys = db.keys
        for index in range(total):
            datum = db.datum(index)
            labels[index] = int(datum.label)
            if datum.encoded:
                encoded += 1
                image = cv2.imdecode(np.frombuffer(datum.data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
                if image is None:
                    raise FileFormatError(f"record '{keys[index]}': the encoded image cannot be decoded", path=path)
                shapes[(1 if image.ndim == 2 else image.shape[2], image.shape[0], image.shape[1])] += 1
            else:
                float_data += int(not datum.data and datum.has("float_data"))
                shapes[(int(datum.channels), int(datum.height), int(datum.width))] += 1
            if progress:
                progress(path.name, index + 1, total)
    values, counts = np.unique(labels, return_counts=True)
    return LMDBInfo(path, total, dict(shapes.most_common()), encoded, float_data,
                    dict(zip(values.tolist(), counts.tolist())), keys[0], keys[-1])


# --- helpers --------------------------------------------------------------------------------------------
def _check_fold(fold: object) -> None:
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 0 <= fold < NUM_FOLDS:
        raise AgegenderError(f"fold must be an integer in 0..{NUM_FOLDS - 1}, not {fold!r}")


def _check_on_missing(on_missing: str) -> None:
    if on_missing not in ("fail", "skip"):
        raise AgegenderError(f"on_missing must be 'fail' or 'skip', not {on_missing!r}")


def _resize_pair(resize: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if resize is None:
        return None
    if isinstance(resize, (int, np.integer)) and not isinstance(resize, bool):
        pair = (int(resize), int(resize))
    else:
        try:
            height, width = resize  # type: ignore[misc]
            pair = (int(height), int(width))
        except (TypeError, ValueError):
            raise AgegenderError(f"resize must be a size or (height, width), not {resize!r}") from None
    if min(pair) <= 0:
        raise AgegenderError(f"resize must be positive, not {resize!r}")
    return pair


def _image_root(root: str | Path) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MissingFileError("image folder not found", path=root)
    return root


def _present_mask(entries: ImageList, root: Path) -> np.ndarray:
    present = {path: os.path.isfile(root / path) for path in dict.fromkeys(entries.paths)}
    return np.fromiter((present[path] for path in entries.paths), dtype=bool, count=len(entries))


def _missing_error(label: str, reports: dict[str, MissingImagesReport], root: Path) -> MissingFileError:
    bad = {split: report for split, report in reports.items() if not report.ok}
    total = sum(report.missing for report in bad.values())
    checked = sum(report.checked for report in reports.values())
    parts = []
    for split, report in bad.items():
        names = ", ".join(f"{e.path} (line {e.line})" if e.line else e.path for e in report.first_missing)
        more = ", ..." if report.missing > len(report.first_missing) else ""
        parts.append(f"{split}: {report.missing} of {report.checked}, e.g. {names}{more}")
    hint = "skip them with on_missing='skip' (--skip-missing), or fix the image folder"
    examples = [entry.path for report in bad.values() for entry in report.first_missing]
    # the Adience download keeps landmark-aligned faces in aligned/ and the others in faces/
    holders = sorted({sub for sub in ("aligned", "faces") for path in examples if (root / sub / path).is_file()})
    if len(holders) == 1:
        hint = f"the images are under {root / holders[0]}: pass that folder as the image root"
    elif holders:
        hint = (f"the images are split between {root / 'aligned'} and {root / 'faces'}: these lists need them in "
                "one folder (e.g. symlink both into one)")
    return MissingFileError(f"{total} of the {checked} images of the {label} lists are missing under {root}: "
                            + "; ".join(parts), path=next(iter(bad.values())).source, hint=hint)


__all__ = [
    "BUILT_SPLITS", "BuildProgress", "FoldBuildReport", "FoldLayout", "LMDBBuildResult", "LMDBInfo", "build_fold",
    "build_from_list", "fold_layout", "lmdb_info", "open_folds",
]
