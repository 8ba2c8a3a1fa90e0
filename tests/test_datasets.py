"""Torch datasets over LMDBs, list files and device-resident folds: the same values as CaffeTransform
on the stored images, reproducible randomness whatever the number of DataLoader workers, and the
device path (run here on CPU tensors) equal to the numpy path given the same offsets and mirror flags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from agegender.errors import AgegenderError, MissingFileError
from agegender.folds import (
    CaffeTransform,
    DatumLMDB,
    GPUResidentDataset,
    ImageList,
    ImageListDataset,
    LMDBDataset,
    MeanImage,
    TransformCollate,
    collate,
    write_datum_lmdb,
)
from agegender.prototxt import read_net

from .conftest import require_shared

SIZE, CROP, FACES = 64, 56, 10


@pytest.fixture(scope="module")
def faces() -> tuple[Path, ImageList]:
    root = require_shared("faces", "utkface")
    names = sorted(p.name for p in root.glob("*.jpg"))[:FACES]
    assert len(names) == FACES
    return root, ImageList.from_pairs((name, i % 3) for i, name in enumerate(names))


@pytest.fixture(scope="module")
def face_lmdb(faces: tuple[Path, ImageList], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root, image_list = faces
    out = tmp_path_factory.mktemp("datasets") / "faces_lmdb"
    write_datum_lmdb(out, image_list, resize=(SIZE, SIZE), root=root)
    return out


@pytest.fixture(scope="module")
def stored(face_lmdb: Path) -> tuple[np.ndarray, np.ndarray]:
    with DatumLMDB(face_lmdb) as db:
        records = list(db)
    return np.stack([r.image for r in records]), np.array([r.label for r in records])


def mean_image(seed: int = 0) -> MeanImage:
    values = np.random.default_rng(seed).random((3, SIZE, SIZE), dtype=np.float32) * 255
    return MeanImage(values, per_channel=False)


def train_transform() -> CaffeTransform:
    return CaffeTransform(crop_size=CROP, mirror=True, scale=0.5, mean=mean_image(), phase="TRAIN")


# --- LMDBDataset ---------------------------------------------------------------------------------------------
@pytest.mark.shared
def test_lmdb_dataset_items_are_the_transformed_records(face_lmdb: Path, stored: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = stored
    transform = CaffeTransform.from_values(CROP, mean_value=[104, 117, 123])
    dataset = LMDBDataset(face_lmdb, transform)
    assert len(dataset) == FACES
    expected = transform(images)
    for index in (0, 4, -1):
        image, label = dataset[index]
        assert image.dtype == torch.float32 and image.shape == (3, CROP, CROP)
        np.testing.assert_array_equal(image.numpy(), expected[index])
        assert label == labels[index]
    np.testing.assert_array_equal(dataset.labels, labels)
    raw, _ = LMDBDataset(face_lmdb)[2]  # no transform: the stored uint8 bytes
    assert raw.dtype == torch.uint8
    np.testing.assert_array_equal(raw.numpy(), images[2])
    with pytest.raises(IndexError):
        dataset[FACES]


@pytest.mark.shared
def test_dataloader_with_two_workers_is_reproducible(face_lmdb: Path, stored: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = stored
    dataset = LMDBDataset(face_lmdb, train_transform(), seed=3)
    dataset.db[0]  # the parent process has the LMDB open before the workers fork: they must reopen it

    def run(workers: int) -> tuple[torch.Tensor, torch.Tensor]:
        loader = DataLoader(dataset, batch_size=4, num_workers=workers, collate_fn=collate)
        batches = list(loader)
        return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])

    parallel, parallel_labels = run(2)
    serial, serial_labels = run(0)
    assert parallel.shape == (FACES, 3, CROP, CROP) and parallel.dtype == torch.float32
    assert torch.equal(parallel, serial) and torch.equal(parallel_labels, serial_labels)
    np.testing.assert_array_equal(parallel_labels.numpy(), labels)
    # the crops are random (TRAIN): another epoch draws others, each item still a valid Caffe transform
    dataset.set_epoch(1)
    assert not torch.equal(run(0)[0], serial)
    center = CaffeTransform(crop_size=CROP, scale=0.5, mean=mean_image())(images)
    assert not np.array_equal(serial.numpy(), center)

    # uint8 items through the workers, one batched transform per batch in the worker
    uint8_set = LMDBDataset(face_lmdb)
    loader = DataLoader(uint8_set, batch_size=5, num_workers=2, collate_fn=collate)
    stacked = torch.cat([b[0] for b in loader])
    assert stacked.dtype == torch.uint8
    np.testing.assert_array_equal(stacked.numpy(), images)
    transform = CaffeTransform(crop_size=CROP, mean=mean_image())  # TEST: deterministic
    loader = DataLoader(uint8_set, batch_size=5, num_workers=2, collate_fn=TransformCollate(transform))
    np.testing.assert_array_equal(torch.cat([b[0] for b in loader]).numpy(), transform(images))


def test_collate_refuses_mixed_sizes() -> None:
    batch = [(np.zeros((3, 8, 8), np.uint8), 0), (np.zeros((3, 8, 9), np.uint8), 1)]
    with pytest.raises(AgegenderError, match="differ in size"):
        collate(batch)
    images, labels = collate(batch[:1] * 2)
    assert images.shape == (2, 3, 8, 8) and images.dtype == torch.uint8 and labels.tolist() == [0, 0]


# --- ImageListDataset ---------------------------------------------------------------------------------------
@pytest.mark.shared
def test_image_list_dataset_matches_the_lmdb_and_reports_missing(faces: tuple[Path, ImageList],
                                                                 stored: tuple[np.ndarray, np.ndarray]) -> None:
    root, image_list = faces
    images, labels = stored
    transform = CaffeTransform(crop_size=CROP, mean=mean_image())
    dataset = ImageListDataset(image_list, root, transform, resize=(SIZE, SIZE))
    expected = transform(images)
    for index in (0, FACES - 1):
        image, label = dataset[index]
        np.testing.assert_array_equal(image.numpy(), expected[index])  # decode + resize as convert_imageset
        assert label == labels[index]

    with_missing = ImageList.parse("".join(f"{p} {l}\n" for p, l in zip(image_list.paths[:3], [0, 1, 2]))
                                   + "no_such_face.jpg 1\n", source="list.txt")
    with pytest.raises(MissingFileError, match="1 of 4 images are missing") as err:
        ImageListDataset(with_missing, root)
    assert "no_such_face.jpg (line 4)" in str(err.value)
    skipping = ImageListDataset(with_missing, root, on_missing="skip", resize=(SIZE, SIZE))
    assert len(skipping) == 3 and skipping.skipped == 1
    raw, label = skipping[1]
    assert raw.dtype == torch.uint8 and label == 1
    np.testing.assert_array_equal(raw.numpy(), images[1])


@pytest.mark.shared
def test_image_list_dataset_names_the_list_line_of_a_corrupt_image(tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    dataset = ImageListDataset(ImageList.parse("broken.jpg 0\n", source="faces.txt"), tmp_path)
    with pytest.raises(AgegenderError, match="line 1 of faces.txt"):
        dataset[0]


@pytest.mark.shared
def test_image_list_dataset_as_an_image_data_layer(faces: tuple[Path, ImageList], tmp_path: Path) -> None:
    """ImageData (is_color: false, new_height/new_width) reads grey images and transforms them as cv::Mat:
    with mirror and a mean file the mean is not mirrored; a crop with a mean file as BVLC's does it."""
    import cv2

    root, image_list = faces
    mean = MeanImage(np.random.default_rng(3).random((1, SIZE, SIZE), dtype=np.float32) * 255, per_channel=False)
    transform = CaffeTransform(mirror=True, mean=mean, phase="TRAIN")
    dataset = ImageListDataset(image_list, root, transform, resize=(SIZE, SIZE), gray=True, layer="ImageData")
    grey = cv2.resize(cv2.imread(str(root / image_list.paths[0]), cv2.IMREAD_GRAYSCALE), (SIZE, SIZE),
                      interpolation=cv2.INTER_LINEAR).astype(np.float32)[None]
    seen = set()
    for epoch in range(8):
        dataset.set_epoch(epoch)
        image, _ = dataset[0]
        plain, flipped = grey - mean.values, grey[..., ::-1] - mean.values
        assert np.array_equal(image.numpy(), plain) or np.array_equal(image.numpy(), flipped)
        seen.add(bool(np.array_equal(image.numpy(), flipped)))
    assert seen == {False, True}
    raw = ImageListDataset(image_list, root, None, resize=(SIZE, SIZE), gray=True)[0][0]
    assert raw.shape == (1, SIZE, SIZE) and raw.dtype == torch.uint8
    cropping = ImageListDataset(image_list, root, CaffeTransform(crop_size=CROP, mean=mean), resize=(SIZE, SIZE),
                                gray=True, layer="ImageData")
    offset = (SIZE - CROP) // 2  # BVLC's arithmetic (that fork aborts here): the mean at the source pixel
    window = np.s_[:, offset:offset + CROP, offset:offset + CROP]
    assert np.array_equal(cropping[0][0].numpy(), grey[window] - mean.values[window])
    with pytest.raises(AgegenderError, match="layer must be"):
        ImageListDataset(image_list, root, layer="Window")


