"""Adience folds: the real per-fold lists (3 variants x 5 folds x 2 targets) read with exactly the published
line counts, labels in range and test folds disjoint from their training data; the fold metadata rows; the
label maps; list files (paths with spaces, bad lines, missing images, writing); safe archive extraction."""

from __future__ import annotations

import gc
import io
import logging
import re
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from agegender.errors import AgegenderError, FileFormatError, MissingFileError
from agegender.folds.adience import (
    NUM_FOLDS,
    SPLITS,
    TARGETS,
    VARIANT_FOLDERS,
    AdienceFolds,
    LabelMap,
    check_disjoint,
    disjoint_report,
    extract_archive_safely,
    face_key_of_path,
    parse_age,
    read_fold_metadata,
)
from agegender.folds.lists import ImageList, ListEntry

from .conftest import require_shared

# train/val/test non-empty line counts of the published lists, folds 0..4 (shared/adience/README.md)
PUBLISHED_COUNTS = {
    ("aligned", "age"): "11823/1284/4316 12894/1428/3101 12655/1429/3339 12991/1457/2975 12371/1359/3693",
    ("aligned", "gender"): "12256/1339/4007 12574/1404/3624 12986/1425/3191 12854/1430/3318 12717/1422/3463",
    ("mixed", "age"): "23590/2625/8632 25798/2847/6202 25380/2790/6678 25999/2898/5950 24705/2756/7386",
    ("mixed", "gender"): "24461/2731/8014 25159/2798/7248 25942/2881/6382 25727/2842/6636 25449/2830/6926",
    ("unaligned", "age"): "11789/1318/4316 12889/1433/3101 12670/1414/3339 13004/1444/2975 12338/1392/3693",
    ("unaligned", "gender"): "12225/1371/4007 12577/1402/3624 12970/1441/3191 12881/1403/3318 12718/1421/3463",
}
PUBLISHED_FACES = (4496, 3745, 3953, 3459, 3834)  # rows of fold_K_data.txt after the header
IMAGE_KIND = {"aligned": "landmark_aligned_face", "unaligned": "coarse_tilt_aligned_face"}


@pytest.fixture(scope="session")
def adience(tmp_path_factory: pytest.TempPathFactory) -> AdienceFolds:
    """The real folds, each archive extracted once per session into a temporary cache folder."""
    return AdienceFolds(require_shared("adience"), cache_dir=tmp_path_factory.mktemp("adience-folds"))


def published(variant: str, target: str, fold: int) -> dict[str, int]:
    train, val, test = (int(n) for n in PUBLISHED_COUNTS[variant, target].split()[fold].split("/"))
    return {"train": train, "val": val, "test": test}


def non_empty_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().split("\n") if line.strip())


# --- the real lists -------------------------------------------------------------------------------
@pytest.mark.shared
@pytest.mark.parametrize("variant,target", sorted(PUBLISHED_COUNTS))
def test_real_lists_have_published_counts_labels_and_disjoint_folds(
    adience: AdienceFolds, variant: str, target: str
) -> None:
    classes = len(adience.label_map(target))
    for fold in range(NUM_FOLDS):
        lists = {split: adience.split(variant, fold, target, split) for split in SPLITS}
        counts = {split: len(lists[split]) for split in ("train", "val", "test")}
        assert counts == published(variant, target, fold), (variant, target, fold)
        for split, image_list in lists.items():
            path = adience.list_path(variant, fold, target, split)
            assert image_list.source == str(path)
            assert len(image_list) == non_empty_lines(path)  # no line dropped or invented
            assert image_list.labels.min() >= 0 and image_list.labels.max() < classes, (split, fold)
        # every class occurs in training; the train subset is drawn from train
        assert np.all(lists["train"].label_counts(classes) > 0)
        assert set(lists["train_subset"].paths) <= set(lists["train"].paths)
        report = disjoint_report(lists["test"], lists["train"], lists["val"],
                                 variant=variant, fold=fold, target=target)
        assert report.ok, report.describe()
        assert (report.shared_images, report.shared_faces, report.shared_users) == (0, 0, 0)
        assert (report.train, report.val, report.test) == (counts["train"], counts["val"], counts["test"])
        assert report.train_val_shared == len(set(lists["train"].paths) & set(lists["val"].paths))


