"""Training data as Caffe's Data layer feeds it, held on the training device.

A split (an LMDB, or a ``path label`` list with its image folder) is loaded once into a
:class:`~agegender.folds.GPUResidentDataset` (uint8 N x C x H x W on the device, the GPU or the CPU);
each batch is then one gather there with the data layer's ``transform_param`` (random crop and mirror in
TRAIN, centre crop in TEST, minus the mean at the crop offset).

Which records a batch holds, :class:`BatchPlan`: Caffe's Data layer reads the LMDB sequentially in key
order, ``batch_size`` records per forward pass, wrapping around at the end. Here iteration ``it``'s
``iter_size`` passes on ``world_size`` processes read, for pass ``j`` on rank ``r``, the records
``position + (j * world_size + r) * batch_size + [0, batch_size)`` modulo the count, with
``position = it * iter_size * world_size * batch_size`` (so two processes of batch B read what one
process with ``iter_size`` 2 reads). ``shuffle=True`` reads a seeded permutation of the records per epoch
instead. The random crops and mirrors of a pass are drawn from a generator seeded with ``(seed,
iteration, pass)``: the data of an iteration is a pure function of the iteration, so a run resumed from a
checkpoint reads exactly what the uninterrupted run read.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..errors import AgegenderError, FileFormatError
from ..folds.datasets import GPUResidentDataset, ImageListDataset
from ..folds.lists import ImageList, OnMissing
from ..folds.lmdb_io import DatumLMDB
from ..folds.transforms import CaffeTransform, CropParams

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]

_STREAM_CROPS = 1
_STREAM_ORDER = 2


@dataclass(frozen=True)
class SplitSource:
    """Where a split's images come from: an LMDB, or a list file with the folder its paths are under."""

    lmdb: Path | None = None
    image_list: Path | None = None
    images: Path | None = None
    resize: int = 256

    def __post_init__(self) -> None:
        if (self.lmdb is None) == (self.image_list is None):
            raise AgegenderError("a split is an LMDB or an image list, not both or neither")
        if self.image_list is not None and self.images is None:
            raise AgegenderError("an image list needs the folder its paths are relative to", path=self.image_list)

    def describe(self) -> str:
        if self.lmdb is not None:
            return f"LMDB {self.lmdb}"
        return f"list {self.image_list} (images under {self.images}, resized to {self.resize}x{self.resize})"

    def count(self) -> int:
        """How many records the split holds (without loading the images)."""
        if self.lmdb is not None:
            with DatumLMDB(self.lmdb) as db:
                return len(db)
        return len(ImageList.read(self.image_list))  # type: ignore[arg-type]

    def as_dict(self) -> dict:
        return {"lmdb": str(self.lmdb) if self.lmdb else None,
                "list": str(self.image_list) if self.image_list else None,
                "images": str(self.images) if self.images else None, "resize": self.resize}


