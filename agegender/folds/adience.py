"""The Adience benchmark's five folds: fold metadata, per-fold list files, label maps, leakage checks.

Adience (Eidinger, Enbar, Hassner 2014) splits its faces into five subject-exclusive folds, one metadata
file per fold (``fold_K_data.txt``). The per-fold lists used to train and test the Caffe nets (Levi &
Hassner 2015; Lapuschkin et al. 2017) come in three preprocessing variants, each a folder (often shipped
as a ``.tar.xz``) with ``test_fold_is_K/{age,gender}_{train,train_subset,val,test}.txt``:

* ``aligned``: ``train_val_txt_files_per_fold`` (landmark-aligned faces),
* ``mixed``: ``mixed_train_val_txt_files_per_fold`` (landmark- and rotation-aligned images of each face),
* ``unaligned``: ``squared_unaligned_train_val_txt_files_per_fold`` (rotation-aligned, squared faces).

:class:`AdienceFolds` finds those lists in an extracted folder or extracts the archives safely;
:func:`check_disjoint` verifies that no test image (or face) of a fold is among its training images.
"""

from __future__ import annotations

import contextlib
import logging
import lzma
import os
import re
import shutil
import tarfile
import tempfile
import weakref
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Mapping

from ..errors import AgegenderError, FileFormatError, MissingFileError
from .lists import ImageList

log = logging.getLogger(__name__)

VARIANT_FOLDERS: Mapping[str, str] = MappingProxyType({
    "aligned": "train_val_txt_files_per_fold",
    "mixed": "mixed_train_val_txt_files_per_fold",
    "unaligned": "squared_unaligned_train_val_txt_files_per_fold",
})
TARGETS: tuple[str, ...] = ("age", "gender")
SPLITS: tuple[str, ...] = ("train", "val", "test", "train_subset")
NUM_FOLDS = 5
ARCHIVE_SUFFIXES: tuple[str, ...] = (".tar.xz", ".tar.gz", ".tar")
# the shipped fold archives hold ~50 MB of text; refuse archives that unpack to far more than that
MAX_EXTRACTED_BYTES = 1 << 30

METADATA_COLUMNS: tuple[str, ...] = (
    "user_id", "original_image", "face_id", "age", "gender", "x", "y", "dx", "dy",
    "tilt_ang", "fiducial_yaw_angle", "fiducial_score",
)
_INT_COLUMNS = ("face_id", "x", "y", "dx", "dy", "tilt_ang", "fiducial_yaw_angle", "fiducial_score")
_AGE_RANGE = re.compile(r"\(\s*([0-9]+)\s*,\s*([0-9]+)\s*\)", re.ASCII)
_AGE_YEARS = re.compile(r"[0-9]+", re.ASCII)
_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
_GENDERS = {"m": "m", "f": "f", "u": "u", "None": None, "": None}


# --- fold metadata --------------------------------------------------------------------------------
@dataclass(frozen=True)
class FaceRecord:
    """One face of ``fold_K_data.txt``.

    ``age_text`` is the age field as written (``"(25, 32)"``, ``"35"``, ``"None"``, also odd ones such as
    ``"(25, 23)"``); ``age`` is it parsed as ``(low, high)`` years (``(35, 35)`` for a single number),
    or None. ``gender`` is ``"m"``, ``"f"``, ``"u"`` (unknown) or None (``"None"`` or empty in the file).
    The box is ``x, y, dx, dy`` in pixels of the original image. ``line`` is the row's line in the file.
    """

    user_id: str
    original_image: str
    face_id: int
    age_text: str
    age: tuple[int, int] | None
    gender: str | None
    x: int
    y: int
    dx: int
    dy: int
    tilt_ang: int
    fiducial_yaw_angle: int
    fiducial_score: int
    line: int

    @property
    def face_key(self) -> tuple[str, int, str]:
        """``(user_id, face_id, original_image)``: the face, whichever aligned image of it is used."""
        return (self.user_id, self.face_id, self.original_image)

    def image_path(self, kind: str = "landmark_aligned_face") -> str:
        """The face's image path as the fold lists write it, e.g. ``USER/landmark_aligned_face.ID.IMAGE``.

        ``kind`` is ``"landmark_aligned_face"`` (aligned) or ``"coarse_tilt_aligned_face"`` (unaligned).
        """
        return f"{self.user_id}/{kind}.{self.face_id}.{self.original_image}"


