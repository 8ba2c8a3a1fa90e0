"""Protobuf binary wire format, driven by our schema.

Decoding works on any buffer (bytes, mmap, memoryview) without copying it: packed float/double fields
become numpy arrays that are *views* of the buffer, so a 500 MB caffemodel is read in the time it takes
to touch its pages. Every length is checked against the bytes that remain before anything is allocated,
and errors say the byte offset and the path of the message being read.
"""

from __future__ import annotations

import struct
from typing import Any, Callable

import numpy as np

from ..errors import CaffemodelError
from .message import Message
from .schema import FieldSpec, MessageType, caffe_schema

WIRE_VARINT, WIRE_I64, WIRE_LEN, WIRE_SGROUP, WIRE_EGROUP, WIRE_I32 = 0, 1, 2, 3, 4, 5
_MAX_DEPTH = 64
_NP_TYPES = {"float": np.dtype("<f4"), "double": np.dtype("<f8")}
_VARINT_TYPES = {"int32", "int64", "uint32", "uint64", "bool", "sint32", "sint64"}


class _Chunks(list):
    """The numpy pieces of a repeated float/double field while its message is read, joined once at the end
    (joining at every piece would be quadratic in a file that splits a field into many small runs)."""


def _chunks(values: dict, spec: FieldSpec) -> _Chunks:
    current = values.get(spec.name)
    if not isinstance(current, _Chunks):
        current = values[spec.name] = _Chunks()
    return current


class _Decoder:
    def __init__(self, buf: Any, path: str | None) -> None:
        self.mv = memoryview(buf).cast("B") if not isinstance(buf, memoryview) else buf.cast("B")
        self.buf = buf
        self.path = path

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

    def message(self, mtype: MessageType, pos: int, end: int, where: str, depth: int) -> Message:
        if depth > _MAX_DEPTH:
            raise self.fail(f"messages nested deeper than {_MAX_DEPTH} levels", pos, where)
        msg = Message(mtype)
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
            if number == 0:
                raise self.fail("field number 0 (not a protobuf message, or corrupted data)", tag_pos, where)
            spec = by_number.get(number)
            if spec is None:
                pos = self.skip(wire, pos, end, where, tag_pos)
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
                        # proto semantics: a second occurrence merges; Caffe files never do this
                        values[spec.name] = self.message(spec.message, pos, stop, fwhere, depth + 1)  # type: ignore[arg-type]
                elif spec.type in ("string", "bytes"):
                    data = bytes(mv[pos:stop])
                    if spec.type == "string":
                        try:
                            value: Any = data.decode("utf-8")
                        except UnicodeDecodeError:
                            raise self.fail(f"string field '{spec.name}' is not UTF-8", tag_pos, where) from None
                    else:
                        value = data
                    self.put(values, spec, value)
                elif spec.repeated:  # packed numbers
                    self.packed(values, spec, pos, stop, fwhere, tag_pos)
                else:
                    raise self.fail(f"field '{spec.name}' has the wrong wire type {wire}", tag_pos, where)
                pos = stop
            elif wire == WIRE_VARINT:
                if spec.type not in _VARINT_TYPES and spec.kind != "enum":
                    raise self.fail(
                        f"field '{spec.name}' ({spec.type}) has the wrong wire type {wire} "
                        "(not this kind of file, or corrupted)", tag_pos, where,
                    )
                raw, pos = self.varint(pos, end, fwhere)
                self.put(values, spec, self.convert_varint(spec, raw, tag_pos, where))
            elif wire == WIRE_I32:
                if spec.type != "float":
                    raise self.fail(f"field '{spec.name}' ({spec.type}) has the wrong wire type 5", tag_pos, where)
                if spec.repeated:
                    pos = self.unpacked_floats(values, spec, tag_pos, pos, end, where)
                    continue
                if pos + 4 > end:
                    raise self.fail("truncated float", tag_pos, where)
                self.put(values, spec, struct.unpack_from("<f", mv, pos)[0])
                pos += 4
            elif wire == WIRE_I64:
                if spec.type != "double":
                    raise self.fail(f"field '{spec.name}' ({spec.type}) has the wrong wire type 1", tag_pos, where)
                if pos + 8 > end:
                    raise self.fail("truncated double", tag_pos, where)
                self.put(values, spec, struct.unpack_from("<d", mv, pos)[0])
                pos += 8
            else:
                raise self.fail(f"unsupported wire type {wire} for field '{spec.name}'", tag_pos, where)
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

    def convert_varint(self, spec: FieldSpec, raw: int, tag_pos: int, where: str) -> Any:
        if spec.type == "bool":
            return raw != 0
        if spec.type in ("sint32", "sint64"):
            return (raw >> 1) ^ -(raw & 1)
        if spec.type in ("int32", "int64") or spec.kind == "enum":
            raw &= (1 << 64) - 1
            value = raw - (1 << 64) if raw >= 1 << 63 else raw
            if spec.kind == "enum":
                assert spec.enum is not None
                name = spec.enum.name_of(value)
                if name is None:
                    raise self.fail(f"{value} is not a value of {spec.enum.name} (field '{spec.name}')", tag_pos, where)
                return name
            return value
        return raw

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
        elif spec.type in _VARINT_TYPES or spec.kind == "enum":
            items = []
            while pos < stop:
                raw, pos = self.varint(pos, stop, where)
                items.append(self.convert_varint(spec, raw, tag_pos, where))
            arr = items  # type: ignore[assignment]
        else:
            raise self.fail(f"field '{spec.name}' cannot be packed", tag_pos, where)
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

    def skip(self, wire: int, pos: int, end: int, where: str, tag_pos: int) -> int:
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
        else:
            raise self.fail(f"unsupported wire type {wire} (not a protobuf message, or corrupted data)", tag_pos, where)
        if pos > end:
            raise self.fail("unknown field runs past the end of its message (truncated?)", tag_pos, where)
        return pos


def decode_message(buf: Any, mtype: MessageType | str, path: str | None = None) -> Message:
    """Decode a whole buffer as one message of ``mtype``. Packed float arrays are views into ``buf``."""
    if isinstance(mtype, str):
        mtype = caffe_schema()[mtype]
    dec = _Decoder(buf, path)
    return dec.message(mtype, 0, len(dec.mv), mtype.name, 0)


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
                data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
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
