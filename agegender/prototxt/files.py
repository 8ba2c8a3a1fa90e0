"""Reading and writing Caffe's files: net and solver prototxt, caffemodel, binaryproto.

All readers raise :class:`~agegender.errors.AgegenderError` subclasses naming the file (and line,
column, layer or byte offset); none lets an exception from the parsing machinery escape.
"""

from __future__ import annotations

import math
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._atomic import atomic_write
from ..errors import CaffemodelError, FileFormatError, MissingFileError
from .message import Message
from .text_format import format_message, parse_text
from .upgrade import upgrade_net
from .wire import decode_message, encode_parts

# protobuf's CodedInputStream warns past this size; Caffe's ReadProtoFromBinaryFile refuses files past
# kProtoReadBytesLimit = INT_MAX (2 GiB - 1), a size Caffe cannot write either. We read any size.
PROTOBUF_LIMIT = 512 * 1024 * 1024
# text prototxts (nets, solvers) larger than this are refused before they are read
MAX_TEXT_BYTES = 64 << 20
# Caffe's Blob::Reshape refuses more values than INT_MAX ("blob size exceeds INT_MAX"), as do we
_MAX_BLOB_COUNT = 2**31 - 1
_MAX_BLOB_AXES = 32  # Caffe's kMaxBlobAxes


def _check_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{what} not found", path=path)
    if path.is_dir():
        raise FileFormatError(f"expected a {what} file, found a folder", path=path)
    if not os.access(path, os.R_OK):
        raise MissingFileError(f"{what} is not readable (permissions)", path=path)
    return path


def _sniff_binary_kind(head: bytes) -> str | None:
    """Name well-known non-protobuf formats, to say more than 'corrupted'."""
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (a PyTorch .pt/.pth or a .npz?)"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file (Caffe's .caffemodel.h5 snapshots are not supported; save as binaryproto)"
    if head.startswith(b"\x80") and len(head) > 1 and head[1] in (2, 3, 4, 5):
        return "a Python pickle"
    if head.startswith(b"\x08") and b"onnx" in head[:64].lower():
        return "an ONNX model"
    if head.startswith((b"\xff\xd8", b"\x89PNG")):
        return "an image"
    return None


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    sample = head[:512]
    if b"\x00" in sample:
        return False
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError:
        return False
    if any(ord(ch) < 32 and ch not in "\t\n\r\f\v" for ch in text):
        return False
    stripped = text.lstrip()
    return bool(stripped) and (stripped[0] == "#" or stripped.split(":")[0].split("{")[0].strip().isidentifier())


def read_text_message(path: str | Path, mtype: str, what: str) -> Message:
    """Parse a text protobuf file as ``mtype``, refusing binary files with a clear message."""
    path = _check_file(path, what)
    size = path.stat().st_size
    if size > MAX_TEXT_BYTES:  # parsing keeps a token object per few bytes: bound the memory it takes
        raise FileFormatError(
            f"{what} is {size:,} bytes, more than the {MAX_TEXT_BYTES >> 20} MiB a text prototxt may have "
            "(the largest real ones are under 1 MiB)", path=path, hint="is this the right file?",
        )
    raw = path.read_bytes()
    if b"\x00" in raw[:4096] or (raw and not _looks_like_text(raw) and _sniff_binary_kind(raw[:64])):
        kind = _sniff_binary_kind(raw[:64]) or "a binary file"
        raise FileFormatError(
            f"expected a text {what}, found {kind}",
            path=path, hint="did you swap the prototxt and the caffemodel?" if mtype == "NetParameter" else None,
        )
    # protobuf's tokenizer reads bytes: inside strings and comments any are fine (Latin-1 or GBK comments are
    # common); elsewhere the parser refuses what is not ASCII. Bytes that are not UTF-8 survive as escapes.
    text = raw.decode("utf-8", "surrogateescape")
    msg = parse_text(text, mtype, path)
    if not any(True for _ in msg.set_fields()):
        raise FileFormatError(f"{what} is empty: it sets no fields ({len(raw)} bytes)", path=path)
    return msg


def read_net(path: str | Path) -> Message:
    """Read a deploy or train_val prototxt (V1 or V2 dialect) and return it upgraded to V2.

    The result is a ``NetParameter`` message with ``layer`` entries only; ``input:`` declarations
    become an ``Input`` layer, as Caffe's upgrade does.
    """
    net = read_text_message(path, "NetParameter", "net prototxt")
    return upgrade_net(net, str(path))


_SOLVER_TYPES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad", "RMSPROP": "RMSProp",
                 "ADADELTA": "AdaDelta", "ADAM": "Adam"}