def parse_age(text: str) -> tuple[int, int] | None:
    """``"(25, 32)"`` -> ``(25, 32)``, ``"35"`` -> ``(35, 35)``, ``"None"`` -> None; ValueError otherwise.

    Ranges are kept as written, even the odd ones of the published files such as ``"(25, 23)"``.
    """
    text = text.strip()
    if text == "None":
        return None
    match = _AGE_RANGE.fullmatch(text)
    if len(text) > 40:  # no age has more digits than that (and int() refuses thousands of them)
        raise ValueError(f"not an Adience age: {text[:40]!r}...")
    if match:
        return int(match.group(1)), int(match.group(2))
    if _AGE_YEARS.fullmatch(text):
        return int(text), int(text)
    raise ValueError(f"not an Adience age: {text!r}")


def read_fold_metadata(path: str | Path) -> list[FaceRecord]:
    """Read an Adience ``fold_K_data.txt`` (tab-separated, one header line) into :class:`FaceRecord` rows.

    Raises MissingFileError, or FileFormatError naming ``path:line:col`` for a bad header, a row with
    the wrong number of fields, a non-integer number, an age or a gender that Adience does not use.
    """
    path = Path(path)
    text = _read_text(path, "fold metadata file")
    lines = text.split("\n")
    header = tuple(field.strip() for field in lines[0].rstrip("\r").split("\t"))
    if header != METADATA_COLUMNS:
        raise FileFormatError(
            f"unexpected header {_clip(lines[0].strip())!r}", path=path, line=1,
            hint="expected the tab-separated columns " + ", ".join(METADATA_COLUMNS),
        )
    records = []
    for number, raw_line in enumerate(lines[1:], start=2):
        line = raw_line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(METADATA_COLUMNS):
            raise FileFormatError(
                f"expected {len(METADATA_COLUMNS)} tab-separated fields, found {len(fields)}",
                path=path, line=number,
            )
        row = dict(zip(METADATA_COLUMNS, fields))
        starts = dict(zip(METADATA_COLUMNS, _field_columns(fields)))

        def bad(column: str, what: str, hint: str | None = None) -> FileFormatError:
            return FileFormatError(
                f"{column} {_clip(row[column])!r} is not {what}", path=path, line=number, col=starts[column], hint=hint,
            )

        numbers = {}
        for column in _INT_COLUMNS:
            text = row[column].strip()  # (str.strip drops more kinds of space than int() accepts)
            if not _INTEGER.fullmatch(text) or len(text) > 20:
                raise bad(column, "an integer" if len(text) <= 20 else "a 64-bit integer")
            numbers[column] = int(text)
        try:
            age = parse_age(row["age"])
        except ValueError:
            raise bad("age", "an age", "ages are '(low, high)', a number of years or 'None'") from None
        gender_text = row["gender"].strip()
        if gender_text not in _GENDERS:
            raise bad("gender", "a gender", "genders are m, f, u or None") from None
        if not row["user_id"].strip() or not row["original_image"].strip():
            raise FileFormatError("empty user_id or original_image", path=path, line=number)
        records.append(FaceRecord(
            user_id=row["user_id"].strip(), original_image=row["original_image"].strip(),
            age_text=row["age"].strip(), age=age, gender=_GENDERS[gender_text], line=number, **numbers,
        ))
    return records


def face_key_of_path(path: str) -> tuple[str, int, str] | None:
    """``(user_id, face_id, original_image)`` of an Adience image path ``USER/KIND.FACE_ID.IMAGE``, or None.

    ``USER/landmark_aligned_face.ID.IMAGE`` and ``USER/coarse_tilt_aligned_face.ID.IMAGE`` show the same face.
    """
    user, slash, name = path.partition("/")
    parts = name.split(".", 2)
    # string operations rather than a regex: this runs for every entry of every list checked
    if (not slash or not user or len(parts) != 3 or not parts[0] or "/" in name
            or not parts[1].isascii() or not parts[1].isdigit() or not parts[2]):
        return None
    return user, int(parts[1]), parts[2]


