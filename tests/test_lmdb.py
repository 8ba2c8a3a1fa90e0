"""Datum LMDBs: reading Caffe-written LMDBs gives exactly what real Caffe read, our writer reproduces
``convert_imageset`` record for record (byte-identical keys and values), our mean reproduces
``compute_image_mean`` byte for byte, and bad inputs fail clearly without leaving misleading output."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest

from agegender.errors import AgegenderError, CaffemodelError, FileFormatError, MissingFileError
from agegender.folds.lmdb_io import (
    PARTIAL_SUFFIX,
    DatumLMDB,
    compute_image_mean,
    write_datum_lmdb,
)
from agegender.prototxt import Message, encode_message, read_blobproto

from .conftest import REPO, require_shared

# convert_imageset options that made each of the shared LMDBs
KINDS = {"raw": {}, "resized": {"resize": (256, 256)}, "encoded": {"encoded": True}}


# --- fixtures and helpers -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sample() -> Path:
    return require_shared("caffe-reference", "lmdb_sample")


@pytest.fixture(scope="module")
def faces() -> Path:
    return require_shared("faces", "utkface")


@pytest.fixture(scope="module")
def caffe_read(sample: Path) -> dict[str, np.ndarray]:
    """What real Caffe's Data layer read from the three LMDBs."""
    with np.load(sample / "read_by_caffe.npz") as archive:
        return {name: archive[name] for name in archive.files}


@pytest.fixture(scope="module")
def list_items(sample: Path) -> list[tuple[str, int]]:
    items = []
    for line in (sample / "list.txt").read_text().splitlines():
        name, label = line.split()
        items.append((name, int(label)))
    assert len(items) == 16
    return items


def plain_records(path: Path) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs, read with plain ``lmdb`` (no code of ours)."""
    env = lmdb.open(str(path), readonly=True, lock=False, readahead=False)
    try:
        with env.begin() as txn:
            return list(txn.cursor().iternext())
    finally:
        env.close()


def put_records(path: Path, records: dict[bytes, bytes]) -> Path:
    """A test LMDB holding ``records`` (written with plain ``lmdb``)."""
    env = lmdb.open(str(path), map_size=64 << 20)
    with env.begin(write=True) as txn:
        for key, value in records.items():
            txn.put(key, value)
    env.close()
    return path


def listing(folder: Path) -> dict[str, tuple[int, int, str]]:
    """name -> (size, mtime_ns, sha256) of every file in ``folder``."""
    out = {}
    for entry in sorted(folder.iterdir()):
        st = entry.stat()
        out[entry.name] = (st.st_size, st.st_mtime_ns, hashlib.sha256(entry.read_bytes()).hexdigest())
    return out


def protobuf_datum_class() -> type:
    """Caffe's Datum as a class of the official protobuf runtime: an independent parser."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="test_lmdb_datum.proto", package="test_lmdb", syntax="proto2")
    message = proto.message_type.add(name="Datum")
    for name, number, kind, label in [
        ("channels", 1, field.TYPE_INT32, field.LABEL_OPTIONAL), ("height", 2, field.TYPE_INT32, field.LABEL_OPTIONAL),
        ("width", 3, field.TYPE_INT32, field.LABEL_OPTIONAL), ("data", 4, field.TYPE_BYTES, field.LABEL_OPTIONAL),
        ("label", 5, field.TYPE_INT32, field.LABEL_OPTIONAL), ("float_data", 6, field.TYPE_FLOAT, field.LABEL_REPEATED),
        ("encoded", 7, field.TYPE_BOOL, field.LABEL_OPTIONAL),
    ]:
        message.field.add(name=name, number=number, type=kind, label=label)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("test_lmdb.Datum"))


def expected_keys(items: list[tuple[str, int]]) -> list[str]:
    return [f"{i:08d}_{name}" for i, (name, _) in enumerate(items)]


def read_all(path: Path, **kwargs: str) -> tuple[list[str], np.ndarray, list[int]]:
    with DatumLMDB(path, **kwargs) as db:
        records = list(db)
    return [r.key for r in records], np.stack([r.image for r in records]), [r.label for r in records]


def raw_datum(image_chw: np.ndarray, label: int = 0) -> bytes:
    datum = Message("Datum")
    datum.channels, datum.height, datum.width = image_chw.shape
    datum.data = np.ascontiguousarray(image_chw, dtype=np.uint8).tobytes()
    datum.label = label
    return encode_message(datum)


