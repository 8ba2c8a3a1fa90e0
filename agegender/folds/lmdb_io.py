"""Caffe's Datum LMDBs without Caffe: read them, write them as ``convert_imageset`` does, and compute
their mean image as ``compute_image_mean`` does.

Each LMDB record is one serialized ``Datum`` under a key ``%08d_<path as written in the list file>``:

* raw: ``channels``, ``height``, ``width`` and ``data`` = the image's bytes, C x H x W, BGR planes;
* ``float_data`` instead of ``data`` (float32 values, C x H x W);
* encoded: ``encoded: true`` and ``data`` = an image file's bytes (JPEG, PNG, ...), decoded when read.

Reading never writes: the environment is opened read-only without LMDB's lock file, so an LMDB in a
read-only folder can be read and no ``lock.mdb`` appears beside ``data.mdb``. (Without the lock, a
reader does not see a concurrent writer's transactions safely: read an LMDB once it is written.)

Writing goes into ``<out>.partial`` and is renamed to ``<out>`` only when every record is committed, so a
folder named ``<out>`` is always complete; an interrupted write resumes from the records already
committed in ``<out>.partial``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import operator
import os
import shutil
import struct
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from .._atomic import atomic_write_text
from ..errors import AgegenderError, CaffemodelError, FileFormatError, MissingFileError
from ..prototxt import Message, decode_message, encode_message, write_blobproto
from .transforms import hwc_to_chw, load_image_bgr, resize_like_convert_imageset

log = logging.getLogger(__name__)

COMMIT_EVERY = 1000  # convert_imageset commits one transaction per 1000 images
PARTIAL_SUFFIX = ".partial"
_PARTIAL_INFO = "agegender-partial.json"  # settings of an unfinished write, kept inside <out>.partial
_MAX_KEY_BYTES = 511  # LMDB's default maximum key size
_INITIAL_MAP_SIZE = 64 << 20
# how DataTransformer decodes encoded Datums: natively by default, or with force_color / force_gray
_DECODE_FLAGS = {"native": -1, "color": 1, "gray": 0}  # cv2.IMREAD_UNCHANGED / IMREAD_COLOR / IMREAD_GRAYSCALE


class DatumRecord(NamedTuple):
    """One LMDB record: its key, the image (uint8, or float32 for ``float_data``) and the label."""

    key: str
    image: np.ndarray
    label: int


ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)`` after each record."""


def _key_text(key: bytes) -> str:
    return key.decode("utf-8", "backslashreplace")


def _check_lmdb_folder(path: Path) -> Path:
    """``path`` is a readable LMDB folder; returns its data file. User mistakes become our errors."""
    if not path.exists():
        raise MissingFileError("LMDB folder not found", path=path)
    if not path.is_dir():
        raise FileFormatError(
            "expected an LMDB folder (holding data.mdb), found a file", path=path,
            hint="pass the folder that holds data.mdb" if path.name == "data.mdb" else None,
        )
    data_file = path / "data.mdb"
    if not data_file.is_file():
        names = {p.name for p in path.iterdir()}
        leveldb = "CURRENT" in names or any(n.endswith((".ldb", ".sst")) for n in names)
        raise FileFormatError(
            "not an LMDB: the folder has no data.mdb", path=path,
            hint="this looks like a LevelDB; only LMDB is supported" if leveldb else None,
        )
    if not os.access(data_file, os.R_OK):
        raise MissingFileError("the LMDB's data.mdb is not readable (permissions)", path=data_file)
    return data_file


_LMDB_MAGIC = 0xBEEFC0DE
_LMDB_PAGE_HEADER = 16  # MDB_page's header on 64-bit builds; the MDB_meta follows it


def _check_lmdb_size(data_file: Path) -> None:
    """Refuse a ``data.mdb`` shorter than its own meta page says (a download or copy cut short).

    LMDB maps the file and trusts its page numbers: touching a page past the end of a truncated file
    kills the process with SIGBUS instead of raising. The meta pages (pages 0 and 1; LMDB uses the one
    of the later transaction) give the page size and the last page in use, so the size the file must
    have is known before LMDB opens it. A file whose meta pages cannot be read this way (not an LMDB,
    a 32-bit or big-endian build) is left to LMDB, which refuses those itself.
    """
    try:
        size = data_file.stat().st_size
        with open(data_file, "rb") as handle:
            first = handle.read(_LMDB_PAGE_HEADER + 144)
            if len(first) < _LMDB_PAGE_HEADER + 144:
                return
            page_size = struct.unpack_from("<I", first, _LMDB_PAGE_HEADER + 24)[0]  # mm_dbs[FREE].md_pad
            if not 512 <= page_size <= 1 << 16:
                return
            handle.seek(page_size)
            second = handle.read(_LMDB_PAGE_HEADER + 144)
    except OSError as exc:
        raise MissingFileError(f"cannot read the LMDB: {exc.strerror}", path=data_file) from None
    metas = []
    for page in (first, second):
        if len(page) < _LMDB_PAGE_HEADER + 144:
            continue
        magic, version = struct.unpack_from("<II", page, _LMDB_PAGE_HEADER)
        last_page, txn_id = struct.unpack_from("<QQ", page, _LMDB_PAGE_HEADER + 120)
        if magic == _LMDB_MAGIC and version == 1:
            metas.append((txn_id, last_page))
    if not metas:
        return
    _, last_page = max(metas)
    needed = (last_page + 1) * page_size
    if size < needed:
        raise FileFormatError(
            f"the LMDB's data.mdb is truncated: {size:,} bytes, but its last transaction uses {needed:,} "
            f"({last_page + 1:,} pages of {page_size} bytes)", path=data_file,
            hint="the file was cut short (an interrupted copy or download?): copy or build it again",
        )


