"""Fuzz targets for every reader, their seeds from ../shared, and the mutations that break files.

Shared by ``tests/test_fuzz.py`` (hypothesis: a bounded, reproducible pass in CI) and ``fuzz/run.py``
(atheris: long coverage-guided runs, not in CI).

A :class:`Target` writes the bytes of one case where its reader expects them (a file, or the
``data.mdb`` of an LMDB folder) and reads them the way the toolkit does. The property is the same for
every target: the reader returns, or raises an :class:`~agegender.errors.AgegenderError` subclass;
any other exception, a crash of the interpreter, a hang or an allocation far beyond the file's size is
a bug. Cases run in a separate worker process (:class:`Worker`) so that a crash inside a C library
(LMDB, OpenCV) is reported as a failure of that case instead of killing the test runner.

Mutations are structure-aware: binary protobuf files are parsed into their fields (guided by the
schema, so sub-messages are recognised) and mutated there (truncated at field boundaries, wire types
changed, lengths and dimensions blown up, fields repeated or nested deeply, floats made NaN/inf,
strings made invalid UTF-8) and re-serialised with consistent enclosing lengths; text files are
mutated at token boundaries. Raw bit flips and cuts complete them. The mutators take their decisions
from a :class:`Chooser`, so hypothesis draws (shrinkable) and a seeded ``random.Random`` drive the same code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import re
import selectors
import signal
import struct
import subprocess
import sys
import tarfile
import time
import tracemalloc
import traceback
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from agegender.prototxt.wire import encode_varint

REPO = Path(__file__).resolve().parent.parent

# --- choosers --------------------------------------------------------------------------------------------


class Chooser(Protocol):
    """Where a mutator takes its decisions from."""

    def integer(self, low: int, high: int) -> int:
        """An integer in ``low..high`` (both included)."""

    def choice(self, options: Sequence[Any]) -> Any:
        """One of ``options``."""


class RandomChooser:
    """Decisions from a seeded :class:`random.Random` (atheris' custom mutator, ad-hoc runs)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def choice(self, options: Sequence[Any]) -> Any:
        return options[self.rng.randrange(len(options))]


# --- the protobuf wire format as a tree -------------------------------------------------------------------
VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5

INTERESTING_VARINTS = (0, 1, 2**7, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1,
                       (-1) & (2**64 - 1), (-2**31) & (2**64 - 1))
INTERESTING_FLOATS = (float("nan"), float("inf"), float("-inf"), 3.4e38, -3.4e38, 1e-45, -0.0)


@dataclasses.dataclass
class WireField:
    """One field of an encoded message. ``value`` is an int (varint), raw bytes (fixed-size and
    unparsed length-delimited payloads) or a list of fields (a sub-message). ``kind`` is what the schema
    says it holds: message, packed-float, packed-double, packed-varint, string, bytes, float, double,
    varint or unknown."""

    number: int
    wire: int
    value: Any
    kind: str = "unknown"
    declared_length: int | None = None  # a LEN field's length prefix, when it is made to lie
    tag_wire: int | None = None  # the wire type written in the tag, when it is made to lie


def _read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= end or shift >= 70:
            raise ValueError("bad varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _kind_of(spec: Any) -> str:
    if spec is None:
        return "unknown"
    if spec.kind == "message":
        return "message"
    if spec.type in ("string", "bytes"):
        return spec.type
    if spec.repeated and spec.type in ("float", "double"):
        return f"packed-{spec.type}"
    if spec.type in ("float", "double"):
        return spec.type
    return "packed-varint" if spec.repeated else "varint"


def parse_wire(buf: bytes, message: str | None, start: int = 0, end: int | None = None,
               depth: int = 0) -> list[WireField]:
    """The fields of ``buf[start:end]`` read as a message of type ``message`` (a schema name; None for
    unknown). Sub-messages are parsed as far as they parse; raises ValueError if the bytes are no message."""
    from agegender.prototxt.schema import caffe_schema

    mtype = caffe_schema()[message] if message else None
    end = len(buf) if end is None else end
    fields: list[WireField] = []
    pos = start
    while pos < end:
        key, pos = _read_varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        spec = mtype.by_number.get(number) if mtype else None
        kind = _kind_of(spec)
        if wire == VARINT:
            value, pos = _read_varint(buf, pos, end)
            fields.append(WireField(number, wire, value, "varint" if kind != "unknown" else kind))
        elif wire in (I64, I32):
            size = 8 if wire == I64 else 4
            if pos + size > end:
                raise ValueError("truncated fixed field")
            fields.append(WireField(number, wire, bytes(buf[pos:pos + size]), kind))
            pos += size
        elif wire == LEN:
            length, pos = _read_varint(buf, pos, end)
            if pos + length > end:
                raise ValueError("length past the end")
            value: Any = bytes(buf[pos:pos + length])
            if kind == "message" and depth < 40:
                with contextlib.suppress(ValueError):
                    value = parse_wire(buf, spec.message.name, pos, pos + length, depth + 1)
            fields.append(WireField(number, wire, value, kind))
            pos += length
        else:
            raise ValueError(f"wire type {wire}")
    return fields


def serialize_wire(fields: list[WireField]) -> tuple[bytes, list[int]]:
    """The bytes of ``fields`` and the offsets of every field boundary (tag, payload, end) in them."""
    out = bytearray()
    boundaries: list[int] = []
    for field in fields:
        boundaries.append(len(out))
        out += encode_varint(field.number << 3 | (field.wire if field.tag_wire is None else field.tag_wire))
        if field.wire == VARINT:
            boundaries.append(len(out))
            out += encode_varint(field.value)
        elif field.wire in (I64, I32):
            boundaries.append(len(out))
            out += field.value
        else:
            if isinstance(field.value, list):
                payload, inner = serialize_wire(field.value)
            else:
                payload, inner = field.value, []
            out += encode_varint(len(payload) if field.declared_length is None else field.declared_length)
            boundaries.append(len(out))
            boundaries.extend(len(out) + offset for offset in inner)
            out += payload
    boundaries.append(len(out))
    return bytes(out), boundaries


def _all_fields(fields: list[WireField]) -> list[tuple[list[WireField], int]]:
    """Every field of the tree as (the list holding it, its index), depth first."""
    found: list[tuple[list[WireField], int]] = []
    stack = [fields]
    while stack:
        current = stack.pop()
        for index, field in enumerate(current):
            found.append((current, index))
            if isinstance(field.value, list):
                stack.append(field.value)
    return found


def _pick(fields: list[WireField], chooser: Chooser,
          kinds: Sequence[str] | None = None) -> tuple[list[WireField], int] | None:
    candidates = [(holder, i) for holder, i in _all_fields(fields) if kinds is None or holder[i].kind in kinds]
    return chooser.choice(candidates) if candidates else None


def _mutate_floats(payload: bytes, item: int, chooser: Chooser) -> bytes:
    count = len(payload) // item
    if not count:
        return payload
    data = bytearray(payload)
    for _ in range(chooser.integer(1, 3)):
        at = chooser.integer(0, count - 1) * item
        data[at:at + item] = struct.pack("<f" if item == 4 else "<d", chooser.choice(INTERESTING_FLOATS))
    return bytes(data)


def _mutate_packed_varints(payload: bytes, chooser: Chooser) -> bytes:
    values, pos = [], 0
    try:
        while pos < len(payload):
            value, pos = _read_varint(payload, pos, len(payload))
            values.append(value)
    except ValueError:
        return payload + b"\x80"
    if not values:
        values = [0]
    action = chooser.integer(0, 3)
    index = chooser.integer(0, len(values) - 1)
    if action == 0:
        values[index] = chooser.choice(INTERESTING_VARINTS)
    elif action == 1:
        values.insert(index, chooser.choice(INTERESTING_VARINTS))
    elif action == 2:
        del values[index]
    else:
        values = values * chooser.integer(2, 40)  # many axes
    return b"".join(encode_varint(v) for v in values)


def _tree_mutation(fields: list[WireField], chooser: Chooser) -> bool:
    """Mutate the tree in place (one structure-aware change). False when no field suits the change."""
    action = chooser.choice(("wire-type", "length", "varint", "duplicate", "delete", "nest", "floats", "payload",
                             "unknown-field", "dims"))
    if action == "unknown-field":
        holder = _pick(fields, chooser, ("message",))
        target = holder[0][holder[1]].value if holder and isinstance(holder[0][holder[1]].value, list) else fields
        wire = chooser.choice((VARINT, I64, LEN, SGROUP, EGROUP, I32, 6, 7))
        payloads = {VARINT: 2**63, I64: b"\0" * 8, I32: b"\0" * 4, LEN: b"\x01" * chooser.integer(0, 9)}
        value: Any = payloads.get(wire, b"")
        target.insert(chooser.integer(0, len(target)), WireField(chooser.choice((99, 1000, 2**28)), wire, value))
        return True
    if action == "dims":  # the fields that declare sizes: BlobShape.dim, num/channels/height/width
        picked = _pick(fields, chooser, ("packed-varint", "varint"))
        if picked is None:
            return False
        field = picked[0][picked[1]]
        if field.wire == LEN and isinstance(field.value, bytes):
            field.value = _mutate_packed_varints(field.value, chooser)
        elif field.wire == VARINT:
            field.value = chooser.choice(INTERESTING_VARINTS)
        else:
            return False
        return True
    kinds = {"length": ("message", "string", "bytes", "packed-float", "packed-double", "packed-varint", "unknown"),
             "varint": ("varint", "unknown"), "nest": ("message",),
             "floats": ("packed-float", "packed-double", "float", "double"),
             "payload": ("string", "bytes", "packed-float", "packed-double", "packed-varint")}.get(action)
    picked = _pick(fields, chooser, kinds)
    if picked is None:
        return False
    holder, index = picked
    field = holder[index]
    if action == "wire-type":
        field.tag_wire = chooser.choice([w for w in range(8) if w != field.wire])
    elif action == "length":
        if field.wire != LEN:
            return False
        actual = len(serialize_wire(field.value)[0]) if isinstance(field.value, list) else len(field.value)
        field.declared_length = chooser.choice((actual + 1, max(actual - 1, 0), actual + 4096, 2**31 - 1, 2**32 + 1,
                                                2**63 - 1, 2**64 - 1))
    elif action == "varint":
        if field.wire != VARINT:
            return False
        field.value = chooser.choice(INTERESTING_VARINTS)
    elif action == "duplicate":
        holder.insert(index, dataclasses.replace(field))
    elif action == "delete":
        del holder[index]
    elif action == "nest":
        nested = field
        for _ in range(chooser.choice((2, 10, 70, 300))):
            nested = WireField(field.number, LEN, [nested], "message")
        holder[index] = nested
    elif action == "floats":
        item = 8 if "double" in field.kind else 4
        if isinstance(field.value, bytes):
            field.value = _mutate_floats(field.value, item, chooser)
    elif action == "payload":
        if not isinstance(field.value, bytes):
            return False
        data = field.value
        how = chooser.integer(0, 4)
        at = chooser.integer(0, len(data))
        if how == 0:  # invalid UTF-8
            data = data[:at] + chooser.choice((b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80")) + data[at:]
        elif how == 1:
            data = data[:-1]
        elif how == 2:
            data = data[:-4]
        elif how == 3:
            data = data + b"\0\0\x80\x3f"
        else:
            data = data[: len(data) // 2]
        field.value = data
    return True


def mutate_binary(seed: bytes, message: str, chooser: Chooser) -> bytes:
    """One to three structure-aware or raw mutations of an encoded ``message``."""
    data = seed
    for _ in range(chooser.integer(1, 3)):
        action = chooser.choice(("tree", "tree", "tree", "truncate", "bitflip", "garbage"))
        tree = None
        if action == "tree" or action == "truncate":
            with contextlib.suppress(ValueError, RecursionError):
                tree = parse_wire(data, message)
        if action == "tree" and tree is not None and _tree_mutation(tree, chooser):
            data = serialize_wire(tree)[0]
        elif action == "truncate":
            boundaries = serialize_wire(tree)[1] if tree is not None else [0, len(data)]
            cut = chooser.choice(boundaries) + chooser.integer(-1, 1)
            data = data[: max(0, min(cut, len(data) - 1))]
        elif action == "garbage":
            noise = bytes(chooser.integer(0, 255) for _ in range(chooser.integer(1, 16)))
            at = chooser.integer(0, len(data))
            data = data[:at] + noise + data[at:]
        else:
            data = _flip_bits(data, chooser)
    return data


def _flip_bits(data: bytes, chooser: Chooser) -> bytes:
    if not data:
        return b"\x00"
    out = bytearray(data)
    for _ in range(chooser.integer(1, 4)):
        at = chooser.integer(0, len(out) - 1)
        out[at] ^= 1 << chooser.integer(0, 7)
    return bytes(out)


# --- text --------------------------------------------------------------------------------------------------
_TEXT_TOKEN = re.compile(rb'"(?:[^"\\\n]|\\.)*"|#[^\n]*|[{}:<>\[\],;\t\n]|[^\s{}:<>\[\],;"#]+|[ \r\f\v]+')
INTERESTING_NUMBERS = (b"0", b"-1", b"2147483647", b"2147483648", b"-2147483649", b"4294967296", b"9223372036854775808",
                       b"18446744073709551616", b"1e400", b"-1e400", b"nan", b"inf", b"-inf", b"0x7fffffff",
                       b"0xffffffffffffffffff", b"1.5.3", b"1e", b"0777", b"09", b"9" * 5000, b"1" * 80, b"+5", b"--3",
                       b"(1, 2)", b"(99999999999999999999999, 1)", b"None", b"\xd9\xa3")
INTERESTING_STRINGS = (b'"', b'"\\x"', b'"\\777"', b'"\\q"', b'"\\', b"'x'", b'"abc', b'""', b'"\\xff\\xfe"',
                       b'"' + b"a" * 70000 + b'"', b'"\xff"', b'"a\nb"')
NESTINGS = (b"layer {", b"{", b"convolution_param {", b"<", b"layers {", b"include {", b"x {", b"[")
INSERTS = (b"\x00", b"\xff", b"\xc3", b"\xef\xbb\xbf", b"\r", b"\t", b"\x1b", b"\xe2\x80\xa8", b"\r\n", b"\\", b"\x7f")


def text_tokens(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every token of a text file (a rough tokenisation, not the parser's)."""
    return [(m.start(), m.end()) for m in _TEXT_TOKEN.finditer(data)]


def mutate_text(seed: bytes, chooser: Chooser) -> bytes:
    """One to three token-level or raw mutations of a text file (prototxt, list, table)."""
    data = seed
    for _ in range(chooser.integer(1, 3)):
        tokens = text_tokens(data) or [(0, len(data))]
        start, end = chooser.choice(tokens)
        token = data[start:end]
        action = chooser.choice(("truncate", "bitflip", "number", "string", "ident", "delete", "duplicate",
                                 "duplicate-line", "swap-lines", "nest", "insert", "dialect", "separator"))
        if action == "truncate":
            cut = chooser.choice((start, end)) + chooser.integer(-1, 1)
            data = data[: max(0, min(cut, len(data) - 1))]
        elif action == "bitflip":
            data = _flip_bits(data, chooser)
        elif action == "number":
            numbers = ([t for t in tokens if re.fullmatch(rb"[-+0-9.eExX]+|\([^)]*\)", data[t[0]:t[1]])]
                       or [(start, end)])
            start, end = chooser.choice(numbers)
            data = data[:start] + chooser.choice(INTERESTING_NUMBERS) + data[end:]
        elif action == "string":
            strings = [t for t in tokens if data[t[0]:t[0] + 1] == b'"'] or [(start, end)]
            start, end = chooser.choice(strings)
            data = data[:start] + chooser.choice(INTERESTING_STRINGS) + data[end:]
        elif action == "ident":
            words = [t for t in tokens if re.fullmatch(rb"[A-Za-z_]\w*", data[t[0]:t[1]])] or [(start, end)]
            start, end = chooser.choice(words)
            other = chooser.choice(words)
            data = data[:start] + data[other[0]:other[1]] + data[end:]
        elif action == "delete":
            data = data[:start] + data[end:]
        elif action == "duplicate":
            data = data[:end] + token + data[end:]
        elif action in ("duplicate-line", "swap-lines"):
            lines = data.split(b"\n")
            i, j = chooser.integer(0, len(lines) - 1), chooser.integer(0, len(lines) - 1)
            if action == "duplicate-line":
                lines.insert(i, lines[j])
            else:
                lines[i], lines[j] = lines[j], lines[i]
            data = b"\n".join(lines)
        elif action == "nest":
            depth = chooser.choice((2, 50, 150, 5000))
            opener = chooser.choice(NESTINGS)
            closer = {b"<": b">", b"[": b"]"}.get(opener, b"}") * depth if chooser.integer(0, 1) else b""
            data = data[:start] + (opener + b" ") * depth + closer + data[start:]
        elif action == "insert":
            data = data[:start] + chooser.choice(INSERTS) + data[start:]
        elif action == "dialect":
            swaps = ((b"layer {", b"layers {"), (b"layers {", b"layer {"), (b'"Convolution"', b"CONVOLUTION"),
                     (b"CONVOLUTION", b'"Convolution"'), (b"\t", b" "), (b" ", b"\t"), (b"\n", b"\r\n"))
            old, new = chooser.choice(swaps)
            data = data.replace(old, new, chooser.choice((1, -1)))
        else:  # separators of line tables: drop, double or replace one
            seps = [t for t in tokens if data[t[0]:t[1]] in (b"\t", b"\n", b" ", b":")] or [(start, end)]
            start, end = chooser.choice(seps)
            data = data[:start] + chooser.choice((b"", b"\t\t", b" ", b"\n\n", b"\t", b":")) + data[end:]
    return data


# --- LMDB data files ------------------------------------------------------------------------------------
def mutate_lmdb(seed: bytes, chooser: Chooser, page_size: int = 4096) -> bytes:
    """Cut at (or near) page boundaries, flip bits in page headers, node tables and meta pages, or anywhere."""
    data = bytearray(seed)
    pages = max(1, len(data) // page_size)
    for _ in range(chooser.integer(1, 3)):
        action = chooser.choice(("truncate", "header", "meta", "bitflip", "zero-page", "copy-page"))
        page = chooser.integer(0, pages - 1)
        if action == "truncate":
            cut = chooser.integer(0, pages) * page_size + chooser.choice((0, 0, 1, -1, 100, -100))
            data = data[: max(0, min(cut, len(data)))]
            pages = max(1, len(data) // page_size)
        elif action in ("header", "meta") and data:
            page = chooser.integer(0, min(1, pages - 1)) if action == "meta" else page
            at = min(page * page_size + chooser.integer(0, 160 if action == "meta" else 64), len(data) - 1)
            data[at] ^= 1 << chooser.integer(0, 7)
        elif action == "zero-page" and data:
            at = page * page_size
            data[at:at + page_size] = bytes(len(data[at:at + page_size]))
        elif action == "copy-page" and pages > 1:
            other = chooser.integer(0, pages - 1)
            data[page * page_size:(page + 1) * page_size] = data[other * page_size:(other + 1) * page_size]
        else:
            data = bytearray(_flip_bits(bytes(data), chooser))
    return bytes(data)


# --- targets -----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Target:
    """One reader under fuzzing.

    ``run(path)`` reads the case at ``path`` (a file, or an LMDB folder whose data.mdb holds the case).
    ``format`` picks the mutator: "text", "binary" (with ``message``, the schema type of the file) or
    "lmdb". ``memory_factor`` bounds the peak of Python/numpy allocations at ``MEMORY_BASE +
    memory_factor * len(case)`` (text parsers keep a token per few bytes; binary readers copy little).
    """

    name: str
    format: str
    suffix: str
    run: Callable[[Path], object]
    seeds: Callable[[Path], list[bytes]]
    message: str | None = None
    memory_factor: int = 8

    def case_path(self, folder: Path) -> Path:
        return folder / ("case_lmdb" if self.format == "lmdb" else f"case{self.suffix}")

    def write_case(self, data: bytes, folder: Path) -> Path:
        """Put ``data`` where the reader reads it; returns the path to give ``run``."""
        path = self.case_path(folder)
        if self.format == "lmdb":
            path.mkdir(parents=True, exist_ok=True)
            (path / "data.mdb").unlink(missing_ok=True)  # a new inode: no stale map of the previous case
            (path / "data.mdb").write_bytes(data)
        else:
            path.unlink(missing_ok=True)
            path.write_bytes(data)
        return path

    def mutate(self, seed: bytes, chooser: Chooser) -> bytes:
        if self.format == "binary":
            assert self.message is not None
            return mutate_binary(seed, self.message, chooser)
        if self.format == "lmdb":
            return mutate_lmdb(seed, chooser)
        return mutate_text(seed, chooser)


MEMORY_BASE = 32 << 20


def _run_net(path: Path) -> None:
    """read_net, then build_ir and the CaffeNet (on the meta device) for both phases, as `inspect` does."""
    import torch

    from agegender.caffe2torch.ir import NetState, build_ir
    from agegender.caffe2torch.net import CaffeNet
    from agegender.prototxt import read_net

    net = read_net(path)
    for phase in ("TEST", "TRAIN"):
        ir = build_ir(net, str(path), NetState(phase=phase))
        with torch.device("meta"):  # shapes and parameters as `inspect` builds them, without the memory
            CaffeNet(ir)


def _run_solver(path: Path) -> None:
    """read_solver."""
    from agegender.prototxt import read_solver

    read_solver(path)


_TINY_NET = """name: "tiny"
input: "data"
input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 stride: 2 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""
_TINY_NET_V1 = """name: "tiny"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 stride: 2 } }
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers { name: "fc" type: INNER_PRODUCT bottom: "conv1" top: "fc" inner_product_param { num_output: 3 } }
layers { name: "prob" type: SOFTMAX bottom: "fc" top: "prob" }
"""
_TINY_NETS: dict[str, Any] = {}


def _tiny_net(v1: bool) -> Any:
    """The tiny nets the caffemodel seeds were written from (built once per process)."""
    import tempfile

    from agegender.caffe2torch import load

    key = "V1" if v1 else "V2"
    if key not in _TINY_NETS:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "tiny.prototxt"
            path.write_text(_TINY_NET_V1 if v1 else _TINY_NET)
            _TINY_NETS[key] = load(path, channels_last=False)
    return _TINY_NETS[key]


def _run_caffemodel(path: Path) -> None:
    """read_caffemodel, then load_weights into the tiny net the seed was written from."""
    from agegender.caffe2torch import load_weights
    from agegender.prototxt import read_caffemodel

    weights = read_caffemodel(path)
    if weights.name == "tiny":  # the seeds written from the tiny nets: their weights must also load
        load_weights(_tiny_net(weights.format == "V1"), weights)


def _run_binaryproto(path: Path) -> None:
    """MeanImage.from_binaryproto (read_blobproto, then the shape and NaN checks)."""
    from agegender.folds.mean import MeanImage

    MeanImage.from_binaryproto(path)


def _run_datum(path: Path) -> None:
    """parse_datum on one LMDB record's bytes (raw, float or encoded; images decoded)."""
    from agegender.folds.lmdb_io import parse_datum

    parse_datum(path.read_bytes(), "00000000_case.jpg", path)


def _run_lmdb(path: Path) -> None:
    """DatumLMDB on a folder whose data.mdb is the case: open, index and iterate every record."""
    from agegender.folds.lmdb_io import DatumLMDB

    with DatumLMDB(path) as db:
        for index in range(min(len(db), 4)):
            db[index]
        for _ in db:
            pass


def _run_fold_metadata(path: Path) -> None:
    """read_fold_metadata (Adience fold_K_data.txt)."""
    from agegender.folds.adience import read_fold_metadata

    read_fold_metadata(path)


def _run_image_list(path: Path) -> None:
    """ImageList.read, its label check and writing it back as text."""
    from agegender.folds.lists import ImageList

    entries = ImageList.read(path)
    entries.check_labels(None)
    entries.to_text()


def _run_label_map(path: Path) -> None:
    """LabelMap.read and a name/index round trip."""
    from agegender.folds.adience import LabelMap

    labels = LabelMap.read(path)
    labels.index(labels.name(len(labels) - 1))


# seeds ----------------------------------------------------------------------------------------------------
def _files(root: Path, *relative: str) -> list[bytes]:
    return [(root / r).read_bytes() for r in relative]


def _seeds_net_v1(root: Path) -> list[bytes]:
    return _files(root, "levi/age_net_definitions/deploy.prototxt",
                  "levi/gender_net_definitions/train_val_test_fold_is_0.prototxt",
                  "adience/model_definitions/age_net_definitions/train_val_test_fold_is_1.prototxt",
                  ) + [_TINY_NET_V1.encode()]


def _seeds_net_v2(root: Path) -> list[bytes]:
    return _files(root, "adience/model_definitions/age_finetuning_caffereference/deploy.prototxt",
                  "adience/model_definitions/age_finetuning_caffereference/train_val_test_fold_is_0.prototxt",
                  "adience/model_definitions/gender_finetuning_vgg16/deploy.prototxt") + [_TINY_NET.encode()]


def _seeds_solver(root: Path) -> list[bytes]:
    return _files(root, "levi/age_net_definitions/solver_test_fold_is_0.prototxt",
                  "adience/model_definitions/gender_finetuning_vgg16/solver_test_fold_is_0.prototxt") + [
        b'net: "train_val.prototxt"\nsolver_type: NESTEROV\nbase_lr: 0.01\nlr_policy: "multistep"\nstepvalue: 100\n'
        b'stepvalue: 200\ntest_iter: 10\ntest_state { stage: "x" }\nsnapshot_format: BINARYPROTO\n']


def _seeds_caffemodel(root: Path) -> list[bytes]:
    """Caffemodels written from the tiny nets with seeded weights (V1 and V2 layouts), and Levi's real age
    caffemodel with its layers' blobs shrunk to a few values (its real V1 structure, field order and names)."""
    import numpy as np

    from agegender.caffe2torch import init_seeded
    from agegender.caffe2torch.weights import weights_message
    from agegender.prototxt import decode_message, encode_message

    seeds = []
    for v1 in (True, False):
        net = _tiny_net(v1)
        init_seeded(net, seed=3)
        seeds.append(encode_message(weights_message(net, net.net_def, "V1" if v1 else "V2")))
    levi = decode_message((root / "levi/models/age_net.caffemodel").read_bytes(), "NetParameter")
    for layer in levi.layers:
        for blob in layer.blobs:
            blob.data = np.asarray(blob.data[:6], dtype=np.float32)
            blob.num, blob.channels, blob.height, blob.width = 1, 1, 2, 3
    seeds.append(encode_message(levi))
    return seeds


def _seeds_binaryproto(root: Path) -> list[bytes]:
    """The real mean images (3 x 256 x 256; cut to their first rows' worth of bytes by some mutations),
    and small ones in both shape layouts, where structure mutations are cheap."""
    import numpy as np

    from agegender.prototxt import array_to_blob, encode_message

    small = np.arange(3 * 4 * 5, dtype=np.float32).reshape(1, 3, 4, 5)
    return _files(root, "levi/models/mean.binaryproto",
                  "adience/mean_images/mean_image_mixed/Test_fold_is_2/mean.binaryproto") + [
        encode_message(array_to_blob(small, legacy_4d=True)), encode_message(array_to_blob(small[0], legacy_4d=False))]


def _lmdb_values(folder: Path, count: int) -> list[bytes]:
    import lmdb

    env = lmdb.open(str(folder), readonly=True, lock=False, readahead=False)
    try:
        with env.begin() as txn:
            return [value for _, (_, value) in zip(range(count), txn.cursor().iternext())]
    finally:
        env.close()


def _seeds_datum(root: Path) -> list[bytes]:
    """Real records of the convert_imageset LMDBs (raw, resized, encoded JPEG) and small raw, float and
    encoded PNG Datums, where structure mutations are cheap."""
    import cv2
    import numpy as np

    from agegender.prototxt import Message, encode_message

    sample = root / "caffe-reference/lmdb_sample"
    seeds = _lmdb_values(sample / "encoded", 3) + _lmdb_values(sample / "raw", 1) + _lmdb_values(sample / "resized", 1)
    raw = Message("Datum", channels=3, height=4, width=5, data=bytes(range(60)), label=2, encoded=False)
    floats = Message("Datum", channels=1, height=2, width=3, float_data=np.arange(6, dtype=np.float32), label=1)
    ok, png = cv2.imencode(".png", np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    assert ok
    encoded = Message("Datum", data=png.tobytes(), label=0, encoded=True)
    return seeds + [encode_message(m) for m in (raw, floats, encoded)]


def _seeds_lmdb(root: Path) -> list[bytes]:
    """convert_imageset's LMDBs: encoded JPEGs (records in leaf pages), raw images (in overflow pages)."""
    return _files(root, "caffe-reference/lmdb_sample/encoded/data.mdb", "caffe-reference/lmdb_sample/encoded/data.mdb",
                  "caffe-reference/lmdb_sample/raw/data.mdb")


def _seeds_fold_metadata(root: Path) -> list[bytes]:
    seeds = []
    for fold in (0, 3):
        lines = (root / f"adience/folds/original_txt_files/fold_{fold}_data.txt").read_bytes().split(b"\n")
        seeds.append(b"\n".join(lines[:120]) + b"\n")
    return seeds


def _seeds_image_list(root: Path) -> list[bytes]:
    seeds = _files(root, "caffe-reference/lmdb_sample/list.txt")
    with tarfile.open(root / "adience/folds/train_val_txt_files_per_fold.tar.xz") as archive:
        for name in ("train_val_txt_files_per_fold/test_fold_is_0/age_test.txt",
                     "train_val_txt_files_per_fold/test_fold_is_2/gender_val.txt"):
            member = archive.extractfile(name)
            assert member is not None
            seeds.append(b"\n".join(member.read().split(b"\n")[:150]) + b"\n")
    return seeds


def _seeds_label_map(root: Path) -> list[bytes]:
    return _files(root, "adience/synset_age.txt", "adience/synset_gender.txt")


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("net_v1", "text", ".prototxt", _run_net, _seeds_net_v1, memory_factor=400),
    Target("net_v2", "text", ".prototxt", _run_net, _seeds_net_v2, memory_factor=400),
    Target("solver", "text", ".prototxt", _run_solver, _seeds_solver, memory_factor=400),
    Target("caffemodel", "binary", ".caffemodel", _run_caffemodel, _seeds_caffemodel, "NetParameter", memory_factor=16),
    Target("binaryproto", "binary", ".binaryproto", _run_binaryproto, _seeds_binaryproto, "BlobProto", memory_factor=8),
    Target("datum", "binary", ".datum", _run_datum, _seeds_datum, "Datum", memory_factor=8),
    Target("lmdb", "lmdb", "", _run_lmdb, _seeds_lmdb, memory_factor=8),
    Target("fold_metadata", "text", ".txt", _run_fold_metadata, _seeds_fold_metadata, memory_factor=200),
    Target("image_list", "text", ".txt", _run_image_list, _seeds_image_list, memory_factor=200),
    Target("label_map", "text", ".txt", _run_label_map, _seeds_label_map, memory_factor=200),
)}


def _self_test(behaviour: str) -> Callable[[Path], object]:
    """Targets that misbehave on purpose, to show that the harness catches each kind of failure."""

    def run(path: Path) -> None:
        if behaviour == "bug":
            raise KeyError("not an AgegenderError")
        if behaviour == "memory":
            import numpy as np

            np.ones(MEMORY_BASE + 16 * max(path.stat().st_size, 1) + (8 << 20), np.uint8)
        elif behaviour == "hang":
            time.sleep(3600)
        elif behaviour == "deaf-hang":  # a hang in C code that no signal interrupts
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            time.sleep(3600)
        elif behaviour == "crash":
            os.kill(os.getpid(), signal.SIGSEGV)

    return run


SELF_TESTS: dict[str, Target] = {
    f"selftest-{b}": Target(f"selftest-{b}", "text", ".txt", _self_test(b), lambda root: [b""], memory_factor=16)
    for b in ("bug", "memory", "hang", "deaf-hang", "crash", "ok")
}


def target(name: str) -> Target:
    """The target called ``name`` (a reader of :data:`TARGETS`, or one of the harness' self-tests)."""
    return TARGETS[name] if name in TARGETS else SELF_TESTS[name]


# --- running one case ----------------------------------------------------------------------------------------
class CaseTimeout(BaseException):
    """Raised inside a case that runs past its time (a BaseException: readers catch Exception)."""


@dataclasses.dataclass
class Outcome:
    """What one case did: ``status`` is "ok" (read), "refused" (an AgegenderError), "bug" (any other
    exception), "timeout", "memory" (allocations past the bound), "crash" (the worker died)."""

    status: str
    error: str = ""
    detail: str = ""
    peak: int = 0
    seconds: float = 0.0

    @property
    def acceptable(self) -> bool:
        return self.status in ("ok", "refused")


def run_case(target: Target, data: bytes, folder: Path, timeout: float) -> Outcome:
    """Run one case in this process: tracemalloc measures the peak, an interval timer bounds the time."""
    from agegender.errors import AgegenderError

    path = target.write_case(data, folder)
    bound = MEMORY_BASE + target.memory_factor * len(data)

    def on_alarm(signum: int, frame: object) -> None:
        raise CaseTimeout(f"still running after {timeout} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    rss_before = _max_rss()
    started = time.perf_counter()
    if not tracemalloc.is_tracing():
        tracemalloc.start()
    tracemalloc.reset_peak()
    baseline = tracemalloc.get_traced_memory()[0]
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        target.run(path)
        outcome = Outcome("ok")
    except AgegenderError as exc:
        outcome = Outcome("refused", type(exc).__name__, str(exc))
    except CaseTimeout as exc:
        outcome = Outcome("timeout", "CaseTimeout", "".join(traceback.format_exception(exc)[-6:]))
    except Exception as exc:  # the bugs this fuzzing looks for  # noqa: BLE001
        outcome = Outcome("bug", type(exc).__name__, "".join(traceback.format_exception(exc)))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    outcome.seconds = time.perf_counter() - started
    outcome.peak = tracemalloc.get_traced_memory()[1] - baseline
    # tracemalloc sees Python and numpy allocations; C++ libraries (OpenCV, LMDB, torch) allocate on their
    # own, so the process' resident high-water mark must not jump past the bound either
    grown = _max_rss() - rss_before
    if outcome.acceptable and max(outcome.peak, grown) > bound:
        what = f"peak {outcome.peak} bytes of allocations" if outcome.peak > bound else \
            f"resident memory grew by {grown} bytes"
        outcome = Outcome("memory", "", f"{what} for a {len(data)}-byte case (bound {bound})", outcome.peak,
                          outcome.seconds)
    return outcome


def _max_rss() -> int:
    """This process' peak resident memory so far, in bytes: ``VmHWM`` of /proc/self/status, which belongs to
    this process image. (``getrusage().ru_maxrss`` of a worker started by ``subprocess`` begins at the RSS
    its parent had when it forked, e.g. a pytest process holding VGG16 weights: not this worker's own.)"""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _worker_main() -> None:
    """The worker process: read cases from stdin, run each, answer one JSON line per case."""
    import logging
    import tempfile

    logging.disable(logging.WARNING)  # refused cases log warnings by design
    stdin, stdout = sys.stdin.buffer, sys.stdout
    sys.stdout = sys.stderr  # nothing a reader prints may corrupt the protocol
    with tempfile.TemporaryDirectory(prefix="agegender-fuzz-") as tmp:
        folder = Path(tmp)
        while True:
            header = stdin.readline()
            if not header:
                return
            request = json.loads(header)
            data = stdin.read(request["size"])
            if "warmup" in request:
                # imports and one-time set-up, outside the first case's time
                for name in [n for n in request["warmup"] if n in TARGETS]:
                    with contextlib.suppress(Exception):
                        run_case(TARGETS[name], b"", folder, 60.0)
                answer: dict = {"status": "ready"}
            else:
                outcome = run_case(target(request["target"]), data, folder, request["timeout"])
                answer = dataclasses.asdict(outcome)
            answer["max_rss"] = _max_rss()
            stdout.write(json.dumps(answer) + "\n")
            stdout.flush()


class Worker:
    """A worker process that runs cases; restarted after a crash or a hang.

    ``run(target, data)`` returns the case's :class:`Outcome`: a worker that dies is a "crash" (with
    its exit status), one that does not answer within ``hard_timeout`` seconds is killed: a "timeout".
    """

    def __init__(self, targets: Sequence[str], case_timeout: float = 8.0, hard_timeout: float = 30.0,
                 env: dict[str, str] | None = None) -> None:
        self.targets = list(targets)
        self.case_timeout = case_timeout
        self.hard_timeout = hard_timeout
        self.env = {**os.environ, **(env or {}),
                    "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.process: subprocess.Popen | None = None
        self.max_rss = 0
        self.restarts = 0

    def _start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from tests.fuzz_targets import _worker_main; _worker_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO, env=self.env,
        )
        answer = self._request({"warmup": self.targets, "size": 0}, b"", 300.0)
        if answer is None or answer.get("status") != "ready":
            raise RuntimeError(f"the fuzz worker did not start: {answer}")

    def _request(self, header: dict, data: bytes, timeout: float) -> dict | None:
        assert self.process is not None and self.process.stdin and self.process.stdout
        try:
            self.process.stdin.write((json.dumps(header) + "\n").encode() + data)
            self.process.stdin.flush()
        except BrokenPipeError:
            return None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                return {"status": "hard-timeout"}
        line = self.process.stdout.readline()
        return json.loads(line) if line else None

    def run(self, target: str, data: bytes) -> Outcome:
        if self.process is None or self.process.poll() is not None:
            self._start()
        answer = self._request({"target": target, "size": len(data), "timeout": self.case_timeout}, data,
                               self.hard_timeout)
        if answer is None or answer.get("status") == "hard-timeout":
            assert self.process is not None
            hung = answer is not None
            if hung:
                self.process.kill()
            code = self.process.wait()
            self.process = None
            self.restarts += 1
            if hung:
                return Outcome("timeout", "", f"the worker did not answer within {self.hard_timeout} s")
            name = signal.Signals(-code).name if code < 0 else f"exit status {code}"
            return Outcome("crash", name, f"the worker process died ({name}) reading the case")
        self.max_rss = max(self.max_rss, int(answer.pop("max_rss", 0)))
        return Outcome(**answer)

    def close(self) -> None:
        if self.process is not None:
            with contextlib.suppress(Exception):
                assert self.process.stdin is not None
                self.process.stdin.close()
                self.process.wait(timeout=10)
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.process = None


def shared_root() -> Path:
    return Path(os.environ.get("AGEGENDER_SHARED", REPO.parent / "shared"))


def load_seeds(names: Sequence[str], root: Path | None = None) -> dict[str, list[bytes]]:
    """The seeds of each named target, from the shared files at ``root``."""
    root = root or shared_root()
    return {name: TARGETS[name].seeds(root) for name in names}


__all__ = ["Chooser", "Outcome", "RandomChooser", "SELF_TESTS", "TARGETS", "Target", "Worker", "load_seeds",
           "mutate_binary", "mutate_lmdb", "mutate_text", "parse_wire", "run_case", "serialize_wire", "target"]