def read_solver(path: str | Path) -> Message:
    """Read a solver prototxt. The deprecated ``solver_type`` enum is upgraded to ``type`` (Caffe's
    UpgradeSolverType), which refuses a file giving both, even when they agree."""
    solver = read_text_message(path, "SolverParameter", "solver prototxt")
    if solver.has("solver_type"):
        if solver.has("type"):
            line = (solver.field_pos("type") or (None,))[0]
            raise FileFormatError(
                f"both solver_type: {solver.solver_type} (the deprecated enum) and type: \"{solver.type}\" are given; "
                "Caffe refuses this", path=path, line=line, hint="keep only 'type'",
            )
        solver.type = _SOLVER_TYPES[solver.solver_type]
        solver.clear("solver_type")
    return solver


# --- weights ----------------------------------------------------------------------------------------
@dataclass
class LayerBlobs:
    """The parameter blobs of one layer of a caffemodel."""

    name: str
    type: str
    blobs: list[np.ndarray]
    legacy_shape: list[bool]  # per blob: shape came from the V1 num/channels/height/width fields
    # per blob: byte offset of its little-endian float32 data in the file, when it is stored that way
    file_offsets: list[int | None] = field(default_factory=list)


@dataclass
class CaffeWeights:
    """The weights of a caffemodel: blobs by layer name, in file order.

    Arrays are read-only views into the memory-mapped file when it is float32 and packed (the
    normal case): no copy is made until they are loaded into a module.
    """

    path: str
    name: str
    layers: dict[str, LayerBlobs] = field(default_factory=dict)
    format: str = "V2"  # "V1" (layers {}) or "V2" (layer {})
    net: Message | None = None  # the NetParameter as stored (upgraded to V2), blobs included

    def nbytes(self) -> int:
        return sum(b.nbytes for layer in self.layers.values() for b in layer.blobs)


def blob_to_array(blob: Message, where: str, path: str | None) -> tuple[np.ndarray, bool]:
    """A BlobProto as a numpy array of its declared shape; checks the element count first.

    As Caffe's ``Blob::FromProto``: any of the legacy num/channels/height/width fields makes the shape
    those four (a ``shape`` beside them is not read), else the shape is ``shape``'s dims, none for a
    scalar; the values are ``double_data`` when it has any, else ``data``.
    """
    if any(blob.has(f) for f in ("num", "channels", "height", "width")):
        shape: tuple[int, ...] = (int(blob.num), int(blob.channels), int(blob.height), int(blob.width))
        legacy = True
    else:
        shape = tuple(int(d) for d in blob.shape.dim)
        legacy = False
    if any(d < 0 for d in shape):
        raise CaffemodelError(f"{where}: negative dimension in shape {list(shape)}", path=path)
    if blob.has("double_data"):
        data = blob.double_data
    elif blob.has("data"):
        data = blob.data
    else:
        data = np.zeros(0, np.float32)
    if not isinstance(data, np.ndarray):
        data = np.asarray(data, dtype=np.float32)
    if len(shape) > _MAX_BLOB_AXES:
        raise CaffemodelError(f"{where}: a shape of {len(shape)} axes, more than Caffe's {_MAX_BLOB_AXES} "
                              "(corrupted dimensions?)", path=path)
    count = math.prod(shape)  # Python integers: declared dimensions may be absurd, the product must not wrap
    # the non-zero axes too: numpy refuses even an empty array whose other axes multiply past its limits
    if math.prod(d for d in shape if d) > _MAX_BLOB_COUNT:
        raise CaffemodelError(f"{where}: shape {list(shape)} exceeds Caffe's limit of {_MAX_BLOB_COUNT:,} (INT_MAX) "
                              "values per blob (corrupted dimensions?)", path=path)
    if count != data.size:
        raise CaffemodelError(
            f"{where}: shape {list(shape)} needs {count} values but the blob holds {data.size}"
            + (" (no data: an empty or diff-only blob)" if data.size == 0 else ""), path=path,
        )
    return data.reshape(shape), legacy


def _map_file(path: Path, what: str) -> mmap.mmap | bytes:
    size = path.stat().st_size
    if size == 0:
        raise CaffemodelError(f"{what} is empty (0 bytes)", path=path)
    with open(path, "rb") as handle:
        return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)


def _check_binary(path: Path, buf: mmap.mmap | bytes, what: str) -> None:
    head = bytes(buf[:512])
    kind = _sniff_binary_kind(head)
    if kind:
        raise FileFormatError(f"expected a {what}, found {kind}", path=path)
    if _looks_like_text(head):
        raise FileFormatError(
            f"expected a binary {what}, found text (a prototxt?)", path=path,
            hint="did you swap the prototxt and the caffemodel?" if what == "caffemodel" else None,
        )