def test_transform_collate_of_decoded_images() -> None:
    mean = MeanImage(np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4), per_channel=False)
    collate_fn = TransformCollate(CaffeTransform(mirror=True, mean=mean), seed=1, from_mat=True)
    images = np.random.default_rng(0).integers(0, 256, (16, 2, 3, 4), dtype=np.uint8)
    out, _ = collate_fn([(torch.from_numpy(image), 0) for image in images])
    for image, result in zip(images.astype(np.float32), out.numpy()):
        assert np.array_equal(result, image - mean.values) or np.array_equal(result, image[..., ::-1] - mean.values)
    assert any(np.array_equal(r, i[..., ::-1] - mean.values) for i, r in zip(images.astype(np.float32), out.numpy()))
    import pickle

    assert pickle.loads(pickle.dumps(collate_fn)).from_mat


# --- GPUResidentDataset (on CPU tensors here) --------------------------------------------------------------
@pytest.mark.shared
@pytest.mark.parametrize("generator_kind", ["numpy", "torch"])
def test_resident_train_batches_equal_the_cpu_transform(face_lmdb: Path, stored: tuple[np.ndarray, np.ndarray],
                                                        generator_kind: str) -> None:
    images, labels = stored
    transform = train_transform()
    resident = GPUResidentDataset.from_lmdb(face_lmdb, transform, device="cpu", chunk=3)  # chunks of 3: 4 copies
    assert len(resident) == FACES and resident.image_shape == (3, SIZE, SIZE)
    assert torch.equal(resident.images, torch.from_numpy(images))

    def make_generator() -> np.random.Generator | torch.Generator:
        return np.random.default_rng(9) if generator_kind == "numpy" else torch.Generator().manual_seed(9)

    batches = list(resident.iterate(4, shuffle=True, generator=make_generator()))
    assert [len(b.indices) for b in batches] == [4, 4, 2]
    order = np.concatenate([b.indices for b in batches])
    assert sorted(order.tolist()) == list(range(FACES)) and order.tolist() != list(range(FACES))
    mirrors = np.concatenate([b.params.mirror for b in batches])
    assert mirrors.any() and not mirrors.all()
    for batch in batches:
        assert batch.images.dtype == torch.float32 and batch.images.device.type == "cpu"
        expected = transform.apply(images[batch.indices], batch.params)  # the numpy path, same choices
        np.testing.assert_array_equal(batch.images.numpy(), expected)
        np.testing.assert_array_equal(batch.labels.numpy(), labels[batch.indices])
    again = list(resident.iterate(4, shuffle=True, generator=make_generator()))
    assert all(np.array_equal(a.indices, b.indices) and torch.equal(a.images, b.images) for a, b in zip(batches, again))
    assert len(list(resident.iterate(4, drop_last=True))) == 2