@pytest.mark.shared
def test_check_disjoint_reads_the_three_lists_itself(adience: AdienceFolds) -> None:
    report = check_disjoint(adience, "mixed", 3, "gender")
    assert report.ok and (report.variant, report.fold, report.target) == ("mixed", 3, "gender")
    assert (report.train, report.val, report.test) == tuple(published("mixed", "gender", 3).values())
    assert "no test image or face is in train or val" in report.describe()
    report.raise_if_overlapping()  # does not raise


@pytest.mark.shared
def test_mixed_lists_hold_the_aligned_and_the_unaligned_images(adience: AdienceFolds) -> None:
    for target in TARGETS:
        mixed = adience.split("mixed", 2, target, "test")
        aligned = adience.split("aligned", 2, target, "test")
        unaligned = adience.split("unaligned", 2, target, "test")
        assert Counter(zip(mixed.paths, mixed.labels.tolist())) == (
            Counter(zip(aligned.paths, aligned.labels.tolist())) + Counter(zip(unaligned.paths, unaligned.labels.tolist()))
        )


@pytest.mark.shared
def test_fold_metadata_has_published_rows_and_typed_fields(adience: AdienceFolds) -> None:
    for fold, expected in enumerate(PUBLISHED_FACES):
        path = adience.metadata_path(fold)
        records = read_fold_metadata(path)
        assert len(records) == expected == non_empty_lines(path) - 1
        assert [r.line for r in records] == list(range(2, expected + 2))
        raw_rows = [line.split("\t") for line in path.read_text().split("\n")[1:] if line.strip()]
        assert [r.age_text for r in records] == [row[3] for row in raw_rows]
        assert [(r.x, r.y, r.dx, r.dy, r.fiducial_score) for r in records] == [
            tuple(int(v) for v in (row[5], row[6], row[7], row[8], row[11])) for row in raw_rows
        ]
        assert {r.gender for r in records} <= {"m", "f", "u", None}
        for record in records:
            assert record.age == (None if record.age_text == "None" else parse_age(record.age_text))
    first = read_fold_metadata(adience.metadata_path(0))[0]
    assert (first.user_id, first.face_id, first.age_text, first.age, first.gender) == (
        "30601258@N03", 1, "(25, 23)", (25, 23), "f"  # the file's odd range is kept as written
    )
    assert first.image_path() == "30601258@N03/landmark_aligned_face.1.10399646885_67c7d20df9_o.jpg"
    assert face_key_of_path(first.image_path("coarse_tilt_aligned_face")) == first.face_key


@pytest.mark.shared
@pytest.mark.parametrize("variant", sorted(IMAGE_KIND))
def test_test_lists_are_the_fold_faces_with_a_known_age_or_gender(adience: AdienceFolds, variant: str) -> None:
    """Rebuilding fold K's test list from fold_K_data.txt checks the metadata parser against the lists."""
    age_names = list(adience.label_map("age").names)
    # Lapuschkin's synset says (8, 13); the metadata and Levi's synset say (8, 12)
    assert age_names[2] == "(8, 13)"
    age_names[2] = "(8, 12)"
    gender_map = adience.label_map("gender")
    for fold in range(NUM_FOLDS):
        records = adience.metadata(fold)
        expected = {
            "age": Counter((r.image_path(IMAGE_KIND[variant]), age_names.index(r.age_text))
                           for r in records if r.age_text in age_names),
            "gender": Counter((r.image_path(IMAGE_KIND[variant]), gender_map.index(r.gender))
                              for r in records if r.gender in gender_map.names),
        }
        for target in TARGETS:
            test = adience.split(variant, fold, target, "test")
            assert Counter(zip(test.paths, test.labels.tolist())) == expected[target], (variant, fold, target)