def _open_env(path: Path) -> Any:
    """Open an existing LMDB folder read-only, creating nothing in it (no lock file)."""
    import lmdb

    _check_lmdb_size(_check_lmdb_folder(path))
    try:
        return lmdb.open(str(path), readonly=True, lock=False, readahead=False, subdir=True, create=False)
    except lmdb.Error as exc:
        raise FileFormatError(f"not a readable LMDB ({exc})", path=path) from None


class _SharedEnvironments:
    """The read-only environments open in this process, one per LMDB file, shared by every reader.

    py-lmdb refuses to open one environment twice in a process (LMDB forbids it), so two readers of
    the same folder, or :func:`compute_image_mean` while a :class:`DatumLMDB` is open, must share one.
    After a fork, the child closes the environments it inherited and opens its own.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._envs: dict[tuple[int, int], tuple[int, Any, int]] = {}  # (dev, inode) -> (pid, env, users)

    def acquire(self, path: Path) -> tuple[tuple[int, int], Any]:
        file_id = self._file_id(_check_lmdb_folder(path))
        pid = os.getpid()
        with self._lock:
            entry = self._envs.get(file_id)
            if entry is not None and entry[0] == pid:
                self._envs[file_id] = (pid, entry[1], entry[2] + 1)
                return file_id, entry[1]
            if entry is not None:  # inherited through fork(): not usable here, and it blocks a new open
                with contextlib.suppress(Exception):
                    entry[1].close()
                del self._envs[file_id]
            env = _open_env(path)
            self._envs[file_id] = (pid, env, 1)
            return file_id, env

    def release(self, file_id: tuple[int, int]) -> None:
        with self._lock:
            entry = self._envs.get(file_id)
            if entry is None or entry[0] != os.getpid():
                return
            if entry[2] > 1:
                self._envs[file_id] = (entry[0], entry[1], entry[2] - 1)
            else:
                del self._envs[file_id]
                entry[1].close()

    @staticmethod
    def _file_id(data_file: Path) -> tuple[int, int]:
        st = data_file.stat()
        return st.st_dev, st.st_ino


_SHARED_ENVS = _SharedEnvironments()


# An image file cannot hold more pixels than this per byte (constant PNGs reach ~300, JPEGs ~60): a header
# that declares more is corrupted, and decoding it would allocate far more memory than the record's size
_MAX_PIXELS_PER_BYTE = 1024
_MIN_PIXEL_ALLOWANCE = 1 << 22  # small files may always declare up to 2048 x 2048 pixels


def _declared_image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) that an image file's header declares (PNG, JPEG, BMP, GIF); None for other formats
    or a header too damaged to say, which OpenCV then refuses or decodes under its own pixel limit."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:
        width, height = struct.unpack_from(">II", data, 16)
        return width, height
    if data.startswith(b"BM") and len(data) >= 26:
        width, height = struct.unpack_from("<ii", data, 18)
        return abs(width), abs(height)
    if data.startswith((b"GIF87a", b"GIF89a")) and len(data) >= 10:
        width, height = struct.unpack_from("<HH", data, 6)
        return width, height
    if data.startswith(b"\xff\xd8"):
        pos = 2
        while pos + 4 <= len(data) and data[pos] == 0xFF:
            marker = data[pos + 1]
            if marker == 0xFF:  # fill byte
                pos += 1
            elif marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
                pos += 2
            elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
                if pos + 9 > len(data):
                    return None
                height, width = struct.unpack_from(">HH", data, pos + 5)
                return width, height
            elif marker == 0xDA:  # image data before any frame header
                return None
            else:
                pos += 2 + struct.unpack_from(">H", data, pos + 2)[0]
    return None


def _png_chunk_overrun(data: bytes) -> str | None:
    """What is wrong with a PNG whose chunk declares more bytes than the file holds, else None.

    OpenCV allocates a chunk's declared length before reading it: one corrupted length field in a
    100-byte PNG costs up to 2 GiB."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if pos + 12 + length > len(data):
            name = kind.decode("latin-1")
            return (f"its {name!r} chunk declares {length:,} bytes where {max(len(data) - pos - 12, 0):,} remain "
                    "(truncated or corrupted)")
        if kind == b"IEND":
            break
        pos += 12 + length
    return None


