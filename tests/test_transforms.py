"""Caffe's DataTransformer (CaffeTransform) and the remapping of train_val data paths.

The reference is real Caffe: the TEST-phase ``data`` blobs it fed two of the repository's train_val nets
(``caffe-reference/lmdb_sample/trainval_test_phase.npz``). The TRAIN-phase formula is checked element by
element against an independent per-sample numpy implementation of data_transformer.cpp's indexing."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from agegender.errors import MeanFileError, MissingFileError, NetDefinitionError
from agegender.folds import (
    CaffeTransform,
    CropParams,
    DatumLMDB,
    MeanImage,
    oversample_minus_mean,
    remap_data_paths,
    remap_path,
)
from agegender.folds.remap import FALLBACK_COMPONENTS, locate_under_root
from agegender.prototxt import parse_text, read_net, write_blobproto
from agegender.prototxt.upgrade import upgrade_net
from agegender.zoo.cards import Preprocessing

from .conftest import require_shared

TRAINVAL_FILES = {
    "adiencenet": ("trainval_adiencenet_age_net_definitions_test_fold_is_0.prototxt", 227),
    "vgg16": ("trainval_vgg16_gender_imdbwiki_vgg16_test_fold_is_0.prototxt", 224),
}
AUTHORS_ROOT = "/home/lapuschkin/Desktop/FaceRecognition/code/AgeGenderDeepLearning"


def caffe_reference(images: np.ndarray, mean: np.ndarray | None, mean_values: np.ndarray | None,
                    params: CropParams, crop: int, scale: float) -> np.ndarray:
    """data_transformer.cpp, one sample at a time: ``top[c, h, mirror ? crop-1-w : w] =
    (data[c, h_off+h, w_off+w] - mean[c, h_off+h, w_off+w]) * scale`` in float32."""
    out = np.empty((len(images), images.shape[1], crop, crop), dtype=np.float32)
    rows, cols = np.arange(crop), np.arange(crop)
    for n, (h_off, w_off, mirror) in enumerate(zip(*params)):
        data_idx = np.ix_(np.arange(images.shape[1]), h_off + rows, w_off + cols)
        value = images[n][data_idx].astype(np.float32)
        if mean is not None:
            value = value - mean[data_idx]
        elif mean_values is not None:
            value = value - mean_values[:, None, None]
        value = value * np.float32(scale)
        top = np.empty_like(value)
        top[:, :, (crop - 1 - cols) if mirror else cols] = value  # Caffe writes to the mirrored top index
        out[n] = top
    return out


@pytest.fixture(scope="module")
def lmdb_sample() -> Path:
    return require_shared("caffe-reference", "lmdb_sample")


@pytest.fixture(scope="module")
def resized_images(lmdb_sample: Path) -> tuple[np.ndarray, np.ndarray]:
    with DatumLMDB(lmdb_sample / "resized") as db:
        records = list(db)
    return np.stack([r.image for r in records]), np.array([r.label for r in records])


# --- the Must show: real Caffe's TEST-phase data blobs ---------------------------------------------------
@pytest.mark.shared
@pytest.mark.parametrize("net_key", sorted(TRAINVAL_FILES))
def test_test_phase_transform_equals_caffe_data_blob(net_key: str, lmdb_sample: Path,
                                                     resized_images: tuple[np.ndarray, np.ndarray]) -> None:
    shared = require_shared()
    file_name, crop = TRAINVAL_FILES[net_key]
    net_path = lmdb_sample / file_name
    net, report = remap_data_paths(read_net(net_path), data_root=shared, mean_root=shared, net_path=net_path)
    assert report.ok, report.describe()
    test_paths = {c.field: Path(c.new) for c in report.for_phase("TEST").changes}
    assert test_paths["data_param.source"] == lmdb_sample / "resized"
    fold0_mean = shared / "adience" / "mean_images" / "mean_image" / "Test_fold_is_0" / "mean.binaryproto"
    assert test_paths["transform_param.mean_file"] == fold0_mean

    transform = CaffeTransform.from_net(net, "TEST", net_path=net_path)
    assert (transform.crop_size, transform.mirror, transform.scale, transform.phase) == (crop, False, 1.0, "TEST")
    assert transform.mean is not None and transform.mean.source == str(fold0_mean)

    images, labels = resized_images
    assert images.shape == (16, 3, 256, 256) and images.dtype == np.uint8
    reference = np.load(lmdb_sample / "trainval_test_phase.npz")
    expected = reference[f"{net_key}_data"]
    out = transform(images)
    assert out.dtype == np.float32 and out.shape == (16, 3, crop, crop)
    np.testing.assert_array_equal(out[: len(expected)], expected)  # exact, as Caffe computed it
    np.testing.assert_array_equal(labels.astype(np.float32), reference[f"{net_key}_label"])
    # the torch path (what GPUResidentDataset runs) gives the same bits
    np.testing.assert_array_equal(transform(torch.from_numpy(images[:4])).numpy(), expected)


@pytest.mark.shared
def test_from_layer_with_mean_root_finds_the_published_mean(lmdb_sample: Path) -> None:
    """The published file's absolute mean_file, looked up under mean_root by its trailing components."""
    shared = require_shared()
    published = shared / "adience" / "model_definitions" / "age_net_definitions" / "train_val_test_fold_is_0.prototxt"
    net = read_net(published)
    train_layer, test_layer = [layer for layer in net.layer if layer.type == "Data"]
    assert train_layer.transform_param.mean_file.startswith(AUTHORS_ROOT)
    mean_root = shared / "adience" / "mean_images"
    train = CaffeTransform.from_layer(train_layer, mean_root=mean_root, net_path=published)
    test = CaffeTransform.from_layer(test_layer, mean_root=mean_root, net_path=published)
    assert (train.phase, train.mirror, train.crop_size) == ("TRAIN", True, 227)  # phase from the include rule
    assert (test.phase, test.mirror, test.crop_size) == ("TEST", False, 227)
    expected = MeanImage.from_binaryproto(mean_root / "mean_image" / "Test_fold_is_0" / "mean.binaryproto")
    np.testing.assert_array_equal(test.mean.values, expected.values)
    # without mean_root the authors' path does not exist here: a clear error naming the layer and line
    with pytest.raises(MissingFileError) as err:
        CaffeTransform.from_layer(test_layer, net_path=published)
    assert err.value.layer == "data" and err.value.line is not None and err.value.hint


