"""Torch datasets over Caffe's data: Datum LMDBs, list files with their images, and a fold held on a device.

* :class:`LMDBDataset`: one record per item, through a :class:`~agegender.folds.transforms.CaffeTransform`
  (float32 C x h x w tensor, int label), or the stored uint8 image without a transform. Works in
  ``DataLoader`` workers: each process opens its own LMDB handle.
* :class:`ImageListDataset`: a ``relative/path label`` list and an image root, each image decoded and
  resized as ``convert_imageset`` does, then transformed.
* :func:`collate` keeps the images uint8 (4x less to move between processes than float32), and
  :class:`TransformCollate` transforms the whole batch at once in the worker.
* :class:`GPUResidentDataset`: a fold's uint8 images in one N x C x H x W tensor on a device (a GPU, or
  the CPU), cropped, mirrored and mean-subtracted there by batched index gathers: no decoding, no Python
  per image, so a GPU is never starved.

Randomness is reproducible: the item datasets draw the crop of item ``i`` from a generator seeded with
``(seed, epoch, i)`` (the same crops whatever the number of workers; call ``set_epoch`` for new ones);
:class:`GPUResidentDataset` draws from the generator given to :meth:`~GPUResidentDataset.iterate`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import AgegenderError, CaffemodelError, FileFormatError
from .lists import ImageList, OnMissing
from .lmdb_io import DatumLMDB
from .transforms import (
    CaffeTransform,
    CropParams,
    RandomSource,
    host_to_device,
    hwc_to_chw,
    load_image_bgr,
    resize_like_convert_imageset,
)

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)``."""


def _item_generator(transform: CaffeTransform | None, seed: int, epoch: int, index: int) -> np.random.Generator | None:
    """The generator of item ``index``: independent of which worker reads it, so reproducible."""
    if transform is None or not (transform.mirror or (transform.crop_size and transform.phase == "TRAIN")):
        return None
    return np.random.default_rng([seed, epoch, index])


def _to_item(image: np.ndarray, label: int, transform: CaffeTransform | None,
             generator: np.random.Generator | None, from_mat: bool = False) -> tuple[torch.Tensor, int]:
    if transform is not None:
        image = transform(image, generator, from_mat=from_mat)
    return torch.from_numpy(np.ascontiguousarray(image)), int(label)


class LMDBDataset(Dataset):
    """The records of a Caffe Datum LMDB as ``(image, label)`` items, in LMDB order (Caffe's order).

    With a ``transform``, ``image`` is its float32 C x h x w output; without, the stored C x H x W image
    (uint8, or float32 for ``float_data`` Datums), for :func:`collate` / :class:`TransformCollate` or a
    device-side transform. Encoded Datums are decoded as the transform's ``decode`` says (Caffe's
    ``force_color``/``force_gray``) unless ``decode`` is given, and transformed as Caffe transforms a
    decoded ``cv::Mat`` (``from_mat``: with a mean file, no crop and an unmirrored mean; see
    :class:`~agegender.folds.transforms.CaffeTransform`).

    The dataset can be used by ``DataLoader`` workers (fork or spawn): each process opens the LMDB
    read-only itself.
    """

    def __init__(self, lmdb: str | Path | DatumLMDB, transform: CaffeTransform | None = None, *, seed: int = 0,
                 decode: str | None = None) -> None:
        if isinstance(lmdb, DatumLMDB):
            self.db = lmdb
        else:
            self.db = DatumLMDB(lmdb, decode=decode or (transform.decode if transform is not None else "native"))
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw other random crops and mirrors (the item generators are seeded with the epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.db)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"item {index} out of range: the LMDB holds {len(self)}")
        position = int(index) % len(self)
        (_, image, label), encoded = self.db.record(position)
        return _to_item(image, label, self.transform, _item_generator(self.transform, self.seed, self.epoch, position),
                        from_mat=encoded)

    @property
    def encoded(self) -> bool:
        """Whether the first record is an encoded Datum (then give ``TransformCollate(..., from_mat=True)``)."""
        return len(self.db) > 0 and bool(self.db.datum(0).encoded)

    @property
    def labels(self) -> np.ndarray:
        """Every record's label (int64), read without decoding the images."""
        return np.fromiter((int(self.db.datum(i).label) for i in range(len(self.db))), dtype=np.int64,
                           count=len(self.db))

    def __repr__(self) -> str:
        return f"LMDBDataset({self.db!r}, {self.transform!r})"