# --- reading Caffe's LMDBs ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_reads_caffe_written_lmdb_exactly(kind: str, sample: Path, caffe_read: dict, list_items: list) -> None:
    folder = sample / kind
    before = listing(folder)
    with DatumLMDB(folder) as db:
        assert len(db) == 16
        assert db.keys == expected_keys(list_items)
        records = list(db)
        assert db[5].key == records[5].key and np.array_equal(db[5].image, records[5].image)
        assert db[-16].key == records[0].key
        with pytest.raises(IndexError):
            db[16]
    images = np.stack([r.image for r in records])
    assert images.dtype == np.uint8 and images.shape == caffe_read[f"{kind}_data"].shape
    assert np.abs(images.astype(np.float32) - caffe_read[f"{kind}_data"]).max() == 0
    labels = np.array([r.label for r in records], dtype=np.float32)
    assert np.array_equal(labels, caffe_read[f"{kind}_label"])
    assert labels.tolist() == [float(label) for _, label in list_items]
    assert listing(folder) == before and "lock.mdb" not in before


def test_reading_creates_nothing_in_a_writable_folder(tmp_path: Path, sample: Path) -> None:
    for name in ("raw", "encoded"):
        (tmp_path / name).mkdir()
        shutil.copyfile(sample / name / "data.mdb", tmp_path / name / "data.mdb")
    before = listing(tmp_path / "raw")
    with DatumLMDB(tmp_path / "raw") as db:
        list(db)
        db[3]
    compute_image_mean(tmp_path / "raw")
    assert listing(tmp_path / "raw") == before == {"data.mdb": before["data.mdb"]}
    # the check can fail: LMDB's default read-only open does create lock.mdb in such a folder
    lmdb.open(str(tmp_path / "encoded"), readonly=True).close()
    assert (tmp_path / "encoded" / "lock.mdb").exists()


def test_record_access_survives_pickling(sample: Path) -> None:
    with DatumLMDB(sample / "raw") as db:
        clone = pickle.loads(pickle.dumps(db))
        assert clone.keys == db.keys
        assert np.array_equal(clone[7].image, db[7].image)
        clone.close()