# --- remapping ---------------------------------------------------------------------------------------------
@pytest.mark.shared
def test_remap_published_paths_reports_found_and_missing(tmp_path: Path) -> None:
    shared = require_shared()
    published = shared / "adience" / "model_definitions" / "age_net_definitions" / "train_val_test_fold_is_0.prototxt"
    original = read_net(published)
    (tmp_path / "lmdb" / "Test_fold_is_0" / "age_val_lmdb").mkdir(parents=True)  # only the TEST LMDB is here
    net, report = remap_data_paths(original, data_root=tmp_path, mean_root=shared / "adience" / "mean_images",
                                   net_path=published)
    by_phase = {(c.phases, c.field): c for c in report.changes}
    train_source = by_phase[(("TRAIN",), "data_param.source")]
    test_source = by_phase[(("TEST",), "data_param.source")]
    mean = by_phase[(("TEST",), "transform_param.mean_file")]
    assert test_source.exists and test_source.rule == "root"
    assert Path(test_source.new) == tmp_path / "lmdb" / "Test_fold_is_0" / "age_val_lmdb"
    assert not train_source.exists and train_source.rule == "root-missing"
    # not found: the authors' layout under the root, so the user sees where it is expected
    assert Path(train_source.new) == tmp_path / "lmdb" / "Test_fold_is_0" / "age_train_lmdb"
    assert mean.exists and Path(mean.new) == shared / "adience/mean_images/mean_image/Test_fold_is_0/mean.binaryproto"
    assert report.missing == (train_source,) and report.for_phase("TEST").ok
    with pytest.raises(MissingFileError) as err:
        report.raise_if_missing()
    assert err.value.layer == "data" and err.value.line == train_source.line and "age_train_lmdb" in str(err.value)
    # the net given is not modified; the copy holds the new paths
    assert original.layer[1].data_param.source.startswith(AUTHORS_ROOT)
    assert net.layer[1].data_param.source == str(tmp_path / "lmdb" / "Test_fold_is_0" / "age_val_lmdb")
    assert CaffeTransform.from_net(net, "TEST").mean is not None  # the remapped mean file loads