class ImageListDataset(Dataset):
    """The images of a ``relative/path label`` list under ``root``, as ``(image, label)`` items.

    Each image is read as ``convert_imageset`` reads it (``cv::imread`` BGR, then ``cv::resize`` to
    ``resize = (height, width)`` with INTER_LINEAR; ``resize=None`` keeps the size; ``gray`` reads one
    grey channel, as ``--gray``), made C x H x W and given to ``transform`` (float32 output) or returned
    as uint8 without one. Missing images are found when the dataset is made: ``on_missing="fail"``
    raises :class:`MissingFileError` with their count and the first of them, ``"skip"`` leaves them out
    with a warning (see :meth:`ImageList.require_images`).

    ``layer`` says which Caffe input is reproduced: ``"Data"`` (default), the raw LMDB convert_imageset
    writes read by a Data layer; ``"ImageData"``, an ImageData layer reading the list itself
    (``new_height``/``new_width`` = ``resize``, ``is_color`` = not ``gray``), whose decoded images Caffe
    transforms as ``cv::Mat`` (``from_mat``; this differs with a mean file, see
    :class:`~agegender.folds.transforms.CaffeTransform`).
    """

    def __init__(self, image_list: ImageList | str | Path, root: str | Path,
                 transform: CaffeTransform | None = None, *, resize: tuple[int, int] | None = (256, 256),
                 on_missing: OnMissing = "fail", seed: int = 0, gray: bool = False,
                 layer: str = "Data") -> None:
        if layer not in ("Data", "ImageData"):
            raise AgegenderError(f"layer must be 'Data' or 'ImageData', not {layer!r}")
        images = image_list if isinstance(image_list, ImageList) else ImageList.read(image_list)
        self.root = Path(root)
        self.list = images.require_images(self.root, on_missing)
        self.skipped = len(images) - len(self.list)
        self.transform = transform
        self.resize = None if resize is None else (int(resize[0]), int(resize[1]))
        self.gray = bool(gray)
        self.layer = layer
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw other random crops and mirrors (the item generators are seeded with the epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.list)

    def load(self, index: int) -> np.ndarray:
        """Image ``index`` as stored by ``convert_imageset``: C x H x W uint8 BGR, resized."""
        entry = self.list[index]
        try:
            image = load_image_bgr(self.root / entry.path, is_color=not self.gray)
        except AgegenderError as exc:
            where = f" (line {entry.line} of {self.list.source})" if entry.line and self.list.source else ""
            raise type(exc)(exc.message + where, path=exc.path, hint=exc.hint) from None
        if self.resize is not None:
            image = resize_like_convert_imageset(image, *self.resize)
        return hwc_to_chw(image)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"item {index} out of range: the list holds {len(self)} images")
        position = int(index) % len(self)
        image = self.load(position)
        label = int(self.list.labels[position])
        return _to_item(image, label, self.transform, _item_generator(self.transform, self.seed, self.epoch, position),
                        from_mat=self.layer == "ImageData")

    def __repr__(self) -> str:
        return f"ImageListDataset({len(self)} images under {str(self.root)!r}, {self.transform!r})"


