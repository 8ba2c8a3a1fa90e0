"""Model cards: what each known Adience model is, where its files live and how to feed it.

Two families:

* **Lapuschkin et al. (ICCV-W 2017)**: 38 configurations named ``[target]_[init]_[arch][_preproc]``
  (their folder names in ``model_definitions/`` of the repository
  ``sebastian-lapuschkin/understanding-age-gender-deep-learning-models``). Definitions and mean images
  come from a clone of that repository (the *zoo dir*: ``--zoo DIR`` or ``AGEGENDER_ZOO``); its
  weights are hosted outside GitHub, so the user gives the caffemodel.
* **Levi & Hassner (CVPR-W 2015)**: ``levi_age`` and ``levi_gender``, whose released deploy files and
  weights :mod:`agegender.zoo.fetch` puts in the user cache.

A card is plain data: building one reads nothing but the (tiny) synset label files.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import ZooError
from .fetch import levi_dir

ZOO_ENV = "AGEGENDER_ZOO"
LAPUSCHKIN_REPO = "https://github.com/sebastian-lapuschkin/understanding-age-gender-deep-learning-models"
# where the README of that repository says its caffemodels are hosted
LAPUSCHKIN_WEIGHTS_URL = "https://datacloud.hhi.fraunhofer.de/nextcloud/s/TQnGNJmQZLWkQ7X"
FOLDS = (0, 1, 2, 3, 4)

# The folder names of model_definitions/ in the Lapuschkin repository (commit 5bc05b9), embedded so
# that the zoo can be listed without a clone.
LAPUSCHKIN_MODELS: tuple[str, ...] = (
    "age_finetuning_caffereference", "age_finetuning_caffereference_mixed",
    "age_finetuning_caffereference_unaligned", "age_finetuning_googlenet", "age_finetuning_googlenet_mixed",
    "age_finetuning_googlenet_unaligned", "age_finetuning_vgg16", "age_finetuning_vgg16_mixed",
    "age_fromscratch_caffereference", "age_fromscratch_caffereference_mixed",
    "age_fromscratch_caffereference_unaligned", "age_fromscratch_googlenet", "age_fromscratch_googlenet_mixed",
    "age_fromscratch_googlenet_unaligned", "age_imdbwiki_vgg16", "age_imdbwiki_vgg16_mixed",
    "age_net_definitions", "age_net_definitions_mixed", "age_net_definitions_unaligned",
    "gender_finetuning_caffereference", "gender_finetuning_caffereference_mixed",
    "gender_finetuning_caffereference_unaligned", "gender_finetuning_googlenet",
    "gender_finetuning_googlenet_mixed", "gender_finetuning_googlenet_unaligned", "gender_finetuning_vgg16",
    "gender_finetuning_vgg16_mixed", "gender_fromscratch_caffereference", "gender_fromscratch_caffereference_mixed",
    "gender_fromscratch_caffereference_unaligned", "gender_fromscratch_googlenet",
    "gender_fromscratch_googlenet_mixed", "gender_fromscratch_googlenet_unaligned", "gender_imdbwiki_vgg16",
    "gender_imdbwiki_vgg16_mixed", "gender_net_definitions", "gender_net_definitions_mixed",
    "gender_net_definitions_unaligned",
)
LEVI_MODELS: tuple[str, ...] = ("levi_age", "levi_gender")

ARCHS = {"net_definitions": "AdienceNet", "caffereference": "CaffeNet", "googlenet": "GoogLeNet", "vgg16": "VGG16"}
INPUT_SIZE = {"AdienceNet": 227, "CaffeNet": 227, "GoogLeNet": 224, "VGG16": 224}
ALIGNMENTS = {"": "aligned", "_mixed": "mixed", "_unaligned": "unaligned"}

# Label names in class-index order. Levi's age groups as his paper and README give them; the
# Lapuschkin repository's synset_age.txt writes the third group as (8, 13).
LEVI_AGE_LABELS = ("(0, 2)", "(4, 6)", "(8, 12)", "(15, 20)", "(25, 32)", "(38, 43)", "(48, 53)", "(60, 100)")
LAPUSCHKIN_AGE_LABELS = ("(0, 2)", "(4, 6)", "(8, 13)", "(15, 20)", "(25, 32)", "(38, 43)", "(48, 53)",
                         "(60, 100)")
GENDER_LABELS = ("m", "f")  # 0 = male, 1 = female in both families

# Channel means (B, G, R) of Levi's released mean image (models/mean.binaryproto, 3x256x256,
# sha256 5b054734...), computed once in float64 over all its pixels. Used only when that file
# cannot be had: subtracting these is close to, but not the same as, subtracting the mean image.
LEVI_MEAN_VALUES = (78.4263, 87.7689, 114.8958)

_NAME = re.compile(
    r"^(?P<target>age|gender)_(?:(?P<init>fromscratch|finetuning|imdbwiki)_(?P<arch>caffereference|googlenet|vgg16)"
    r"|(?P<levi_arch>net_definitions))(?P<pre>_mixed|_unaligned)?$"
)


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the net's input: Caffe's TEST-phase DataTransformer on a resized face.

    BGR channel order, values 0..255, the face resized to ``resize`` (height, width), a centre crop of
    ``crop`` x ``crop`` at ``crop_offset``, minus the mean image taken at the same offset (or minus
    per-channel ``mean_values`` when no mean image is available). No scaling, no mirroring.
    """

    crop: int
    mean_file: str | None = None
    mean_values: tuple[float, float, float] | None = None
    channel_order: str = "BGR"
    value_range: tuple[float, float] = (0.0, 255.0)
    resize: tuple[int, int] = (256, 256)

    @property
    def crop_offset(self) -> tuple[int, int]:
        """(row, column) of the centre crop's top-left corner, as Caffe computes it."""
        return ((self.resize[0] - self.crop) // 2, (self.resize[1] - self.crop) // 2)

    def as_dict(self) -> dict:
        """A JSON-ready description."""
        return {
            "channel_order": self.channel_order,
            "value_range": list(self.value_range),
            "resize": list(self.resize),
            "crop": self.crop,
            "crop_offset": list(self.crop_offset),
            "mean": "image" if self.mean_file else ("values" if self.mean_values else None),
            "mean_file": self.mean_file,
            "mean_values": list(self.mean_values) if self.mean_values else None,
            "scale": 1.0,
            "mirror": False,
        }


@dataclass(frozen=True)
class ModelCard:
    """One model of the zoo. Paths are resolved against ``base``: the zoo dir (Lapuschkin) or the
    Levi cache folder (Levi); methods that need files raise :class:`ZooError` when it is unknown."""

    name: str
    family: str  # "lapuschkin" | "levi"
    target: str  # "age" | "gender"
    init: str  # "fromscratch" | "finetuning" (ImageNet) | "imdbwiki" (ImageNet then IMDB-WIKI)
    arch: str  # "AdienceNet" | "CaffeNet" | "GoogLeNet" | "VGG16"
    alignment: str  # "aligned" | "mixed" | "unaligned"
    input_size: int
    labels: tuple[str, ...]
    label_source: str  # the synset file read, or "embedded"
    base: Path | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)

    # --- where things are -----------------------------------------------------------------------------
    @property
    def weights_fetchable(self) -> bool:
        """True for Levi's models (fetched into the cache); Lapuschkin's need ``--weights``."""
        return self.family == "levi"

    def _base(self) -> Path:
        if self.base is None:
            raise ZooError(
                f"model '{self.name}': the folder of the Lapuschkin repository is not known",
                hint=f"clone {LAPUSCHKIN_REPO} and pass --zoo DIR or set {ZOO_ENV}",
            )
        return self.base

    def definitions_dir(self) -> Path:
        """The folder holding the model's deploy, train_val and solver prototxts."""
        if self.family == "levi":
            return self._base() / f"{self.target}_net_definitions"
        return self._base() / "model_definitions" / self.name

    def deploy(self) -> Path:
        """The deploy prototxt."""
        return self._existing(self.definitions_dir() / "deploy.prototxt", "deploy prototxt")

    def train_val(self, fold: int) -> Path:
        """The train_val prototxt of cross-validation fold ``fold`` (the fold used as test set)."""
        return self._existing(self.definitions_dir() / f"train_val_test_fold_is_{_fold(fold)}.prototxt",
                              f"train_val prototxt of fold {fold}")

    def solver(self, fold: int) -> Path:
        """The solver prototxt of fold ``fold``."""
        return self._existing(self.definitions_dir() / f"solver_test_fold_is_{_fold(fold)}.prototxt",
                              f"solver prototxt of fold {fold}")

    def mean_file(self, fold: int = 0) -> Path | None:
        """The mean image (3x256x256 binaryproto) for ``fold``; ``None`` for Levi's models when the
        released mean file could not be fetched (the card then uses :data:`LEVI_MEAN_VALUES`)."""
        if self.family == "levi":
            path = self._base() / "models" / "mean.binaryproto"
            return path if path.is_file() else None
        suffix = "" if self.alignment == "aligned" else f"_{self.alignment}"
        path = self._base() / "mean_images" / f"mean_image{suffix}" / f"Test_fold_is_{_fold(fold)}" / "mean.binaryproto"
        return self._existing(path, f"mean image of fold {fold}")

    def weights(self) -> Path | None:
        """Levi's caffemodel in the cache (it may not be fetched yet); ``None`` for Lapuschkin's."""
        if self.family != "levi":
            return None
        return self._base() / "models" / f"{self.target}_net.caffemodel"

    def weights_hint(self) -> str:
        """What the user must do to get the weights."""
        if self.family == "levi":
            return "run `agegender fetch levi` (or give --from DIR with a copy of GilLevi/AgeGenderDeepLearning)"
        return (f"Lapuschkin's weights are hosted outside GitHub ({LAPUSCHKIN_WEIGHTS_URL}); download the "
                f"caffemodel of '{self.name}' and pass it with --weights")

    def preprocessing(self, fold: int = 0) -> Preprocessing:
        """The input preprocessing, with the mean image of ``fold`` (or Levi's per-channel means)."""
        mean = self.mean_file(fold)
        if mean is None:
            return Preprocessing(crop=self.input_size, mean_values=LEVI_MEAN_VALUES)
        return Preprocessing(crop=self.input_size, mean_file=str(mean))

    def mean_warning(self, fold: int = 0) -> str | None:
        """The warning to show when the card falls back to per-channel mean values."""
        if self.family == "levi" and self.mean_file(fold) is None:
            return ("Levi's mean image (models/mean.binaryproto) is not in the cache: preprocessing falls back "
                    f"to its per-channel means B,G,R = {LEVI_MEAN_VALUES}, which only approximates the released "
                    "preprocessing (fetch with --from DIR holding the mean file to get it)")
        return None

    def _existing(self, path: Path, what: str) -> Path:
        if not path.is_file():
            hint = ("run `agegender fetch levi`" if self.family == "levi"
                    else f"is --zoo / {ZOO_ENV} a clone of {LAPUSCHKIN_REPO}?")
            raise ZooError(f"model '{self.name}': {what} not found", path=path, hint=hint)
        return path

    def as_dict(self, fold: int = 0) -> dict:
        """A JSON-ready description (paths that cannot be resolved are ``None``)."""
        def maybe(fn, *args):
            try:
                value = fn(*args)
            except ZooError:
                return None
            return str(value) if value is not None else None

        return {
            "name": self.name, "family": self.family, "target": self.target, "init": self.init,
            "arch": self.arch, "alignment": self.alignment, "input_size": self.input_size,
            "labels": list(self.labels), "label_source": self.label_source,
            "deploy": maybe(self.deploy), "train_val": maybe(self.train_val, fold), "solver": maybe(self.solver, fold),
            "fold": fold, "mean_file": maybe(self.mean_file, fold), "weights": maybe(self.weights),
            "weights_fetchable": self.weights_fetchable,
            "preprocessing": _maybe_preprocessing(self, fold), "warnings": list(self.warnings),
        }