def test_remap_mapping_longest_prefix_wins(tmp_path: Path) -> None:
    net = upgrade_net(parse_text(f"""
        layer {{ name: "data" type: "Data" top: "data" top: "label"
          data_param {{ source: "{AUTHORS_ROOT}/lmdb/Test_fold_is_3/gender_train_lmdb" batch_size: 2 }}
          transform_param {{ mean_file: "{AUTHORS_ROOT}/mean_image_mixed/Test_fold_is_3/mean.binaryproto" }} }}
        """, "NetParameter"))
    mapping = {AUTHORS_ROOT: tmp_path / "everything", f"{AUTHORS_ROOT}/mean_image_mixed/": tmp_path / "means"}
    remapped, report = remap_data_paths(net, mapping=mapping)
    source, mean = report.changes
    assert source.rule == mean.rule == "mapping" and not source.exists
    assert Path(source.new) == tmp_path / "everything" / "lmdb" / "Test_fold_is_3" / "gender_train_lmdb"
    assert Path(mean.new) == tmp_path / "means" / "Test_fold_is_3" / "mean.binaryproto"
    assert remapped.layer[0].transform_param.mean_file == mean.new
    assert len(report.changed) == 2 and len(report.missing) == 2


def test_remap_rules_for_relative_windows_and_kept_paths(tmp_path: Path) -> None:
    (tmp_path / "lmdb" / "Test_fold_is_1" / "age_val_lmdb").mkdir(parents=True)
    (tmp_path / "fold1").mkdir()
    (tmp_path / "fold1" / "mean.binaryproto").write_bytes(b"")
    found, exists = locate_under_root(r"C:\Users\x\lmdb\Test_fold_is_1\age_val_lmdb", tmp_path)
    assert exists and found == tmp_path / "lmdb" / "Test_fold_is_1" / "age_val_lmdb"
    # a root that is the fold's folder itself: the longest suffix that exists is the file name
    found, exists = locate_under_root("/x/mean_image/Test_fold_is_1/mean.binaryproto", tmp_path / "fold1")
    assert exists and found == tmp_path / "fold1" / "mean.binaryproto"
    # a suffix with '..' is never tried; nothing found: the last FALLBACK_COMPONENTS components
    found, exists = locate_under_root("/a/b/../c/d/e/f", tmp_path)
    assert not exists and found == tmp_path.joinpath(*"c/d/e/f".split("/")[-FALLBACK_COMPONENTS:])
    # no root: kept, checked against base_dir
    assert remap_path("lmdb/Test_fold_is_1/age_val_lmdb", "data", base_dir=tmp_path) == (
        "lmdb/Test_fold_is_1/age_val_lmdb", True, "kept")
    assert remap_path("nowhere", "data", base_dir=tmp_path) == ("nowhere", False, "kept")
    # mean_root defaults to data_root
    new, exists, rule = remap_path("/old/lmdb/Test_fold_is_1/age_val_lmdb", "mean", data_root=tmp_path)
    assert exists and rule == "root"


