"""MeanImage: the real mean files read as Caffe holds them, and the crop of the mean that Caffe's Data
layer subtracts reproduces real Caffe's ``data`` blobs exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agegender.errors import MeanFileError
from agegender.folds.mean import MeanImage
from agegender.prototxt import read_blobproto, write_blobproto

from .conftest import require_shared


@pytest.fixture(scope="module")
def resized_images() -> np.ndarray:
    """The 16 resized (3 x 256 x 256) Datums as Caffe's Data layer read them (float32)."""
    path = require_shared("caffe-reference", "lmdb_sample", "read_by_caffe.npz")
    with np.load(path) as archive:
        return archive["resized_data"]


def test_levi_mean_reads_as_float32_chw() -> None:
    path = require_shared("levi", "models", "mean.binaryproto")
    mean = MeanImage.from_binaryproto(path)
    stored = read_blobproto(path)
    assert stored.shape == (1, 3, 256, 256)
    assert mean.values.shape == (3, 256, 256) and mean.values.dtype == np.float32
    assert np.array_equal(mean.values, stored[0])
    assert (mean.channels, mean.size, mean.per_channel, mean.source) == (3, (256, 256), False, str(path))
    assert np.allclose(mean.channel_means(), stored[0].astype(np.float64).mean(axis=(1, 2)))
    mean.check_for_input(3, 227, 227)
    mean.check_for_input(3, 256, 256)
    assert "3 x 256 x 256 mean image" in repr(mean)


def test_levi_mean_crop_reproduces_caffes_data_blob(resized_images: np.ndarray) -> None:
    """Caffe's TEST-phase Data layer: center crop at (14, 14) minus the mean at the same offset."""
    mean = MeanImage.from_binaryproto(require_shared("levi", "models", "mean.binaryproto"))
    for target in ("age", "gender"):
        with np.load(require_shared("caffe-reference", "levi", f"blobs_{target}.npz")) as blobs:
            caffe_data = blobs["data"]
        assert caffe_data.shape == (2, 3, 227, 227)
        ours = resized_images[:2, :, 14:241, 14:241] - mean.crop(14, 14, 227, 227)
        assert ours.dtype == np.float32
        assert np.array_equal(ours, caffe_data), float(np.abs(ours - caffe_data).max())
    # the mean matters: a mean taken at another offset does not give Caffe's blob
    shifted = resized_images[:2, :, 14:241, 14:241] - mean.crop(13, 14, 227, 227)
    assert not np.array_equal(shifted, caffe_data)


def _adience_means() -> list[Path]:
    root = require_shared("adience", "mean_images")
    return sorted(root.glob("mean_image*/Test_fold_is_*/mean.binaryproto"))


def test_adience_per_fold_means() -> None:
    paths = _adience_means()
    assert len(paths) == 15  # three preprocessings x five folds
    means = [MeanImage.from_binaryproto(path) for path in paths]
    for path, mean in zip(paths, means):
        assert mean.values.shape == (3, 256, 256), path
        assert 0.0 <= float(mean.values.min()) and float(mean.values.max()) <= 255.0, path
        assert np.array_equal(mean.values, read_blobproto(path).reshape(3, 256, 256))
        mean.check_for_input(3, 227, 227)
        mean.check_for_input(3, 224, 224)
        # BGR faces: red is the brightest channel on average
        b, g, r = mean.channel_means()
        assert b < g < r, path
    # each fold and preprocessing has its own mean
    for i in range(len(means)):
        for j in range(i + 1, len(means)):
            assert not np.array_equal(means[i].values, means[j].values), (paths[i], paths[j])


@pytest.mark.parametrize(("key", "offset", "crop"), [("adiencenet", 14, 227), ("vgg16", 16, 224)])
def test_adience_fold0_mean_reproduces_caffes_train_val_data(
    resized_images: np.ndarray, key: str, offset: int, crop: int
) -> None:
    """The two train_val nets that real Caffe ran in TEST phase with the Adience fold-0 mean."""
    mean = MeanImage.from_binaryproto(
        require_shared("adience", "mean_images", "mean_image", "Test_fold_is_0", "mean.binaryproto")
    )
    with np.load(require_shared("caffe-reference", "lmdb_sample", "trainval_test_phase.npz")) as archive:
        caffe_data = archive[f"{key}_data"]
    n = caffe_data.shape[0]
    window = np.s_[:n, :, offset : offset + crop, offset : offset + crop]
    ours = resized_images[window] - mean.crop(offset, offset, crop, crop)
    assert ours.shape == caffe_data.shape == (4, 3, crop, crop)
    assert np.array_equal(ours, caffe_data), float(np.abs(ours - caffe_data).max())