# --- label maps -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelMap:
    """Class names in label order, as a ``synset_*.txt`` lists them (line i names label i)."""

    names: tuple[str, ...]
    source: str | None = None

    @classmethod
    def read(cls, path: str | Path) -> "LabelMap":
        """Read a synset file: one name a line, in index order; trailing blank lines are ignored.

        Names are kept exactly as the file writes them (Lapuschkin's age synset says ``(8, 13)`` where
        Levi's says ``(8, 12)``). A blank line between names or a repeated name is a FileFormatError.
        """
        path = Path(path)
        lines = [line.strip() for line in _read_text(path, "label map").split("\n")]
        while lines and not lines[-1]:
            lines.pop()
        if not lines:
            raise FileFormatError("the label map is empty", path=path)
        first_line: dict[str, int] = {}
        for number, name in enumerate(lines, start=1):
            if not name:
                raise FileFormatError(
                    "blank line between class names (line i names label i-1, so it would shift every label)",
                    path=path, line=number,
                )
            if name in first_line:
                raise FileFormatError(
                    f"the class name {name!r} is already on line {first_line[name]}", path=path, line=number
                )
            first_line[name] = number
        return cls(tuple(lines), str(path))

    def __len__(self) -> int:
        return len(self.names)

    def name(self, label: int) -> str:
        """The name of class ``label``."""
        if not 0 <= label < len(self.names):
            raise AgegenderError(f"label {label} is outside 0..{len(self.names) - 1}", path=self.source)
        return self.names[label]

    def index(self, name: str) -> int:
        """The label of the class called ``name``."""
        try:
            return self.names.index(name)
        except ValueError:
            raise AgegenderError(
                f"no class named {name!r}", path=self.source, hint="classes: " + ", ".join(self.names)
            ) from None


def read_label_map(path: str | Path) -> LabelMap:
    """Read a ``synset_age.txt`` / ``synset_gender.txt`` (see :meth:`LabelMap.read`)."""
    return LabelMap.read(path)


# --- safe archive extraction ----------------------------------------------------------------------
def extract_archive_safely(archive: str | Path, destination: str | Path,
                           max_bytes: int = MAX_EXTRACTED_BYTES) -> list[Path]:
    """Extract a tar archive (``.tar``, ``.tar.gz``, ``.tar.xz``) into ``destination``; return the files.

    Every member is checked before anything is written: only regular files and folders, with relative
    names that stay inside ``destination`` (no absolute paths, no ``..``, no drive letters or
    backslashes), unpacking to at most ``max_bytes``. Links, devices and FIFOs are refused, and file
    data are copied rather than extracted with their owners or permissions. An I/O error while writing
    can leave part of the archive behind: extract into a fresh folder (as :class:`AdienceFolds` does).
    """
    archive, destination = Path(archive), Path(destination)
    if not archive.is_file():
        raise MissingFileError("archive not found", path=archive)
    written = []
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            total = 0
            planned = []
            for member in members:
                parts = _safe_member_parts(member, archive)
                if member.isfile():
                    total += member.size
                if total > max_bytes:
                    raise FileFormatError(
                        f"the archive unpacks to more than {max_bytes} bytes; refusing to extract it", path=archive
                    )
                planned.append((member, parts))
            destination.mkdir(parents=True, exist_ok=True)
            root = destination.resolve()
            for member, parts in planned:
                if not parts:
                    continue
                target = root.joinpath(*parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:  # pragma: no cover - isfile() members always have data
                    raise FileFormatError(f"no data for member {member.name!r}", path=archive)
                with source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out)
                written.append(target)
    except (tarfile.TarError, lzma.LZMAError, zlib.error, EOFError) as exc:
        raise FileFormatError(f"not a readable tar archive ({exc})", path=archive) from None
    except OSError as exc:
        raise AgegenderError(f"cannot extract into {destination}: {exc.strerror or exc}", path=archive) from None
    return written


def _safe_member_parts(member: tarfile.TarInfo, archive: Path) -> tuple[str, ...]:
    """The path parts a member may be written to, or a FileFormatError saying why it is refused."""
    name = member.name
    kind = ("a symbolic link" if member.issym() else "a hard link" if member.islnk()
            else None if member.isfile() or member.isdir() else "a device, FIFO or other special file")
    if kind:
        raise FileFormatError(f"refusing archive member {name!r}: it is {kind}", path=archive)
    if (not name or "\x00" in name or "\\" in name or name.startswith("/")
            or re.match(r"[A-Za-z]:", name)):
        raise FileFormatError(
            f"refusing archive member {name!r}: not a relative POSIX path", path=archive,
            hint="an archive member must not name an absolute path",
        )
    parts = tuple(part for part in PurePosixPath(name).parts if part != ".")
    if ".." in parts:
        raise FileFormatError(
            f"refusing archive member {name!r}: it climbs out of the extraction folder ('..')", path=archive,
        )
    return parts