def _decode_image(data: bytes, flag: int, key: str, path: Path) -> np.ndarray:
    """An encoded Datum's image as Caffe decodes it (``cv::imdecode``), C x H x W."""
    import cv2

    if not data:
        raise CaffemodelError(f"record '{key}': an encoded Datum with no image bytes", path=path)
    overrun = _png_chunk_overrun(data)
    if overrun:
        raise CaffemodelError(f"record '{key}': the encoded image is a damaged PNG: {overrun}", path=path)
    declared = _declared_image_size(data)
    if declared is not None and declared[0] * declared[1] > max(_MIN_PIXEL_ALLOWANCE, _MAX_PIXELS_PER_BYTE * len(data)):
        raise CaffemodelError(
            f"record '{key}': the encoded image declares {declared[0]} x {declared[1]} pixels in {len(data):,} bytes, "
            "more than an image file of that size can hold (a corrupted header?)", path=path,
        )
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    except cv2.error:
        image = None
    if image is None:
        raise CaffemodelError(
            f"record '{key}': the encoded image ({len(data)} bytes, starting {data[:4].hex()}) cannot be "
            "decoded (a corrupt or truncated JPEG/PNG?)", path=path,
        )
    if image.dtype != np.uint8:
        # Caffe's CVMatToDatum / DataTransformer check CV_8U and abort on anything else
        raise CaffemodelError(f"record '{key}': the encoded image has {image.dtype} pixels, Caffe needs 8 bits",
                              path=path)
    return hwc_to_chw(image)


def parse_datum(value: bytes, key: str, path: Path, decode: str = "native") -> tuple[np.ndarray, int]:
    """A serialized Datum as ``(image, label)``: C x H x W uint8 for ``data`` and encoded images,
    float32 for ``float_data``. Errors name the record ``key`` and the LMDB ``path``."""
    image, label, _ = parse_datum_record(value, key, path, decode)
    return image, label


def parse_datum_record(value: bytes, key: str, path: Path, decode: str = "native") -> tuple[np.ndarray, int, bool]:
    """:func:`parse_datum` and whether the Datum was encoded: Caffe transforms a decoded encoded Datum
    as a ``cv::Mat`` (``Transform(const cv::Mat&)``), a raw one as a Datum, which differ with a mean file
    (see :class:`~agegender.folds.transforms.CaffeTransform`)."""
    try:
        datum = decode_message(value, "Datum", str(path))
    except CaffemodelError as exc:
        raise CaffemodelError(f"record '{key}' is not a Datum: {exc.message}", path=path) from None
    label = int(datum.label)
    if datum.encoded:
        return _decode_image(datum.data, _DECODE_FLAGS[decode], key, path), label, True
    channels, height, width = int(datum.channels), int(datum.height), int(datum.width)
    shape_text = f"channels x height x width = {channels} x {height} x {width}"
    if min(channels, height, width) <= 0:
        raise CaffemodelError(f"record '{key}': a Datum of the wrong shape ({shape_text})", path=path)
    size = channels * height * width
    data = datum.data
    if data:  # Caffe's Data layer uses the bytes when there are any, float_data otherwise
        if len(data) != size:
            raise CaffemodelError(
                f"record '{key}': a Datum of the wrong shape: {shape_text} needs {size} bytes but data "
                f"holds {len(data)}", path=path,
            )
        return np.frombuffer(data, dtype=np.uint8).reshape(channels, height, width).copy(), label, False
    if datum.has("float_data"):
        floats = np.asarray(datum.float_data, dtype=np.float32)
        if floats.size != size:
            raise CaffemodelError(
                f"record '{key}': a Datum of the wrong shape: {shape_text} needs {size} values but "
                f"float_data holds {floats.size}", path=path,
            )
        return floats.reshape(channels, height, width).copy(), label, False
    raise CaffemodelError(f"record '{key}': a Datum with no image data ({shape_text})", path=path)


