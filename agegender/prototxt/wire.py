"""Protobuf binary wire format, driven by our schema.

Decoding works on any buffer (bytes, mmap, memoryview) without copying it: packed float/double fields
become numpy arrays that are *views* of the buffer, so a 500 MB caffemodel is read in the time it takes
to touch its pages. Every length is checked against the bytes that remain before anything is allocated,
and errors say the byte offset and the path of the message being read.

What is read means what protobuf's C++ parser (Caffe's ``ReadProtoFromBinaryFile``) makes of it: a
repeated number field packed or not, whatever its declaration; a singular field given twice keeps the
last value, a singular message given twice is the merge of both; a field of an unknown number, or of a
known number with another wire type than its type's, is skipped (groups included); varints are cut to
the field's width (an int32 of ``0xFFFFFFFF`` is -1); an enum number the schema lacks leaves the field
unset (proto2's closed enums); strings need not be UTF-8; a missing ``required`` field is refused.
"""

from __future__ import annotations

import struct
from typing import Any, Callable

import numpy as np

from ..errors import CaffemodelError
from .message import Message, bytes_string, first_missing_required, string_bytes
from .schema import FieldSpec, MessageType, caffe_schema

WIRE_VARINT, WIRE_I64, WIRE_LEN, WIRE_SGROUP, WIRE_EGROUP, WIRE_I32 = 0, 1, 2, 3, 4, 5
_MAX_DEPTH = 64
_NP_TYPES = {"float": np.dtype("<f4"), "double": np.dtype("<f8")}
_VARINT_TYPES = {"int32", "int64", "uint32", "uint64", "bool", "sint32", "sint64"}
_WIRE_NAMES = {WIRE_VARINT: "a varint", WIRE_I64: "8 bytes", WIRE_LEN: "length-delimited", WIRE_SGROUP: "a group",
               WIRE_I32: "4 bytes"}
_UNKNOWN_ENUM = object()  # convert_varint's answer for an enum number the schema lacks
_MASK32, _MASK64 = (1 << 32) - 1, (1 << 64) - 1


class _Chunks(list):
    """The numpy pieces of a repeated float/double field while its message is read, joined once at the end
    (joining at every piece would be quadratic in a file that splits a field into many small runs)."""


def _chunks(values: dict, spec: FieldSpec) -> _Chunks:
    current = values.get(spec.name)
    if not isinstance(current, _Chunks):
        chunks = _Chunks()
        if current is not None and len(current):  # a message merged into: its values come first
            chunks.append(np.asarray(current, dtype=_NP_TYPES[spec.type]))
        current = values[spec.name] = chunks
    return current


