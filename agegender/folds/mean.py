"""The mean that Caffe's DataTransformer subtracts from every input: a mean image or per-channel values.

A ``transform_param`` gives either a ``mean_file`` (a ``.binaryproto`` holding one 1 x C x H x W or
C x H x W blob, e.g. the 3 x 256 x 256 Adience fold means) or ``mean_value`` entries (one per channel,
or a single one for all channels). Caffe subtracts the mean image *at the crop offset*:
``data[c, y, x] = image[c, h_off + y, w_off + x] - mean[c, h_off + y, w_off + x]``, and a per-channel
value everywhere. :class:`MeanImage` holds either kind and gives the part of it that a crop needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import MeanFileError
from ..prototxt.files import read_blobproto


class MeanImage:
    """A mean to subtract from C x H x W inputs: a per-pixel image or one value per channel.

    Build it with :meth:`from_binaryproto` or :meth:`from_values`. ``values`` is float32, C x H x W for
    an image and C x 1 x 1 for per-channel values (a single value applies to every channel, as in Caffe).
    ``blob_shape`` is the shape the ``.binaryproto`` declared (None when not read from one): Caffe's
    DataTransformer reads it with the legacy accessors (:meth:`caffe_chw`).
    """

    def __init__(self, values: np.ndarray, *, per_channel: bool, source: str | None = None,
                 blob_shape: tuple[int, ...] | None = None) -> None:
        values = np.array(values, dtype=np.float32)  # our own copy, frozen below
        if values.ndim != 3 or (per_channel and values.shape[1:] != (1, 1)):
            raise ValueError(f"expected C x H x W (or C x 1 x 1 per-channel) values, got shape {values.shape}")
        values.setflags(write=False)  # shared by every crop: nobody may change it by accident
        self.values = values
        self.per_channel = per_channel
        self.source = source
        self.blob_shape = None if blob_shape is None else tuple(int(d) for d in blob_shape)

    # --- construction -----------------------------------------------------------------------------
    @classmethod
    def from_binaryproto(cls, path: str | Path) -> "MeanImage":
        """Read a mean image from a ``.binaryproto`` (1 x C x H x W or C x H x W) as float32 C x H x W."""
        array = read_blobproto(path)
        shape = list(array.shape)
        if array.ndim == 4 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 3 or 0 in array.shape:
            raise MeanFileError(
                f"the mean file holds a blob of shape {shape}; expected one image, 1 x C x H x W or C x H x W",
                path=path,
            )
        _check_finite(array, path)
        return cls(array, per_channel=False, source=str(path), blob_shape=tuple(shape))

    @classmethod
    def from_values(cls, values: Sequence[float]) -> "MeanImage":
        """Per-channel mean values in channel order (BGR for Caffe's images), e.g. ``[104, 117, 123]``.

        A single value is subtracted from every channel, as Caffe does with one ``mean_value``.
        """
        array = np.asarray(values, dtype=np.float32).reshape(-1)
        if array.size == 0:
            raise MeanFileError("no mean values given: give one per channel, or one for all channels")
        _check_finite(array, None)
        return cls(array.reshape(-1, 1, 1), per_channel=True)

    # --- what it is -------------------------------------------------------------------------------
    @property
    def channels(self) -> int:
        """The number of channels the mean has values for (1 for a single all-channel value)."""
        return int(self.values.shape[0])

    @property
    def size(self) -> tuple[int, int] | None:
        """(height, width) of a mean image; None for per-channel values (they fit any size)."""
        return None if self.per_channel else (int(self.values.shape[1]), int(self.values.shape[2]))

    def caffe_chw(self) -> tuple[int, int, int]:
        """(channels, height, width) as Caffe's DataTransformer sees the mean file's blob: its legacy
        accessors ``channels()``, ``height()``, ``width()`` are axes 1, 2, 3, an axis the blob lacks counting
        as 1. A 1 x C x H x W blob (compute_image_mean's) gives C x H x W; a 3-axis C x H x W BlobShape
        (pycaffe's ``array_to_blobproto`` of a 3-D array) gives H x W x 1, which no image matches.
        Per-channel values and means not read from a file give their own C x H x W."""
        shape = self.blob_shape
        if self.per_channel or shape is None or len(shape) == 4:
            return tuple(int(d) for d in self.values.shape)  # type: ignore[return-value]
        legacy = [shape[axis] if axis < len(shape) else 1 for axis in (1, 2, 3)]
        return legacy[0], legacy[1], legacy[2]

    def channel_means(self) -> np.ndarray:
        """The mean of each channel (float64), e.g. to print or to compare with per-channel values."""
        return self.values.mean(axis=(1, 2), dtype=np.float64)

    def describe(self) -> str:
        """A short human description: ``"3 x 256 x 256 mean image"`` or ``"per-channel mean [104, ...]"``."""
        if self.per_channel:
            return "per-channel mean [" + ", ".join(f"{v:g}" for v in self.values.reshape(-1)) + "]"
        return " x ".join(str(d) for d in self.values.shape) + " mean image"

    # --- use --------------------------------------------------------------------------------------
    def check_for_input(self, channels: int, crop_h: int, crop_w: int, path: str | Path | None = None) -> None:
        """Refuse (with :class:`MeanFileError`) a mean that cannot serve ``channels`` x ``crop_h`` x ``crop_w``
        inputs: other channels, or a mean image smaller than the crop. ``path`` is the file to point at
        (e.g. the net prototxt); the mean's own file is named in the message."""
        where = path if path is not None else self.source
        origin = f" (from {self.source})" if self.source and path is not None else ""
        if not (self.per_channel and self.channels == 1) and self.channels != channels:
            raise MeanFileError(
                f"the {self.describe()}{origin} has {self.channels} channel(s) but the net's input has {channels}",
                path=where,
            )
        if self.per_channel:
            return
        height, width = self.size  # type: ignore[misc]
        if height < crop_h or width < crop_w:
            raise MeanFileError(
                f"the {self.describe()}{origin} is {height} x {width}, smaller than the {crop_h} x {crop_w} "
                "crop the net's input needs",
                path=where, hint="use the mean image computed on the stored (resized) images, e.g. 256 x 256",
            )

    def crop(self, h_off: int, w_off: int, h: int, w: int) -> np.ndarray:
        """The mean for the crop at (``h_off``, ``w_off``) of size ``h`` x ``w``: C x h x w float32.

        For a mean image this is ``mean[:, h_off:h_off + h, w_off:w_off + w]`` (refused when it does
        not fit); per-channel values are broadcast to the crop's size. The result is a new array.
        """
        if min(h_off, w_off) < 0 or min(h, w) <= 0:
            raise MeanFileError(f"bad crop: offset ({h_off}, {w_off}) and size {h} x {w} must be non-negative "
                                "and positive", path=self.source)
        if self.per_channel:
            return np.broadcast_to(self.values, (self.channels, h, w)).copy()
        height, width = self.size  # type: ignore[misc]
        if h_off + h > height or w_off + w > width:
            raise MeanFileError(
                f"a {h} x {w} crop at offset ({h_off}, {w_off}) does not fit in the {self.describe()}",
                path=self.source,
            )
        return self.values[:, h_off : h_off + h, w_off : w_off + w].copy()

    def __repr__(self) -> str:
        source = f", source={self.source!r}" if self.source else ""
        return f"MeanImage({self.describe()}{source})"


def _check_finite(array: np.ndarray, path: str | Path | None) -> None:
    if not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise MeanFileError(f"the mean holds {bad} NaN or infinite value(s)", path=path)


__all__ = ["MeanImage"]