# --- TRAIN randomness --------------------------------------------------------------------------------------
def test_train_crop_offsets_and_mirror_are_uniform_and_reproducible() -> None:
    transform = CaffeTransform(crop_size=227, mirror=True, phase="TRAIN")
    count = 30_000
    params = transform.sample_params(count, 256, 256, np.random.default_rng(7))
    for offsets in (params.h_off, params.w_off):
        counts = np.bincount(offsets, minlength=30)
        assert counts.shape == (30,) and counts.min() > 0  # every offset 0..29 (= H - crop) occurs, no other
        expected = count / 30
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 70, chi2  # 29 degrees of freedom: P(chi2 > 70) ~ 3e-5 for a uniform draw
    assert abs(params.mirror.mean() - 0.5) < 0.015  # 5 standard deviations
    assert abs(np.corrcoef(params.h_off, params.w_off)[0, 1]) < 0.03
    again = transform.sample_params(count, 256, 256, np.random.default_rng(7))
    assert all(np.array_equal(a, b) for a, b in zip(params, again))
    other = transform.sample_params(count, 256, 256, np.random.default_rng(8))
    assert not np.array_equal(params.h_off, other.h_off)
    # a torch Generator works too and is reproducible
    torch_params = [transform.sample_params(50, 256, 256, torch.Generator().manual_seed(3)) for _ in range(2)]
    assert all(np.array_equal(a, b) for a, b in zip(*torch_params))
    assert torch_params[0].h_off.max() <= 29 and torch_params[0].mirror.any() and not torch_params[0].mirror.all()


def test_test_phase_is_center_crop_and_mirrors_only_when_asked() -> None:
    plain = CaffeTransform(crop_size=227).sample_params(100, 256, 250, np.random.default_rng(0))
    assert set(plain.h_off) == {14} and set(plain.w_off) == {11} and not plain.mirror.any()
    # Caffe's `mirror() && Rand(2)` ignores the phase: mirror: true in a TEST layer mirrors at random
    mirrored = CaffeTransform(crop_size=227, mirror=True).sample_params(400, 256, 256, np.random.default_rng(0))
    assert set(mirrored.h_off) == {14} and 100 < mirrored.mirror.sum() < 300
    no_crop = CaffeTransform(phase="TRAIN").sample_params(5, 40, 30)
    assert set(no_crop.h_off) == set(no_crop.w_off) == {0}


# --- the formula -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mean_kind", ["image", "values", "one value", "none"])
def test_train_transform_matches_caffe_formula(mean_kind: str) -> None:
    rng = np.random.default_rng(11)
    images = rng.integers(0, 256, (12, 3, 40, 48), dtype=np.uint8)
    crop, scale = 32, 0.017  # not a power of two: (x - mean) * scale and x * scale - mean * scale differ
    mean_image = (rng.random((3, 40, 48), dtype=np.float32) * 255).astype(np.float32)
    mean_values = np.array([104.0, 117.0, 123.0], dtype=np.float32)
    if mean_kind == "image":
        transform = CaffeTransform.from_values(crop, True, scale, mean_file=MeanImage(mean_image, per_channel=False),
                                               phase="TRAIN")
        ref_mean, ref_values = mean_image, None
    elif mean_kind == "values":
        transform = CaffeTransform.from_values(crop, True, scale, mean_value=mean_values, phase="TRAIN")
        ref_mean, ref_values = None, mean_values
    elif mean_kind == "one value":
        transform = CaffeTransform.from_values(crop, True, scale, mean_value=[110.5], phase="TRAIN")
        ref_mean, ref_values = None, np.full(3, 110.5, dtype=np.float32)
    else:
        transform = CaffeTransform.from_values(crop, True, scale, phase="TRAIN")
        ref_mean, ref_values = None, None
    params = transform.sample_params(len(images), 40, 48, np.random.default_rng(5))
    assert params.mirror.any() and not params.mirror.all() and len(set(params.w_off)) > 3
    expected = caffe_reference(images, ref_mean, ref_values, params, crop, scale)
    out = transform.apply(images, params)
    assert out.dtype == np.float32 and out.shape == (12, 3, crop, crop)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(transform.apply(torch.from_numpy(images), params).numpy(), expected)
    if mean_kind == "image":  # the check can fail: the other order of operations gives other float32 values
        rows = params.h_off[0] + np.arange(crop)
        cols = params.w_off[0] + np.arange(crop)
        if params.mirror[0]:
            cols = cols[::-1]
        sample = np.ix_(range(3), rows, cols)
        other_order = images[0][sample].astype(np.float32) * np.float32(scale) - mean_image[sample] * np.float32(scale)
        assert not np.array_equal(out[0], other_order)
    # single image in, single image out; a float32 image gives the same as its uint8 bytes
    single = transform.apply(images[3].astype(np.float32), params.take([3]))
    np.testing.assert_array_equal(single, expected[3])
    # __call__ with a seeded generator draws the same params as sample_params
    np.testing.assert_array_equal(transform(images, np.random.default_rng(5)), expected)