def _maybe_preprocessing(card: ModelCard, fold: int) -> dict | None:
    try:
        return card.preprocessing(fold).as_dict()
    except ZooError:
        return Preprocessing(crop=card.input_size).as_dict()


def _fold(fold: int) -> int:
    if fold not in FOLDS:
        raise ZooError(f"fold must be one of {list(FOLDS)}, not {fold!r}")
    return fold


def zoo_dir(explicit: str | Path | None = None) -> Path | None:
    """The Lapuschkin repository clone: ``explicit`` (``--zoo``), else ``$AGEGENDER_ZOO``, else ``None``.

    A folder that does not exist or has no ``model_definitions/`` is an error (it was named on purpose).
    """
    raw = explicit if explicit is not None else os.environ.get(ZOO_ENV) or None
    if raw is None:
        return None
    path = Path(raw).expanduser()
    if not (path / "model_definitions").is_dir():
        source = "--zoo" if explicit is not None else ZOO_ENV
        raise ZooError(f"{source} does not point at a clone of the Lapuschkin repository (no model_definitions/)",
                       path=path, hint=f"clone {LAPUSCHKIN_REPO}")
    return path


def parse_name(name: str) -> tuple[str, str, str, str]:
    """(target, init, arch, alignment) of a Lapuschkin model name, e.g. ``age_fromscratch_googlenet_mixed``
    -> ("age", "fromscratch", "GoogLeNet", "mixed"). ``net_definitions`` is Levi's architecture (AdienceNet),
    trained from scratch."""
    match = _NAME.match(name)
    if not match:
        raise ZooError(f"'{name}' is not a model name of the form [target]_[init]_[arch][_preproc]")
    if match["levi_arch"]:
        init, arch = "fromscratch", ARCHS["net_definitions"]
    else:
        init, arch = match["init"], ARCHS[match["arch"]]
    return match["target"], init, arch, ALIGNMENTS[match["pre"] or ""]