class DatumLMDB:
    """A Caffe Datum LMDB, read-only: ``len(db)``, ``db.keys`` (in LMDB order, which Caffe reads in),
    ``db[i]`` and iteration give :class:`DatumRecord` ``(key, image, label)``.

    Images are C x H x W BGR uint8 (float32 for ``float_data`` Datums). Encoded Datums are decoded as
    Caffe's Data layer does: ``decode="native"`` (``cv::imdecode(-1)``: the file's own channels, the
    default), ``"color"`` (``transform_param.force_color``) or ``"gray"`` (``force_gray``).

    The folder is never modified. The object can be handed to DataLoader workers: the environment is
    reopened in a forked or unpickled process.
    """

    def __init__(self, path: str | Path, *, decode: str = "native") -> None:
        if decode not in _DECODE_FLAGS:
            raise AgegenderError(f"decode must be one of {sorted(_DECODE_FLAGS)}, not {decode!r}")
        self.path = Path(path)
        self.decode = decode
        self._env_id: tuple[int, int] | None = None
        self._txn: Any = None
        self._pid = -1
        txn = self._transaction()
        try:
            self._keys: list[bytes] = list(txn.cursor().iternext(keys=True, values=False))
        except Exception as exc:  # lmdb.Error on a damaged file
            self.close()
            raise FileFormatError(f"cannot list the LMDB's records ({exc})", path=self.path) from None

    def _transaction(self) -> Any:
        """This process's read transaction: one for the object's life, so every access sees one snapshot."""
        if self._txn is None or self._pid != os.getpid():
            # a fresh object, or one inherited through fork() or unpickled: the environment is per process
            self._txn = None
            self._env_id, env = _SHARED_ENVS.acquire(self.path)
            self._pid = os.getpid()
            try:
                self._txn = env.begin(buffers=False)
            except Exception as exc:
                self.close()
                raise FileFormatError(f"cannot read the LMDB ({exc})", path=self.path) from None
        return self._txn

    @property
    def keys(self) -> list[str]:
        """The record keys in LMDB order (byte order: the order Caffe's Data layer reads)."""
        return [_key_text(k) for k in self._keys]  # a new list: callers may change it

    def __len__(self) -> int:
        return len(self._keys)

    def _index(self, index: int) -> int:
        index = operator.index(index)  # ints and numpy integers; a slice or float is a TypeError
        count = len(self._keys)
        if not -count <= index < count:
            raise IndexError(f"record {index} out of range: the LMDB holds {count}")
        return index % count

    def raw_value(self, index: int) -> bytes:
        """The stored bytes (a serialized Datum) of record ``index``."""
        key = self._keys[self._index(index)]
        try:
            value = self._transaction().get(key)
        except AgegenderError:
            raise
        except Exception as exc:  # lmdb.Error on a damaged file
            raise FileFormatError(f"cannot read record '{_key_text(key)}' ({exc})", path=self.path) from None
        if value is None:
            raise FileFormatError(f"record '{_key_text(key)}' vanished (the LMDB changed while open)",
                                  path=self.path)
        return value

    def datum(self, index: int) -> Message:
        """Record ``index`` as a Datum message (images not decoded)."""
        key = _key_text(self._keys[self._index(index)])
        try:
            return decode_message(self.raw_value(index), "Datum", str(self.path))
        except CaffemodelError as exc:
            raise CaffemodelError(f"record '{key}' is not a Datum: {exc.message}", path=self.path) from None

    def __getitem__(self, index: int) -> DatumRecord:
        return self.record(index)[0]

    def record(self, index: int) -> tuple[DatumRecord, bool]:
        """Record ``index`` and whether its Datum is encoded (then Caffe transforms it as a decoded
        ``cv::Mat``: pass ``from_mat=True`` to :class:`~agegender.folds.transforms.CaffeTransform`)."""
        position = self._index(index)
        key = _key_text(self._keys[position])
        image, label, encoded = parse_datum_record(self.raw_value(position), key, self.path, self.decode)
        return DatumRecord(key, image, label), encoded

    def __iter__(self) -> Iterator[DatumRecord]:
        txn = self._transaction()
        try:
            for raw_key, value in txn.cursor().iternext(keys=True, values=True):
                key = _key_text(raw_key)
                image, label = parse_datum(value, key, self.path, self.decode)
                yield DatumRecord(key, image, label)
        except AgegenderError:
            raise
        except Exception as exc:  # lmdb.Error on a damaged file
            raise FileFormatError(f"cannot read the LMDB ({exc})", path=self.path) from None

    def close(self) -> None:
        """Release the environment (also done when the object is garbage-collected)."""
        if self._pid == os.getpid():
            if self._txn is not None:
                with contextlib.suppress(Exception):
                    self._txn.abort()
            if self._env_id is not None:
                _SHARED_ENVS.release(self._env_id)
        self._txn = self._env_id = None
        self._pid = -1

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> "DatumLMDB":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        return {"path": self.path, "decode": self.decode, "keys": self._keys}

    def __setstate__(self, state: dict) -> None:
        self.path, self.decode, self._keys = state["path"], state["decode"], state["keys"]
        self._env_id = self._txn = None
        self._pid = -1  # opened on first access in this process

    def __repr__(self) -> str:
        return f"DatumLMDB({str(self.path)!r}, {len(self)} records)"


# --- writing ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class LMDBWriteReport:
    """What :func:`write_datum_lmdb` did."""

    path: Path
    written: int  # records written by this call
    resumed: int  # records already committed by an interrupted earlier call, not redone
    unreadable: list[str]  # names skipped because OpenCV could not read them (skip_unreadable=True)
    map_size: int  # the LMDB map size at the end (bytes)