def test_oversample_matches_the_existing_ten_crop_function() -> None:
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (3, 3, 64, 64), dtype=np.uint8)
    mean = rng.random((3, 64, 64), dtype=np.float32) * 200
    transform = CaffeTransform.from_values(56, mean_file=MeanImage(mean, per_channel=False))
    out = transform.oversample(images)
    assert out.shape == (3, 10, 3, 56, 56)
    np.testing.assert_array_equal(out, oversample_minus_mean(images, mean, 56))
    np.testing.assert_array_equal(transform.oversample(images[1]), out[1])
    np.testing.assert_array_equal(transform.oversample(torch.from_numpy(images)).numpy(), out)
    scaled = CaffeTransform.from_values(56, scale=0.25, mean_file=MeanImage(mean, per_channel=False))
    np.testing.assert_array_equal(scaled.oversample(images), out * np.float32(0.25))
    # crop 5 of each image is the mirrored corner (0, 0): Caffe's mirrored indexing
    np.testing.assert_array_equal(out[:, 5], out[:, 0][..., ::-1])


# --- construction and errors ----------------------------------------------------------------------------
def test_mean_file_and_mean_value_together_are_refused(tmp_path: Path) -> None:
    mean_path = tmp_path / "mean.binaryproto"
    write_blobproto(np.zeros((1, 3, 8, 8), dtype=np.float32), mean_path)
    with pytest.raises(MeanFileError, match="mean_file and mean_value"):
        CaffeTransform.from_values(4, mean_file=mean_path, mean_value=[1, 2, 3])
    text = f"""name: "n"
layer {{
  name: "data" type: "Data" top: "data" top: "label"
  transform_param {{
    crop_size: 4
    mean_file: "{mean_path}"
    mean_value: 104
  }}
  include {{ phase: TRAIN }}
}}
"""
    net = upgrade_net(parse_text(text, "NetParameter", "bad.prototxt"), "bad.prototxt")
    with pytest.raises(MeanFileError) as err:
        CaffeTransform.from_net(net, "TRAIN", net_path="bad.prototxt")
    assert err.value.layer == "data" and err.value.line == 7 and err.value.path == "bad.prototxt"
    # each one alone is fine
    assert CaffeTransform.from_values(4, mean_file=mean_path).mean.size == (8, 8)
    assert CaffeTransform.from_values(4, mean_value=[1, 2, 3]).mean.per_channel


def test_inputs_caffe_refuses() -> None:
    mean = MeanImage(np.zeros((3, 32, 32), dtype=np.float32), per_channel=False)
    images = np.zeros((2, 3, 30, 30), dtype=np.uint8)
    with pytest.raises(MeanFileError, match="does not match"):  # Caffe: CHECK_EQ(datum_height, mean height)
        CaffeTransform(crop_size=24, mean=mean)(images)
    with pytest.raises(NetDefinitionError, match="larger than"):
        CaffeTransform(crop_size=31)(images)
    with pytest.raises(MeanFileError, match="2 mean values"):
        CaffeTransform.from_values(24, mean_value=[1, 2])(images)
    with pytest.raises(Exception, match="out of range"):
        CaffeTransform(crop_size=24).apply(images, CropParams(np.array([0, 7]), np.array([0, 0]), np.zeros(2, bool)))
    with pytest.raises(NetDefinitionError, match="force_color and force_gray"):
        CaffeTransform.from_param(parse_text("force_color: true force_gray: true", "TransformationParameter"), "TEST")
    layer = parse_text('name: "d" type: "Data" transform_param { crop_size: 2 }', "LayerParameter")
    with pytest.raises(NetDefinitionError, match="phase"):  # a layer of both phases needs the phase given
        CaffeTransform.from_layer(layer)
    assert CaffeTransform.from_layer(layer, "TRAIN").phase == "TRAIN"
    gray = parse_text("force_gray: true", "TransformationParameter")
    assert CaffeTransform.from_param(gray, "TEST").decode == "gray"