class _Decoder:
    def __init__(self, buf: Any, path: str | None) -> None:
        self.mv = memoryview(buf).cast("B") if not isinstance(buf, memoryview) else buf.cast("B")
        self.buf = buf
        self.path = path
        self.mismatch: str | None = None  # the first known field met with another wire type (a hint on odd files)

    def fail(self, message: str, offset: int, where: str) -> CaffemodelError:
        return CaffemodelError(f"{message} at byte {offset} (in {where})", path=self.path)

    def varint(self, pos: int, end: int, where: str) -> tuple[int, int]:
        mv = self.mv
        result = 0
        shift = 0
        start = pos
        while True:
            if pos >= end:
                raise self.fail("truncated varint (file cut short?)", start, where)
            byte = mv[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result, pos
            shift += 7
            if shift >= 70:
                raise self.fail("varint longer than 10 bytes (corrupted data)", start, where)

    def message(self, mtype: MessageType, pos: int, end: int, where: str, depth: int,
                into: Message | None = None) -> Message:
        """The message in ``[pos, end)``; decoded into ``into`` when given (protobuf's merge: that is what a
        second occurrence of a singular message field means)."""
        if depth > _MAX_DEPTH:
            raise self.fail(f"messages nested deeper than {_MAX_DEPTH} levels", pos, where)
        msg = into if into is not None else Message(mtype)
        values = msg._values
        by_number = mtype.by_number
        mv = self.mv
        while pos < end:
            tag_pos = pos
            # fast path for one-byte tags
            byte = mv[pos]
            if byte < 0x80:
                key = byte
                pos += 1
            else:
                key, pos = self.varint(pos, end, where)
            number, wire = key >> 3, key & 7
            if number == 0 or key > _MASK32:
                raise self.fail(f"field number {number} (not a protobuf message, or corrupted data)", tag_pos, where)
            spec = by_number.get(number)
            if spec is None or not _wire_fits(spec, wire):
                # protobuf keeps a known number with another wire type as an unknown field: skipped
                if spec is not None and self.mismatch is None:
                    declared = spec.type if spec.kind == "scalar" else f"{spec.kind} {spec.type}"
                    found = _WIRE_NAMES.get(wire, f"wire type {wire}")
                    self.mismatch = (f"its field {number} at byte {tag_pos} is {found} but {where}.{spec.name} is "
                                     f"declared {declared}")
                pos = self.skip(number, wire, pos, end, where, tag_pos, depth)
                continue
            fwhere = f"{where}.{spec.name}"
            if wire == WIRE_LEN:
                length, pos = self.varint(pos, end, fwhere)
                if length > end - pos:
                    raise self.fail(
                        f"field '{spec.name}' declares {length} bytes but only {end - pos} remain "
                        "(file truncated or corrupted)", tag_pos, where,
                    )
                stop = pos + length
                if spec.kind == "message":
                    if spec.repeated:
                        lst = values.setdefault(spec.name, [])
                        child = self.message(spec.message, pos, stop, f"{fwhere}[{len(lst)}]", depth + 1)  # type: ignore[arg-type]
                        lst.append(child)
                    else:
                        # a second occurrence merges into the first, as protobuf's parser does
                        values[spec.name] = self.message(spec.message, pos, stop, fwhere, depth + 1,  # type: ignore[arg-type]
                                                         into=values.get(spec.name))
                elif spec.type in ("string", "bytes"):
                    data = bytes(mv[pos:stop])
                    # proto2 strings are not checked for UTF-8 (Caffe reads any bytes): kept as they are
                    self.put(values, spec, bytes_string(data) if spec.type == "string" else data)
                else:  # packed numbers (_wire_fits let only repeated ones through)
                    self.packed(values, spec, pos, stop, fwhere, tag_pos)
                pos = stop
            elif wire == WIRE_VARINT:
                raw, pos = self.varint(pos, end, fwhere)
                value = self.convert_varint(spec, raw)
                if value is not _UNKNOWN_ENUM:
                    self.put(values, spec, value)
            elif wire == WIRE_I32:
                if spec.repeated:
                    pos = self.unpacked_floats(values, spec, tag_pos, pos, end, where)
                    continue
                if pos + 4 > end:
                    raise self.fail("truncated float", tag_pos, where)
                self.put(values, spec, struct.unpack_from("<f", mv, pos)[0])
                pos += 4
            else:  # WIRE_I64, a double
                if pos + 8 > end:
                    raise self.fail("truncated double", tag_pos, where)
                self.put(values, spec, struct.unpack_from("<d", mv, pos)[0])
                pos += 8
        if pos != end:
            raise self.fail("message runs past its declared length", pos, where)
        for name, value in values.items():
            if isinstance(value, _Chunks):
                values[name] = value[0] if len(value) == 1 else np.concatenate(value)
        return msg

    def put(self, values: dict, spec: FieldSpec, value: Any) -> None:
        if not spec.repeated:
            values[spec.name] = value
        elif spec.type in _NP_TYPES:
            _chunks(values, spec).append(np.array([value], dtype=_NP_TYPES[spec.type]))
        else:
            values.setdefault(spec.name, []).append(value)

    @staticmethod
    def convert_varint(spec: FieldSpec, raw: int) -> Any:
        """A varint's value for ``spec``, cut to the field's width as protobuf's C++ parser does (an int32 or
        an enum keeps the low 32 bits); :data:`_UNKNOWN_ENUM` for an enum number the schema lacks."""
        ftype = spec.type
        raw &= _MASK64  # the 10th byte may carry bits past 64: dropped
        if ftype == "bool":
            return raw != 0
        if ftype == "sint32":
            raw &= _MASK32
            return (raw >> 1) ^ -(raw & 1)
        if ftype == "sint64":
            return (raw >> 1) ^ -(raw & 1)
        if ftype == "uint32":
            return raw & _MASK32
        if ftype == "int64":
            return raw - (1 << 64) if raw >= 1 << 63 else raw
        if ftype == "int32" or spec.kind == "enum":
            raw &= _MASK32
            value = raw - (1 << 32) if raw >= 1 << 31 else raw
            if spec.kind == "enum":
                assert spec.enum is not None
                name = spec.enum.name_of(value)
                # proto2: an unknown enum number goes to the unknown fields, the field stays unset
                return _UNKNOWN_ENUM if name is None else name
            return value
        return raw  # uint64

    def packed(self, values: dict, spec: FieldSpec, pos: int, stop: int, where: str, tag_pos: int) -> None:
        length = stop - pos
        if spec.type in _NP_TYPES:
            dtype = _NP_TYPES[spec.type]
            if length % dtype.itemsize:
                raise self.fail(
                    f"packed {spec.type} field '{spec.name}' has {length} bytes, not a multiple of "
                    f"{dtype.itemsize}", tag_pos, where,
                )
            arr = np.frombuffer(self.buf, dtype=dtype, count=length // dtype.itemsize, offset=pos)
        else:
            items = []
            while pos < stop:
                raw, pos = self.varint(pos, stop, where)
                value = self.convert_varint(spec, raw)
                if value is not _UNKNOWN_ENUM:
                    items.append(value)
            arr = items  # type: ignore[assignment]
        if spec.type in _NP_TYPES:
            _chunks(values, spec).append(arr)
        else:
            values.setdefault(spec.name, []).extend(arr)

    def unpacked_floats(self, values: dict, spec: FieldSpec, tag_pos: int, pos: int, end: int, where: str) -> int:
        """A run of non-packed floats (tag byte + 4 bytes each), read as one strided numpy view."""
        tag_len = pos - tag_pos
        if tag_len != 1 or end - tag_pos < 5:  # one float, or a float cut short: read it alone
            if pos + 4 > end:
                raise self.fail("truncated float", tag_pos, where)
            self.put(values, spec, struct.unpack_from("<f", self.mv, pos)[0])
            return pos + 4
        tag = self.mv[tag_pos]
        stride = 5
        n_max = (end - tag_pos) // stride
        # the run's length, found in windows that double: linear in the run, not in what follows it
        # (a message of many short runs would otherwise rescan its remainder for every run)
        count, window = 0, 64
        while count < n_max:
            n = min(window, n_max - count)
            tags = np.frombuffer(self.buf, dtype=np.uint8, count=n * stride, offset=tag_pos + count * stride)[::stride]
            bad = np.flatnonzero(tags != tag)
            if bad.size:
                count += int(bad[0])
                break
            count += n
            window *= 2
        floats = np.ndarray((count,), dtype="<f4", buffer=self.buf, offset=tag_pos + 1, strides=(stride,)).copy()
        _chunks(values, spec).append(floats)
        return tag_pos + count * stride

    def skip(self, number: int, wire: int, pos: int, end: int, where: str, tag_pos: int, depth: int) -> int:
        """The position after the value of an unknown field (any wire type but an end-group)."""
        if wire == WIRE_VARINT:
            _, pos = self.varint(pos, end, where)
            return pos
        if wire == WIRE_I64:
            pos += 8
        elif wire == WIRE_I32:
            pos += 4
        elif wire == WIRE_LEN:
            length, pos = self.varint(pos, end, where)
            pos += length
        elif wire == WIRE_SGROUP:
            return self.skip_group(number, pos, end, where, tag_pos, depth + 1)
        elif wire == WIRE_EGROUP:
            raise self.fail(f"end-group tag of field {number} outside its group (corrupted data)", tag_pos, where)
        else:
            raise self.fail(f"unsupported wire type {wire} (not a protobuf message, or corrupted data)", tag_pos, where)
        if pos > end:
            raise self.fail("unknown field runs past the end of its message (truncated?)", tag_pos, where)
        return pos

    def skip_group(self, number: int, pos: int, end: int, where: str, tag_pos: int, depth: int) -> int:
        """The position after a group (wire types 3 .. 4) of field ``number`` whose start tag ends at ``pos``."""
        if depth > _MAX_DEPTH:
            raise self.fail(f"groups nested deeper than {_MAX_DEPTH} levels", tag_pos, where)
        while True:
            if pos >= end:
                raise self.fail(f"group of field {number} not closed before the end of its message (truncated?)",
                                tag_pos, where)
            inner_pos = pos
            key, pos = self.varint(pos, end, where)
            inner, wire = key >> 3, key & 7
            if wire == WIRE_EGROUP:
                if inner != number:
                    raise self.fail(f"group of field {number} closed by the end-group tag of field {inner}",
                                    inner_pos, where)
                return pos
            if inner == 0 or key > _MASK32:
                raise self.fail(f"field number {inner} (not a protobuf message, or corrupted data)", inner_pos, where)
            pos = self.skip(inner, wire, pos, end, where, inner_pos, depth)


def _wire_fits(spec: FieldSpec, wire: int) -> bool:
    """Whether ``wire`` is a wire type protobuf parses field ``spec`` from (a repeated number: its own type's,
    or packed)."""
    if wire == WIRE_LEN:
        return spec.kind == "message" or spec.type in ("string", "bytes") or spec.repeated
    if spec.kind == "message" or spec.type in ("string", "bytes"):
        return False
    if wire == WIRE_VARINT:
        return spec.kind == "enum" or spec.type in _VARINT_TYPES
    if wire == WIRE_I32:
        return spec.type == "float"
    if wire == WIRE_I64:
        return spec.type == "double"
    return False


def decode_message(buf: Any, mtype: MessageType | str, path: str | None = None,
                   notes: list[str] | None = None) -> Message:
    """Decode a whole buffer as one message of ``mtype``. Packed float arrays are views into ``buf``.

    ``notes``, when given, receives a line on the first field whose wire type did not fit its declaration
    (skipped, as protobuf skips it): the likely reason when a file of another type decodes to nothing.
    """
    if isinstance(mtype, str):
        mtype = caffe_schema()[mtype]
    dec = _Decoder(buf, path)
    msg = dec.message(mtype, 0, len(dec.mv), mtype.name, 0)
    if notes is not None and dec.mismatch:
        notes.append(dec.mismatch)
    missing = first_missing_required(msg, mtype.name)
    if missing is not None:  # protobuf's ParseFromCodedStream refuses such a message
        owner, where, name = missing
        raise CaffemodelError(f"{owner.type_name} lacks its required field '{name}' (in {where})", path=path)
    return msg


# --- encoding ----------------------------------------------------------------------------------------
def encode_varint(value: int) -> bytes:
    """A protobuf base-128 varint (negative values as their 64-bit two's complement, as protobuf does)."""
    if value < 0:
        value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _scalar_bytes(spec: FieldSpec, value: Any) -> bytes:
    if spec.kind == "enum":
        assert spec.enum is not None
        return encode_varint(spec.enum.values[value] if isinstance(value, str) else int(value))
    t = spec.type
    if t == "bool":
        return encode_varint(1 if value else 0)
    if t in ("sint32", "sint64"):
        v = int(value)
        return encode_varint((v << 1) ^ (v >> 63))
    if t in _VARINT_TYPES:
        return encode_varint(int(value))
    if t == "float":
        with np.errstate(over="ignore"):  # out of float32 range becomes inf, as protobuf's C++ cast does
            return np.float32(value).astype("<f4").tobytes()
    if t == "double":
        return struct.pack("<d", value)
    raise AssertionError(t)


def _wire_type(spec: FieldSpec) -> int:
    if spec.kind == "message" or spec.type in ("string", "bytes"):
        return WIRE_LEN
    if spec.type == "float":
        return WIRE_I32
    if spec.type == "double":
        return WIRE_I64
    return WIRE_VARINT


def encode_parts(msg: Message, emit: Callable[[bytes | memoryview], None]) -> int:
    """Encode ``msg`` by calling ``emit`` with consecutive chunks; returns the total size.

    Large numeric arrays are emitted as memoryviews of their data, not copied into one buffer.
    """
    total = 0
    # field-number order, as protobuf's C++ serializer writes: Caffe's files round-trip byte for byte
    for spec, value in sorted(msg.set_fields(), key=lambda item: item[0].number):
        items = value if spec.repeated else [value]
        if spec.repeated and spec.packed and spec.kind != "message":
            if spec.type in _NP_TYPES:
                arr = np.ascontiguousarray(np.asarray(value, dtype=_NP_TYPES[spec.type]))
                payload: bytes | memoryview = memoryview(arr).cast("B")
            else:
                payload = b"".join(_scalar_bytes(spec, v) for v in value)
            head = encode_varint(spec.number << 3 | WIRE_LEN) + encode_varint(len(payload))
            emit(head)
            emit(payload)
            total += len(head) + len(payload)
            continue
        for item in items:
            wire = _wire_type(spec)
            head = encode_varint(spec.number << 3 | wire)
            if spec.kind == "message":
                size = message_size(item)
                head += encode_varint(size)
                emit(head)
                encode_parts(item, emit)
                total += len(head) + size
            elif spec.type in ("string", "bytes"):
                data = string_bytes(item)
                head += encode_varint(len(data))
                emit(head)
                emit(data)
                total += len(head) + len(data)
            else:
                data = _scalar_bytes(spec, item)
                emit(head + data)
                total += len(head) + len(data)
    return total


def message_size(msg: Message) -> int:
    """Encoded size of ``msg`` in bytes (computed without building the encoding)."""
    sizes = [0]

    def count(chunk: bytes | memoryview) -> None:
        sizes[0] += len(chunk)

    # encode_parts recurses through message_size for children; the chunks are only counted
    return encode_parts(msg, count)


def encode_message(msg: Message) -> bytes:
    """The encoding of ``msg`` as one bytes object (for small messages; files use encode_parts)."""
    chunks: list[bytes] = []
    encode_parts(msg, lambda c: chunks.append(bytes(c)))
    return b"".join(chunks)