def test_lmdb_sample_mean_is_the_mean_of_its_images(resized_images: np.ndarray) -> None:
    mean = MeanImage.from_binaryproto(require_shared("caffe-reference", "lmdb_sample", "mean.binaryproto"))
    expected = resized_images.astype(np.float64).mean(axis=0)
    assert np.array_equal(mean.values, expected.astype(np.float32))


def test_per_channel_values() -> None:
    mean = MeanImage.from_values([104, 117, 123])
    assert mean.per_channel and mean.channels == 3 and mean.size is None
    crop = mean.crop(5, 7, 4, 6)
    assert crop.shape == (3, 4, 6) and crop.dtype == np.float32 and crop.flags.writeable
    for channel, value in enumerate((104, 117, 123)):
        assert np.all(crop[channel] == value)
    assert np.array_equal(mean.channel_means(), [104, 117, 123])
    mean.check_for_input(3, 227, 227)
    mean.check_for_input(3, 1000, 3)  # per-channel values fit any size
    # one value applies to every channel, as Caffe's single mean_value does
    single = MeanImage.from_values([128.5])
    single.check_for_input(3, 227, 227)
    single.check_for_input(1, 10, 10)
    assert single.crop(0, 0, 2, 3).shape == (1, 2, 3) and np.all(single.crop(0, 0, 2, 3) == 128.5)
    assert "per-channel mean [104, 117, 123]" == mean.describe()


def test_bad_values_are_refused() -> None:
    with pytest.raises(MeanFileError, match="no mean values"):
        MeanImage.from_values([])
    with pytest.raises(MeanFileError, match="NaN"):
        MeanImage.from_values([1.0, float("nan"), 3.0])
    mean = MeanImage.from_values([1, 2, 3])
    with pytest.raises(MeanFileError, match="bad crop"):
        mean.crop(-1, 0, 4, 4)
    with pytest.raises(MeanFileError, match="bad crop"):
        mean.crop(0, 0, 0, 4)


def test_crop_windows_and_bounds(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    values = rng.uniform(0, 255, (3, 20, 30)).astype(np.float32)
    path = tmp_path / "mean.binaryproto"
    write_blobproto(values, path)  # 1 x 3 x 20 x 30, as compute_image_mean writes
    chw_path = tmp_path / "mean_chw.binaryproto"
    write_blobproto(values, chw_path, legacy_4d=False)  # a 3-axis BlobShape
    for source in (path, chw_path):
        mean = MeanImage.from_binaryproto(source)
        assert np.array_equal(mean.values, values)
        for h_off, w_off, h, w in ((0, 0, 20, 30), (0, 0, 5, 7), (15, 23, 5, 7), (3, 11, 10, 10)):
            crop = mean.crop(h_off, w_off, h, w)
            assert np.array_equal(crop, values[:, h_off : h_off + h, w_off : w_off + w])
        with pytest.raises(MeanFileError, match="does not fit"):
            mean.crop(16, 0, 5, 5)
        with pytest.raises(MeanFileError, match="does not fit"):
            mean.crop(0, 26, 5, 5)
        mean.check_for_input(3, 20, 30)
        with pytest.raises(MeanFileError, match="smaller than the 21 x 30 crop"):
            mean.check_for_input(3, 21, 30)


def test_mean_is_frozen_and_crops_are_copies(tmp_path: Path) -> None:
    values = np.arange(3 * 4 * 4, dtype=np.float32).reshape(3, 4, 4)
    path = tmp_path / "mean.binaryproto"
    write_blobproto(values, path)
    mean = MeanImage.from_binaryproto(path)
    with pytest.raises(ValueError):
        mean.values[0, 0, 0] = 1.0
    crop = mean.crop(0, 0, 2, 2)
    crop -= 100
    assert np.array_equal(mean.values, values)