# --- the folds ------------------------------------------------------------------------------------
class AdienceFolds:
    """The Adience per-fold lists, label maps and metadata under one folder.

    ``root`` is the folder that holds the variant folders or their archives (``.../adience/folds``), or
    its parent (``.../adience``). For each variant an extracted folder is preferred; otherwise the archive
    is extracted safely on first use, into ``cache_dir/<variant folder>`` when a cache folder is given
    (reused while the archive is unchanged) or into a private temporary folder removed with this object.
    """

    def __init__(self, root: str | Path, *, cache_dir: str | Path | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise MissingFileError("Adience folder not found", path=root)
        self.root = root
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._search = [folder for folder in (root, root / "folds") if folder.is_dir()]
        self._variant_dirs: dict[str, Path] = {}
        self._temp_dir: Path | None = None
        if not any(self._find_variant(variant) for variant in VARIANT_FOLDERS):
            raise MissingFileError(
                "no Adience fold lists here", path=root,
                hint="expected one of " + ", ".join(f"{name}/ or {name}.tar.xz" for name in VARIANT_FOLDERS.values()),
            )

    def __repr__(self) -> str:
        return f"AdienceFolds({str(self.root)!r}, variants={self.available_variants()})"

    # --- where things are -------------------------------------------------------------------------
    def available_variants(self) -> list[str]:
        """The variants whose lists are here (as a folder or an archive)."""
        return [variant for variant in VARIANT_FOLDERS if self._find_variant(variant)]

    def variant_dir(self, variant: str) -> Path:
        """The folder holding ``test_fold_is_K/`` for ``variant``, extracting its archive if needed."""
        _check_choice("variant", variant, tuple(VARIANT_FOLDERS))
        if variant in self._variant_dirs:
            return self._variant_dirs[variant]
        found = self._find_variant(variant)
        if found is None:
            folder = VARIANT_FOLDERS[variant]
            raise MissingFileError(
                f"the {variant} fold lists are not here", path=self.root,
                hint=f"expected {folder}/ or {folder}.tar.xz",
            )
        if found.is_dir():
            directory = found
        else:
            directory = self._extract(variant, found)
        self._variant_dirs[variant] = directory
        return directory

    def list_path(self, variant: str, fold: int, target: str, split: str) -> Path:
        """The path of one list file: ``<variant folder>/test_fold_is_K/<target>_<split>.txt``."""
        _check_fold(fold)
        _check_choice("target", target, TARGETS)
        _check_choice("split", split, SPLITS)
        return self.variant_dir(variant) / f"test_fold_is_{fold}" / f"{target}_{split}.txt"

    def split(self, variant: str, fold: int, target: str, split: str) -> ImageList:
        """Read one list: e.g. ``split("aligned", 0, "age", "test")`` is fold 0's age test images."""
        return ImageList.read(self.list_path(variant, fold, target, split))

    def metadata_path(self, fold: int) -> Path:
        """The path of ``fold_K_data.txt`` (in ``original_txt_files/`` or beside the lists)."""
        _check_fold(fold)
        name = f"fold_{fold}_data.txt"
        for folder in self._search:
            for candidate in (folder / "original_txt_files" / name, folder / name):
                if candidate.is_file():
                    return candidate
        raise MissingFileError(f"{name} not found", path=self.root, hint=f"expected original_txt_files/{name}")

    def metadata(self, fold: int) -> list[FaceRecord]:
        """The faces of fold ``fold`` (see :func:`read_fold_metadata`)."""
        return read_fold_metadata(self.metadata_path(fold))

    def label_map(self, target: str) -> LabelMap:
        """The class names of ``target`` from ``synset_<target>.txt`` (here, or one folder up)."""
        _check_choice("target", target, TARGETS)
        name = f"synset_{target}.txt"
        for folder in (*self._search, self.root.parent):
            if (folder / name).is_file():
                return LabelMap.read(folder / name)
        raise MissingFileError(f"{name} not found", path=self.root)

    # --- internals --------------------------------------------------------------------------------
    def _find_variant(self, variant: str) -> Path | None:
        folder = VARIANT_FOLDERS[variant]
        for base in self._search:
            if (base / folder).is_dir():
                return base / folder
        for base in self._search:
            for suffix in ARCHIVE_SUFFIXES:
                if (base / (folder + suffix)).is_file():
                    return base / (folder + suffix)
        return None

    def _extract(self, variant: str, archive: Path) -> Path:
        folder = VARIANT_FOLDERS[variant]
        if self.cache_dir is None:
            if self._temp_dir is None:
                self._temp_dir = Path(tempfile.mkdtemp(prefix="agegender-folds-"))
                weakref.finalize(self, shutil.rmtree, self._temp_dir, True)
            parent = self._temp_dir
        else:
            parent = self.cache_dir
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise AgegenderError(f"cannot create the cache folder: {exc.strerror}", path=parent) from None
        final = parent / folder
        stamp_path = parent / f".{folder}.source"
        stat = archive.stat()
        stamp = f"{archive.resolve()}\n{stat.st_size}\n{stat.st_mtime_ns}\n"
        if final.is_dir() and stamp_path.is_file() and stamp_path.read_text() == stamp:
            log.debug("reusing %s extracted in %s", archive, final)
            return final
        log.info("extracting %s into %s", archive, parent)
        # unpack beside the final folder, then rename: a reader never sees a half-extracted folder
        staging = Path(tempfile.mkdtemp(prefix=f".{folder}.", dir=parent))
        try:
            extract_archive_safely(archive, staging)
            if not (staging / folder).is_dir():
                raise FileFormatError(f"the archive does not hold a {folder}/ folder", path=archive)
            if final.exists():
                shutil.rmtree(final)
            try:
                os.replace(staging / folder, final)
            except OSError as exc:
                if not final.is_dir():  # else another process extracted the same archive meanwhile
                    raise AgegenderError(f"cannot move the extracted lists to {final}: {exc.strerror}",
                                         path=archive) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            stamp_path.write_text(stamp)
        return final


# --- per-fold file patterns ----------------------------------------------------------------------
def fold_path(path: str | Path | None, fold: int | None) -> Path | None:
    """``path`` with ``{fold}`` replaced by the fold number (one file per fold, e.g. ``w{fold}.caffemodel``);
    a path without ``{fold}`` is returned as it is. ``{fold}`` with no fold given is an error."""
    if path is None:
        return None
    text = str(path)
    if "{fold}" in text:
        if fold is None:
            raise AgegenderError(f"{text}: the path holds {{fold}} but no fold is given")
        text = text.replace("{fold}", str(fold))
    return Path(text)


# --- leakage check --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Overlap:
    """A test image (or its face) that also appears in the training lists."""

    test_path: str
    test_line: int | None
    split: str
    other_path: str
    other_line: int | None


@dataclass(frozen=True)
class DisjointReport:
    """Whether fold ``fold``'s test images stay out of its train and val lists.

    Counts are of entries (``train``, ``val``, ``test``) and of distinct test images shared with train or
    val (``shared_images``), of distinct test faces shared under any alignment (``shared_faces``: those of
    shared images, and e.g. the landmark-aligned image in test with the rotation-aligned one in train), and of Flickr users in both
    (``shared_users``; informational, Adience's folds split by user). ``train_val_shared`` counts images
    that are in both train and val (informational: it does not leak test data).
    """

    variant: str
    fold: int
    target: str
    train: int
    val: int
    test: int
    shared_images: int
    shared_faces: int
    shared_users: int
    train_val_shared: int
    first_overlaps: tuple[Overlap, ...] = ()

    @property
    def ok(self) -> bool:
        """True when no test image, and no face of one, appears in train or val."""
        return self.shared_images == 0 and self.shared_faces == 0

    def describe(self) -> str:
        """One paragraph for a log or an error message."""
        label = " ".join(part for part in (self.variant, f"fold {self.fold}" if self.fold >= 0 else "", self.target)
                         if part)
        head = (f"{label}: " if label else "") + f"{self.test} test, {self.train} train, {self.val} val entries"
        if self.ok:
            text = f"{head}; no test image or face is in train or val"
        else:
            examples = "; ".join(
                f"{o.test_path}{_at_line(o.test_line)} is in {o.split} as {o.other_path}{_at_line(o.other_line)}"
                for o in self.first_overlaps
            )
            text = (f"{head}; {self.shared_images} test image(s) and {self.shared_faces} test face(s) are also in "
                    f"train or val, e.g. {examples}")
        if self.shared_users:
            text += f"; {self.shared_users} user(s) have images in both test and train/val"
        if self.train_val_shared:
            text += f"; {self.train_val_shared} image(s) are in both train and val"
        return text

    def raise_if_overlapping(self) -> None:
        """Raise an AgegenderError with :meth:`describe` if test data leak into train or val."""
        if not self.ok:
            raise AgegenderError(self.describe(), hint="the test fold must be disjoint from its training data")


def check_disjoint(folds: AdienceFolds, variant: str, fold: int, target: str,
                   max_examples: int = 5) -> DisjointReport:
    """Check that the test images of fold ``fold`` are in neither its train nor its val list.

    Images are compared by path and, for Adience paths, by face (the same face under another alignment
    counts as a leak). Returns a :class:`DisjointReport`; call ``raise_if_overlapping()`` to fail on leaks.
    """
    lists = {split: folds.split(variant, fold, target, split) for split in ("train", "val", "test")}
    return disjoint_report(lists["test"], lists["train"], lists["val"], variant=variant, fold=fold, target=target,
                           max_examples=max_examples)


def disjoint_report(test: ImageList, train: ImageList, val: ImageList, *, variant: str = "", fold: int = -1,
                    target: str = "", max_examples: int = 5) -> DisjointReport:
    """:func:`check_disjoint` for lists already read (``variant``, ``fold``, ``target`` only label the report)."""
    others = {"train": train, "val": val}
    test_at: dict[str, int] = {}  # path -> its first index in the test list
    test_face_at: dict[tuple[str, int, str], int] = {}
    for index, path in enumerate(test.paths):
        test_at.setdefault(path, index)
        key = face_key_of_path(path)
        if key is not None:
            test_face_at.setdefault(key, index)
    test_users = {path.split("/", 1)[0] for path in test_at if "/" in path}

    shared_images: set[str] = set()
    shared_faces: set[tuple[str, int, str]] = set()
    shared_users: set[str] = set()
    examples: list[Overlap] = []
    for split, other in others.items():
        faces = [face_key_of_path(path) for path in other.paths]
        image_hits = test_at.keys() & set(other.paths)
        face_hits = test_face_at.keys() & set(faces)
        shared_images |= image_hits
        shared_faces |= face_hits
        shared_users |= test_users & {path.split("/", 1)[0] for path in other.paths if "/" in path}
        if not (image_hits or face_hits):
            continue
        for index, (path, face) in enumerate(zip(other.paths, faces)):
            if len(examples) >= max_examples:
                break
            hit = test_at[path] if path in image_hits else test_face_at[face] if face in face_hits else None
            if hit is not None:
                examples.append(Overlap(test.paths[hit], int(test.lines[hit]) or None, split, path,
                                        int(other.lines[index]) or None))
    return DisjointReport(
        variant=variant, fold=fold, target=target, train=len(train), val=len(val), test=len(test),
        shared_images=len(shared_images), shared_faces=len(shared_faces), shared_users=len(shared_users),
        train_val_shared=len(set(train.paths) & set(val.paths)), first_overlaps=tuple(examples),
    )


# --- helpers --------------------------------------------------------------------------------------
def _read_text(path: Path, what: str) -> str:
    if not path.exists():
        raise MissingFileError(f"{what} not found", path=path)
    if path.is_dir():
        raise FileFormatError(f"expected a {what}, found a folder", path=path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MissingFileError(f"cannot read the {what}: {exc.strerror}", path=path) from None
    if b"\x00" in raw[:4096]:
        raise FileFormatError(f"expected a text {what}, found a binary file", path=path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileFormatError(
            f"the {what} is not valid UTF-8 text", path=path, line=raw[: exc.start].count(b"\n") + 1
        ) from None


def _at_line(line: int | None) -> str:
    return f" (line {line})" if line is not None else ""


def _field_columns(fields: list[str]) -> list[int]:
    """The 1-based column where each tab-separated field starts."""
    columns, position = [], 1
    for field in fields:
        columns.append(position)
        position += len(field) + 1
    return columns


def _check_choice(what: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise AgegenderError(f"unknown {what} {value!r}", hint="choose one of " + ", ".join(choices))


def _check_fold(fold: object) -> None:
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < NUM_FOLDS:
        raise AgegenderError(f"fold must be an integer in 0..{NUM_FOLDS - 1}, not {fold!r}")


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
