"""Levi & Hassner's real age and gender nets against REAL Caffe (shared/caffe-reference/levi).

The inputs are rebuilt from the JPEGs through ``agegender.folds.transforms`` exactly as Caffe's data path
did (imread, 256 x 256 INTER_LINEAR resize, center crop 227 minus the mean at the crop offset); the first
checks prove that path byte for byte against what Caffe stored and fed, the others compare every blob,
the 480 faces' probabilities and the ten-crop probabilities with Caffe's own.
"""

from __future__ import annotations

from pathlib import Path

import lmdb
import numpy as np
import pytest

from agegender.caffe2torch import CaffeNet, load
from agegender.caffe2torch.parity import compare_with_blobs
from agegender.errors import FileFormatError, MeanFileError, MissingFileError
from agegender.folds.transforms import (
    center_crop_minus_mean,
    hwc_to_chw,
    load_image_bgr,
    oversample_minus_mean,
    oversample_offsets,
    resize_like_convert_imageset,
)
from agegender.prototxt import decode_message, read_blobproto

from .conftest import require_shared
from .helpers import forward_batched, max_rel_error

TARGETS = ("age", "gender")
CROP = 227
TOLERANCE = 1e-4  # per blob, relative to the blob's largest magnitude
PROB_ATOL = 1e-5  # probabilities: absolute (they lie in [0, 1])


def caffe_faces(root: Path, names: list[str]) -> np.ndarray:
    """N x 3 x 256 x 256 uint8 BGR, as convert_imageset --resize_height=256 --resize_width=256 stores them."""
    return np.stack([hwc_to_chw(resize_like_convert_imageset(load_image_bgr(root / name), 256, 256))
                     for name in names])


# --- the transforms on synthetic images (no shared files needed) ------------------------------------------
def test_load_image_bgr_decodes_bgr_and_names_bad_files(tmp_path: Path) -> None:
    import cv2

    image = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    png = tmp_path / "face.png"
    cv2.imwrite(str(png), image)  # lossless: the decode must give the same BGR bytes back
    decoded = load_image_bgr(png)
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, image)
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), image[:, :, 0])
    assert load_image_bgr(grey).shape == (7, 5, 3)  # IMREAD_COLOR: three channels always
    with pytest.raises(MissingFileError) as missing:
        load_image_bgr(tmp_path / "nope.jpg")
    assert missing.value.path == str(tmp_path / "nope.jpg")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(FileFormatError) as bad:
        load_image_bgr(text)
    assert bad.value.path == str(text)
    with pytest.raises(FileFormatError):
        load_image_bgr(tmp_path)


def test_resize_keeps_or_resizes_like_convert_imageset() -> None:
    image = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    assert resize_like_convert_imageset(image, 20, 30) is image
    assert resize_like_convert_imageset(image, 0, 256) is image  # convert_imageset resizes only if both set
    resized = resize_like_convert_imageset(image, 16, 12)
    assert resized.shape == (16, 12, 3) and resized.dtype == np.uint8
    assert hwc_to_chw(resized).shape == (3, 16, 12)
    assert np.array_equal(hwc_to_chw(resized)[2], resized[:, :, 2])


def test_center_crop_subtracts_the_mean_at_the_crop_offset() -> None:
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (4, 3, 9, 10), dtype=np.uint8)
    mean = rng.uniform(0, 255, (1, 3, 9, 10)).astype(np.float32)
    out = center_crop_minus_mean(images, mean, 4)
    # h_off = (9 - 4) // 2 = 2, w_off = (10 - 4) // 2 = 3
    expected = images[:, :, 2:6, 3:7].astype(np.float32) - mean[0, :, 2:6, 3:7]
    assert out.dtype == np.float32 and np.array_equal(out, expected)
    assert np.array_equal(center_crop_minus_mean(images[1], mean[0], 4), expected[1])
    with pytest.raises(MeanFileError):
        center_crop_minus_mean(images, mean[:, :, :8], 4)  # a mean of another size
    with pytest.raises(ValueError):
        center_crop_minus_mean(images, mean, 10)