def test_from_model_card_preprocessing(tmp_path: Path) -> None:
    card = Preprocessing(crop=227, mean_values=(78.4263, 87.7689, 114.8958))
    transform = CaffeTransform.from_preprocessing(card)
    assert (transform.crop_size, transform.mirror, transform.scale, transform.phase) == (227, False, 1.0, "TEST")
    np.testing.assert_array_equal(transform.mean.values.reshape(-1), np.float32(card.mean_values))
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 256, 256), dtype=np.uint8)
    from_dict = CaffeTransform.from_preprocessing({"preprocessing": card.as_dict()})
    np.testing.assert_array_equal(from_dict(images), transform(images))
    expected = images[:, :, 14:241, 14:241].astype(np.float32) - np.float32(card.mean_values)[:, None, None]
    np.testing.assert_array_equal(transform(images), expected)


# --- decoded images (encoded Datums, ImageData): Caffe's Transform(cv::Mat) ------------------------------
def test_decoded_images_with_a_mean_file_take_the_mean_unmirrored(caplog: pytest.LogCaptureFixture) -> None:
    """The Caffe checked against (SSD-derived data_transformer.cpp) transforms a cv::Mat with
    ``mean_index = (c * H + h_off + h) * W + w_off + w_idx`` where ``w_idx`` is the *output* column: a
    mirrored image gets the mean unmirrored (with no crop: with one it aborts, BVLC's does not)."""
    rng = np.random.default_rng(21)
    images = rng.integers(0, 256, (6, 3, 12, 10), dtype=np.uint8)
    mean = (rng.random((3, 12, 10)) * 255).astype(np.float32)
    scale = 0.3
    transform = CaffeTransform.from_values(0, True, scale, mean_file=MeanImage(mean, per_channel=False),
                                           phase="TRAIN")
    params = transform.sample_params(6, 12, 10, np.random.default_rng(2))
    assert params.mirror.any() and not params.mirror.all()
    expected = np.empty((6, 3, 12, 10), np.float32)
    for n, flip in enumerate(params.mirror):  # the cv::Mat loop, one pixel at a time
        for w in range(10):
            out_w = 9 - w if flip else w
            expected[n, :, :, out_w] = (images[n, :, :, w].astype(np.float32) - mean[:, :, out_w]) * np.float32(scale)
    out = transform.apply(images, params, from_mat=True)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(transform.apply(torch.from_numpy(images), params, from_mat=True).numpy(), expected)
    np.testing.assert_array_equal(transform.apply(images[:1], params.take([0]), from_mat=True), expected[:1])
    flipped = params.mirror.nonzero()[0][0]  # a raw Datum mirrors the mean with the pixels: other values
    assert not np.array_equal(transform.apply(images, params)[flipped], expected[flipped])
    # mean values and no mean: the same as for raw Datums
    for other in (CaffeTransform.from_values(0, True, scale, mean_value=[1, 2, 3], phase="TRAIN"),
                  CaffeTransform(mirror=True, phase="TRAIN")):
        np.testing.assert_array_equal(other.apply(images, params, from_mat=True), other.apply(images, params))
    # a crop with a mean file: that fork aborts on CHECK_EQ(cv_cropped_image.rows, data_mean_.height());
    # BVLC's Transform(cv::Mat) takes the mean at the source pixel, as for raw Datums: ours does that, warning
    cropped = CaffeTransform.from_values(8, True, scale, mean_file=MeanImage(mean, per_channel=False),
                                         phase="TRAIN")
    params = cropped.sample_params(6, 12, 10, np.random.default_rng(3))
    assert params.mirror.any() and (params.h_off != params.h_off[0]).any()
    with caplog.at_level(logging.WARNING, logger="agegender.folds.transforms"):
        np.testing.assert_array_equal(cropped.apply(images, params, from_mat=True), cropped.apply(images, params))
        cropped.apply(images, params, from_mat=True)
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "SSD-derived" in caplog.records[0].getMessage()
    CaffeTransform.from_values(8, mean_value=[1, 2, 3])(images, from_mat=True)