# --- writing like convert_imageset --------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_writer_reproduces_convert_imageset(
    kind: str, tmp_path: Path, sample: Path, faces: Path, caffe_read: dict, list_items: list
) -> None:
    out = tmp_path / kind
    seen: list[tuple[int, int]] = []
    report = write_datum_lmdb(out, list_items, root=faces, progress=lambda d, t: seen.append((d, t)), **KINDS[kind])
    assert (report.written, report.resumed, report.unreadable) == (16, 0, [])
    assert seen == [(i, 16) for i in range(1, 17)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [kind]  # no .partial left
    assert set(os.listdir(out)) <= {"data.mdb", "lock.mdb"}

    ours, caffes = plain_records(out), plain_records(sample / kind)
    assert [k for k, _ in ours] == [k.encode() for k in expected_keys(list_items)]
    assert ours == caffes  # every key and serialized Datum byte-identical to convert_imageset's

    keys, images, labels = read_all(out)
    assert keys == expected_keys(list_items) and labels == [label for _, label in list_items]
    assert np.abs(images.astype(np.float32) - caffe_read[f"{kind}_data"]).max() == 0

    datum_class = protobuf_datum_class()
    for (key, value), (name, label) in zip(ours, list_items):
        datum = datum_class.FromString(value)
        assert datum.label == label
        if kind == "encoded":
            assert datum.encoded and not datum.HasField("channels")
            assert datum.data == (faces / name).read_bytes()
    if kind != "encoded":
        parsed = np.stack([
            np.frombuffer(d.data, np.uint8).reshape(d.channels, d.height, d.width)
            for d in (datum_class.FromString(v) for _, v in ours)
        ])
        assert np.abs(parsed.astype(np.float32) - caffe_read[f"{kind}_data"]).max() == 0


def test_writer_takes_a_read_image_list(tmp_path: Path, sample: Path, faces: Path) -> None:
    from agegender.folds import read_image_list

    report = write_datum_lmdb(tmp_path / "raw", read_image_list(sample / "list.txt"), root=faces)
    assert report.written == 16
    assert plain_records(tmp_path / "raw") == plain_records(sample / "raw")


def test_shuffle_is_seeded_and_keys_follow_the_shuffled_order(
    tmp_path: Path, faces: Path, caffe_read: dict, list_items: list
) -> None:
    first = write_datum_lmdb(tmp_path / "a", list_items, shuffle=True, seed=7, root=faces)
    write_datum_lmdb(tmp_path / "b", list_items, shuffle=True, seed=7, root=faces)
    assert first.written == 16
    assert plain_records(tmp_path / "a") == plain_records(tmp_path / "b")
    keys, images, labels = read_all(tmp_path / "a")
    names = [key.split("_", 1)[1] for key in keys]
    assert [key[:9] for key in keys] == [f"{i:08d}_" for i in range(16)]
    assert sorted(names) == sorted(name for name, _ in list_items) and names != [n for n, _ in list_items]
    position = {name: i for i, (name, _) in enumerate(list_items)}
    for name, image in zip(names, images):
        assert np.array_equal(image.astype(np.float32), caffe_read["raw_data"][position[name]])


def test_encoded_with_resize_or_encode_type_reencodes(tmp_path: Path, faces: Path, caffe_read: dict,
                                                      list_items: list) -> None:
    items = list_items[:3]
    write_datum_lmdb(tmp_path / "small", items, resize=(64, 48), encoded=True, root=faces)
    for (key, value), (name, _) in zip(plain_records(tmp_path / "small"), items):
        resized = cv2.resize(cv2.imread(str(faces / name), cv2.IMREAD_COLOR), (48, 64), interpolation=cv2.INTER_LINEAR)
        datum = protobuf_datum_class().FromString(value)
        assert datum.encoded and datum.data[:2] == b"\xff\xd8"
        assert datum.data == cv2.imencode(".jpg", resized)[1].tobytes()
        # EncodeCVMatToDatum sets the encoded image's channels, height and width too
        assert (datum.channels, datum.height, datum.width) == (3, 64, 48)
    assert read_all(tmp_path / "small")[1].shape == (3, 3, 64, 48)

    report = write_datum_lmdb(tmp_path / "png", items, encode_type="PNG", root=faces)  # implies encoded
    assert report.written == 3
    for _, value in plain_records(tmp_path / "png"):
        datum = protobuf_datum_class().FromString(value)
        assert datum.data[:4] == b"\x89PNG" and (datum.channels, datum.height, datum.width) == (3, 200, 200)
    _, images, _ = read_all(tmp_path / "png")  # lossless: exactly the decoded JPEGs
    assert np.array_equal(images.astype(np.float32), caffe_read["raw_data"][:3])


def test_encode_type_of_the_files_extension_keeps_their_bytes(tmp_path: Path, sample: Path, faces: Path,
                                                              list_items: list) -> None:
    """matchExt compares the extension without its dot: --encode_type=jpg on .jpg files stores the files
    (the LMDB is then the one --encoded alone writes), and jpg also matches .jpeg; ".jpg" matches nothing."""
    write_datum_lmdb(tmp_path / "jpg", list_items, encode_type="jpg", root=faces)
    assert plain_records(tmp_path / "jpg") == plain_records(sample / "encoded")
    write_datum_lmdb(tmp_path / "JPG", list_items[:2], encode_type="JPG", root=faces)
    assert plain_records(tmp_path / "JPG") == plain_records(sample / "encoded")[:2]
    (tmp_path / "img").mkdir()
    shutil.copyfile(faces / list_items[0][0], tmp_path / "img" / "a.jpeg")
    write_datum_lmdb(tmp_path / "jpeg", [("a.jpeg", 4)], encode_type="jpg", root=tmp_path / "img")
    datum = protobuf_datum_class().FromString(plain_records(tmp_path / "jpeg")[0][1])
    assert datum.data == (tmp_path / "img" / "a.jpeg").read_bytes() and not datum.HasField("channels")
    write_datum_lmdb(tmp_path / "guess", [("a.jpeg", 4)], encoded=True, root=tmp_path / "img")  # guess "jpeg"
    assert plain_records(tmp_path / "guess") == plain_records(tmp_path / "jpeg")
    write_datum_lmdb(tmp_path / "dot", [("a.jpeg", 4)], encode_type=".jpg", root=tmp_path / "img")
    datum = protobuf_datum_class().FromString(plain_records(tmp_path / "dot")[0][1])
    assert datum.data != (tmp_path / "img" / "a.jpeg").read_bytes() and datum.channels == 3  # re-encoded


def test_reused_datum_carries_the_shape_of_the_last_reencoded_image(tmp_path: Path) -> None:
    """convert_imageset fills one Datum: a file stored as it is (ReadFileToDatum) keeps the channels,
    height and width that the last re-encoded image (EncodeCVMatToDatum) set, also across a resume."""
    rng = np.random.default_rng(4)
    names = ["a.png", "b.jpg", "c.png", "d.png"]
    for index, name in enumerate(names):
        cv2.imwrite(str(tmp_path / name), rng.integers(0, 256, (10 + index, 20, 3), dtype=np.uint8))
    items = [(name, index) for index, name in enumerate(names)]
    write_datum_lmdb(tmp_path / "out", items, encode_type="png", root=tmp_path)
    datums = [protobuf_datum_class().FromString(v) for _, v in plain_records(tmp_path / "out")]
    assert not datums[0].HasField("channels") and datums[0].data == (tmp_path / "a.png").read_bytes()
    assert (datums[1].channels, datums[1].height, datums[1].width) == (3, 11, 20) and datums[1].data[:4] == b"\x89PNG"
    for datum, name in zip(datums[2:], names[2:]):  # the files' bytes, with b.jpg's shape left in the Datum
        assert datum.data == (tmp_path / name).read_bytes()
        assert (datum.channels, datum.height, datum.width) == (3, 11, 20)
    assert [d.label for d in datums] == [0, 1, 2, 3]

    def stop(done: int, total: int) -> None:
        if done == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        write_datum_lmdb(tmp_path / "again", items, encode_type="png", root=tmp_path, commit_every=1, progress=stop)
    write_datum_lmdb(tmp_path / "again", items, encode_type="png", root=tmp_path, commit_every=1)
    assert plain_records(tmp_path / "again") == plain_records(tmp_path / "out")


def test_gray_writes_one_channel_datums(tmp_path: Path, faces: Path, list_items: list) -> None:
    items = list_items[:2]
    write_datum_lmdb(tmp_path / "g", items, resize=(32, 24), gray=True, root=faces)
    for (_, value), (name, _) in zip(plain_records(tmp_path / "g"), items):
        datum = protobuf_datum_class().FromString(value)
        grey = cv2.resize(cv2.imread(str(faces / name), cv2.IMREAD_GRAYSCALE), (24, 32), interpolation=cv2.INTER_LINEAR)
        assert (datum.channels, datum.height, datum.width) == (1, 32, 24) and datum.data == grey.tobytes()
    # --gray --encoded without resize still stores the colour JPEG file as it is
    write_datum_lmdb(tmp_path / "ge", items, encoded=True, gray=True, root=faces)
    assert [v for _, v in plain_records(tmp_path / "ge")] == [
        encode_message(Message("Datum", data=(faces / name).read_bytes(), label=label, encoded=True))
        for name, label in items]


def test_keys_number_the_list_files_lines_as_convert_imageset(tmp_path: Path, faces: Path, list_items: list) -> None:
    """convert_imageset's line_id counts every line of the list: blank lines and images it skips leave
    their numbers unused."""
    from agegender.folds import read_image_list

    names = [name for name, _ in list_items[:3]]
    list_file = tmp_path / "list.txt"
    list_file.write_text(f"{names[0]} 1\n\n{names[1]} 2\n   \nmissing.jpg 0\n{names[2]} 3\n")
    entries = read_image_list(list_file)
    write_datum_lmdb(tmp_path / "out", entries, root=faces, skip_unreadable=True)
    keys = [k.decode() for k, _ in plain_records(tmp_path / "out")]
    assert keys == [f"00000000_{names[0]}", f"00000002_{names[1]}", f"00000005_{names[2]}"]
    # plain pairs are numbered by position, and a shuffled list by its shuffled position
    write_datum_lmdb(tmp_path / "pairs", [(e.path, e.label) for e in entries if e.path != "missing.jpg"], root=faces)
    assert [k[:8] for k, _ in plain_records(tmp_path / "pairs")] == [b"00000000", b"00000001", b"00000002"]
    write_datum_lmdb(tmp_path / "shuffled", entries.select([e.path != "missing.jpg" for e in entries]), root=faces,
                     shuffle=True)
    assert sorted(k[:8] for k, _ in plain_records(tmp_path / "shuffled")) == [b"00000000", b"00000001", b"00000002"]


def test_map_size_grows_as_needed(tmp_path: Path, sample: Path, faces: Path, list_items: list) -> None:
    report = write_datum_lmdb(tmp_path / "r", list_items, resize=(256, 256), root=faces,
                              initial_map_size=1 << 20, commit_every=5)
    assert report.map_size > 3 << 20  # 16 x 192 KiB of records
    assert plain_records(tmp_path / "r") == plain_records(sample / "resized")


# --- compute_image_mean -------------------------------------------------------------------------------
def test_mean_equals_compute_image_mean(tmp_path: Path, sample: Path, faces: Path, caffe_read: dict,
                                        list_items: list) -> None:
    caffe_mean = read_blobproto(sample / "mean.binaryproto")
    mean = compute_image_mean(sample / "resized", tmp_path / "mean.binaryproto")
    assert mean.shape == (1, 3, 256, 256) and mean.dtype == np.float32
    assert np.abs(mean - caffe_mean).max() == 0
    assert (tmp_path / "mean.binaryproto").read_bytes() == (sample / "mean.binaryproto").read_bytes()

    write_datum_lmdb(tmp_path / "ours", list_items, resize=(256, 256), root=faces)
    assert np.array_equal(compute_image_mean(tmp_path / "ours"), caffe_mean)
    # encoded records are decoded before summing, as DecodeDatumNative does
    expected = caffe_read["raw_data"].sum(axis=0, dtype=np.float32)[None] / np.float32(16)
    assert np.array_equal(compute_image_mean(sample / "encoded"), expected)
    assert np.array_equal(compute_image_mean(sample / "raw"), expected)


def test_float_data_records_and_their_mean(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    arrays = rng.normal(100.0, 50.0, size=(5, 2, 3, 4)).astype(np.float32)
    records = {}
    for i, array in enumerate(arrays):
        datum = Message("Datum", channels=2, height=3, width=4, label=i - 2)
        datum.float_data = list(array.ravel())  # Caffe's float_data is not packed
        records[f"{i:08d}_f".encode()] = encode_message(datum)
    put_records(tmp_path / "f", records)
    keys, images, labels = read_all(tmp_path / "f")
    assert images.dtype == np.float32 and np.array_equal(images, arrays)
    assert labels == [-2, -1, 0, 1, 2]
    running = np.zeros((2, 3, 4), np.float32)
    for array in arrays:  # Caffe adds each image to a float32 sum
        running += array
    assert np.array_equal(compute_image_mean(tmp_path / "f")[0], running / np.float32(5))


# --- bad inputs ---------------------------------------------------------------------------------------
def test_missing_folder_or_not_an_lmdb(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="not found"):
        DatumLMDB(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("hello")
    with pytest.raises(FileFormatError, match="found a file"):
        DatumLMDB(tmp_path / "file.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileFormatError, match="no data.mdb") as info:
        DatumLMDB(empty)
    assert info.value.path == str(empty)
    bogus = tmp_path / "bogus"
    bogus.mkdir()
    (bogus / "data.mdb").write_bytes(b"name: 'not an lmdb'\n" * 500)
    with pytest.raises(FileFormatError, match="not a readable LMDB") as info:
        DatumLMDB(bogus)
    assert info.value.path == str(bogus)
    leveldb = tmp_path / "leveldb"
    leveldb.mkdir()
    (leveldb / "CURRENT").write_text("MANIFEST-000001\n")
    with pytest.raises(FileFormatError, match="LevelDB"):
        DatumLMDB(leveldb)
    assert os.listdir(empty) == [] and sorted(os.listdir(bogus)) == ["data.mdb"]
    with pytest.raises(FileFormatError, match="no records"):
        compute_image_mean(put_records(tmp_path / "none", {}))


def test_datum_of_the_wrong_shape_names_its_key(tmp_path: Path) -> None:
    good = raw_datum(np.zeros((3, 4, 4), np.uint8))
    short = Message("Datum", channels=3, height=4, width=4, data=bytes(47), label=1)
    floats = Message("Datum", channels=1, height=2, width=2, label=1)
    floats.float_data = [1.0, 2.0, 3.0]
    path = put_records(tmp_path / "bad", {
        b"00000000_ok.jpg": good, b"00000001_short.jpg": encode_message(short),
        b"00000002_floats.jpg": encode_message(floats), b"00000003_junk.jpg": b"\xff\xff\xff\xff garbage",
    })
    with DatumLMDB(path) as db:
        assert db[0].image.shape == (3, 4, 4)
        with pytest.raises(CaffemodelError, match="'00000001_short.jpg': a Datum of the wrong shape") as info:
            db[1]
        assert "48 bytes but data holds 47" in str(info.value) and info.value.path == str(path)
        with pytest.raises(CaffemodelError, match="00000002_floats.jpg.*wrong shape.*4 values.*holds 3"):
            db[2]
        with pytest.raises(CaffemodelError, match="record '00000003_junk.jpg' is not a Datum"):
            db[3]
        with pytest.raises(CaffemodelError, match="00000001_short.jpg"):
            list(db)
    with pytest.raises(CaffemodelError, match="00000001_short.jpg"):
        compute_image_mean(path)


def test_images_of_different_sizes_have_no_mean(tmp_path: Path) -> None:
    path = put_records(tmp_path / "mixed", {
        b"00000000_a": raw_datum(np.ones((3, 4, 4), np.uint8)), b"00000001_b": raw_datum(np.ones((3, 5, 4), np.uint8)),
    })
    with pytest.raises(CaffemodelError, match="'00000001_b' is 3 x 5 x 4 but the first"):
        compute_image_mean(path)


def test_mean_of_records_with_as_many_values_in_another_shape(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """compute_image_mean checks only the number of values (CHECK_EQ(size_in_datum, data_size)): a
    4 x 5 record after a 5 x 4 one is added value by value, into the first record's shape."""
    first = np.arange(3 * 5 * 4, dtype=np.uint8).reshape(3, 5, 4)
    second = (np.arange(3 * 4 * 5, dtype=np.uint8)[::-1] * 3).reshape(3, 4, 5)
    path = put_records(tmp_path / "m", {b"00000000_a": raw_datum(first), b"00000001_b": raw_datum(second)})
    with caplog.at_level("WARNING"):
        mean = compute_image_mean(path)
    expected = (first.astype(np.float32) + second.reshape(3, 5, 4)) / np.float32(2)
    assert mean.shape == (1, 3, 5, 4) and np.array_equal(mean[0], expected)
    assert "00000001_b" in caplog.text


def test_printed_mean_values_sum_each_channel_in_float32_order() -> None:
    from agegender.folds.lmdb_io import printed_mean_values

    rng = np.random.default_rng(9)
    mean = (rng.random((1, 3, 30, 40)) * 255).astype(np.float32)
    mean[0, 1, 0, 0] = 3e7  # large first value: float32 running sums then lose the small ones' low bits
    expected = []
    for channel in mean[0]:  # compute_image_mean: mean_values[c] += sum_blob.data(dim * c + i), float
        total = np.float32(0)
        for value in channel.reshape(-1):
            total = np.float32(total + value)
        expected.append(np.float32(total / np.float32(channel.size)))
    got = printed_mean_values(mean)
    assert got.dtype == np.float32 and np.array_equal(got, np.array(expected, dtype=np.float32))
    assert not np.array_equal(got[1], np.float32(mean[0, 1].astype(np.float64).mean()))  # the check can fail
    assert np.array_equal(printed_mean_values(mean[0]), got)


def test_corrupt_encoded_image_names_its_key(tmp_path: Path, faces: Path, list_items: list) -> None:
    jpeg = (faces / list_items[0][0]).read_bytes()
    records = {}
    for index, data in enumerate([jpeg, jpeg[: len(jpeg) // 2], jpeg[:2] + bytes(200), b""]):
        records[f"{index:08d}_x.jpg".encode()] = encode_message(Message("Datum", data=data, label=0, encoded=True))
    path = put_records(tmp_path / "enc", records)
    with DatumLMDB(path) as db:
        assert db[0].image.shape == (3, 200, 200)
        for index in (1, 2):
            with pytest.raises(CaffemodelError, match=f"'{index:08d}_x.jpg'.*cannot be decoded"):
                db[index]
        with pytest.raises(CaffemodelError, match="'00000003_x.jpg': an encoded Datum with no image bytes"):
            db[3]


def test_encoded_grey_image_decodes_as_the_data_layer_does(tmp_path: Path) -> None:
    grey = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    png = cv2.imencode(".png", grey)[1].tobytes()
    path = put_records(tmp_path / "g", {b"00000000_g.png": encode_message(Message("Datum", data=png, encoded=True))})
    native = DatumLMDB(path)[0].image  # Caffe's default: cv::imdecode(-1) keeps one channel
    color = DatumLMDB(path, decode="color")[0].image  # transform_param.force_color
    assert native.shape == (1, 12, 10) and np.array_equal(native[0], grey)
    assert color.shape == (3, 12, 10) and all(np.array_equal(c, grey) for c in color)
    assert np.array_equal(DatumLMDB(path, decode="gray")[0].image, native)
    with pytest.raises(AgegenderError, match="decode must be"):
        DatumLMDB(path, decode="rgb")


class Interrupted(Exception):
    pass


def test_interrupted_write_leaves_no_output_and_resumes(tmp_path: Path, sample: Path, faces: Path,
                                                        list_items: list) -> None:
    out = tmp_path / "resized"
    partial = tmp_path / ("resized" + PARTIAL_SUFFIX)

    def stop_after_ten(done: int, total: int) -> None:
        if done == 10:
            raise Interrupted

    with pytest.raises(Interrupted):
        write_datum_lmdb(out, list_items, (256, 256), root=faces, commit_every=4, progress=stop_after_ten)
    assert not out.exists() and partial.is_dir()
    assert len(plain_records(partial)) == 10  # the images read before the interruption are kept

    with pytest.raises(AgegenderError, match="other settings.*resize"):
        write_datum_lmdb(out, list_items, root=faces, commit_every=4)  # no resize: must not mix
    seen: list[tuple[int, int]] = []
    report = write_datum_lmdb(out, list_items, (256, 256), root=faces, commit_every=4,
                              progress=lambda d, t: seen.append((d, t)))
    assert (report.resumed, report.written) == (10, 6)
    assert seen[0] == (10, 16) and seen[-1] == (16, 16) and len(seen) == 7
    assert not partial.exists() and set(os.listdir(out)) <= {"data.mdb", "lock.mdb"}
    assert plain_records(out) == plain_records(sample / "resized")


def test_killed_write_keeps_whole_batches_and_resumes(tmp_path: Path, sample: Path, faces: Path,
                                                      list_items: list) -> None:
    out = tmp_path / "raw"
    script = textwrap.dedent(f"""
        import os
        from agegender.folds.lmdb_io import write_datum_lmdb
        items = {list_items!r}
        def die(done, total):
            if done == 10:
                os._exit(3)  # like kill -9: no exception handler, no cleanup
        write_datum_lmdb({str(out)!r}, items, root={str(faces)!r}, commit_every=4, progress=die)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    partial = tmp_path / ("raw" + PARTIAL_SUFFIX)
    assert not out.exists()
    assert len(plain_records(partial)) == 8  # two committed transactions of 4; the third never committed
    report = write_datum_lmdb(out, list_items, root=faces, commit_every=4)
    assert (report.resumed, report.written) == (8, 8)
    assert plain_records(out) == plain_records(sample / "raw")


def test_missing_image_fails_before_writing_or_is_skipped_like_caffe(tmp_path: Path, faces: Path,
                                                                     list_items: list) -> None:
    items = list_items[:3] + [("missing.jpg", 2)] + list_items[3:6]
    with pytest.raises(MissingFileError, match="missing.jpg"):
        write_datum_lmdb(tmp_path / "out", items, root=faces)
    assert list(tmp_path.iterdir()) == []
    report = write_datum_lmdb(tmp_path / "out", items, root=faces, skip_unreadable=True)
    assert (report.written, report.unreadable) == (6, ["missing.jpg"])
    keys = [k.decode() for k, _ in plain_records(tmp_path / "out")]
    assert [k[:8] for k in keys] == ["00000000", "00000001", "00000002", "00000004", "00000005", "00000006"]


def test_existing_output_and_foreign_partial_are_not_overwritten(tmp_path: Path, faces: Path,
                                                                 list_items: list) -> None:
    out = tmp_path / "out"
    write_datum_lmdb(out, list_items[:2], root=faces)
    with pytest.raises(AgegenderError, match="already exists"):
        write_datum_lmdb(out, list_items[:4], root=faces)
    assert len(plain_records(out)) == 2
    write_datum_lmdb(out, list_items[:4], root=faces, overwrite=True)
    assert len(plain_records(out)) == 4 and sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    foreign = tmp_path / ("other" + PARTIAL_SUFFIX)
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(AgegenderError, match="not started by this writer"):
        write_datum_lmdb(tmp_path / "other", list_items[:2], root=faces)
    assert os.listdir(foreign) == ["notes.txt"]


@pytest.mark.parametrize("bad, message", [
    ({"items": [("a.jpg", 1.5)]}, "label must be an integer"),
    ({"items": [("a\nb.jpg", 1)]}, "line break"),
    ({"items": [("a.jpg", 1 << 31)]}, "int32"),
    ({"resize": (256, 0)}, "two positive sizes"),
    ({"encode_type": "nope"}, "cannot encode"),
    ({"items": [("noext", 1)], "encoded": True}, "cannot guess the encoding"),
])
def test_bad_writer_arguments(tmp_path: Path, faces: Path, list_items: list, bad: dict, message: str) -> None:
    if bad.get("items") == [("noext", 1)]:
        shutil.copyfile(faces / list_items[0][0], tmp_path / "noext")
        faces = tmp_path
    kwargs = {"items": list_items[:1], "root": faces, **bad}
    with pytest.raises(AgegenderError, match=message):
        write_datum_lmdb(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_readers_of_one_folder_share_it_and_workers_reopen_it(sample: Path, caffe_read: dict) -> None:
    import torch.utils.data

    first, second = DatumLMDB(sample / "raw"), DatumLMDB(sample / "raw")  # LMDB allows one open per process
    assert np.array_equal(compute_image_mean(sample / "raw")[0], caffe_read["raw_data"].mean(axis=0))
    first.close()
    assert np.array_equal(second[2].image, caffe_read["raw_data"][2])
    # forked DataLoader workers cannot use the parent's environment; each opens its own
    loader = torch.utils.data.DataLoader(second, batch_size=4, num_workers=2)
    batches = list(loader)
    assert np.array_equal(torch.cat([b.image for b in batches]).numpy(), caffe_read["raw_data"])
    assert [key for b in batches for key in b.key] == second.keys
    second.close()


# --- decoding flags: EXIF orientation, alpha, 16 bits -------------------------------------------------
def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """``jpeg`` with an APP1 Exif segment holding only the Orientation tag."""
    import struct

    tiff = b"MM\x00\x2a\x00\x00\x00\x08" + struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
    payload = b"Exif\x00\x00" + tiff + b"\x00\x00\x00\x00"
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def test_exif_orientation_follows_the_opencv_flags_caffe_passes(tmp_path: Path) -> None:
    """imread/imdecode with IMREAD_COLOR or IMREAD_GRAYSCALE apply the EXIF orientation, IMREAD_UNCHANGED
    (-1, DecodeDatumToCVMatNative) does not: a raw LMDB holds the rotated image, an --encoded one the
    file, which the Data layer decodes unrotated unless force_color/force_gray is set."""
    image = np.zeros((20, 40, 3), np.uint8)
    image[:5, :10] = 255
    (tmp_path / "rot.jpg").write_bytes(_with_exif_orientation(cv2.imencode(".jpg", image)[1].tobytes(), 6))
    write_datum_lmdb(tmp_path / "raw", [("rot.jpg", 0)], root=tmp_path)
    write_datum_lmdb(tmp_path / "enc", [("rot.jpg", 0)], encoded=True, root=tmp_path)
    raw = read_all(tmp_path / "raw")[1][0]
    assert raw.shape == (3, 40, 20)  # rotated by imread(IMREAD_COLOR)
    assert np.array_equal(raw, cv2.imread(str(tmp_path / "rot.jpg"), cv2.IMREAD_COLOR).transpose(2, 0, 1))
    assert protobuf_datum_class().FromString(plain_records(tmp_path / "enc")[0][1]).data == \
        (tmp_path / "rot.jpg").read_bytes()
    assert read_all(tmp_path / "enc")[1].shape == (1, 3, 20, 40)  # native: not rotated
    assert np.array_equal(read_all(tmp_path / "enc", decode="color")[1][0], raw)
    assert read_all(tmp_path / "enc", decode="gray")[1].shape == (1, 1, 40, 20)
    assert compute_image_mean(tmp_path / "enc").shape == (1, 3, 20, 40)  # DecodeDatumNative


def test_alpha_and_16_bit_pngs_in_encoded_datums(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    bgra = rng.integers(0, 256, (6, 7, 4), dtype=np.uint8)
    deep = rng.integers(0, 65536, (6, 7, 3), dtype=np.uint16)
    path = put_records(tmp_path / "p", {
        b"00000000_a.png": encode_message(Message("Datum", data=cv2.imencode(".png", bgra)[1].tobytes(), encoded=True)),
        b"00000001_d.png": encode_message(Message("Datum", data=cv2.imencode(".png", deep)[1].tobytes(), encoded=True)),
    })
    with DatumLMDB(path) as db:  # imdecode(-1): four channels kept
        assert np.array_equal(db[0].image, bgra.transpose(2, 0, 1))
        with pytest.raises(CaffemodelError, match="'00000001_d.png'.*uint16.*8 bits"):  # CHECK(depth == CV_8U)
            db[1]
    with DatumLMDB(path, decode="color") as db:  # IMREAD_COLOR: 3 channels of 8 bits
        assert np.array_equal(db[0].image, bgra[..., :3].transpose(2, 0, 1))
        assert db[1].image.dtype == np.uint8 and db[1].image.shape == (3, 6, 7)