def _check_items(items: Iterable[tuple[str | Path, int]]) -> list[tuple[str, int, int | None]]:
    """``(name, label, line)`` of each item; ``line`` is the list-file line of a ListEntry, else None."""
    checked = []
    for index, item in enumerate(items):
        line = None
        if hasattr(item, "path") and hasattr(item, "label"):  # a ListEntry of folds.lists
            name, label = item.path, item.label
            line = getattr(item, "line", None)
        else:
            try:
                name, label = item
            except (TypeError, ValueError):
                raise AgegenderError(f"item {index} is not a (path, label) pair: {item!r}") from None
        name = str(name)
        if not name.strip() or "\n" in name or "\r" in name or "\0" in name:
            raise AgegenderError(f"item {index}: the image name {name!r} is empty or holds a line break")
        if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
            raise AgegenderError(f"item {index} ({name}): the label must be an integer, not {label!r}")
        if not -(1 << 31) <= int(label) < 1 << 31:
            raise AgegenderError(f"item {index} ({name}): the label {label} does not fit Datum's int32")
        checked.append((name, int(label), None if line is None else int(line)))
    return checked


def _key_numbers(records: Sequence[tuple[str, int, int | None]]) -> list[int]:
    """The numbers convert_imageset puts in the keys: its ``line_id``, the index of the list file's line.

    Every line of the file counts, blank ones and those of images it cannot read included (it skips those
    and leaves their numbers unused), so entries read from a list file (with their line numbers, in file
    order) are numbered ``line - 1``; other items by their position."""
    lines = [line for _, _, line in records]
    if lines and all(line is not None and line > 0 for line in lines) and all(
            a < b for a, b in zip(lines, lines[1:])):  # type: ignore[operator]
        return [line - 1 for line in lines]  # type: ignore[operator]
    return list(range(len(records)))


def _encoding_of(name: str, encode_type: str | None) -> str:
    """The encoding convert_imageset uses: ``encode_type``, or the one it guesses from the name:
    what follows the last dot, lower-cased, *without* the dot (``fn.substr(p + 1)``)."""
    if encode_type:
        return encode_type.lower()
    dot = name.rfind(".")
    if dot < 0 or dot == len(name) - 1:
        raise AgegenderError(f"cannot guess the encoding of '{name}' (no extension)",
                             hint="give encode_type, e.g. 'jpg' or 'png'")
    return name[dot + 1:].lower()


def _keeps_file_bytes(file_path: str, encoding: str) -> bool:
    """Caffe's ``matchExt(root_folder + name, encoding)``: the lower-cased text after the path's last dot
    (the whole path without one) equals the lower-cased encoding, or the encoding is ``jpg`` and the
    extension ``jpeg``. The guessed encoding always matches; an explicit ``encode_type`` matches the
    files of its extension (``jpg`` also ``.jpeg`` files), whose bytes are then stored unchanged too."""
    dot = file_path.rfind(".")
    extension = (file_path[dot + 1:] if dot >= 0 else file_path).lower()
    encoding = encoding.lower()
    return extension == encoding or (encoding == "jpg" and extension == "jpeg")


def _imencode(image: np.ndarray, encoding: str, name: str) -> bytes:
    import cv2

    extension = "." + encoding  # cv::imencode("." + enc): OpenCV reads what follows the last dot
    try:
        ok, buffer = cv2.imencode(extension, image)
    except cv2.error:
        ok, buffer = False, None
    if not ok:
        raise AgegenderError(f"OpenCV cannot encode '{name}' as '{extension}'",
                             hint="use an encode_type OpenCV writes, e.g. 'jpg' or 'png'")
    return buffer.tobytes()


Shape = tuple[int, int, int]


def _datum_value(file: Path, name: str, label: int, resize: tuple[int, int] | None, encoded: bool,
                 encode_type: str | None, gray: bool = False,
                 carried: Shape | None = None) -> tuple[bytes, Shape | None]:
    """The serialized Datum ``convert_imageset`` stores for one image (fields in field-number order, as
    protobuf writes them), and the channels/height/width its reused Datum carries on to the next image.

    convert_imageset fills one ``Datum`` for all images. Raw images (``CVMatToDatum``) set every field.
    A re-encoded image (``EncodeCVMatToDatum``: resized, or the encoding not the file's extension) sets
    ``data``, ``channels``, ``height``, ``width`` (of the encoded image), ``encoded`` and ``label``; a file
    stored as it is (``ReadFileToDatum``) sets only ``data``, ``label`` and ``encoded``, so it keeps the
    channels/height/width of the last re-encoded image before it (``carried``)."""
    # ReadImageToDatum decodes the image first, also when it then stores the file's bytes
    image = load_image_bgr(file, is_color=not gray)
    if resize is not None:
        image = resize_like_convert_imageset(image, resize[0], resize[1])
    datum = Message("Datum")
    if encoded:
        encoding = _encoding_of(name, encode_type)
        if resize is None and _keeps_file_bytes(str(file), encoding):
            if carried is not None:
                datum.channels, datum.height, datum.width = carried
            try:
                datum.data = file.read_bytes()
            except OSError as exc:
                raise MissingFileError(f"cannot read the image: {exc.strerror}", path=file) from None
        else:
            carried = (1 if image.ndim == 2 else int(image.shape[2]), int(image.shape[0]), int(image.shape[1]))
            datum.channels, datum.height, datum.width = carried
            datum.data = _imencode(image, encoding, name)
        datum.label = label
        datum.encoded = True
    else:
        chw = hwc_to_chw(image)  # a grey (--gray) image is one channel
        datum.channels, datum.height, datum.width = chw.shape
        datum.data = chw.tobytes()
        datum.label = label
        datum.encoded = False  # CVMatToDatum sets it: Caffe's records carry the field
    return encode_message(datum), carried