def read_caffemodel(path: str | Path) -> CaffeWeights:
    """Read a caffemodel (V1 ``layers`` or V2 ``layer`` layout, any size) into :class:`CaffeWeights`.

    The file is memory-mapped and float blobs are numpy views into it: reading costs the time to
    touch the file's pages and no extra copy.
    """
    path = _check_file(path, "caffemodel")
    buf = _map_file(path, "caffemodel")
    _check_binary(path, buf, "caffemodel")
    notes: list[str] = []
    raw = decode_message(buf, "NetParameter", str(path), notes)
    fmt = "V1" if raw.has("layers") else "V2"
    net = upgrade_net(raw, str(path))
    if not net.layer:
        raise CaffemodelError(
            f"caffemodel holds no layers ({len(buf)} bytes): not a caffemodel, or cut short"
            + "".join(f"; {note}" for note in notes), path=path
        )
    weights = CaffeWeights(path=str(path), name=raw.name, format=fmt, net=net)
    base = np.frombuffer(buf, dtype=np.uint8).ctypes.data  # address of the map, to locate blob data
    for index, layer in enumerate(net.layer):
        if not layer.blobs:
            continue
        name = layer.name
        if name in weights.layers:
            raise CaffemodelError(f"two layers named '{name}' carry weights", path=path)
        arrays, legacy, offsets = [], [], []
        for b, blob in enumerate(layer.blobs):
            arr, is_legacy = blob_to_array(blob, f"layer '{name}' (#{index}) blob {b}", str(path))
            arrays.append(arr)
            legacy.append(is_legacy)
            offset = arr.ctypes.data - base if arr.size else -1
            is_view = arr.dtype == np.dtype("<f4") and arr.flags.c_contiguous and 0 <= offset <= len(buf) - arr.nbytes
            offsets.append(offset if is_view else None)
        weights.layers[name] = LayerBlobs(name=name, type=layer.type, blobs=arrays, legacy_shape=legacy,
                                          file_offsets=offsets)
    if not weights.layers:
        # Caffe loads such a file without a word and runs the net on its random initial weights
        raise CaffemodelError(
            f"caffemodel holds no weights: none of its {len(net.layer)} layer(s) carries a blob", path=path,
            hint="a net definition saved in binary form, or weights stripped from the file: use the trained caffemodel",
        )
    return weights


def read_blobproto(path: str | Path) -> np.ndarray:
    """Read a ``.binaryproto`` (one BlobProto, e.g. a mean image) as a float32 array of its shape."""
    path = _check_file(path, "binaryproto")
    buf = _map_file(path, "binaryproto")
    _check_binary(path, buf, "binaryproto")
    notes: list[str] = []
    blob = decode_message(buf, "BlobProto", str(path), notes)
    if notes and not (blob.has("data") or blob.has("double_data")):
        raise CaffemodelError(f"binaryproto holds no data ({len(buf)} bytes): not a binaryproto; {notes[0]}", path=path)
    arr, _ = blob_to_array(blob, "BlobProto", str(path))
    if arr.size == 0:
        raise CaffemodelError("binaryproto holds no data", path=path)
    return np.array(arr, dtype=np.float32)  # a small file: own the memory, drop the map


# --- writers ----------------------------------------------------------------------------------------
def write_message_binary(msg: Message, path: str | Path) -> int:
    """Write ``msg`` in binary protobuf form, atomically, streaming large arrays. Returns bytes written."""
    with atomic_write(path, "wb") as handle:
        return encode_parts(msg, handle.write)


def write_prototxt(msg: Message, path: str | Path) -> None:
    """Write ``msg`` as protobuf text, atomically."""
    with atomic_write(path, "w") as handle:
        handle.write(format_message(msg) + "\n")


def array_to_blob(array: np.ndarray, legacy_4d: bool = False) -> Message:
    """A BlobProto holding ``array`` (float32), with a V2 ``shape`` or the V1 4-D fields."""
    arr = np.ascontiguousarray(array, dtype=np.float32)
    blob = Message("BlobProto")
    if legacy_4d:
        if arr.ndim > 4:
            raise ValueError("V1 blobs have at most 4 axes")
        dims = (1,) * (4 - arr.ndim) + arr.shape
        blob.num, blob.channels, blob.height, blob.width = (int(d) for d in dims)
    else:
        blob.mutable("shape").dim = [int(d) for d in arr.shape]
    blob.data = arr.reshape(-1)
    return blob


def write_blobproto(array: np.ndarray, path: str | Path, legacy_4d: bool = True) -> None:
    """Write ``array`` as a ``.binaryproto`` (4-D fields by default, as compute_image_mean does)."""
    write_message_binary(array_to_blob(array, legacy_4d=legacy_4d), path)
