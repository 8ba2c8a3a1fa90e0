"""The LMDB builders (``agegender.folds.build``) and ``agegender data ...``, end to end over a tiny
Adience-shaped tree made from real face images: per-fold LMDBs and the fold mean, resuming an interrupted
build to identical output, missing and corrupt images (fail or skip), list files, and the CLI's errors."""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest
from typer.testing import CliRunner

from agegender.cli import app
from agegender.errors import AgegenderError, FileFormatError, MissingFileError, ZooError
from agegender.folds import DatumLMDB, ImageList
from agegender.folds.build import build_fold, build_from_list, fold_layout, lmdb_info
from agegender.folds.lmdb_io import PARTIAL_SUFFIX
from agegender.prototxt import read_blobproto

from .conftest import require_shared

_RUNNER_KW = {"mix_stderr": False} if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters else {}
SIZE = 32  # the builds resize to 32 x 32: small and fast, and still a real resize of the 200 x 200 chips
IMAGES = 20
FOLD_LISTS = "train_val_txt_files_per_fold"  # the aligned variant's folder


def run_cli(*args: object, env: dict[str, str] | None = None):
    return CliRunner(**_RUNNER_KW).invoke(app, [str(a) for a in args], env=env)


def error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and lines[0].startswith("agegender: error: ")
    return lines[0]


# --- the tiny Adience tree ----------------------------------------------------------------------------
class Tree:
    """``images/USER/landmark_aligned_face.ID.NAME`` files and ``folds/<aligned>/test_fold_is_K/`` lists.

    Image i belongs to user i % 5 and to test fold i % 5; fold K's val list is fold (K+1)'s test images
    minus one, its train list all the others. Age label i % 8, gender label i % 2.
    """

    def __init__(self, root: Path, faces: Path) -> None:
        self.images = root / "images"
        self.folds = root / "folds"
        sources = sorted(faces.glob("*.jpg"))[:IMAGES]
        assert len(sources) == IMAGES
        self.paths = []
        for index, source in enumerate(sources):
            path = f"user{index % 5}@N0{index % 3}/landmark_aligned_face.{100 + index}.{source.name}"
            (self.images / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, self.images / path)
            self.paths.append(path)
        for fold in range(5):
            folder = self.folds / FOLD_LISTS / f"test_fold_is_{fold}"
            folder.mkdir(parents=True)
            for target in ("age", "gender"):
                for split, indices in self.split_indices(fold).items():
                    text = "".join(f"{self.paths[i]} {self.label(target, i)}\n" for i in indices)
                    (folder / f"{target}_{split}.txt").write_text(text)

    @staticmethod
    def split_indices(fold: int) -> dict[str, list[int]]:
        test = [i for i in range(IMAGES) if i % 5 == fold]
        val = [i for i in range(IMAGES) if i % 5 == (fold + 1) % 5][:-1]
        train = [i for i in range(IMAGES) if i not in test and i not in val]
        return {"train": train, "val": val, "test": test}

    @staticmethod
    def label(target: str, index: int) -> int:
        return index % 8 if target == "age" else index % 2

    def image(self, index: int, root: Path | None = None) -> np.ndarray:
        """Image ``index`` as the builder stores it: imread, resized to SIZE x SIZE, C x H x W."""
        bgr = cv2.imread(str((root or self.images) / self.paths[index]), cv2.IMREAD_COLOR)
        return cv2.resize(bgr, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)

    def copy_images(self, destination: Path) -> Path:
        shutil.copytree(self.images, destination)
        return destination


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    return Tree(tmp_path_factory.mktemp("adience"), require_shared("faces", "utkface"))