def test_oversample_offsets_and_mirrored_crops() -> None:
    offsets = oversample_offsets(9, 10, 4)
    assert offsets.dtype == np.int64
    assert offsets.tolist() == [[0, 0, 0], [0, 6, 0], [5, 0, 0], [5, 6, 0], [2, 3, 0],
                                [0, 0, 1], [0, 6, 1], [5, 0, 1], [5, 6, 1], [2, 3, 1]]
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (2, 3, 9, 10), dtype=np.uint8)
    mean = rng.uniform(0, 255, (3, 9, 10)).astype(np.float32)
    crops = oversample_minus_mean(images, mean, 4)
    assert crops.shape == (2, 10, 3, 4, 4) and crops.dtype == np.float32
    ys, xs = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
    for j, (h, w, mirror) in enumerate(offsets):
        src_x = w + (3 - xs if mirror else xs)  # out[c, y, x] = img[c, h+y, w+crop-1-x] when mirrored
        expected = images[:, :, h + ys, src_x].astype(np.float32) - mean[:, h + ys, src_x]
        assert np.array_equal(crops[:, j], expected), j
    assert np.array_equal(crops[:, 4], center_crop_minus_mean(images, mean, 4))
    assert np.array_equal(oversample_minus_mean(images[0], mean, 4), crops[0])


# --- the real files --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def levi() -> Path:
    return require_shared("levi")


@pytest.fixture(scope="module")
def reference() -> Path:
    return require_shared("caffe-reference")


@pytest.fixture(scope="module")
def nets(levi: Path) -> dict[str, CaffeNet]:
    return {t: load(levi / f"{t}_net_definitions" / "deploy.prototxt", levi / "models" / f"{t}_net.caffemodel")
            for t in TARGETS}


@pytest.fixture(scope="module")
def mean(levi: Path) -> np.ndarray:
    return read_blobproto(levi / "models" / "mean.binaryproto")


@pytest.fixture(scope="module")
def utkface(reference: Path) -> dict[str, np.ndarray]:
    return dict(np.load(reference / "levi" / "utkface_probs.npz"))


@pytest.fixture(scope="module")
def faces(utkface: dict[str, np.ndarray]) -> np.ndarray:
    """The 480 faces in labels.tsv order, resized as Caffe stored them (480 x 3 x 256 x 256 uint8)."""
    folder = require_shared("faces", "utkface")
    rows = [line.split("\t") for line in (folder / "labels.tsv").read_text().splitlines()[1:] if line.strip()]
    names = [row[0] for row in rows]
    assert names == [str(n) for n in utkface["files"]], "face order differs from labels.tsv"
    return caffe_faces(folder, names)