@pytest.mark.shared
def test_label_maps_keep_the_files_names(adience: AdienceFolds) -> None:
    ages = adience.label_map("age")
    lines = Path(ages.source).read_text().split("\n")
    assert list(ages.names) == [line.strip() for line in lines if line.strip()]
    assert len(ages) == 8 and ages.name(2) == "(8, 13)" and ages.index("(60, 100)") == 7
    assert parse_age(ages.name(7)) == (60, 100)
    gender = adience.label_map("gender")
    assert gender.names == ("m", "f") and gender.index("f") == 1
    with pytest.raises(AgegenderError, match="no class named 'x'"):
        gender.index("x")
    with pytest.raises(AgegenderError, match="outside 0..1"):
        gender.name(2)


# --- list files -----------------------------------------------------------------------------------
def test_list_paths_may_hold_spaces_and_blank_lines_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_bytes(b"a/b c.jpg 3\r\n\n   \n  d/e.jpg\t\t12  \nf g/h  i.png -1\n")
    image_list = ImageList.read(path)
    assert image_list.entries == (
        ListEntry("a/b c.jpg", 3, 1), ListEntry("d/e.jpg", 12, 4), ListEntry("f g/h  i.png", -1, 5),
    )
    assert image_list.labels.dtype == np.int64 and image_list.source == str(path)
    assert image_list[1:].paths == ("d/e.jpg", "f g/h  i.png") and image_list[-1].line == 5
    with pytest.raises(FileFormatError, match="is not in 0..12") as info:
        image_list.check_labels(13)
    assert (info.value.path, info.value.line) == (str(path), 5)


