"""The model zoo: cards for the 40 known Adience models, fetching Levi's released files, and a loader.

::

    from agegender import zoo
    net = zoo.load_model("levi_age")                         # fetched into the cache on first use
    net = zoo.load_model("gender_imdbwiki_vgg16", weights="gender_imdbwiki_vgg16_fold0.caffemodel",
                         zoo="path/to/understanding-age-gender-deep-learning-models")
    card = zoo.get_card("levi_age"); card.preprocessing().as_dict()
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import MissingFileError, ZooError
from .cards import (GENDER_LABELS, LAPUSCHKIN_AGE_LABELS, LAPUSCHKIN_MODELS, LEVI_AGE_LABELS, LEVI_MEAN_VALUES,
                    LEVI_MODELS, ModelCard, Preprocessing, all_cards, get_card, model_names, parse_name, zoo_dir)
from .fetch import FetchResult, cache_dir, fetch_levi, levi_dir, sha256_file

if TYPE_CHECKING:
    from ..caffe2torch.net import CaffeNet


@dataclass
class ResolvedModel:
    """The files of one zoo model, ready to load: its card, deploy, caffemodel, mean image (if any)
    and the warnings the user should see (e.g. Levi's mean values fallback)."""

    card: ModelCard
    prototxt: Path
    caffemodel: Path
    mean_file: Path | None
    preprocessing: Preprocessing
    warnings: list[str]


def resolve(
    name: str,
    *,
    weights: str | Path | None = None,
    zoo: str | Path | None = None,
    cache: str | Path | None = None,
    fold: int = 0,
    fetch: bool = True,
    progress: bool = False,
) -> ResolvedModel:
    """Find (and for Levi's models, fetch) the files of zoo model ``name``.

    ``weights`` overrides the caffemodel (required for Lapuschkin's models, whose weights are not
    fetchable). ``fold`` picks the Lapuschkin mean image. ``fetch=False`` never downloads.
    """
    card = get_card(name, zoo, cache)
    if card.family == "levi" and fetch:
        fetch_levi(cache=cache, progress=progress)
        card = get_card(name, zoo, cache)  # the mean file may have arrived
    if weights is None:
        caffemodel = card.weights()
        if caffemodel is None:
            raise ZooError(f"model '{name}' needs its caffemodel", hint=card.weights_hint())
        if not caffemodel.is_file():
            raise ZooError(f"model '{name}': weights not in the cache", path=caffemodel, hint=card.weights_hint())
    else:
        caffemodel = Path(weights)
        if not caffemodel.exists():
            raise MissingFileError("caffemodel not found", path=caffemodel)
    warnings = list(card.warnings)
    return ResolvedModel(card=card, prototxt=card.deploy(), caffemodel=caffemodel, mean_file=card.mean_file(fold),
                         preprocessing=card.preprocessing(fold), warnings=warnings)


def load_model(
    name: str,
    *,
    weights: str | Path | None = None,
    zoo: str | Path | None = None,
    cache: str | Path | None = None,
    fold: int = 0,
    fetch: bool = True,
) -> "CaffeNet":
    """Load zoo model ``name`` as a :class:`~agegender.caffe2torch.CaffeNet` (TEST phase), fetching
    Levi's files on first use. The card is kept on ``net.card`` and the resolved files on ``net.zoo_files``."""
    from ..caffe2torch.api import load

    resolved = resolve(name, weights=weights, zoo=zoo, cache=cache, fold=fold, fetch=fetch)
    net = load(resolved.prototxt, resolved.caffemodel)
    net.card = resolved.card
    net.zoo_files = resolved
    return net


__all__ = [
    "FetchResult", "GENDER_LABELS", "LAPUSCHKIN_AGE_LABELS", "LAPUSCHKIN_MODELS", "LEVI_AGE_LABELS",
    "LEVI_MEAN_VALUES", "LEVI_MODELS", "ModelCard", "Preprocessing", "ResolvedModel", "all_cards", "cache_dir",
    "fetch_levi", "get_card", "levi_dir", "load_model", "model_names", "parse_name", "resolve", "sha256_file",
    "zoo_dir",
]