# --- the data path, byte for byte ------------------------------------------------------------------
@pytest.mark.shared
def test_decode_and_resize_equal_caffes_lmdb_bytes(reference: Path) -> None:
    sample = reference / "lmdb_sample"
    lines = [line.split() for line in (sample / "list.txt").read_text().splitlines() if line.strip()]
    ours = caffe_faces(require_shared("faces", "utkface"), [name for name, _ in lines])

    env = lmdb.open(str(sample / "resized"), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            records = list(txn.cursor())
    finally:
        env.close()
    assert len(records) == len(lines) == 16
    for i, ((key, value), (name, label)) in enumerate(zip(records, lines)):
        assert key.decode() == f"{i:08d}_{name}"
        datum = decode_message(value, "Datum")
        assert (datum.channels, datum.height, datum.width, datum.encoded) == (3, 256, 256, False)
        assert datum.label == int(label)
        stored = np.frombuffer(datum.data, dtype=np.uint8).reshape(3, 256, 256)
        assert np.array_equal(ours[i], stored), f"{name}: our decode+resize differs from Caffe's Datum"
    # and what Caffe's Data layer then read from that LMDB
    read = np.load(sample / "read_by_caffe.npz")["resized_data"]
    assert np.array_equal(ours.astype(np.float32), read)


@pytest.mark.shared
@pytest.mark.parametrize("target", TARGETS)
def test_center_crop_minus_mean_equals_caffes_data_blob(target: str, faces: np.ndarray, mean: np.ndarray,
                                                        reference: Path) -> None:
    caffe_data = np.load(reference / "levi" / f"blobs_{target}.npz")["data"]
    ours = center_crop_minus_mean(faces[:2], mean, CROP)
    assert ours.dtype == np.float32 and ours.shape == caffe_data.shape == (2, 3, CROP, CROP)
    assert np.array_equal(ours, caffe_data)


# --- every blob --------------------------------------------------------------------------------------
@pytest.mark.shared
@pytest.mark.parametrize("target", TARGETS)
def test_every_blob_matches_real_caffe(target: str, nets: dict[str, CaffeNet], reference: Path) -> None:
    stored = dict(np.load(reference / "levi" / f"blobs_{target}.npz"))
    net = nets[target]
    report = compare_with_blobs(net, stored, {"data": stored["data"]}, tolerance=TOLERANCE,
                                reference_name=f"caffe-reference blobs_{target}.npz")
    assert report.passed, report.summary()
    # every stored blob but the Data layer's label was compared, in net order
    compared = [b.name for b in report.blobs]
    assert set(compared) == set(stored) - {"label"}
    assert compared[0] == "data" and compared[-1] == "prob"
    assert [s.split()[0] for s in report.skipped] == ["label"]
    assert report.argmax_equal is True
    for entry in report.blobs:
        assert entry.shape == stored[entry.name].shape
        assert entry.max_rel <= TOLERANCE, entry


# --- 480 faces, center crop ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def center_crops(faces: np.ndarray, mean: np.ndarray) -> np.ndarray:
    return center_crop_minus_mean(faces, mean, CROP)


@pytest.mark.shared
@pytest.mark.parametrize("target", TARGETS)
def test_480_faces_probabilities_match_real_caffe(target: str, nets: dict[str, CaffeNet],
                                                  center_crops: np.ndarray, utkface: dict[str, np.ndarray]) -> None:
    ours = forward_batched(nets[target], center_crops, ["fc8", "prob"])
    caffe_prob, caffe_fc8 = utkface[f"{target}_prob"], utkface[f"{target}_fc8"]
    assert ours["prob"].shape == caffe_prob.shape == (480, 8 if target == "age" else 2)
    assert float(np.max(np.abs(ours["prob"] - caffe_prob))) <= PROB_ATOL
    assert max_rel_error(ours["fc8"], caffe_fc8) <= TOLERANCE
    mismatched = np.flatnonzero(ours["prob"].argmax(1) != caffe_prob.argmax(1))
    assert mismatched.size == 0, f"argmax differs on faces {mismatched.tolist()}"


# --- ten-crop over-sampling of the first 16 faces --------------------------------------------------------
@pytest.mark.shared
def test_oversample_offsets_are_caffes(reference: Path) -> None:
    stored = np.load(reference / "levi" / "oversample_first16.npz")["offsets"]
    assert np.array_equal(oversample_offsets(256, 256, CROP), stored)


@pytest.mark.shared
@pytest.mark.parametrize("target", TARGETS)
def test_ten_crop_probabilities_of_first_16_faces_match(target: str, nets: dict[str, CaffeNet], faces: np.ndarray,
                                                        mean: np.ndarray, reference: Path) -> None:
    stored = np.load(reference / "levi" / "oversample_first16.npz")
    crops = oversample_minus_mean(faces[:16], mean, CROP)  # 16 x 10 x 3 x 227 x 227
    assert crops.shape == (16, 10, 3, CROP, CROP)
    prob = forward_batched(nets[target], crops.reshape(160, 3, CROP, CROP), ["prob"], chunk=80)["prob"]
    prob = prob.reshape(16, 10, -1)
    caffe_prob = stored[f"{target}_prob"]
    assert prob.shape == caffe_prob.shape
    assert float(np.max(np.abs(prob - caffe_prob))) <= PROB_ATOL
    assert np.array_equal(prob.argmax(-1), caffe_prob.argmax(-1))
    mean_prob = prob.mean(axis=1)
    assert float(np.max(np.abs(mean_prob - stored[f"{target}_prob_mean"]))) <= PROB_ATOL
    assert np.array_equal(mean_prob.argmax(-1), stored[f"{target}_prob_mean"].argmax(-1))