def _settings_fingerprint(records: Sequence[tuple[bytes, str, int]], resize: tuple[int, int] | None,
                          encoded: bool, encode_type: str | None, gray: bool = False) -> dict:
    digest = hashlib.sha256()
    for key, _, label in records:
        digest.update(key + b"\0" + str(label).encode() + b"\n")
    settings = {
        "format": 1, "records": len(records), "list_sha256": digest.hexdigest(),
        "resize": list(resize) if resize else None, "encoded": encoded, "encode_type": encode_type,
    }
    if gray:  # only when set: partial writes of earlier versions (always colour) still resume
        settings["gray"] = True
    return settings


def _commit(env: Any, batch: list[tuple[bytes, bytes]]) -> None:
    """Put ``batch`` in one transaction, growing the map first (and again if LMDB says it is full)."""
    import lmdb

    if not batch:
        return
    info, stat = env.info(), env.stat()
    used = (info["last_pgno"] + 1) * stat["psize"]
    needed = used + 2 * sum(len(k) + len(v) for k, v in batch) + (1 << 20)  # pages round values up
    if info["map_size"] < needed:
        env.set_mapsize(max(2 * info["map_size"], needed))
    while True:
        try:
            with env.begin(write=True) as txn:
                for key, value in batch:
                    txn.put(key, value)
            return
        except lmdb.MapFullError:  # the transaction was aborted: grow and redo it
            env.set_mapsize(2 * env.info()["map_size"])
        except lmdb.Error as exc:  # disk full, I/O error, ...
            raise AgegenderError(f"cannot write the LMDB ({exc})", path=env.path()) from None