def plain_records(path: Path) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs, read with plain ``lmdb``."""
    env = lmdb.open(str(path), readonly=True, lock=False, readahead=False)
    try:
        with env.begin() as txn:
            return list(txn.cursor().iternext())
    finally:
        env.close()


def snapshot(out: Path) -> dict[str, object]:
    """Every LMDB's records and every other file's bytes under ``out`` (relative path -> content)."""
    found: dict[str, object] = {}
    for path in sorted(out.rglob("*")):
        if path.is_dir() and (path / "data.mdb").is_file():
            found[str(path.relative_to(out))] = plain_records(path)
        elif path.is_file() and not path.parent.name.endswith("_lmdb"):
            found[str(path.relative_to(out))] = path.read_bytes()
    return found


class Interrupted(Exception):
    pass


# --- building a fold ----------------------------------------------------------------------------------
@pytest.mark.parametrize("variant, suffix", [("aligned", ""), ("mixed", "_mixed"), ("unaligned", "_unaligned")])
def test_layout_is_the_one_lapuschkins_train_val_files_name(variant: str, suffix: str) -> None:
    definitions = require_shared("adience", "model_definitions")
    out = Path("/data")
    for target in ("age", "gender"):
        text = (definitions / f"{target}_net_definitions{suffix}" / "train_val_test_fold_is_3.prototxt").read_text()
        sources = re.findall(r'source:\s*"([^"]+)"', text)
        mean_files = set(re.findall(r'mean_file:\s*"([^"]+)"', text))
        assert sources and len(mean_files) == 1
        layout = fold_layout(out, 3, variant)
        ours = {str(layout.lmdb(target, split).relative_to(out)) for split in ("train", "val", "test")}
        for source in sources:  # .../AgeGenderDeepLearning/lmdb_mixed/Test_fold_is_3/age_train_lmdb
            assert source.split("/AgeGenderDeepLearning/")[1] in ours
        assert mean_files.pop().split("/AgeGenderDeepLearning/")[1] == str(layout.mean_file.relative_to(out))


def test_fold_lmdbs_hold_the_lists_images_and_the_mean_is_the_train_mean(tree: Tree, tmp_path: Path) -> None:
    stages: dict[str, tuple[int, int]] = {}
    report = build_fold(tree.images, 2, "age", "aligned", tmp_path, resize=SIZE, folds=tree.folds,
                        progress=lambda stage, done, total: stages.__setitem__(stage, (done, total)))
    layout = fold_layout(tmp_path, 2, "aligned")
    assert layout.lmdb_dir == tmp_path / "lmdb" / "Test_fold_is_2"
    assert layout.mean_file == tmp_path / "mean_image" / "Test_fold_is_2" / "mean.binaryproto"
    indices = tree.split_indices(2)
    assert {split: r.records for split, r in report.lmdbs.items()} == {s: len(i) for s, i in indices.items()}
    assert {r.status for r in report.lmdbs.values()} == {"built"} and report.mean_status == "computed"
    sizes = {split: len(i) for split, i in indices.items()}
    assert stages == {**{f"age_{s}_lmdb": (n, n) for s, n in sizes.items()}, "mean": (sizes["train"],) * 2}
    for split, split_indices in indices.items():
        path = layout.lmdb("age", split)
        assert sorted(os.listdir(path.parent)) == ["age_test_lmdb", "age_train_lmdb", "age_val_lmdb"]
        with DatumLMDB(path) as db:
            records = list(db)
        assert [r.key for r in records] == [f"{n:08d}_{tree.paths[i]}" for n, i in enumerate(split_indices)]
        assert [r.label for r in records] == [tree.label("age", i) for i in split_indices]
        for record, index in zip(records, split_indices):
            np.testing.assert_array_equal(record.image, tree.image(index))
    train = np.stack([tree.image(i) for i in indices["train"]]).astype(np.float64)
    mean = read_blobproto(layout.mean_file)
    assert mean.shape == (1, 3, SIZE, SIZE) and mean.dtype == np.float32
    np.testing.assert_allclose(mean[0], train.mean(axis=0), rtol=0, atol=1e-4)
    assert np.ptp(mean) > 10  # a real mean of faces, not a constant

    # the other target: its own LMDBs, the fold's mean kept; the same target again: everything kept
    mean_bytes = layout.mean_file.read_bytes()
    gender = build_fold(tree.images, 2, "gender", "aligned", tmp_path, resize=SIZE, folds=tree.folds)
    assert [r.status for r in gender.lmdbs.values()] == ["built"] * 3 and gender.mean_status == "kept"
    assert [r.label for r in DatumLMDB(layout.lmdb("gender", "test"))] == [i % 2 for i in indices["test"]]
    again = build_fold(tree.images, 2, "age", "aligned", tmp_path, resize=SIZE, folds=tree.folds)
    assert [r.status for r in again.lmdbs.values()] == ["kept"] * 3 and again.mean_status == "kept"
    assert [r.records for r in again.lmdbs.values()] == list(sizes.values())
    assert layout.mean_file.read_bytes() == mean_bytes

    # a finished LMDB made with other settings is not silently mixed in
    with pytest.raises(AgegenderError, match=r"other settings: 32 x 32 images"):
        build_fold(tree.images, 2, "age", "aligned", tmp_path, resize=48, folds=tree.folds)
    with pytest.raises(AgegenderError, match=r"other settings: raw images"):
        build_fold(tree.images, 2, "age", "aligned", tmp_path, resize=SIZE, encoded=True, folds=tree.folds)


def test_encoded_fold_lmdbs_decode_to_the_resized_images(tree: Tree, tmp_path: Path) -> None:
    report = build_fold(tree.images, 0, "gender", "aligned", tmp_path, resize=SIZE, encoded=True, folds=tree.folds)
    with DatumLMDB(report.lmdbs["test"].path) as db:
        assert all(db.datum(i).encoded for i in range(len(db)))
        images = np.stack([r.image for r in db]).astype(np.int16)
    expected = np.stack([tree.image(i) for i in tree.split_indices(0)["test"]]).astype(np.int16)
    assert images.shape == expected.shape
    assert np.abs(images - expected).mean() < 4  # re-encoded as JPEG after the resize (lossy)
    info = lmdb_info(report.lmdbs["train"].path)
    train = len(tree.split_indices(0)["train"])
    assert (info.records, info.encoded, info.shapes) == (train, train, {(3, SIZE, SIZE): train})
    with pytest.raises(AgegenderError, match=r"other settings: 32 x 32 images"):
        build_fold(tree.images, 0, "gender", "aligned", tmp_path, resize=48, encoded=True, folds=tree.folds)


def test_interrupted_build_resumes_to_the_same_output(tree: Tree, tmp_path: Path) -> None:
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    build_fold(tree.images, 1, "age", "aligned", clean, resize=SIZE, folds=tree.folds)
    layout = fold_layout(resumed, 1, "aligned")

    def stop_in_val(stage: str, done: int, total: int) -> None:
        if stage == "age_val_lmdb" and done == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        build_fold(tree.images, 1, "age", "aligned", resumed, resize=SIZE, folds=tree.folds, progress=stop_in_val)
    # train is complete, val is unfinished under its .partial name only, nothing else exists yet
    assert sorted(os.listdir(layout.lmdb_dir)) == ["age_train_lmdb", "age_val_lmdb" + PARTIAL_SUFFIX]
    assert len(plain_records(layout.lmdb_dir / ("age_val_lmdb" + PARTIAL_SUFFIX))) == 2
    assert not layout.mean_file.parent.exists()

    def stop_in_mean(stage: str, done: int, total: int) -> None:
        if stage == "mean" and done == 5:
            raise Interrupted

    with pytest.raises(Interrupted):
        build_fold(tree.images, 1, "age", "aligned", resumed, resize=SIZE, folds=tree.folds, progress=stop_in_mean)
    assert sorted(os.listdir(layout.lmdb_dir)) == ["age_test_lmdb", "age_train_lmdb", "age_val_lmdb"]
    assert not layout.mean_file.parent.exists() or os.listdir(layout.mean_file.parent) == []  # no half mean

    report = build_fold(tree.images, 1, "age", "aligned", resumed, resize=SIZE, folds=tree.folds)
    assert [r.status for r in report.lmdbs.values()] == ["kept"] * 3 and report.mean_status == "computed"
    assert snapshot(resumed) == snapshot(clean)

    # a val LMDB interrupted once and resumed reports what it resumed
    shutil.rmtree(layout.lmdb("age", "val"))
    with pytest.raises(Interrupted):
        build_fold(tree.images, 1, "age", "aligned", resumed, resize=SIZE, folds=tree.folds, progress=stop_in_val)
    report = build_fold(tree.images, 1, "age", "aligned", resumed, resize=SIZE, folds=tree.folds)
    val = report.lmdbs["val"]
    assert (val.status, val.resumed, val.written, val.records) == ("resumed", 2, 1, 3)
    assert snapshot(resumed) == snapshot(clean)


def test_missing_images_are_listed_with_a_count_then_fail_or_skip(tree: Tree, tmp_path: Path) -> None:
    images = tree.copy_images(tmp_path / "images")
    indices = tree.split_indices(3)
    gone = [indices["train"][0], indices["train"][5], indices["test"][1]]
    for index in gone:
        (images / tree.paths[index]).unlink()
    out = tmp_path / "out"
    with pytest.raises(MissingFileError) as failure:
        build_fold(images, 3, "age", "aligned", out, resize=SIZE, folds=tree.folds)
    message = failure.value.one_line()
    assert f"3 of the {IMAGES} images of the aligned fold 3 age lists are missing" in message
    assert f"train: 2 of {len(indices['train'])}" in message and "test: 1 of 4" in message and "val" not in message.split("missing")[1]
    assert all(tree.paths[i] in message for i in gone) and "(line 1)" in message
    assert not out.exists()  # checked before anything is written

    result = run_cli("data", "build", "--adience-root", images, "--fold", 3, "--target", "age", "--zoo", tree.folds,
                     "--out", out, "--resize", SIZE)
    assert result.exit_code == MissingFileError.exit_code
    assert f"3 of the {IMAGES} images" in error_line(result) and "--skip-missing" in error_line(result)

    report = build_fold(images, 3, "age", "aligned", out, resize=SIZE, folds=tree.folds, on_missing="skip")
    assert [r.records for r in report.lmdbs.values()] == [len(indices["train"]) - 2, len(indices["val"]),
                                                          len(indices["test"]) - 1]
    assert report.lmdbs["train"].missing.missing == 2 and report.lmdbs["val"].missing is None
    with DatumLMDB(report.lmdbs["test"].path) as db:
        assert [r.key.split("_", 1)[1] for r in db] == [tree.paths[i] for i in indices["test"] if i not in gone]
    train = np.stack([tree.image(i) for i in indices["train"] if i not in gone]).astype(np.float64)
    np.testing.assert_allclose(read_blobproto(report.mean_file)[0], train.mean(axis=0), atol=1e-4)

    result = run_cli("data", "build", "--adience-root", images, "--fold", 3, "--target", "gender", "--zoo",
                     tree.folds, "--out", out, "--resize", SIZE, "--skip-missing")
    assert result.exit_code == 0, result.stderr
    assert f"skipped 2 of {len(indices['train'])} images are missing" in " ".join(result.stderr.split())
    assert "gender_train_lmdb" in result.stdout and "2 missing" in result.stdout


def test_the_adience_download_folder_is_pointed_at(tree: Tree, tmp_path: Path) -> None:
    download = tmp_path / "adience"
    tree.copy_images(download / "aligned")
    with pytest.raises(MissingFileError, match=r"the images are under .*aligned: pass that folder"):
        build_fold(download, 0, "age", "aligned", tmp_path / "out", resize=SIZE, folds=tree.folds)
    # as for the mixed lists: some images in aligned/, the others in faces/
    for path in tree.paths[1::2]:
        (download / "faces" / path).parent.mkdir(parents=True, exist_ok=True)
        os.replace(download / "aligned" / path, download / "faces" / path)
    with pytest.raises(MissingFileError, match=r"split between .*aligned and .*faces: these lists need them in one"):
        build_fold(download, 0, "age", "aligned", tmp_path / "out", resize=SIZE, folds=tree.folds)
    assert not (tmp_path / "out").exists()


def test_corrupt_jpeg_fails_naming_it_or_is_skipped(tree: Tree, tmp_path: Path) -> None:
    images = tree.copy_images(tmp_path / "images")
    bad = tree.split_indices(4)["train"][3]
    jpeg = (images / tree.paths[bad]).read_bytes()
    (images / tree.paths[bad]).write_bytes(jpeg[:2] + b"\x00" * 64)  # a JPEG marker, then garbage
    out = tmp_path / "out"
    result = run_cli("data", "build", "--adience-root", images, "--fold", 4, "--target", "age", "--zoo", tree.folds,
                     "--out", out, "--resize", SIZE)
    assert result.exit_code == FileFormatError.exit_code
    line = error_line(result)
    assert tree.paths[bad] in line and "OpenCV can decode" in line and "--skip-missing" in line
    lmdb_dir = fold_layout(out, 4, "aligned").lmdb_dir
    assert os.listdir(lmdb_dir) == ["age_train_lmdb" + PARTIAL_SUFFIX]  # nothing that looks complete

    # the same build with --skip-missing resumes the unfinished LMDB and leaves the image out
    report = build_fold(images, 4, "age", "aligned", out, resize=SIZE, folds=tree.folds, on_missing="skip")
    train = report.lmdbs["train"]
    assert train.unreadable == (tree.paths[bad],) and train.resumed == 3
    assert train.records == len(tree.split_indices(4)["train"]) - 1
    assert "skipped 1 unreadable image(s)" in train.describe()


# --- the CLI over a whole set of folds ----------------------------------------------------------------
def test_cli_builds_all_folds_then_info_and_mean_describe_them(tree: Tree, tmp_path: Path) -> None:
    out = tmp_path / "data"
    result = run_cli("data", "build", "--adience-root", tree.images, "--fold", "all", "--target", "gender",
                     "--variant", "aligned", "--zoo", tree.folds, "--out", out, "--resize", SIZE)
    assert result.exit_code == 0, result.stderr
    for fold in range(5):
        layout = fold_layout(out, fold, "aligned")
        assert sorted(os.listdir(layout.lmdb_dir)) == ["gender_test_lmdb", "gender_train_lmdb", "gender_val_lmdb"]
        assert layout.mean_file.is_file()
    assert result.stdout.count("built") == 15 and result.stdout.count("computed") == 5
    assert "img/s" in result.stderr and "fold 4 gender_test_lmdb" in result.stderr  # the progress bars

    test_lmdb = fold_layout(out, 0, "aligned").lmdb("gender", "test")
    result = run_cli("data", "info", test_lmdb, "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    labels = ImageList.read(tree.folds / FOLD_LISTS / "test_fold_is_0" / "gender_test.txt").labels
    assert info["records"] == len(labels) == 4 and info["encoded"] == 0
    assert info["shapes"] == [{"shape": [3, SIZE, SIZE], "records": 4}]
    assert info["labels"] == {str(k): int(v) for k, v in enumerate(np.bincount(labels)) if v}
    assert info["first_key"].startswith("00000000_") and info["last_key"].startswith("00000003_")
    result = run_cli("data", "info", test_lmdb)
    assert result.exit_code == 0 and "4 records (4 raw)" in result.stdout and "3 x 32 x 32 (4)" in result.stdout

    train_lmdb = fold_layout(out, 0, "aligned").lmdb("gender", "train")
    result = run_cli("data", "mean", train_lmdb, "--out", tmp_path / "mean.binaryproto")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "mean.binaryproto").read_bytes() == fold_layout(out, 0, "aligned").mean_file.read_bytes()
    assert "1 x 3 x 32 x 32 mean image" in result.stdout

    result = run_cli("data", "build", "--adience-root", tree.images, "--fold", "all", "--target", "gender",
                     "--zoo", tree.folds, "--out", out, "--resize", SIZE)
    assert result.exit_code == 0 and result.stdout.count("kept") == 20  # 15 LMDBs + 5 means


def test_fold_lists_come_from_agegender_zoo(tree: Tree, tmp_path: Path) -> None:
    result = run_cli("data", "build", "--adience-root", tree.images, "--fold", 0, "--target", "age",
                     "--out", tmp_path / "a", "--resize", SIZE, env={"AGEGENDER_ZOO": str(tree.folds)})
    assert result.exit_code == 0, result.stderr
    result = run_cli("data", "build", "--adience-root", tree.images, "--fold", 0, "--target", "age",
                     "--out", tmp_path / "b", env={"AGEGENDER_ZOO": ""})
    assert result.exit_code == ZooError.exit_code and "AGEGENDER_ZOO" in error_line(result)


# --- list files -------------------------------------------------------------------------------------
def test_list_mode_shuffles_resizes_and_encodes(tree: Tree, tmp_path: Path) -> None:
    entries = [(tree.paths[i], i % 8) for i in range(IMAGES)]
    list_file = tmp_path / "list.txt"
    list_file.write_text("".join(f"{p} {label}\n" for p, label in entries))
    out = tmp_path / "shuffled_lmdb"
    result = run_cli("data", "build", "--list", list_file, "--images", tree.images, "--out", out,
                     "--resize", SIZE, "--shuffle", "--seed", 3)
    assert result.exit_code == 0, result.stderr
    assert f"wrote {out}: {IMAGES} records (built)" in " ".join(result.stdout.split())
    with DatumLMDB(out) as db:
        records = list(db)
    names = [r.key.split("_", 1)[1] for r in records]
    assert [r.key[:8] for r in records] == [f"{n:08d}" for n in range(IMAGES)]
    assert sorted(names) == sorted(tree.paths) and names != tree.paths  # shuffled, every image once
    for record, name in zip(records, names):
        index = tree.paths.index(name)
        assert record.label == index % 8
        np.testing.assert_array_equal(record.image, tree.image(index))
    again = build_from_list(list_file, tree.images, tmp_path / "again_lmdb", SIZE, shuffle=True, seed=3)
    assert plain_records(again.path) == plain_records(out)

    result = run_cli("data", "build", "--list", list_file, "--images", tree.images, "--out", out)
    assert result.exit_code == AgegenderError.exit_code and "already exists" in error_line(result)
    result = run_cli("data", "build", "--list", list_file, "--images", tree.images, "--out", out, "--encoded",
                     "--overwrite")
    assert result.exit_code == 0, result.stderr
    with DatumLMDB(out) as db:  # unresized encoded records are the files' own bytes
        assert [db.datum(i).data for i in range(3)] == [(tree.images / p).read_bytes() for p, _ in entries[:3]]


def test_list_line_with_no_label(tree: Tree, tmp_path: Path) -> None:
    list_file = tmp_path / "list.txt"
    list_file.write_text(f"{tree.paths[0]} 1\n{tree.paths[1]}\n")
    with pytest.raises(FileFormatError) as failure:
        build_from_list(list_file, tree.images, tmp_path / "out")
    assert (failure.value.path, failure.value.line) == (str(list_file), 2)
    result = run_cli("data", "build", "--list", list_file, "--images", tree.images, "--out", tmp_path / "out")
    assert result.exit_code == FileFormatError.exit_code
    assert f"{list_file}:2: no label on this line" in error_line(result)
    assert not (tmp_path / "out").exists()


def test_list_mode_missing_images_fail_or_skip(tree: Tree, tmp_path: Path) -> None:
    list_file = tmp_path / "list.txt"
    list_file.write_text(f"{tree.paths[0]} 1\nnot/there.jpg 2\n{tree.paths[1]} 3\nalso/gone.jpg 0\n")
    with pytest.raises(MissingFileError, match=r"2 of 4 images are missing .*not/there.jpg \(line 2\), "
                                               r"also/gone.jpg \(line 4\)"):
        build_from_list(list_file, tree.images, tmp_path / "out")
    result = build_from_list(list_file, tree.images, tmp_path / "out", on_missing="skip")
    assert (result.records, result.missing.missing) == (2, 2)
    assert [r.label for r in DatumLMDB(result.path)] == [1, 3]
    # convert_imageset skips the missing lines, leaving their numbers unused in the keys
    assert DatumLMDB(result.path).keys == [f"00000000_{tree.paths[0]}", f"00000002_{tree.paths[1]}"]


def test_list_mode_gray_and_encode_type_as_convert_imageset(tree: Tree, tmp_path: Path) -> None:
    import cv2

    list_file = tmp_path / "list.txt"
    list_file.write_text(f"{tree.paths[0]} 1\n\n{tree.paths[1]} 3\n")  # a blank line takes number 1
    grey = build_from_list(list_file, tree.images, tmp_path / "grey", SIZE, gray=True)
    with DatumLMDB(grey.path) as db:
        assert db.keys == [f"00000000_{tree.paths[0]}", f"00000002_{tree.paths[1]}"]
        for record, name in zip(db, tree.paths[:2]):
            expected = cv2.resize(cv2.imread(str(tree.images / name), cv2.IMREAD_GRAYSCALE), (SIZE, SIZE),
                                  interpolation=cv2.INTER_LINEAR)
            np.testing.assert_array_equal(record.image, expected[None])
    jpg = build_from_list(list_file, tree.images, tmp_path / "jpg", encode_type="jpg")  # matches: the files
    with DatumLMDB(jpg.path) as db:
        assert [db.datum(i).data for i in range(2)] == [(tree.images / p).read_bytes() for p in tree.paths[:2]]
    # the same through the command line
    result = run_cli("data", "build", "--list", list_file, "--images", tree.images, "--out", tmp_path / "cli_grey",
                     "--resize", SIZE, "--gray")
    assert result.exit_code == 0, result.stderr
    with DatumLMDB(tmp_path / "cli_grey") as ours, DatumLMDB(grey.path) as library:
        assert ours.keys == library.keys and [r.image.tobytes() for r in ours] == [r.image.tobytes() for r in library]
    result = run_cli("data", "build", "--list", list_file, "--images", tree.images, "--out", tmp_path / "cli_jpg",
                     "--encode-type", "jpg")
    assert result.exit_code == 0, result.stderr
    with DatumLMDB(tmp_path / "cli_jpg") as db:
        assert [db.datum(i).data for i in range(2)] == [(tree.images / p).read_bytes() for p in tree.paths[:2]]


# --- usage and input errors ---------------------------------------------------------------------------
@pytest.mark.parametrize("args, code, words", [
    (["--list", "L", "--fold", "0"], 2, "belong to the Adience fold mode"),
    (["--list", "L", "--out", "o"], 2, "--list needs --images"),
    (["--adience-root", ".", "--fold", "0"], 2, "missing --target"),
    (["--adience-root", ".", "--fold", "7", "--target", "age"], 2, "expected a fold 0..4 or 'all'"),
    (["--adience-root", ".", "--fold", "0", "--target", "age", "--shuffle"], 2, "belong to the --list mode"),
    (["--adience-root", ".", "--fold", "0", "--target", "age", "--encode-type", "png"], 2, "belong to the --list mode"),
    (["--adience-root", ".", "--fold", "0", "--target", "age", "--resize", "8", "--no-resize"], 2, "not both"),
    (["--adience-root", ".", "--fold", "0", "--target", "height"], 1, "unknown target 'height'"),
    (["--adience-root", ".", "--fold", "0", "--target", "age", "--variant", "tilted"], 1, "unknown variant"),
    (["--adience-root", "nowhere", "--fold", "0", "--target", "age"], 2, "image folder not found"),
])
def test_build_usage_errors(tree: Tree, tmp_path: Path, args: list[str], code: int, words: str) -> None:
    result = run_cli("data", "build", *args, "--zoo", tree.folds) if "--list" not in args else \
        run_cli("data", "build", *args)
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert words in " ".join(re.sub("[│╭╮╰╯─]", " ", result.stderr).split())  # usage errors come boxed
    assert "Traceback" not in result.stderr


def test_info_and_mean_of_something_that_is_not_an_lmdb(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    for command in (["info"], ["mean", "--out", tmp_path / "m.binaryproto"]):
        result = run_cli("data", *command, tmp_path / "folder")
        assert result.exit_code == FileFormatError.exit_code and "no data.mdb" in error_line(result)
        result = run_cli("data", *command, tmp_path / "absent")
        assert result.exit_code == MissingFileError.exit_code and "LMDB folder not found" in error_line(result)
    assert not (tmp_path / "m.binaryproto").exists()


def test_data_help_shows_examples() -> None:
    for command in (["build"], ["mean"], ["info"]):
        result = run_cli("data", *command, "--help")
        assert result.exit_code == 0 and "Example" in result.stdout and "agegender data " in result.stdout