@pytest.mark.shared
def test_resident_test_phase_equals_caffe_data_blob() -> None:
    """The device path on the 16 Caffe-written images with the AdienceNet TEST transform: real Caffe's blob."""
    shared = require_shared()
    sample = shared / "caffe-reference" / "lmdb_sample"
    net = read_net(sample / "trainval_adiencenet_age_net_definitions_test_fold_is_0.prototxt")
    transform = CaffeTransform.from_net(net, "TEST", mean_root=shared)
    resident = GPUResidentDataset.from_lmdb(sample / "resized", transform, device="cpu")
    batch = next(resident.iterate(4))
    np.testing.assert_array_equal(batch.indices, np.arange(4))
    expected = np.load(sample / "trainval_test_phase.npz")["adiencenet_data"]
    np.testing.assert_array_equal(batch.images.numpy(), expected)


def test_resident_dataset_checks_its_inputs() -> None:
    images = np.zeros((4, 3, 16, 16), dtype=np.uint8)
    with pytest.raises(AgegenderError, match="uint8"):
        GPUResidentDataset(images.astype(np.float32), [0] * 4, CaffeTransform(crop_size=8), device="cpu")
    with pytest.raises(AgegenderError, match="labels"):
        GPUResidentDataset(images, [0] * 3, CaffeTransform(crop_size=8), device="cpu")
    with pytest.raises(AgegenderError, match="larger than"):
        GPUResidentDataset(images, [0] * 4, CaffeTransform(crop_size=20), device="cpu")
    resident = GPUResidentDataset(images, np.arange(4), CaffeTransform(crop_size=8), device="cpu")
    with pytest.raises(IndexError):
        resident.batch([4])
    assert resident.batch([3, 1]).labels.tolist() == [3, 1]