def write_datum_lmdb(
    out: str | Path,
    items: Iterable[tuple[str | Path, int]],
    resize: tuple[int, int] | None = None,
    encoded: bool = False,
    shuffle: bool = False,
    seed: int = 0,
    *,
    root: str | Path = "",
    encode_type: str | None = None,
    gray: bool = False,
    skip_unreadable: bool = False,
    overwrite: bool = False,
    commit_every: int = COMMIT_EVERY,
    initial_map_size: int = _INITIAL_MAP_SIZE,
    progress: ProgressCallback | None = None,
) -> LMDBWriteReport:
    """Write ``items`` (``(name, label)`` pairs or the entries of a :class:`~agegender.folds.ImageList`,
    as the lines of a list file) into a Datum LMDB, as
    ``convert_imageset [--resize_height=H --resize_width=W] [--gray] [--encoded] [--encode_type=T]
    [--shuffle] root/ list out`` does.

    Per image (``root / name``): ``cv::imread(IMREAD_COLOR)`` (``IMREAD_GRAYSCALE`` with ``gray``),
    ``cv::resize`` to ``resize = (height, width)`` with INTER_LINEAR, then a raw Datum (C x H x W BGR
    bytes, C = 3, or 1 with ``gray``) or, with ``encoded``, the file's bytes unchanged when the image is
    not resized and the encoding matches the file's extension (the encoding guessed from the extension
    always does; an explicit ``encode_type`` such as ``jpg`` does for ``.jpg``/``.jpeg`` files), else the
    (resized) image re-encoded by ``cv::imencode`` (see :func:`_datum_value` for the fields each kind
    sets). Keys are ``%08d_<name>``, the number being convert_imageset's ``line_id``: the list file's line
    index for entries read from a list file (blank lines count, as Caffe reads every line), otherwise the
    position; after the optional shuffle (seeded here: Caffe's shuffle is not reproducible) the
    position. Commits every ``commit_every`` records; the map size grows as needed.

    The records go to ``<out>.partial``, renamed to ``out`` once all are committed. Calling again after
    an interruption, with the same items and settings, skips the records already committed there.
    ``skip_unreadable`` skips images OpenCV cannot read (Caffe logs and skips them; their key numbers
    stay unused); otherwise the first one raises, before anything is written when the file is missing.
    ``progress(done, total)`` is called after each image.
    """
    out = Path(out)
    records_in = _check_items(items)
    if resize is not None:
        try:
            height, width = (int(v) for v in resize)
        except (TypeError, ValueError):
            raise AgegenderError(f"resize must be (height, width), not {resize!r}") from None
        if height <= 0 or width <= 0:
            raise AgegenderError(f"resize must be two positive sizes (height, width), not {resize!r}")
        resize = (height, width)
    if commit_every < 1:
        raise AgegenderError(f"commit_every must be at least 1, not {commit_every}")
    if encode_type:
        encode_type = encode_type.lower()  # as given otherwise: ".jpg" does not match a .jpg file in Caffe
        _imencode(np.zeros((1, 1, 3), np.uint8), encode_type, "a test image")  # fail before any work
        encoded = True  # as convert_imageset: "encode_type specified, assuming encoded=true"
    else:
        encode_type = None  # convert_imageset's default "" guesses from the extension
    gray = bool(gray)
    if shuffle:
        order = np.random.default_rng(seed).permutation(len(records_in))
        records_in = [(records_in[j][0], records_in[j][1], None) for j in order]
    records: list[tuple[bytes, str, int]] = []
    for position, (name, label, _) in zip(_key_numbers(records_in), records_in):
        key = f"{position:08d}_{name}".encode("utf-8")
        if len(key) > _MAX_KEY_BYTES:
            raise AgegenderError(f"item {position}: the key for '{name}' is {len(key)} bytes, LMDB allows "
                                 f"{_MAX_KEY_BYTES}", hint="use shorter paths in the list")
        records.append((key, name, label))
    if out.exists() and not overwrite:
        raise AgegenderError("the output already exists", path=out, hint="remove it, or pass overwrite=True")
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    settings = _settings_fingerprint(records, resize, encoded, encode_type, gray)
    root_path = Path(root)

    existing = _resume_keys(partial, settings)
    todo = [r for r in records if r[0] not in existing]
    # the channels/height/width convert_imageset's reused Datum holds when it reaches the first image to do
    carried = _carried_shape(partial, records, existing) if encoded and existing else None
    if not skip_unreadable:
        for _, name, _ in todo:  # fail fast on a missing file, before the output is started
            file = root_path / name
            if not file.is_file():
                raise MissingFileError(f"image '{name}' of the list not found", path=file)

    env = _open_for_writing(partial, settings, initial_map_size)
    total, done = len(records), len(records) - len(todo)
    unreadable: list[str] = []
    batch: list[tuple[bytes, bytes]] = []
    written = 0
    try:
        if done and progress:
            progress(done, total)
        for key, name, label in todo:
            try:
                value, carried = _datum_value(root_path / name, name, label, resize, encoded, encode_type, gray,
                                              carried)
            except (MissingFileError, FileFormatError) as exc:
                if not skip_unreadable:
                    raise
                log.warning("skipping %s: %s", name, exc)
                unreadable.append(name)
            else:
                batch.append((key, value))
                if len(batch) >= commit_every:
                    _commit(env, batch)
                    written += len(batch)
                    batch = []
            done += 1
            if progress:
                progress(done, total)
        _commit(env, batch)
        written += len(batch)
        batch = []
    except BaseException:
        # the records read so far are complete: keep them for the resume, then report the failure
        try:
            _commit(env, batch)
        except Exception as exc:  # never hide the original error
            log.warning("could not commit the last %d records of %s: %s", len(batch), partial, exc)
        env.close()
        raise
    map_size = int(env.info()["map_size"])
    env.sync(True)
    env.close()
    _finish(partial, out, overwrite)
    log.info("wrote %s: %d records (%d resumed, %d unreadable skipped)", out, written, len(existing),
             len(unreadable))
    return LMDBWriteReport(path=out, written=written, resumed=len(existing), unreadable=unreadable,
                           map_size=map_size)


def _carried_shape(partial: Path, records: Sequence[tuple[bytes, str, int]], existing: set[bytes]) -> Shape | None:
    """The channels/height/width of the last record already committed in ``partial`` (in list order): what
    convert_imageset's reused Datum holds when it goes on with the next image (see :func:`_datum_value`)."""
    last = next((key for key, _, _ in reversed(records) if key in existing), None)
    if last is None:
        return None
    env_id, env = _SHARED_ENVS.acquire(partial)
    try:
        with env.begin() as txn:
            value = txn.get(last)
    finally:
        _SHARED_ENVS.release(env_id)
    datum = decode_message(value, "Datum", str(partial))
    if not datum.has("channels"):
        return None
    return int(datum.channels), int(datum.height), int(datum.width)


def _resume_keys(partial: Path, settings: dict) -> set[bytes]:
    """Keys already committed in an unfinished ``partial`` written with the same ``settings``."""
    if not partial.exists():
        return set()
    info_file = partial / _PARTIAL_INFO
    if not info_file.exists() and partial.is_dir():
        # killed between creating the folder and writing its settings: nothing was written yet
        ours = [p for p in partial.iterdir() if p.name.startswith(f".{_PARTIAL_INFO}.") and p.name.endswith(".tmp")]
        if len(ours) == len(list(partial.iterdir())):
            for leftover in ours:
                leftover.unlink(missing_ok=True)
            return set()
    try:
        stored = json.loads(info_file.read_text())
    except (OSError, ValueError):
        raise AgegenderError(
            "an unfinished output is in the way, and it was not started by this writer", path=partial,
            hint="delete it",
        ) from None
    if stored != settings:
        changed = sorted(k for k in settings if stored.get(k) != settings[k])
        raise AgegenderError(
            f"an unfinished write with other settings is in the way (differs in: {', '.join(changed)})",
            path=partial, hint="delete it, or write with the same list and settings to resume it",
        )
    if not (partial / "data.mdb").exists():
        return set()
    env_id, env = _SHARED_ENVS.acquire(partial)
    try:
        with env.begin() as txn:
            return set(txn.cursor().iternext(keys=True, values=False))
    finally:
        _SHARED_ENVS.release(env_id)


