"""Caffe's image preprocessing, reproduced exactly (bytes and float32 values, not approximately).

The path real Caffe takes for the Adience nets:

1. ``convert_imageset --resize_height=256 --resize_width=256``: ``cv::imread(file, IMREAD_COLOR)`` (BGR),
   ``cv::resize(img, Size(256, 256))`` (INTER_LINEAR), stored as a C x H x W uint8 Datum
   (:func:`load_image_bgr`, :func:`resize_like_convert_imageset`, :func:`hwc_to_chw`);
2. the Data layer in TEST phase: a center crop with the mean image subtracted *at the crop offset*,
   in float32 (:func:`center_crop_minus_mean`);
3. or, for over-sampling, the four corner crops and the center crop, each also mirrored
   (:func:`oversample_offsets`, :func:`oversample_minus_mean`).

Images are numpy arrays: H x W x 3 uint8 BGR as OpenCV gives them, C x H x W (or N x C x H x W)
once in Caffe's layout.

:class:`CaffeTransform` is the whole of Caffe's ``DataTransformer`` (``transform_param``) for batches of
numpy arrays or torch tensors on any device: crop (center in TEST, random in TRAIN), mirror, a mean image
or per-channel mean values, ``scale``, and ten-crop over-sampling.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple, Sequence, Union

import numpy as np

from ..errors import AgegenderError, FileFormatError, MeanFileError, MissingFileError, NetDefinitionError
from .mean import MeanImage

_LOG = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch

    from ..prototxt.message import Message


def load_image_bgr(path: str | Path, *, is_color: bool = True) -> np.ndarray:
    """Decode an image file as Caffe's ``ReadImageToCVMat`` does: ``cv::imread(IMREAD_COLOR)`` gives
    H x W x 3 uint8 BGR (grey images expanded to three channels, alpha dropped, 16-bit scaled to 8);
    with ``is_color=False`` (``convert_imageset --gray``, ImageData's ``is_color: false``)
    ``cv::imread(IMREAD_GRAYSCALE)`` gives H x W uint8. Both apply the file's EXIF orientation, as
    OpenCV's imread does for these flags."""
    import cv2

    path = Path(path)
    if not path.exists():
        raise MissingFileError("image not found", path=path)
    if not path.is_file():
        raise FileFormatError("expected an image file, found a folder", path=path)
    if not os.access(path, os.R_OK):
        raise MissingFileError("image is not readable (permissions)", path=path)
    # imread, not imdecode: it is what Caffe calls (and it applies EXIF orientation the same way)
    image = cv2.imread(str(path), cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise FileFormatError("not an image OpenCV can decode (JPEG, PNG, BMP, ...)", path=path)
    return image


def resize_like_convert_imageset(image: np.ndarray, height: int = 256, width: int = 256) -> np.ndarray:
    """Resize as ``convert_imageset --resize_height/--resize_width`` does: ``cv::resize`` with the
    default INTER_LINEAR, only when both sizes are positive (otherwise the image is kept)."""
    import cv2

    if height <= 0 or width <= 0:
        return image
    if image.shape[0] == height and image.shape[1] == width:
        return image  # cv::resize to the same size copies the pixels unchanged
    return cv2.resize(image, (int(width), int(height)), interpolation=cv2.INTER_LINEAR)


def hwc_to_chw(image: np.ndarray) -> np.ndarray:
    """H x W x C (OpenCV) to C x H x W (Caffe's Datum and blob layout); also N x H x W x C batches and
    one-channel H x W images (OpenCV's grey ``cv::Mat``), which become 1 x H x W as ``CVMatToDatum`` stores them."""
    if image.ndim == 2:
        return np.ascontiguousarray(image[np.newaxis])
    if image.ndim == 3:
        return np.ascontiguousarray(image.transpose(2, 0, 1))
    if image.ndim == 4:
        return np.ascontiguousarray(image.transpose(0, 3, 1, 2))
    raise ValueError(f"expected an H x W x C image or a batch of them, got shape {image.shape}")


def _mean_chw(mean: np.ndarray, image_shape: tuple[int, ...]) -> np.ndarray:
    """The mean image as C x H x W float32, checked against the images' C x H x W."""
    mean = np.asarray(mean, dtype=np.float32)
    if mean.ndim == 4 and mean.shape[0] == 1:
        mean = mean[0]  # a binaryproto holds 1 x C x H x W
    if mean.shape != tuple(image_shape):
        raise MeanFileError(
            f"the mean image is {list(mean.shape)} but the images are {list(image_shape)} (C x H x W)",
            hint="Caffe subtracts a mean_file of the stored image size, before cropping",
        )
    return mean


def _check_crop(height: int, width: int, crop: int) -> None:
    if not 0 < crop <= min(height, width):
        raise ValueError(f"crop {crop} does not fit images of {height} x {width}")


def center_crop_minus_mean(images_chw: np.ndarray, mean_chw: np.ndarray, crop: int) -> np.ndarray:
    """Caffe's TEST-phase DataTransformer: the ``crop`` x ``crop`` center crop at
    ``h_off = (H - crop) // 2``, ``w_off = (W - crop) // 2`` minus the mean image *at the same
    offset*, as float32.

    ``images_chw`` is one C x H x W image or an N x C x H x W batch (uint8 or float); ``mean_chw`` is
    C x H x W (or the 1 x C x H x W of a binaryproto), the size of the uncropped images.
    """
    images = np.asarray(images_chw)
    if images.ndim not in (3, 4):
        raise ValueError(f"expected C x H x W or N x C x H x W, got shape {images.shape}")
    height, width = images.shape[-2:]
    _check_crop(height, width, crop)
    mean = _mean_chw(mean_chw, images.shape[-3:])
    h_off, w_off = (height - crop) // 2, (width - crop) // 2
    window = (Ellipsis, slice(h_off, h_off + crop), slice(w_off, w_off + crop))
    return images[window].astype(np.float32) - mean[window]


def oversample_offsets(height: int, width: int, crop: int) -> np.ndarray:
    """The ten crops of Caffe's over-sampling, as rows ``(h_off, w_off, mirror)`` (int64, 10 x 3):
    the corners (0,0), (0,W-c), (H-c,0), (H-c,W-c), the center ((H-c)//2, (W-c)//2), then the same
    five mirrored."""
    _check_crop(height, width, crop)
    dh, dw = height - crop, width - crop
    five = np.array([[0, 0], [0, dw], [dh, 0], [dh, dw], [dh // 2, dw // 2]], dtype=np.int64)
    offsets = np.concatenate([five, five])
    mirror = np.repeat(np.array([0, 1], dtype=np.int64), 5)[:, None]
    return np.concatenate([offsets, mirror], axis=1)


def oversample_minus_mean(images_chw: np.ndarray, mean_chw: np.ndarray, crop: int) -> np.ndarray:
    """The ten crops of :func:`oversample_offsets` minus the mean at each crop's offset, float32.

    One C x H x W image gives 10 x C x crop x crop; an N x C x H x W batch gives N x 10 x C x crop x
    crop. A mirrored crop is the plain crop flipped left-right: ``out[c, y, x] = img[c, h+y, w+crop-1-x]
    - mean[c, h+y, w+crop-1-x]``, as Caffe's DataTransformer mirrors.
    """
    images = np.asarray(images_chw)
    single = images.ndim == 3
    if single:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"expected C x H x W or N x C x H x W, got shape {images.shape}")
    height, width = images.shape[-2:]
    mean = _mean_chw(mean_chw, images.shape[-3:])
    offsets = oversample_offsets(height, width, crop)
    diff = images.astype(np.float32) - mean  # subtract once on the full image: identical per pixel
    crops = np.stack([diff[..., h:h + crop, w:w + crop] for h, w, _ in offsets], axis=1)
    mirrored = offsets[:, 2].astype(bool)
    crops[:, mirrored] = crops[:, mirrored, ..., ::-1]
    return crops[0] if single else crops


# --- Caffe's DataTransformer ------------------------------------------------------------------------
PHASES: tuple[str, ...] = ("TRAIN", "TEST")
DECODE_MODES: tuple[str, ...] = ("native", "color", "gray")
DATA_LAYER_TYPES: tuple[str, ...] = ("Data", "ImageData", "WindowData", "MemoryData", "AnnotatedData")
_NUMPY_CHUNK = 4  # samples transformed together on the CPU

RandomSource = Union[np.random.Generator, "torch.Generator", None]
"""Where random crops and mirrors come from: a numpy ``Generator``, a ``torch.Generator`` (any device;
draws are brought to the CPU) or None (fresh OS entropy, not reproducible)."""


class CropParams(NamedTuple):
    """The per-sample choices of a transform: crop offsets and mirror flags, numpy arrays of length N.

    ``h_off``/``w_off`` (int64) are the top-left corner of each crop in the stored image; ``mirror``
    (bool) flips the crop left-right as Caffe does. Give them back to :meth:`CaffeTransform.apply` to
    repeat a transform exactly (e.g. on another device).
    """

    h_off: np.ndarray
    w_off: np.ndarray
    mirror: np.ndarray

    @property
    def count(self) -> int:
        """How many samples the parameters are for."""
        return int(self.h_off.shape[0])

    def take(self, indices: Sequence[int] | np.ndarray) -> "CropParams":
        """The parameters of the samples at ``indices``."""
        indices = np.asarray(indices, dtype=np.int64)
        return CropParams(self.h_off[indices], self.w_off[indices], self.mirror[indices])


def _torch_module() -> Any:
    """torch when it is imported (no tensor or torch Generator can exist otherwise), else None."""
    return sys.modules.get("torch")


def _is_tensor(value: Any) -> bool:
    torch = _torch_module()
    return torch is not None and isinstance(value, torch.Tensor)


def _draw_integers(generator: RandomSource, high: int, count: int) -> np.ndarray:
    """``count`` integers uniform in ``[0, high)`` as int64 (Caffe's ``Rand(high)``)."""
    if generator is None:
        generator = np.random.default_rng()
    if isinstance(generator, np.random.Generator):
        return generator.integers(0, high, size=count, dtype=np.int64)
    torch = _torch_module()
    if torch is not None and isinstance(generator, torch.Generator):
        drawn = torch.randint(0, high, (count,), generator=generator, device=generator.device, dtype=torch.int64)
        return drawn.cpu().numpy()
    raise AgegenderError(
        f"expected a numpy or torch random Generator, not {type(generator).__name__}",
        hint="pass np.random.default_rng(seed) or torch.Generator().manual_seed(seed)",
    )


def _gather_windows_numpy(images: np.ndarray, sample: np.ndarray, h_off: np.ndarray, w_off: np.ndarray,
                          mirror: np.ndarray, crop_h: int, crop_w: int) -> np.ndarray:
    """``out[i, c, y, x] = images[sample[i], c, h_off[i] + y, w_off[i] + x']`` with ``x' = crop_w - 1 - x``
    where ``mirror[i]``: crop_h x crop_w windows gathered from strided views, no per-pixel Python."""
    width = images.shape[-1]
    out = None
    for flipped in (False, True):
        rows = np.flatnonzero(mirror == flipped)
        if rows.size == 0:
            continue
        # a mirrored crop at w_off is the plain crop at width - crop_w - w_off of the flipped image
        source = images[..., ::-1] if flipped else images
        cols = width - crop_w - w_off[rows] if flipped else w_off[rows]
        windows = np.lib.stride_tricks.sliding_window_view(source, (crop_h, crop_w), axis=(2, 3))
        crops = windows[sample[rows], :, h_off[rows], cols]
        if rows.size == sample.shape[0]:
            return crops  # all samples alike: no second copy
        if out is None:
            out = np.empty((sample.shape[0], images.shape[1], crop_h, crop_w), dtype=images.dtype)
        out[rows] = crops
    if out is None:  # no samples
        out = np.empty((0, images.shape[1], crop_h, crop_w), dtype=images.dtype)
    return out


def _gather_windows_torch(images: "torch.Tensor", sample: "torch.Tensor", h_off: "torch.Tensor",
                          w_off: "torch.Tensor", mirror: "torch.Tensor", crop_h: int, crop_w: int) -> "torch.Tensor":
    """The torch twin of :func:`_gather_windows_numpy`: one batched index gather on the images' device."""
    import torch

    device = images.device
    rows = h_off[:, None] + torch.arange(crop_h, device=device)
    across = torch.arange(crop_w, device=device)
    cols = w_off[:, None] + torch.where(mirror[:, None], crop_w - 1 - across, across)
    channels = torch.arange(images.shape[1], device=device)
    return images[sample[:, None, None, None], channels[None, :, None, None], rows[:, None, :, None],
                  cols[:, None, None, :]]


def _uniform(params: CropParams) -> bool:
    """True when every sample has the same offsets and mirror flag (one mean crop serves all)."""
    return bool(params.count) and bool(
        (params.h_off == params.h_off[0]).all() and (params.w_off == params.w_off[0]).all()
        and (params.mirror == params.mirror[0]).all()
    )


def _field_line(message: "Message", name: str) -> int | None:
    position = message.field_pos(name)
    return position[0] if position else None


@dataclass(frozen=True, eq=False)
class CaffeTransform:
    """Caffe's ``DataTransformer`` (a data layer's ``transform_param``) for batches.

    Per sample, with ``(h_off, w_off)`` the crop's corner and ``crop = crop_size`` (or the whole image
    when ``crop_size`` is 0): ``out[c, y, x] = (image[c, h_off + y, w_off + x'] - mean[c, h_off + y,
    w_off + x']) * scale`` in float32, with ``x' = x``, or ``x' = crop - 1 - x`` for a mirrored sample
    (the crop flipped left-right, the mean taken at the same mirrored position). ``mean`` is a mean
    image (the images' own C x H x W, subtracted at the crop offset), per-channel values (one, or one
    per channel) or none; without a mean it is ``image * scale``.

    * TEST: the center crop, ``h_off = (H - crop) // 2``, ``w_off = (W - crop) // 2``;
    * TRAIN: ``h_off`` uniform in ``[0, H - crop]``, ``w_off`` in ``[0, W - crop]``;
    * in both phases, when ``mirror`` is set, each sample is mirrored with probability 1/2 (Caffe's
      ``mirror() && Rand(2)`` does not look at the phase; the Adience TEST layers set ``mirror: false``).

    Random choices come from the generator given to :meth:`sample_params` / ``__call__`` (reproducible
    with a seeded one). Inputs are C x H x W or N x C x H x W, uint8 or float, numpy arrays or torch
    tensors on any device; outputs are float32 of the same kind and device. ``decode`` is how encoded
    Datums are to be decoded (``force_color`` -> ``"color"``, ``force_gray`` -> ``"gray"``).

    Caffe transforms raw Datums (``Transform(const Datum&)``) and decoded images (``Transform(const
    cv::Mat&)``: encoded Datums, the ImageData layer) by different code. With a mean image and no crop,
    the second one (in the Caffe this toolkit is checked against, whose DataTransformer comes from the
    SSD fork) does not mirror the mean: ``out[c, y, x] = (image[c, y, W - 1 - x] - mean[c, y, x]) * scale``
    when mirrored. With a crop smaller than the image that fork aborts (it CHECKs the cropped size
    against the mean's), while BVLC Caffe computes what it does for raw Datums: so do we, with a warning.
    Pass ``from_mat=True`` to :meth:`__call__` / :meth:`apply` for such images.
    """

    crop_size: int = 0
    mirror: bool = False
    scale: float = 1.0
    mean: MeanImage | None = None
    phase: str = "TEST"
    decode: str = "native"
    _device_means: dict = field(default_factory=dict, init=False, repr=False)
    _warned: set = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.crop_size, bool) or not isinstance(self.crop_size, (int, np.integer)) or self.crop_size < 0:
            raise AgegenderError(f"crop_size must be a non-negative integer, not {self.crop_size!r}")
        object.__setattr__(self, "crop_size", int(self.crop_size))
        object.__setattr__(self, "mirror", bool(self.mirror))
        if self.phase not in PHASES:
            raise AgegenderError(f"phase must be TRAIN or TEST, not {self.phase!r}")
        if self.decode not in DECODE_MODES:
            raise AgegenderError(f"decode must be one of {', '.join(DECODE_MODES)}, not {self.decode!r}")
        try:
            scale = float(np.float32(self.scale))  # Caffe's scale is a float32 proto field
        except (TypeError, ValueError):
            raise AgegenderError(f"scale must be a number, not {self.scale!r}") from None
        if not math.isfinite(scale):
            raise AgegenderError(f"scale must be finite, not {self.scale!r}")
        object.__setattr__(self, "scale", scale)
        if self.mean is not None and not isinstance(self.mean, MeanImage):
            raise AgegenderError(f"mean must be a MeanImage or None, not {type(self.mean).__name__}",
                                 hint="use CaffeTransform.from_values(mean_file=..., mean_value=...)")

    # --- construction -----------------------------------------------------------------------------
    @classmethod
    def from_values(cls, crop_size: int = 0, mirror: bool = False, scale: float = 1.0, *,
                    mean_file: str | Path | MeanImage | None = None,
                    mean_value: float | Sequence[float] | None = None, phase: str = "TEST",
                    decode: str = "native") -> "CaffeTransform":
        """A transform from explicit values, as a ``transform_param`` would give them.

        ``mean_file`` is a ``.binaryproto`` (or a :class:`MeanImage`); ``mean_value`` one value or one
        per channel. Giving both is a :class:`MeanFileError`, as Caffe refuses it.
        """
        values = None if mean_value is None else np.atleast_1d(np.asarray(mean_value, dtype=np.float32))
        if mean_file is not None and values is not None and values.size:
            raise MeanFileError("cannot specify mean_file and mean_value at the same time",
                                hint="Caffe refuses both: keep one")
        mean: MeanImage | None = None
        if isinstance(mean_file, MeanImage):
            mean = mean_file
        elif mean_file is not None:
            mean = MeanImage.from_binaryproto(mean_file)
        elif values is not None and values.size:
            mean = MeanImage.from_values(values.tolist())
        return cls(crop_size=crop_size, mirror=mirror, scale=scale, mean=mean, phase=phase, decode=decode)

    @classmethod
    def from_param(cls, transform_param: "Message", phase: str, *, mean_root: str | Path | None = None,
                   layer: str | None = None, net_path: str | Path | None = None) -> "CaffeTransform":
        """A transform from a ``TransformationParameter`` message, for ``phase``.

        A relative or foreign ``mean_file`` is looked up under ``mean_root`` by the rules of
        :mod:`agegender.folds.remap` (trailing components, longest first); without ``mean_root`` it is
        read as written (relative to the working directory, as Caffe does). ``layer`` and ``net_path``
        name the layer and the prototxt in errors.
        """
        from .remap import remap_path

        param = transform_param
        if param.has("mean_file") and param.has("mean_value"):
            raise MeanFileError("cannot specify mean_file and mean_value at the same time", path=net_path,
                                line=_field_line(param, "mean_value"), layer=layer, hint="Caffe refuses both: keep one")
        if param.force_color and param.force_gray:
            raise NetDefinitionError("cannot set both force_color and force_gray", path=net_path,
                                     line=_field_line(param, "force_gray"), layer=layer)
        mean: MeanImage | None = None
        if param.has("mean_file"):
            written = str(param.mean_file)
            located = remap_path(written, "mean", mean_root=mean_root)[0] if mean_root is not None else written
            if not Path(located).is_file():
                where = f" (looked up under {mean_root} as {located})" if mean_root is not None else ""
                raise MissingFileError(
                    f"mean_file not found: {written}{where}", path=net_path, line=_field_line(param, "mean_file"),
                    layer=layer, hint="give mean_root (the folder holding the mean images) or remap the net's "
                    "paths with agegender.folds.remap_data_paths",
                )
            mean = MeanImage.from_binaryproto(located)
        elif param.has("mean_value"):
            mean = MeanImage.from_values([float(v) for v in param.mean_value])
        decode = "color" if param.force_color else ("gray" if param.force_gray else "native")
        try:
            return cls(crop_size=int(param.crop_size), mirror=bool(param.mirror), scale=float(param.scale),
                       mean=mean, phase=phase, decode=decode)
        except AgegenderError as exc:
            raise type(exc)(exc.message, path=net_path, line=_field_line(param, "scale"), layer=layer,
                            hint=exc.hint) from None

    @classmethod
    def from_layer(cls, layer_param: "Message", phase: str | None = None, mean_root: str | Path | None = None,
                   *, net_path: str | Path | None = None) -> "CaffeTransform":
        """The transform of a data layer (a ``LayerParameter``; its ``transform_param``, or Caffe's
        defaults when it has none).

        ``phase`` defaults to the one phase of the layer's ``include`` rules; a layer of both phases
        needs it given. See :meth:`from_param` for ``mean_root``.
        """
        name = str(layer_param.name) or None
        if phase is None:
            phases = {rule.phase for rule in layer_param.include if rule.has("phase")}
            if len(phases) != 1:
                raise NetDefinitionError(
                    "the layer is not limited to one phase: give phase='TRAIN' or 'TEST'", path=net_path,
                    line=layer_param.pos[0] if layer_param.pos else None, layer=name,
                )
            phase = phases.pop()
        if phase not in PHASES:
            raise AgegenderError(f"phase must be TRAIN or TEST, not {phase!r}")
        return cls.from_param(layer_param.transform_param, phase, mean_root=mean_root, layer=name,
                              net_path=net_path)

    @classmethod
    def from_net(cls, net_param: "Message", phase: str = "TEST", mean_root: str | Path | None = None, *,
                 layer_name: str | None = None, net_path: str | Path | None = None) -> "CaffeTransform":
        """The transform of the data layer a net of ``phase`` includes (a train_val NetParameter, e.g.
        from :func:`agegender.prototxt.read_net`); ``layer_name`` picks one when there are several."""
        from ..caffe2torch.ir import NetState

        state = NetState(phase)
        layers = [layer for layer in net_param.layer if state.includes(layer)
                  and (layer.has("transform_param") or layer.type in DATA_LAYER_TYPES)]
        if layer_name is not None:
            layers = [layer for layer in layers if layer.name == layer_name]
        if len(layers) != 1:
            which = f"named '{layer_name}' " if layer_name is not None else ""
            found = " (" + ", ".join(f"'{layer.name}'" for layer in layers) + ")" if layers else ""
            raise NetDefinitionError(
                f"the {phase} net has {len(layers)} data layers {which}with a transform{found}",
                path=net_path, hint="name one with layer_name" if layers else "is this a deploy prototxt?",
            )
        return cls.from_layer(layers[0], phase, mean_root, net_path=net_path)

    @classmethod
    def from_preprocessing(cls, preprocessing: Any, phase: str = "TEST") -> "CaffeTransform":
        """A transform from a model card's preprocessing: a zoo ``Preprocessing``, its ``as_dict()``, or
        a whole model card (a dict with a ``"preprocessing"`` entry)."""
        if isinstance(preprocessing, Mapping):
            prep = preprocessing.get("preprocessing", preprocessing)
            if not isinstance(prep, Mapping) or "crop" not in prep:
                raise AgegenderError("the model card has no preprocessing (crop, mean_file or mean_values)")
            values = dict(prep)
        else:
            values = {name: getattr(preprocessing, name, None)
                      for name in ("crop", "mean_file", "mean_values", "scale", "mirror", "channel_order")}
        if (values.get("channel_order") or "BGR") != "BGR":
            raise AgegenderError(f"Caffe's transform works on BGR images, the card says {values['channel_order']}")
        return cls.from_values(
            crop_size=int(values.get("crop") or 0), mirror=bool(values.get("mirror") or False),
            scale=1.0 if values.get("scale") is None else float(values["scale"]),
            mean_file=values.get("mean_file"), mean_value=values.get("mean_values"), phase=phase,
        )

    # --- what it does -----------------------------------------------------------------------------
    def describe(self) -> str:
        """A short human description, e.g. ``"TEST: 227 center crop, no mirror, 3 x 256 x 256 mean image"``."""
        crop = "no crop" if not self.crop_size else (
            f"{self.crop_size} {'random' if self.phase == 'TRAIN' else 'center'} crop")
        parts = [crop, "random mirror" if self.mirror else "no mirror",
                 self.mean.describe() if self.mean is not None else "no mean"]
        if self.scale != 1.0:
            parts.append(f"scale {self.scale:g}")
        return f"{self.phase}: " + ", ".join(parts)

    def __repr__(self) -> str:
        return f"CaffeTransform({self.describe()})"

    def crop_shape(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of the output for stored images of ``height`` x ``width``."""
        return (self.crop_size, self.crop_size) if self.crop_size else (int(height), int(width))

    def output_shape(self, channels: int, height: int, width: int) -> tuple[int, int, int]:
        """C x h x w of one transformed image."""
        return (int(channels), *self.crop_shape(height, width))

    def check_input(self, channels: int, height: int, width: int) -> None:
        """Refuse what Caffe's CHECKs refuse: a crop larger than the images, a mean image of another
        C x H x W than the images (as Caffe reads the blob: a 3-axis BlobShape is channels x height x 1
        to it), per-channel mean values neither one nor one per channel."""
        if self.crop_size > min(height, width):
            raise NetDefinitionError(
                f"crop_size {self.crop_size} is larger than the {height} x {width} images",
                hint="store the images resized (e.g. 256 x 256) or use a smaller crop",
            )
        if self.mean is None:
            return
        if self.mean.per_channel:
            if self.mean.channels not in (1, channels):
                raise MeanFileError(
                    f"{self.mean.channels} mean values for {channels}-channel images: give 1 mean_value or one "
                    "per channel", path=self.mean.source,
                )
        elif self.mean.values.shape != (channels, height, width):
            raise MeanFileError(
                f"the {self.mean.describe()} does not match the {channels} x {height} x {width} images",
                path=self.mean.source,
                hint="Caffe subtracts a mean image of the stored (uncropped) image size",
            )
        else:
            legacy = self.mean.caffe_chw()
            if legacy != (channels, height, width):
                raise MeanFileError(
                    f"the mean file holds a {len(self.mean.blob_shape or ())}-axis blob of shape "
                    f"{list(self.mean.blob_shape or ())}, which Caffe's DataTransformer reads as channels x height x "
                    f"width = {' x '.join(map(str, legacy))}: it does not match the {channels} x {height} x {width} "
                    "images", path=self.mean.source,
                    hint="write the mean as a 1 x C x H x W blob (num/channels/height/width), as "
                         "compute_image_mean does",
                )

    # --- random choices ---------------------------------------------------------------------------
    def sample_params(self, count: int, height: int, width: int, generator: RandomSource = None) -> CropParams:
        """The offsets and mirror flags of ``count`` samples of ``height`` x ``width`` images: TEST
        center crops, TRAIN random ones, mirrored at random when ``mirror`` is set."""
        count = int(count)
        crop_h, crop_w = self.crop_shape(height, width)
        if self.crop_size > min(height, width):
            self.check_input(1, height, width)  # raises the crop error
        if self.crop_size and self.phase == "TRAIN":
            h_off = _draw_integers(generator, height - crop_h + 1, count)
            w_off = _draw_integers(generator, width - crop_w + 1, count)
        else:
            h_off = np.full(count, (height - crop_h) // 2, dtype=np.int64)
            w_off = np.full(count, (width - crop_w) // 2, dtype=np.int64)
        if self.mirror:
            mirror = _draw_integers(generator, 2, count).astype(bool)
        else:
            mirror = np.zeros(count, dtype=bool)
        return CropParams(h_off, w_off, mirror)

    # --- applying it ------------------------------------------------------------------------------
    def __call__(self, images: Any, generator: RandomSource = None, *, from_mat: bool = False) -> Any:
        """Transform one C x H x W image or an N x C x H x W batch, drawing the random choices from
        ``generator``; float32 numpy array or tensor (on the images' device). ``from_mat``: the images
        are decoded ``cv::Mat`` images (encoded Datums, ImageData), see the class docstring."""
        batch, _ = _as_batch(images)
        params = self.sample_params(batch.shape[0], batch.shape[2], batch.shape[3], generator)
        return self.apply(images, params, from_mat=from_mat)

    def apply(self, images: Any, params: CropParams, *, from_mat: bool = False) -> Any:
        """Transform with given offsets and mirror flags (e.g. from :meth:`sample_params`)."""
        batch, single = _as_batch(images)
        sample = np.arange(batch.shape[0], dtype=np.int64)
        out = self._apply(batch, sample, params, from_mat)
        return out[0] if single else out

    def apply_indexed(self, images: Any, indices: Sequence[int] | np.ndarray, params: CropParams, *,
                      from_mat: bool = False) -> Any:
        """Transform ``images[indices]`` of an N x C x H x W batch (e.g. a device-resident fold) without
        copying the selected images first; ``params`` hold one entry per index."""
        batch, single = _as_batch(images)
        if single:
            raise AgegenderError("apply_indexed needs an N x C x H x W batch")
        sample = np.asarray(indices, dtype=np.int64).reshape(-1)
        if sample.size and (sample.min() < 0 or sample.max() >= batch.shape[0]):
            raise AgegenderError(f"sample indices out of range: the batch holds {batch.shape[0]} images")
        return self._apply(batch, sample, params, from_mat)

    def oversample(self, images: Any) -> Any:
        """Caffe's ten-crop over-sampling (pycaffe's ``oversample``): the four corner crops and the
        center crop, then the same five mirrored (:func:`oversample_offsets`), each transformed as above
        (mean at the crop's offset, ``scale``). The transform's own ``mirror`` and phase play no part.

        One C x H x W image gives 10 x C x crop x crop; an N x C x H x W batch N x 10 x C x crop x crop.
        """
        if not self.crop_size:
            raise AgegenderError("over-sampling needs a crop_size")
        batch, single = _as_batch(images)
        count, channels, height, width = batch.shape
        self.check_input(channels, height, width)
        offsets = oversample_offsets(height, width, self.crop_size)
        crops = offsets.shape[0]
        sample = np.repeat(np.arange(count, dtype=np.int64), crops)
        params = CropParams(np.tile(offsets[:, 0], count), np.tile(offsets[:, 1], count),
                            np.tile(offsets[:, 2].astype(bool), count))
        if self.mean is not None:
            # each image is cropped ten times: subtracting the mean once on the whole image is cheaper,
            # and gives the same float32 values (the same pixel minus the same mean value)
            if _is_tensor(batch):
                import torch

                batch = batch.to(torch.float32) - self._mean_tensor(batch.device)
            else:
                batch = batch.astype(np.float32) - self.mean.values
        unmeaned = CaffeTransform(crop_size=self.crop_size, scale=self.scale)
        out = unmeaned._apply(batch, sample, params)
        out = out.reshape(count, crops, channels, self.crop_size, self.crop_size)
        return out[0] if single else out

    def _apply(self, batch: Any, sample: np.ndarray, params: CropParams, from_mat: bool = False) -> Any:
        """``out[i] = transform(batch[sample[i]])`` with ``params[i]``; ``from_mat``: Caffe's cv::Mat path
        (see the class docstring)."""
        _, channels, height, width = batch.shape
        self.check_input(channels, height, width)
        crop_h, crop_w = self.crop_shape(height, width)
        params = _checked_params(params, sample.shape[0], height - crop_h, width - crop_w)
        mean_params = params
        if from_mat and self.mean is not None and not self.mean.per_channel:
            if (crop_h, crop_w) == (height, width):
                # the SSD-derived Transform(cv::Mat) takes the mean at the (mirrored) output position
                mean_params = CropParams(params.h_off, params.w_off, np.zeros_like(params.mirror))
            elif "mat crop" not in self._warned:
                # that Transform(cv::Mat) CHECKs the cropped size against the mean's and aborts here;
                # BVLC's takes the mean at the source pixel, as for raw Datums: do that
                self._warned.add("mat crop")
                _LOG.warning("decoded images (encoded Datums, ImageData) cropped with a mean image: "
                             "BVLC Caffe's arithmetic; SSD-derived Caffe forks abort on this")
        if _is_tensor(batch):
            return self._apply_torch(batch, sample, params, crop_h, crop_w, mean_params)
        out = np.empty((sample.shape[0], channels, crop_h, crop_w), dtype=np.float32)
        # a few samples at a time: their crops, mean crops and output stay in the CPU cache
        # (about 1.5x faster than whole batches of 64 and more)
        for start in range(0, sample.shape[0], _NUMPY_CHUNK):
            part = slice(start, start + _NUMPY_CHUNK)
            chunk = params.take(np.arange(start, min(start + _NUMPY_CHUNK, sample.shape[0])))
            window = out[part]
            window[...] = _gather_windows_numpy(batch, sample[part], chunk.h_off, chunk.w_off, chunk.mirror,
                                                crop_h, crop_w)
            if self.mean is not None:
                mean_chunk = mean_params.take(np.arange(start, min(start + _NUMPY_CHUNK, sample.shape[0])))
                window -= self._mean_crops_numpy(mean_chunk, crop_h, crop_w)
            if self.scale != 1.0:
                window *= np.float32(self.scale)
        return out

    def _mean_crops_numpy(self, params: CropParams, crop_h: int, crop_w: int) -> np.ndarray:
        assert self.mean is not None
        values = self.mean.values
        if self.mean.per_channel:
            return values  # C x 1 x 1 (or 1 x 1 x 1): broadcast over the crops
        if _uniform(params):
            h, w = int(params.h_off[0]), int(params.w_off[0])
            crop = values[:, h:h + crop_h, w:w + crop_w]
            return crop[..., ::-1] if params.mirror[0] else crop
        zeros = np.zeros(params.count, dtype=np.int64)
        return _gather_windows_numpy(values[None], zeros, params.h_off, params.w_off, params.mirror, crop_h, crop_w)

    def _mean_tensor(self, device: Any) -> "torch.Tensor":
        """The mean's values as a float32 tensor on ``device`` (made once per device)."""
        import torch

        key = str(device)
        tensor = self._device_means.get(key)
        if tensor is None:
            assert self.mean is not None
            tensor = torch.tensor(np.array(self.mean.values), dtype=torch.float32, device=device)
            self._device_means[key] = tensor
        return tensor

    def _apply_torch(self, batch: "torch.Tensor", sample: np.ndarray, params: CropParams, crop_h: int,
                     crop_w: int, mean_params: CropParams | None = None) -> "torch.Tensor":
        import torch

        if mean_params is None:
            mean_params = params

        device = batch.device
        # one small host-to-device copy for all per-sample choices
        choices = host_to_device(np.stack([sample, params.h_off, params.w_off, params.mirror.astype(np.int64)]),
                                 device)
        sample_t, h_off, w_off, mirror = choices[0], choices[1], choices[2], choices[3].bool()
        out = _gather_windows_torch(batch, sample_t, h_off, w_off, mirror, crop_h, crop_w).to(torch.float32)
        if self.mean is not None:
            mean = self._mean_tensor(device)
            if self.mean.per_channel:
                out.sub_(mean)
            elif _uniform(mean_params):
                h, w = int(mean_params.h_off[0]), int(mean_params.w_off[0])
                crop = mean[:, h:h + crop_h, w:w + crop_w]
                out.sub_(crop.flip(-1) if mean_params.mirror[0] else crop)
            else:
                zeros = torch.zeros_like(sample_t)
                mean_mirror = mirror if mean_params is params else torch.zeros_like(mirror)
                out.sub_(_gather_windows_torch(mean[None], zeros, h_off, w_off, mean_mirror, crop_h, crop_w))
        if self.scale != 1.0:
            out.mul_(self.scale)  # the scalar is applied in float32, as Caffe's Dtype scale
        return out


def host_to_device(array: np.ndarray, device: Any) -> "torch.Tensor":
    """A small host array as a tensor on ``device``. To a GPU it goes through pinned memory without blocking:
    a pageable copy waits for everything queued on the device first, which would stall a training loop that
    builds each batch while the previous step runs."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if torch.device(device).type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)  # the pinned block is kept until the copy ends
    return tensor.to(device)


def _as_batch(images: Any) -> tuple[Any, bool]:
    """(N x C x H x W batch, whether the input was one C x H x W image); checks the dtype."""
    if _is_tensor(images):
        import torch

        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise AgegenderError(f"expected uint8 or float images, got a {images.dtype} tensor")
    else:
        if not isinstance(images, np.ndarray):
            images = np.asarray(images)
        if images.dtype != np.uint8 and images.dtype.kind != "f":
            raise AgegenderError(f"expected uint8 or float images, got {images.dtype}")
    if images.ndim == 3:
        return images[None], True
    if images.ndim != 4:
        raise AgegenderError(f"expected a C x H x W image or an N x C x H x W batch, got shape {tuple(images.shape)}")
    return images, False


def _checked_params(params: CropParams, count: int, max_h: int, max_w: int) -> CropParams:
    h_off = np.asarray(params.h_off, dtype=np.int64).reshape(-1)
    w_off = np.asarray(params.w_off, dtype=np.int64).reshape(-1)
    mirror = np.asarray(params.mirror, dtype=bool).reshape(-1)
    if not h_off.shape[0] == w_off.shape[0] == mirror.shape[0] == count:
        raise AgegenderError(f"crop parameters for {h_off.shape[0]}/{w_off.shape[0]}/{mirror.shape[0]} samples, "
                             f"the batch has {count}")
    if count and (h_off.min() < 0 or h_off.max() > max_h or w_off.min() < 0 or w_off.max() > max_w):
        raise AgegenderError(f"crop offsets out of range: rows must be in 0..{max_h}, columns in 0..{max_w}")
    return CropParams(h_off, w_off, mirror)


__all__ = [
    "DATA_LAYER_TYPES", "CaffeTransform", "CropParams", "RandomSource", "center_crop_minus_mean", "hwc_to_chw",
    "load_image_bgr", "oversample_minus_mean", "oversample_offsets", "resize_like_convert_imageset",
]