def load_list_images(image_list: ImageList | str | Path, root: str | Path, resize: int = 256, *,
                     on_missing: OnMissing = "fail", progress: ProgressCallback | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Every image of a ``path label`` list as ``convert_imageset --resize_height/width=resize`` stores it:
    a uint8 N x C x H x W BGR array, and the int64 labels."""
    dataset = ImageListDataset(image_list, root, None, resize=(resize, resize) if resize else None,
                               on_missing=on_missing)
    if len(dataset) == 0:
        raise FileFormatError("the image list holds no images", path=getattr(image_list, "source", image_list))
    first = dataset.load(0)
    images = np.empty((len(dataset), *first.shape), dtype=np.uint8)
    images[0] = first
    for index in range(1, len(dataset)):
        image = dataset.load(index)
        if image.shape != first.shape:
            raise FileFormatError(f"image {dataset.list.paths[index]} is {image.shape}, the first {first.shape}",
                                  path=dataset.list.source, hint="give a resize")
        images[index] = image
        if progress:
            progress(index + 1, len(dataset))
    return images, np.array(dataset.list.labels, dtype=np.int64)  # a writable copy (the list's is read-only)


def load_split(source: SplitSource, transform: CaffeTransform, device: str | torch.device, *,
               progress: ProgressCallback | None = None, on_missing: OnMissing = "fail") -> GPUResidentDataset:
    """A split on ``device``, transformed there by ``transform``."""
    if source.lmdb is not None:
        return GPUResidentDataset.from_lmdb(source.lmdb, transform, device, progress=progress)
    images, labels = load_list_images(source.image_list, source.images, source.resize,  # type: ignore[arg-type]
                                      on_missing=on_missing, progress=progress)
    return GPUResidentDataset(images, labels, transform, device)


def eval_images(source: SplitSource, *, on_missing: OnMissing = "fail"
                ) -> str | tuple[np.ndarray, np.ndarray]:
    """What :func:`agegender.evaluation.evaluate` takes for a split: the LMDB's path, or the list's
    images as a (uint8 N x C x H x W array, labels) pair."""
    if source.lmdb is not None:
        return str(source.lmdb)
    return load_list_images(source.image_list, source.images, source.resize, on_missing=on_missing)  # type: ignore


# --- which records, which crops -----------------------------------------------------------------------
class BatchPlan:
    """The records and random choices of every forward pass of a run (see the module docstring)."""

    def __init__(self, count: int, batch_size: int, *, iter_size: int = 1, world_size: int = 1, rank: int = 0,
                 seed: int = 0, shuffle: bool = False) -> None:
        if count <= 0:
            raise AgegenderError("the training split holds no images")
        if batch_size <= 0 or iter_size <= 0 or world_size <= 0 or not 0 <= rank < world_size:
            raise AgegenderError(f"bad batch plan: batch {batch_size}, iter_size {iter_size}, rank {rank} of "
                                 f"{world_size}")
        self.count, self.batch_size, self.iter_size = int(count), int(batch_size), int(iter_size)
        self.world_size, self.rank, self.seed, self.shuffle = int(world_size), int(rank), int(seed), bool(shuffle)
        self._orders: dict[int, np.ndarray] = {}

    @property
    def records_per_iteration(self) -> int:
        """Records all processes read in one iteration (``batch_size * iter_size * world_size``)."""
        return self.batch_size * self.iter_size * self.world_size

    def position(self, iteration: int) -> int:
        """Records read before ``iteration`` (the data layer's cursor, counting wrap-arounds)."""
        return int(iteration) * self.records_per_iteration

    def epoch(self, iteration: int) -> float:
        """Passes over the split completed before ``iteration``."""
        return self.position(iteration) / self.count

    def pass_index(self, sub: int, rank: int | None = None) -> int:
        """The global index of pass ``sub`` of ``rank`` within an iteration."""
        return int(sub) * self.world_size + (self.rank if rank is None else int(rank))

    def _order(self, epoch: int) -> np.ndarray:
        order = self._orders.get(epoch)
        if order is None:
            order = np.random.default_rng([self.seed, _STREAM_ORDER, epoch]).permutation(self.count).astype(np.int64)
            if len(self._orders) > 2:
                self._orders.pop(min(self._orders))
            self._orders[epoch] = order
        return order

    def records(self, iteration: int, sub: int = 0, rank: int | None = None) -> np.ndarray:
        """The record indices of pass ``sub`` of ``iteration`` on ``rank`` (default: this plan's rank)."""
        start = self.position(iteration) + self.pass_index(sub, rank) * self.batch_size
        positions = start + np.arange(self.batch_size, dtype=np.int64)
        if not self.shuffle:
            return positions % self.count
        epochs, within = positions // self.count, positions % self.count
        out = np.empty_like(positions)
        for epoch in np.unique(epochs):
            mask = epochs == epoch
            out[mask] = self._order(int(epoch))[within[mask]]
        return out

    def crop_params(self, transform: CaffeTransform, height: int, width: int, iteration: int, sub: int = 0,
                    rank: int | None = None) -> CropParams:
        """The crop offsets and mirror flags of that pass."""
        generator = np.random.default_rng([self.seed, _STREAM_CROPS, int(iteration), self.pass_index(sub, rank)])
        return transform.sample_params(self.batch_size, height, width, generator)

    def state_dict(self, iteration: int) -> dict:
        """The data position at ``iteration``, for a checkpoint."""
        return {"count": self.count, "batch_size": self.batch_size, "iter_size": self.iter_size,
                "world_size": self.world_size, "seed": self.seed, "shuffle": self.shuffle,
                "position": self.position(iteration), "epoch": self.epoch(iteration)}

    def check_resumable(self, state: dict, iteration: int) -> list[str]:
        """What differs between this plan and a checkpoint's (empty when the resumed run reads exactly what
        the interrupted run would have read)."""
        mine = self.state_dict(iteration)
        return [f"{key}: checkpoint {state.get(key)!r}, now {mine[key]!r}"
                for key in ("count", "batch_size", "iter_size", "world_size", "seed", "shuffle", "position")
                if state.get(key) != mine[key]]


class TrainBatches:
    """The batches of a run: a resident split and a :class:`BatchPlan`."""

    def __init__(self, dataset: GPUResidentDataset, plan: BatchPlan) -> None:
        if len(dataset) != plan.count:
            raise AgegenderError(f"the plan is for {plan.count} records, the split holds {len(dataset)}")
        self.dataset, self.plan = dataset, plan

    def batch(self, iteration: int, sub: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (float32 N x C x h x w on the device) and labels (int64) of pass ``sub`` of ``iteration``."""
        _, height, width = self.dataset.image_shape
        indices = self.plan.records(iteration, sub)
        params = self.plan.crop_params(self.dataset.transform, height, width, iteration, sub)
        out = self.dataset.batch(indices, params)
        return out.images, out.labels

    def output_shape(self) -> tuple[int, int, int]:
        """C x h x w of one transformed image."""
        return self.dataset.transform.output_shape(*self.dataset.image_shape)


def validation_batches(dataset: GPUResidentDataset, batch_size: int, test_iter: int, test_pass: int
                       ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The ``test_iter`` batches of validation pass ``test_pass``: Caffe's TEST data layer keeps reading
    sequentially from where the previous test stopped, wrapping around. Made one at a time, as they are
    consumed (all of them at once would hold test_iter x batch float32 crops on the device: gigabytes for
    VGG16's 224 x 224 crops)."""
    _, height, width = dataset.image_shape
    for k in range(test_iter):
        start = (test_pass * test_iter + k) * batch_size
        indices = (start + np.arange(batch_size, dtype=np.int64)) % len(dataset)
        params = dataset.transform.sample_params(batch_size, height, width, np.random.default_rng([test_pass, k]))
        batch = dataset.batch(indices, params)
        yield batch.images, batch.labels


# --- labels from ages -----------------------------------------------------------------------------------
_GROUP = re.compile(r"^\s*\(\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*\)\s*$")


def age_group_index(age: float, groups: Sequence[str]) -> int | None:
    """The index of the age group ``"(low, high)"`` holding ``age`` (bounds included), or None when the age
    falls between groups (e.g. 3, 14 or 35 for Adience's groups)."""
    for index, name in enumerate(groups):
        match = _GROUP.match(str(name))
        if not match:
            raise AgegenderError(f"age group {name!r} is not of the form '(low, high)'")
        if float(match.group(1)) <= float(age) <= float(match.group(2)):
            return index
    return None


def age_group_list(paths: Sequence[str], ages: Sequence[float], groups: Sequence[str]) -> ImageList:
    """A ``path label`` list of the faces whose age lies inside one of ``groups`` (label = that group's
    index); faces aged between groups are left out."""
    pairs = []
    for path, age in zip(paths, ages):
        index = age_group_index(float(age), groups)
        if index is not None:
            pairs.append((str(path), index))
    return ImageList.from_pairs(pairs)


__all__ = ["BatchPlan", "SplitSource", "TrainBatches", "age_group_index", "age_group_list", "eval_images",
           "load_list_images", "load_split", "validation_batches"]