def test_lmdb_dataset_transforms_encoded_records_as_decoded_images(tmp_path: Path) -> None:
    import cv2

    from agegender.folds import LMDBDataset
    from agegender.prototxt import Message, encode_message

    import lmdb

    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)
    mean = (rng.random((3, 8, 6)) * 255).astype(np.float32)
    env = lmdb.open(str(tmp_path / "enc"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"00000000_a.png", encode_message(Message("Datum", data=cv2.imencode(".png", image)[1].tobytes(),
                                                          label=3, encoded=True)))
        raw = Message("Datum", channels=3, height=8, width=6, data=image.transpose(2, 0, 1).tobytes(), label=4)
        txn.put(b"00000001_a.png", encode_message(raw))
    env.close()
    transform = CaffeTransform.from_values(mirror=True, mean_file=MeanImage(mean, per_channel=False))
    dataset = LMDBDataset(tmp_path / "enc", transform)
    chw = image.transpose(2, 0, 1).astype(np.float32)
    mirrored = set()
    for seed in range(8):  # each item is mirrored or not at random
        dataset.set_epoch(seed)
        encoded, label = dataset[0]
        raw_item, _ = dataset[1]
        assert label == 3 and dataset.encoded
        assert any(np.array_equal(encoded.numpy(), x) for x in (chw - mean, chw[..., ::-1] - mean))
        assert any(np.array_equal(raw_item.numpy(), x) for x in (chw - mean, (chw - mean)[..., ::-1]))
        mirrored.add(bool(np.array_equal(encoded.numpy(), chw[..., ::-1] - mean)))
    assert mirrored == {False, True}


def test_a_three_axis_mean_blob_is_what_caffes_transformer_refuses(tmp_path: Path) -> None:
    """Blob::channels()/height()/width() are the legacy axes 1..3: a 3 x 8 x 8 BlobShape (pycaffe's
    array_to_blobproto of a 3-D array) reads as 8 x 8 x 1 and fails CHECK_EQ(datum_channels, channels)."""
    values = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    write_blobproto(values, tmp_path / "chw.binaryproto", legacy_4d=False)
    write_blobproto(values, tmp_path / "nchw.binaryproto")
    images = np.zeros((2, 3, 8, 8), np.uint8)
    mean = MeanImage.from_binaryproto(tmp_path / "chw.binaryproto")
    assert mean.blob_shape == (3, 8, 8) and mean.caffe_chw() == (8, 8, 1)
    with pytest.raises(MeanFileError, match="8 x 8 x 1"):
        CaffeTransform.from_values(4, mean_file=tmp_path / "chw.binaryproto")(images)
    out = CaffeTransform.from_values(4, mean_file=tmp_path / "nchw.binaryproto")(images)
    np.testing.assert_array_equal(out, -values[None, :, 2:6, 2:6].repeat(2, axis=0))


def test_float_data_and_one_channel_images_through_the_transform() -> None:
    rng = np.random.default_rng(8)
    floats = rng.normal(0, 50, (2, 1, 9, 9)).astype(np.float32)  # float_data Datums: floats, not bytes
    one = CaffeTransform.from_values(5, scale=0.5, mean_value=[7.25])
    np.testing.assert_array_equal(one(floats), (floats[..., 2:7, 2:7] - np.float32(7.25)) * np.float32(0.5))
    with pytest.raises(MeanFileError, match="3 mean values for 1-channel"):
        CaffeTransform.from_values(5, mean_value=[1, 2, 3])(floats)
    with pytest.raises(MeanFileError, match="does not match"):
        CaffeTransform.from_values(5, mean_file=MeanImage(np.zeros((3, 9, 9), np.float32), per_channel=False))(floats)