# --- batching -----------------------------------------------------------------------------------------
def collate(batch: Sequence[tuple[Any, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(image, label)`` items into an N x C x H x W tensor of the items' dtype (uint8 images stay
    uint8 until the transform) and an int64 label tensor. Images of different sizes are an error."""
    if not batch:
        raise AgegenderError("cannot collate an empty batch")
    images = [torch.as_tensor(image) for image, _ in batch]
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) > 1:
        raise AgegenderError(
            f"the images of one batch differ in size: {', '.join(map(str, sorted(shapes)))}",
            hint="store them resized (e.g. --resize 256) or give a transform with a crop",
        )
    labels = torch.tensor([int(label) for _, label in batch], dtype=torch.int64)
    return torch.stack(images), labels


class TransformCollate:
    """A ``collate_fn`` that stacks uint8 items (:func:`collate`) and runs ``transform`` once on the whole
    batch, in the worker that made it.

    Random choices come from a generator seeded with ``(seed, worker seed)``; a DataLoader gives each
    worker the seed ``base_seed + worker_id``, so seed the loader (``generator=``) for reproducible runs.
    ``from_mat``: the items are decoded images (an LMDB of encoded Datums, an ImageData list), which
    Caffe transforms as ``cv::Mat`` (see :class:`~agegender.folds.transforms.CaffeTransform`).
    """

    def __init__(self, transform: CaffeTransform, seed: int = 0, *, from_mat: bool = False) -> None:
        self.transform = transform
        self.seed = int(seed)
        self.from_mat = bool(from_mat)
        self._rng: np.random.Generator | None = None
        self._pid = -1

    def _generator(self) -> np.random.Generator:
        if self._rng is None or self._pid != os.getpid():
            info = torch.utils.data.get_worker_info()
            worker_seed = info.seed if info is not None else torch.initial_seed()
            self._rng = np.random.default_rng([self.seed, int(worker_seed) % (1 << 63)])
            self._pid = os.getpid()
        return self._rng

    def __call__(self, batch: Sequence[tuple[Any, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = collate(batch)
        return torch.from_numpy(self.transform(images.numpy(), self._generator(), from_mat=self.from_mat)), labels

    def __getstate__(self) -> dict:
        return {"transform": self.transform, "seed": self.seed, "from_mat": self.from_mat}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["transform"], state["seed"], from_mat=state.get("from_mat", False))  # type: ignore[misc]


# --- device-resident ----------------------------------------------------------------------------------
class ResidentBatch(NamedTuple):
    """One batch of :class:`GPUResidentDataset`: the transformed images and labels (on the device), which
    samples they are (``indices``, int64, CPU) and the offsets and mirror flags used (``params``)."""

    images: torch.Tensor
    labels: torch.Tensor
    indices: np.ndarray
    params: CropParams


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _permutation(count: int, generator: RandomSource) -> np.ndarray:
    if generator is None:
        generator = np.random.default_rng()
    if isinstance(generator, np.random.Generator):
        return generator.permutation(count).astype(np.int64)
    if isinstance(generator, torch.Generator):
        return torch.randperm(count, generator=generator, device=generator.device).cpu().numpy().astype(np.int64)
    raise AgegenderError(f"expected a numpy or torch random Generator, not {type(generator).__name__}")


def _allocate(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    try:
        return torch.empty(shape, dtype=dtype, device=device)
    except (RuntimeError, MemoryError) as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError
        size = int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size() / (1 << 30)
        raise AgegenderError(f"{size:.2f} GiB of images do not fit on {device}: {str(exc).splitlines()[0]}",
                             hint="use a smaller fold, another device, or LMDBDataset with a DataLoader") from None


class GPUResidentDataset:
    """A fold's images held on a device as one uint8 N x C x H x W tensor (e.g. 256 x 256 Adience
    faces: 192 KiB each, about 2.3 GiB for 12k), transformed there in batches.

    Each batch is one index gather of the crops (mirrored ones with reversed column indices), one mean
    gather and float32 arithmetic on the device: exactly :class:`CaffeTransform` (the same values as
    its numpy path, given the same offsets and mirror flags; see :meth:`batch`). Any torch device works;
    ``device=None`` takes CUDA when available.
    """

    def __init__(self, images: torch.Tensor | np.ndarray, labels: Sequence[int] | np.ndarray | torch.Tensor,
                 transform: CaffeTransform, device: str | torch.device | None = None) -> None:
        self.device = torch.device(device) if device is not None else _default_device()
        images_t = torch.as_tensor(images)
        if images_t.dtype != torch.uint8 or images_t.ndim != 4:
            raise AgegenderError(f"expected uint8 N x C x H x W images, got {images_t.dtype} of shape "
                                 f"{tuple(images_t.shape)}")
        labels_np = np.asarray(torch.as_tensor(labels).cpu().numpy(), dtype=np.int64).reshape(-1)
        if labels_np.shape[0] != images_t.shape[0]:
            raise AgegenderError(f"{images_t.shape[0]} images but {labels_np.shape[0]} labels")
        transform.check_input(*images_t.shape[1:])
        self.images = images_t.to(self.device)
        self.labels = torch.from_numpy(labels_np).to(self.device)
        self.transform = transform

    @classmethod
    def from_lmdb(cls, path: str | Path, transform: CaffeTransform, device: str | torch.device | None = None, *,
                  progress: ProgressCallback | None = None, chunk: int = 1024) -> "GPUResidentDataset":
        """Load every record of a Datum LMDB (uint8 images, all of one size) onto ``device``, ``chunk``
        records at a time through a host buffer (the whole fold is never held twice on the host)."""
        device = torch.device(device) if device is not None else _default_device()
        with DatumLMDB(path, decode=transform.decode) as db:
            total = len(db)
            if total == 0:
                raise FileFormatError("the LMDB holds no records", path=db.path)
            first_key, first, _ = db[0]
            shape = first.shape
            if first.dtype != np.uint8:
                raise CaffemodelError(f"record '{first_key}' holds float_data: a resident fold needs uint8 images",
                                      path=db.path)
            transform.check_input(*shape)
            images = _allocate((total, *shape), torch.uint8, device)
            labels = np.empty(total, dtype=np.int64)
            buffer = np.empty((min(chunk, total), *shape), dtype=np.uint8)
            start = 0
            for index, (key, image, label) in enumerate(db):
                if image.shape != shape or image.dtype != np.uint8:
                    raise CaffemodelError(
                        f"record '{key}' is a {image.dtype} image of {' x '.join(map(str, image.shape))}, the first "
                        f"('{first_key}') uint8 of {' x '.join(map(str, shape))}: a resident fold needs one size",
                        path=db.path, hint="write the LMDB with a resize",
                    )
                buffer[index - start] = image
                labels[index] = label
                if index + 1 - start == buffer.shape[0] or index + 1 == total:
                    count = index + 1 - start
                    images[start:index + 1].copy_(torch.from_numpy(buffer[:count]))
                    start = index + 1
                if progress:
                    progress(index + 1, total)
        dataset = cls.__new__(cls)
        dataset.device, dataset.images, dataset.transform = device, images, transform
        dataset.labels = torch.from_numpy(labels).to(device)
        log.info("%s: %d images (%.2f GiB) on %s", path, total, dataset.nbytes / (1 << 30), device)
        return dataset

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes the images take on the device."""
        return self.images.numel() * self.images.element_size()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """C x H x W of the stored images."""
        return tuple(int(d) for d in self.images.shape[1:])  # type: ignore[return-value]

    def batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor, params: CropParams | None = None,
              generator: RandomSource = None) -> ResidentBatch:
        """The samples at ``indices``, transformed on the device with ``params`` (offsets and mirror
        flags; drawn from ``generator`` by the transform's rules when not given). ``indices`` may be a tensor
        on any device (a GPU one is read back first: one synchronisation)."""
        if isinstance(indices, torch.Tensor):
            indices = indices.detach().cpu().numpy()
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"sample indices out of range: the dataset holds {len(self)}")
        _, height, width = self.image_shape
        if params is None:
            params = self.transform.sample_params(indices.size, height, width, generator)
        images = self.transform.apply_indexed(self.images, indices, params)
        labels = self.labels[host_to_device(indices, self.device)]
        return ResidentBatch(images, labels, indices, params)

    def iterate(self, batch_size: int, shuffle: bool = False, generator: RandomSource = None, *,
                drop_last: bool = False) -> Iterator[ResidentBatch]:
        """Batches of ``batch_size`` over the whole dataset (a random order with ``shuffle``), crops and
        mirrors drawn from ``generator`` (a seeded numpy or torch Generator makes the run reproducible)."""
        if batch_size <= 0:
            raise AgegenderError(f"batch_size must be positive, not {batch_size}")
        if shuffle and generator is None:
            generator = np.random.default_rng()
        order = _permutation(len(self), generator) if shuffle else np.arange(len(self), dtype=np.int64)
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        for start in range(0, stop, batch_size):
            yield self.batch(order[start:start + batch_size], generator=generator)

    def __repr__(self) -> str:
        return f"GPUResidentDataset({len(self)} images of {' x '.join(map(str, self.image_shape))} on {self.device}, " \
               f"{self.transform!r})"


__all__ = [
    "GPUResidentDataset", "ImageListDataset", "LMDBDataset", "ResidentBatch", "TransformCollate", "collate",
]