def _open_for_writing(partial: Path, settings: dict, map_size: int) -> Any:
    import lmdb

    try:
        partial.mkdir(parents=True, exist_ok=True)
        info_file = partial / _PARTIAL_INFO
        if not info_file.exists():
            atomic_write_text(info_file, json.dumps(settings, indent=1) + "\n")
        env = lmdb.open(str(partial), map_size=map_size, subdir=True, readahead=False, meminit=False,
                        max_dbs=0)
    except OSError as exc:
        raise AgegenderError(f"cannot write here: {exc.strerror}", path=partial) from None
    except lmdb.Error as exc:
        raise FileFormatError(f"cannot open the unfinished LMDB for writing ({exc})", path=partial) from None
    # an existing map keeps its size; grow to at least what was asked
    if env.info()["map_size"] < map_size:
        env.set_mapsize(map_size)
    return env


def _finish(partial: Path, out: Path, overwrite: bool) -> None:
    """Rename the complete ``partial`` to ``out`` (replacing it with ``overwrite``)."""
    old = None
    try:
        if out.exists():
            if not overwrite:  # appeared while we were writing
                raise AgegenderError("the output appeared while writing; the records are kept", path=partial)
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(partial, out)
        (out / _PARTIAL_INFO).unlink(missing_ok=True)
    except OSError as exc:
        raise AgegenderError(f"cannot rename the finished LMDB into place: {exc.strerror}", path=out) from None
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


# --- mean ---------------------------------------------------------------------------------------------
def compute_image_mean(lmdb_path: str | Path, output: str | Path | None = None, *,
                       progress: ProgressCallback | None = None) -> np.ndarray:
    """The per-pixel mean image of a Datum LMDB, 1 x C x H x W float32, as ``compute_image_mean`` does:
    each image added to a float32 sum (encoded images decoded natively), then divided by the count in
    float32. With ``output``, also written as a ``.binaryproto`` (num/channels/height/width fields).

    The shape is the first record's. Like Caffe (``CHECK_EQ(size_in_datum, data_size)``) only the number
    of values of the other records is checked: a record with as many values in another shape (say
    3 x 40 x 50 after 3 x 50 x 40) is added value by value, in its C x H x W order, with a warning.
    :func:`printed_mean_values` gives the per-channel values compute_image_mean logs."""
    with DatumLMDB(lmdb_path, decode="native") as db:
        if len(db) == 0:
            raise FileFormatError("the LMDB holds no records: no mean to compute", path=db.path)
        total = len(db)
        total_sum: np.ndarray | None = None
        first_key = ""
        count = 0
        for key, image, _ in db:
            if total_sum is None:
                total_sum = np.zeros(image.shape, dtype=np.float32)
                first_key = key
            elif image.shape != total_sum.shape:
                if image.size != total_sum.size:
                    raise CaffemodelError(
                        f"record '{key}' is {' x '.join(map(str, image.shape))} but the first ('{first_key}') is "
                        f"{' x '.join(map(str, total_sum.shape))}: a mean image needs images of one size "
                        f"(compute_image_mean: Incorrect data field size {image.size})",
                        path=db.path, hint="write the LMDB with a resize",
                    )
                log.warning("%s: record '%s' is %s but the first ('%s') is %s; added value by value, as "
                            "compute_image_mean does", db.path, key, " x ".join(map(str, image.shape)), first_key,
                            " x ".join(map(str, total_sum.shape)))
                image = image.reshape(total_sum.shape)
            total_sum += image  # float32 accumulation, as Caffe's BlobProto sum
            count += 1
            if progress:
                progress(count, total)
    assert total_sum is not None
    mean = (total_sum / np.float32(count)).astype(np.float32)[np.newaxis]
    if output is not None:
        write_blobproto(mean, output)
    return mean


def printed_mean_values(mean: np.ndarray) -> np.ndarray:
    """The per-channel means ``compute_image_mean`` logs (``mean_value channel [c]: ...``) for its mean
    image ``mean`` (1 x C x H x W or C x H x W): each channel's values summed one after the other in
    float32, then divided by H * W in float32 (float32 C values; not the float64 mean of the channel)."""
    values = np.asarray(mean, dtype=np.float32)
    if values.ndim == 4 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 3:
        raise AgegenderError(f"expected a 1 x C x H x W or C x H x W mean image, got shape {values.shape}")
    flat = values.reshape(values.shape[0], -1)
    if flat.shape[1] == 0:
        return np.zeros(flat.shape[0], dtype=np.float32)
    sums = np.cumsum(flat, axis=1, dtype=np.float32)[:, -1]  # cumsum adds in order, like Caffe's loop
    return (sums / np.float32(flat.shape[1])).astype(np.float32)
