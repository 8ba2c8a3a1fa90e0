"""Image list files: one ``relative/path label`` a line, as Caffe's ``convert_imageset`` and ImageData read them.

The path is everything before the last whitespace-separated token (so paths with spaces work, as in
Caffe, which splits at the last space); the last token is the integer label. Blank lines hold no entry,
but keep their number: convert_imageset counts every line in its keys (``line_id``), and the writer
numbers entries by ``line - 1``. Where Caffe (``find_last_of(' ')``, ``atoi``) would read a path that
cannot exist or a label of 0 — a tab or trailing spaces before the label, leading spaces, a line without
label or with a non-integer one — this parser takes the evident path and label or raises, on purpose.
:class:`ImageList` holds the entries with the line each came from, finds images missing under a root
folder, and writes lists back (atomically).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Literal, NamedTuple, Sequence, overload

import numpy as np

from .._atomic import atomic_write
from ..errors import AgegenderError, FileFormatError, MissingFileError

log = logging.getLogger(__name__)

OnMissing = Literal["fail", "skip"]

_LABEL = re.compile(r"[+-]?[0-9]+", re.ASCII)
_LABELS = re.compile(r"(?:[+-]?[0-9]+\n)*[+-]?[0-9]+", re.ASCII)
_LINE_FORMAT = "each line is 'relative/path label', the label an integer class index"
# how many missing names a report keeps (the count is always exact)
_REPORT_NAMES = 5


class ListEntry(NamedTuple):
    """One line of a list file: the image path relative to the image root, its label, and its line number.

    ``line`` is 1-based, or None for entries built in code rather than read from a file.
    """

    path: str
    label: int
    line: int | None = None


@dataclass(frozen=True)
class MissingImagesReport:
    """What :meth:`ImageList.check_images` found: how many images are missing and the first few of them."""

    root: str
    checked: int
    missing: int
    first_missing: tuple[ListEntry, ...] = ()
    source: str | None = None

    @property
    def ok(self) -> bool:
        """True when every listed image exists."""
        return self.missing == 0

    def describe(self) -> str:
        """One line for a log or an error: ``"3 of 120 images are missing under ROOT: a.jpg (line 4), ..."``."""
        if self.ok:
            return f"all {self.checked} images exist under {self.root}"
        names = ", ".join(
            entry.path + (f" (line {entry.line})" if entry.line is not None else "") for entry in self.first_missing
        )
        more = ", ..." if self.missing > len(self.first_missing) else ""
        return f"{self.missing} of {self.checked} images are missing under {self.root}: {names}{more}"


class ImageList:
    """The entries of one list file, in file order; ``source`` is the file they came from, if any.

    Held column-wise (``paths``, ``labels``, ``lines``) so that lists of tens of thousands of images are
    cheap to read and compare; iterating or indexing gives :class:`ListEntry` tuples.
    """

    __slots__ = ("paths", "labels", "lines", "source")

    def __init__(self, paths: Sequence[str], labels: Sequence[int] | np.ndarray,
                 lines: Sequence[int | None] | np.ndarray | None = None, source: str | None = None) -> None:
        self.paths: tuple[str, ...] = tuple(paths)
        self.labels: np.ndarray = np.array(labels, dtype=np.int64).reshape(-1)
        # 0 stands for "no line" (lines are 1-based)
        self.lines: np.ndarray = (np.zeros(len(self.paths), dtype=np.int64) if lines is None
                                  else np.array([0 if n is None else n for n in lines], dtype=np.int64).reshape(-1))
        if not len(self.paths) == len(self.labels) == len(self.lines):
            raise ValueError(f"{len(self.paths)} paths, {len(self.labels)} labels and {len(self.lines)} line numbers")
        self.labels.setflags(write=False)
        self.lines.setflags(write=False)
        self.source = source

    # --- reading ----------------------------------------------------------------------------------
    @classmethod
    def read(cls, path: str | Path) -> "ImageList":
        """Read a list file (UTF-8). Raises MissingFileError or FileFormatError naming ``path:line``."""
        path = Path(path)
        if not path.exists():
            raise MissingFileError("image list not found", path=path)
        if path.is_dir():
            raise FileFormatError("expected an image list file, found a folder", path=path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise MissingFileError(f"cannot read the image list: {exc.strerror}", path=path) from None
        if b"\x00" in raw[:4096]:
            raise FileFormatError(
                "expected a text image list ('relative/path label' lines), found a binary file", path=path
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise FileFormatError("the image list is not valid UTF-8 text", path=path, line=line) from None
        return cls.parse(text, source=str(path))

    @classmethod
    def parse(cls, text: str, source: str | None = None) -> "ImageList":
        """Parse the text of a list file; ``source`` names it in errors."""
        # lines end at "\n" only (as Caffe's getline), so no other character can split a path
        split_lines = [line.rsplit(None, 1) for line in text.split("\n")]
        numbers = [number for number, parts in enumerate(split_lines, start=1) if parts]
        for number in numbers:
            if len(split_lines[number - 1]) == 1:
                raise FileFormatError(
                    f"no label on this line: {_clip(split_lines[number - 1][0])!r}", path=source, line=number,
                    hint=_LINE_FORMAT,
                )
        paths = [split_lines[number - 1][0].lstrip() for number in numbers]
        labels = [split_lines[number - 1][1] for number in numbers]
        # one regex pass over all labels; the slow per-line search only runs to report a bad one
        if labels and not _LABELS.fullmatch("\n".join(labels)):
            for number, label in zip(numbers, labels):
                if not _LABEL.fullmatch(label):
                    line = text.split("\n")[number - 1]
                    raise FileFormatError(
                        f"the label {_clip(label)!r} is not an integer", path=source, line=number,
                        col=len(line.rstrip()) - len(label) + 1, hint=_LINE_FORMAT,
                    )
        try:
            label_array = np.array(list(map(int, labels)), dtype=np.int64)
        except (OverflowError, ValueError):  # ValueError: more digits than int() converts
            big = next(i for i, label in enumerate(labels) if len(label) > 20 or not -(2**63) <= int(label) < 2**63)
            raise FileFormatError(f"the label {_clip(labels[big])} does not fit in 64 bits",
                                  path=source, line=numbers[big]) from None
        return cls(paths, label_array, numbers, source)

    # --- what it holds ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[ListEntry]:
        return (self._entry(i) for i in range(len(self.paths)))

    @overload
    def __getitem__(self, index: int) -> ListEntry: ...
    @overload
    def __getitem__(self, index: slice) -> "ImageList": ...

    def __getitem__(self, index: int | slice) -> "ListEntry | ImageList":
        if isinstance(index, slice):
            return ImageList(self.paths[index], self.labels[index], self.lines[index], self.source)
        if not -len(self.paths) <= index < len(self.paths):
            raise IndexError(f"entry {index} of a list of {len(self.paths)}")
        return self._entry(index % len(self.paths))

    def __eq__(self, other: object) -> bool:
        """Same paths, labels and line numbers (the source file does not count)."""
        if not isinstance(other, ImageList):
            return NotImplemented
        return (self.paths == other.paths and np.array_equal(self.labels, other.labels)
                and np.array_equal(self.lines, other.lines))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        where = f" from {self.source}" if self.source else ""
        return f"<ImageList of {len(self.paths)} images{where}>"

    @property
    def entries(self) -> tuple[ListEntry, ...]:
        """All entries as :class:`ListEntry` tuples, in list order."""
        return tuple(self)

    def _entry(self, index: int) -> ListEntry:
        line = int(self.lines[index])
        return ListEntry(self.paths[index], int(self.labels[index]), line or None)

    def label_counts(self, num_classes: int | None = None) -> np.ndarray:
        """How many entries each label has (index = label), at least ``num_classes`` long.

        Raises FileFormatError for a negative label, or one >= ``num_classes`` when that is given.
        """
        self.check_labels(num_classes)
        return np.bincount(self.labels, minlength=num_classes or 0)

    def check_labels(self, num_classes: int | None) -> None:
        """Raise FileFormatError (with the first bad line) if a label is negative or >= ``num_classes``."""
        upper = np.iinfo(np.int64).max if num_classes is None else num_classes
        bad = np.flatnonzero((self.labels < 0) | (self.labels >= upper))
        if bad.size:
            entry = self._entry(int(bad[0]))
            allowed = "non-negative" if num_classes is None else f"in 0..{num_classes - 1}"
            raise FileFormatError(
                f"label {entry.label} of {entry.path!r} is not {allowed} ({bad.size} such lines)",
                path=self.source, line=entry.line,
            )

    # --- images on disk ---------------------------------------------------------------------------
    def check_images(self, root: str | Path) -> MissingImagesReport:
        """Find the listed images that are not files under ``root`` (each distinct path is checked once)."""
        return self._missing(root)[1]

    def require_images(self, root: str | Path, on_missing: OnMissing = "fail") -> "ImageList":
        """This list if every image exists under ``root``; otherwise fail or skip the missing ones.

        ``on_missing="fail"`` raises MissingFileError with the report; ``"skip"`` logs a warning and returns
        the list without the missing entries (line numbers kept).
        """
        if on_missing not in ("fail", "skip"):
            raise AgegenderError(f"on_missing must be 'fail' or 'skip', not {on_missing!r}")
        missing, report = self._missing(root)
        if report.ok:
            return self
        if on_missing == "fail":
            raise MissingFileError(
                report.describe(), path=self.source,
                hint="fix the image root, or skip the missing images (on_missing='skip')",
            )
        log.warning("%s%s; skipping them", f"{self.source}: " if self.source else "", report.describe())
        return self.select(~missing)

    def _missing(self, root: str | Path) -> tuple[np.ndarray, MissingImagesReport]:
        """A mask of the entries whose image is not a file under ``root``, and the report about them."""
        root = Path(root)
        if not root.is_dir():
            raise MissingFileError("image root folder not found", path=root)
        present = {path: os.path.isfile(root / path) for path in dict.fromkeys(self.paths)}
        mask = np.fromiter((not present[path] for path in self.paths), dtype=bool, count=len(self.paths))
        indices = np.flatnonzero(mask)
        report = MissingImagesReport(
            root=str(root), checked=len(self.paths), missing=int(indices.size),
            first_missing=tuple(self._entry(int(i)) for i in indices[:_REPORT_NAMES]), source=self.source,
        )
        return mask, report

    # --- building and writing ---------------------------------------------------------------------
    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, int]]) -> "ImageList":
        """A list built in code from ``(path, label)`` pairs (entries have no line number)."""
        pairs = list(pairs)
        return cls([str(path) for path, _ in pairs], [int(label) for _, label in pairs])

    def select(self, keep: Sequence[bool] | np.ndarray) -> "ImageList":
        """The entries where ``keep`` is true (a boolean mask as long as the list)."""
        mask = np.asarray(keep, dtype=bool)
        if mask.shape != (len(self.paths),):
            raise AgegenderError(f"the mask has shape {mask.shape}, the list has {len(self.paths)} entries")
        indices = np.flatnonzero(mask)
        return ImageList([self.paths[i] for i in indices], self.labels[indices], self.lines[indices], self.source)

    def to_text(self, destination: str | Path | None = None) -> str:
        """The list as Caffe reads it: ``path label`` lines, each ending in a newline.

        Raises AgegenderError (naming ``destination``) for a path that would not read back as itself:
        empty, with leading or trailing whitespace, or holding a line break.
        """
        for index, path in enumerate(self.paths):
            if not path.strip() or path != path.strip() or "\n" in path or "\r" in path:
                raise AgegenderError(
                    f"cannot write the path {path!r}: it is empty, starts or ends with whitespace or holds a "
                    "line break", path=destination, line=int(self.lines[index]) or None,
                )
        return "".join(f"{path} {label}\n" for path, label in zip(self.paths, self.labels.tolist()))

    def write(self, path: str | Path) -> None:
        """Write the list to ``path`` atomically (readers see the old file or the whole new one)."""
        text = self.to_text(path)
        with atomic_write(path, "w") as handle:
            handle.write(text)


def read_image_list(path: str | Path) -> ImageList:
    """Read a ``relative/path label`` list file (see :meth:`ImageList.read`)."""
    return ImageList.read(path)


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