@pytest.mark.parametrize("text,line,col,words", [
    ("a.jpg 1\nno_label.jpg\n", 2, None, "no label"),
    ("a.jpg 1\n\n   7\n", 3, None, "no label"),
    ("a.jpg 1\nb.jpg x\n", 2, 7, "'x' is not an integer"),
    ("a.jpg 1\nb c.jpg 1.5\n", 2, 9, "'1.5' is not an integer"),
    ("a.jpg \u0663\n", 1, 7, "is not an integer"),  # an Arabic-Indic digit: Python's int() would take it
])
def test_bad_list_lines_name_file_and_line(tmp_path: Path, text: str, line: int, col: int | None,
                                           words: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(FileFormatError, match=words) as info:
        ImageList.read(path)
    assert (info.value.path, info.value.line, info.value.col) == (str(path), line, col)
    assert str(info.value).startswith(f"{path}:{line}")


def test_unreadable_list_files(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError):
        ImageList.read(tmp_path / "absent.txt")
    (tmp_path / "binary.txt").write_bytes(b"\x00\x01\x02 1\n")
    with pytest.raises(FileFormatError, match="binary"):
        ImageList.read(tmp_path / "binary.txt")
    (tmp_path / "latin1.txt").write_bytes(b"a.jpg 1\n\xe9t\xe9.jpg 2\n")
    with pytest.raises(FileFormatError, match="UTF-8") as info:
        ImageList.read(tmp_path / "latin1.txt")
    assert info.value.line == 2


def test_missing_images_fail_or_skip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "images"
    (root / "u").mkdir(parents=True)
    present = [f"u/face {i}.jpg" for i in range(3)]
    for name in present:
        (root / name).write_bytes(b"jpg")
    (root / "u" / "a_folder.jpg").mkdir()  # a folder is not an image
    missing = [f"u/gone{i}.jpg" for i in range(7)] + ["u/a_folder.jpg"]
    listed = [present[0], *missing[:4], present[1], *missing[4:], present[2], missing[0]]
    image_list = ImageList.from_pairs((name, i % 8) for i, name in enumerate(listed))
    (tmp_path / "list.txt").write_text(image_list.to_text())
    image_list = ImageList.read(tmp_path / "list.txt")

    report = image_list.check_images(root)
    assert not report.ok and (report.checked, report.missing) == (len(listed), len(missing) + 1)
    assert [e.path for e in report.first_missing] == missing[:4] + missing[4:5]
    assert [e.line for e in report.first_missing] == [2, 3, 4, 5, 7]
    assert f"{len(missing) + 1} of {len(listed)} images are missing" in report.describe()

    with pytest.raises(MissingFileError, match=f"9 of {len(listed)} images are missing") as info:
        image_list.require_images(root)  # "fail" is the default
    assert "u/gone0.jpg (line 2)" in str(info.value) and info.value.path == image_list.source

    with caplog.at_level(logging.WARNING, logger="agegender.folds.lists"):
        kept = image_list.require_images(root, on_missing="skip")
    assert kept.paths == tuple(present) and kept.lines.tolist() == [1, 6, 11]
    assert kept.labels.tolist() == [0, 5, 10 % 8]
    assert f"9 of {len(listed)} images are missing" in caplog.text and "skipping" in caplog.text
    assert kept.check_images(root).ok and kept.require_images(root) is kept
    with pytest.raises(AgegenderError, match="on_missing"):
        image_list.require_images(root, on_missing="ignore")  # type: ignore[arg-type]
    with pytest.raises(MissingFileError, match="image root folder not found"):
        image_list.check_images(tmp_path / "nowhere")


def test_writing_a_list_round_trips_and_is_atomic(tmp_path: Path) -> None:
    image_list = ImageList.from_pairs([("a b/c.jpg", 0), ("d.jpg", 7), ("e.jpg", -2)])
    path = tmp_path / "out" / "list.txt"
    image_list.write(path)
    assert path.read_text() == "a b/c.jpg 0\nd.jpg 7\ne.jpg -2\n"
    again = ImageList.read(path)
    assert again.paths == image_list.paths and again.labels.tolist() == [0, 7, -2]
    assert again.lines.tolist() == [1, 2, 3] and again == ImageList.parse(path.read_text())
    for bad_path in ("two\nlines.jpg", " leading.jpg", "trailing.jpg ", ""):
        with pytest.raises(AgegenderError, match="cannot write"):
            ImageList.from_pairs([("ok.jpg", 1), (bad_path, 1)]).write(path)
    assert path.read_text() == "a b/c.jpg 0\nd.jpg 7\ne.jpg -2\n"  # the old file is untouched
    assert sorted(p.name for p in path.parent.iterdir()) == ["list.txt"]  # and no temp file is left


# --- folds from folders and archives --------------------------------------------------------------
def write_tar(path: Path, members: list[tuple[str, bytes | None, bytes]]) -> Path:
    """A tar.xz with members (name, data or None for a folder, type flag)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:xz") as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = "/etc/passwd"
            if data is None or kind != tarfile.REGTYPE:
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def tiny_variant(folder: str, *, leak: bool = False) -> list[tuple[str, bytes | None, bytes]]:
    """One fold of a variant: a test list and train/val lists (optionally with a test face in train)."""
    test = b"u1/landmark_aligned_face.1.a.jpg 0\nu1/landmark_aligned_face.2.b.jpg 1\n"
    train = b"u2/landmark_aligned_face.3.c.jpg 1\n" + (b"u1/coarse_tilt_aligned_face.2.b.jpg 1\n" if leak else b"")
    return [
        (folder, None, tarfile.DIRTYPE),
        (f"{folder}/test_fold_is_0", None, tarfile.DIRTYPE),
        (f"{folder}/test_fold_is_0/age_test.txt", test, tarfile.REGTYPE),
        (f"{folder}/test_fold_is_0/age_train.txt", train, tarfile.REGTYPE),
        (f"{folder}/test_fold_is_0/age_val.txt", b"u3/landmark_aligned_face.4.d.jpg 0\n", tarfile.REGTYPE),
    ]


def test_archives_are_extracted_once_into_the_cache(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = VARIANT_FOLDERS["unaligned"]
    write_tar(tmp_path / "data" / "folds" / f"{folder}.tar.xz", tiny_variant(folder))
    cache = tmp_path / "cache"
    folds = AdienceFolds(tmp_path / "data", cache_dir=cache)
    assert folds.available_variants() == ["unaligned"]
    assert folds.split("unaligned", 0, "age", "test").labels.tolist() == [0, 1]
    assert folds.variant_dir("unaligned") == cache / folder
    assert sorted(p.name for p in cache.iterdir()) == [f".{folder}.source", folder]  # no staging folder left

    # a second instance reuses the extracted lists (it sees an edit made in the cache)
    (cache / folder / "test_fold_is_0" / "age_test.txt").write_text("x.jpg 5\n")
    with caplog.at_level(logging.DEBUG, logger="agegender.folds.adience"):
        again = AdienceFolds(tmp_path / "data" / "folds", cache_dir=cache)
        assert again.split("unaligned", 0, "age", "test").labels.tolist() == [5]
    assert "reusing" in caplog.text
    with pytest.raises(MissingFileError, match="the aligned fold lists are not here"):
        again.split("aligned", 0, "age", "test")
    with pytest.raises(MissingFileError, match="age_train_subset.txt"):
        again.split("unaligned", 0, "age", "train_subset")


def test_without_a_cache_the_extraction_is_removed_with_the_object(tmp_path: Path) -> None:
    folder = VARIANT_FOLDERS["aligned"]
    write_tar(tmp_path / f"{folder}.tar.xz", tiny_variant(folder))
    folds = AdienceFolds(tmp_path)
    extracted = folds.variant_dir("aligned")
    assert extracted.is_dir() and not extracted.is_relative_to(tmp_path)
    del folds
    gc.collect()
    assert not extracted.exists()


def test_an_extracted_folder_is_preferred_to_the_archive(tmp_path: Path) -> None:
    folder = VARIANT_FOLDERS["mixed"]
    write_tar(tmp_path / f"{folder}.tar.xz", [("not_the_lists.txt", b"x", tarfile.REGTYPE)])
    lists = tmp_path / folder / "test_fold_is_4"
    lists.mkdir(parents=True)
    (lists / "gender_val.txt").write_text("p/q.jpg 1\n")
    folds = AdienceFolds(tmp_path)
    assert folds.variant_dir("mixed") == tmp_path / folder
    assert folds.split("mixed", 4, "gender", "val").entries == (ListEntry("p/q.jpg", 1, 1),)


def test_a_leaking_fold_is_reported(tmp_path: Path) -> None:
    folder = VARIANT_FOLDERS["aligned"]
    write_tar(tmp_path / f"{folder}.tar.xz", tiny_variant(folder, leak=True))
    report = check_disjoint(AdienceFolds(tmp_path), "aligned", 0, "age")
    assert not report.ok
    assert (report.shared_images, report.shared_faces, report.shared_users) == (0, 1, 1)
    (overlap,) = report.first_overlaps
    assert (overlap.test_path, overlap.test_line, overlap.split, overlap.other_path, overlap.other_line) == (
        "u1/landmark_aligned_face.2.b.jpg", 2, "train", "u1/coarse_tilt_aligned_face.2.b.jpg", 2,
    )
    with pytest.raises(AgegenderError, match=r"aligned fold 0 age: .* 1 test face\(s\) are also in train") as info:
        report.raise_if_overlapping()
    assert "u1/landmark_aligned_face.2.b.jpg (line 2) is in train" in str(info.value)

    same_image = disjoint_report(ImageList.from_pairs([("a/x.jpg", 0)]), ImageList.from_pairs([("b.jpg", 0)]),
                                 ImageList.from_pairs([("a/x.jpg", 1)]))
    assert (same_image.ok, same_image.shared_images, same_image.first_overlaps[0].split) == (False, 1, "val")


@pytest.mark.parametrize("member,kind,words", [
    ("train_val_txt_files_per_fold/../../evil.txt", tarfile.REGTYPE, "climbs out"),
    ("../evil.txt", tarfile.REGTYPE, "climbs out"),
    ("/tmp/agegender_evil.txt", tarfile.REGTYPE, "not a relative POSIX path"),
    ("C:/evil.txt", tarfile.REGTYPE, "not a relative POSIX path"),
    ("train_val_txt_files_per_fold\\..\\..\\evil.txt", tarfile.REGTYPE, "not a relative POSIX path"),
    ("train_val_txt_files_per_fold/link", tarfile.SYMTYPE, "symbolic link"),
    ("train_val_txt_files_per_fold/hard", tarfile.LNKTYPE, "hard link"),
    ("train_val_txt_files_per_fold/fifo", tarfile.FIFOTYPE, "special file"),
])
def test_malicious_archive_members_are_refused_before_anything_is_written(
    tmp_path: Path, member: str, kind: bytes, words: str
) -> None:
    folder = VARIANT_FOLDERS["aligned"]
    # the bad member comes last: nothing of the archive may be written, not even the good members
    archive = write_tar(tmp_path / "data" / f"{folder}.tar.xz",
                        tiny_variant(folder) + [(member, b"pwned", kind)])
    cache = tmp_path / "deep" / "cache"
    folds = AdienceFolds(tmp_path / "data", cache_dir=cache)
    with pytest.raises(FileFormatError, match=words) as info:
        folds.split("aligned", 0, "age", "test")
    assert info.value.path == str(archive) and repr(member)[1:-1] in str(info.value)
    assert list(cache.iterdir()) == []  # staging removed, nothing extracted
    written = {p.relative_to(tmp_path) for p in tmp_path.rglob("*")}
    assert written == {Path("data"), Path("data", f"{folder}.tar.xz"), Path("deep"), Path("deep/cache")}
    assert not Path("/tmp/agegender_evil.txt").exists()
    with pytest.raises(FileFormatError, match=words):
        extract_archive_safely(archive, tmp_path / "direct")
    assert not (tmp_path / "direct").exists()


def test_broken_archives_and_folders(tmp_path: Path) -> None:
    folder = VARIANT_FOLDERS["aligned"]
    (tmp_path / f"{folder}.tar.xz").write_bytes(b"\xfd7zXZ\x00 truncated")
    with pytest.raises(FileFormatError, match="not a readable tar archive"):
        AdienceFolds(tmp_path).variant_dir("aligned")
    other = tmp_path / "other"
    write_tar(other / f"{folder}.tar.xz", [("somewhere_else/a.txt", b"x", tarfile.REGTYPE)])
    with pytest.raises(FileFormatError, match=f"does not hold a {folder}/ folder"):
        AdienceFolds(other).variant_dir("aligned")
    with pytest.raises(FileFormatError, match="more than 0 bytes"):
        extract_archive_safely(other / f"{folder}.tar.xz", tmp_path / "small", max_bytes=0)
    with pytest.raises(MissingFileError, match="Adience folder not found"):
        AdienceFolds(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFileError, match="no Adience fold lists here"):
        AdienceFolds(tmp_path / "empty")


@pytest.mark.parametrize("args,words", [
    (("sideways", 0, "age", "test"), "unknown variant 'sideways'"),
    (("aligned", 5, "age", "test"), "fold must be an integer in 0..4"),
    (("aligned", True, "age", "test"), "fold must be an integer"),
    (("aligned", 0, "height", "test"), "unknown target 'height'"),
    (("aligned", 0, "age", "holdout"), "unknown split 'holdout'"),
])
def test_unknown_split_arguments(tmp_path: Path, args: tuple, words: str) -> None:
    (tmp_path / VARIANT_FOLDERS["aligned"]).mkdir()
    with pytest.raises(AgegenderError, match=words):
        AdienceFolds(tmp_path).split(*args)


# --- metadata and label map files -----------------------------------------------------------------
HEADER = ("user_id\toriginal_image\tface_id\tage\tgender\tx\ty\tdx\tdy\ttilt_ang\tfiducial_yaw_angle\t"
          "fiducial_score\n")
GOOD_ROW = "u1\timg.jpg\t3\t(25, 32)\tm\t1\t2\t3\t4\t-5\t0\t70\n"


def test_metadata_odd_ages_and_genders(tmp_path: Path) -> None:
    path = tmp_path / "fold_9_data.txt"
    path.write_text(HEADER + GOOD_ROW + "\n"
                    + "u2\ti.jpg\t4\t35\tu\t0\t0\t1\t1\t0\t0\t0\r\n"
                    + "u2\tj.jpg\t5\tNone\t\t0\t0\t1\t1\t0\t0\t0\n"
                    + "u3\tk.jpg\t6\t(8, 23)\tNone\t0\t0\t1\t1\t0\t0\t0\n")
    records = read_fold_metadata(path)
    assert [(r.age_text, r.age, r.gender, r.line) for r in records] == [
        ("(25, 32)", (25, 32), "m", 2), ("35", (35, 35), "u", 4), ("None", None, None, 5),
        ("(8, 23)", (8, 23), None, 6),
    ]
    assert (records[0].tilt_ang, records[0].face_key) == (-5, ("u1", 3, "img.jpg"))


@pytest.mark.parametrize("body,line,col,words", [
    ("user_id\tage\n", 1, None, "unexpected header"),
    (HEADER + GOOD_ROW + "u1\timg.jpg\t3\t(25, 32)\tm\t1\t2\n", 3, None, "expected 12 tab-separated fields"),
    (HEADER + "u1\timg.jpg\t3\t(25, x)\tm\t1\t2\t3\t4\t5\t0\t70\n", 2, 14, "age '(25, x)' is not an age"),
    (HEADER + "u1\timg.jpg\t3\t(25, 32)\tmale\t1\t2\t3\t4\t5\t0\t70\n", 2, 23, "gender 'male' is not a gender"),
    (HEADER + "u1\timg.jpg\t3\t(25, 32)\tf\t1.5\t2\t3\t4\t5\t0\t70\n", 2, 25, "x '1.5' is not an integer"),
    (HEADER + "u1\timg.jpg\tthree\t(25, 32)\tf\t1\t2\t3\t4\t5\t0\t70\n", 2, 12, "face_id 'three' is not"),
])
def test_bad_metadata_rows_name_line_and_column(tmp_path: Path, body: str, line: int, col: int | None,
                                                words: str) -> None:
    path = tmp_path / "fold_0_data.txt"
    path.write_text(body)
    with pytest.raises(FileFormatError, match=re.escape(words)) as info:
        read_fold_metadata(path)
    assert (info.value.path, info.value.line, info.value.col) == (str(path), line, col)


def test_bad_label_maps(tmp_path: Path) -> None:
    path = tmp_path / "synset.txt"
    path.write_text("m\nf\n\n\n")
    assert LabelMap.read(path).names == ("m", "f")
    for text, line, words in (("m\n\nf\n", 2, "blank line"), ("m\nf\nm\n", 3, "already on line 1")):
        path.write_text(text)
        with pytest.raises(FileFormatError, match=words) as info:
            LabelMap.read(path)
        assert info.value.line == line
    path.write_text("\n")
    with pytest.raises(FileFormatError, match="empty"):
        LabelMap.read(path)
    with pytest.raises(MissingFileError):
        LabelMap.read(tmp_path / "absent.txt")


def test_parse_age_and_face_keys() -> None:
    assert parse_age(" (0, 2) ") == (0, 2) and parse_age("(25,23)") == (25, 23) and parse_age("3") == (3, 3)
    assert parse_age("None") is None
    for bad in ("", "(1, 2, 3)", "-3", "twelve", "(1 2)"):
        with pytest.raises(ValueError):
            parse_age(bad)
    assert face_key_of_path("u@N0/coarse_tilt_aligned_face.12.x.y.jpg") == ("u@N0", 12, "x.y.jpg")
    for other in ("x.jpg", "u/face.jpg", "u/k.x1.a.jpg", "u/v/k.1.a.jpg", "/k.1.a.jpg"):
        assert face_key_of_path(other) is None