def _read_synset(base: Path | None, target: str, expected: int) -> tuple[tuple[str, ...] | None, str | None]:
    """Labels from the repository's synset file (root, or heatmap_drawing/ as in the original repo)."""
    if base is None:
        return None, None
    for path in (base / f"synset_{target}.txt", base / "heatmap_drawing" / f"synset_{target}.txt"):
        if path.is_file():
            try:
                lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            except (OSError, UnicodeDecodeError):
                continue
            if len(lines) == expected:
                return tuple(lines), str(path)
    return None, None


def model_names() -> list[str]:
    """Every model name the zoo knows: Levi's two, then Lapuschkin's 38."""
    return list(LEVI_MODELS) + list(LAPUSCHKIN_MODELS)


def get_card(name: str, zoo: str | Path | None = None, cache: str | Path | None = None) -> ModelCard:
    """The card of model ``name``. ``zoo`` locates the Lapuschkin clone (default ``$AGEGENDER_ZOO``);
    ``cache`` the user cache holding Levi's files (default: see :func:`agegender.zoo.fetch.cache_dir`).
    Unknown names raise :class:`ZooError` with the closest known names."""
    if name in LEVI_MODELS:
        target = name.split("_", 1)[1]
        labels = LEVI_AGE_LABELS if target == "age" else GENDER_LABELS
        card = ModelCard(name=name, family="levi", target=target, init="fromscratch", arch="AdienceNet",
                         alignment="aligned", input_size=227, labels=labels, label_source="embedded",
                         base=levi_dir(cache))
        warning = card.mean_warning()
        return card if warning is None else _with_warning(card, warning)
    if name not in LAPUSCHKIN_MODELS:
        close = difflib.get_close_matches(name, model_names(), n=3, cutoff=0.5)
        hint = ("did you mean " + ", ".join(close) + "? " if close else "") + "`agegender zoo` lists all models"
        raise ZooError(f"unknown model '{name}'", hint=hint)
    target, init, arch, alignment = parse_name(name)
    base = zoo_dir(zoo)
    default = LAPUSCHKIN_AGE_LABELS if target == "age" else GENDER_LABELS
    labels, source = _read_synset(base, target, len(default))
    return ModelCard(name=name, family="lapuschkin", target=target, init=init, arch=arch, alignment=alignment,
                     input_size=INPUT_SIZE[arch], labels=labels or default, label_source=source or "embedded",
                     base=base)


def _with_warning(card: ModelCard, warning: str) -> ModelCard:
    return replace(card, warnings=card.warnings + (warning,))


def all_cards(zoo: str | Path | None = None, cache: str | Path | None = None) -> list[ModelCard]:
    """The cards of every model, in :func:`model_names` order."""
    base = zoo_dir(zoo)
    return [get_card(name, base, cache) for name in model_names()]


__all__ = [
    "GENDER_LABELS", "LAPUSCHKIN_AGE_LABELS", "LAPUSCHKIN_MODELS", "LEVI_AGE_LABELS", "LEVI_MEAN_VALUES",
    "LEVI_MODELS", "ModelCard", "Preprocessing", "all_cards", "get_card", "model_names", "parse_name", "zoo_dir",
]
