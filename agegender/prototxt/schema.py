"""The schema of Caffe's messages, read from ``caffe_schema.proto`` beside this file.

One description drives every reader and writer: :class:`MessageType` knows each field's name, number,
type, label, default and enum values. The ``.proto`` file is parsed by a small reader for the proto2
subset it uses (messages, nested enums, optional/required/repeated fields, ``default`` and ``packed``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

SCALAR_TYPES = {
    "double", "float", "int32", "int64", "uint32", "uint64", "sint32", "sint64", "bool", "string", "bytes",
}
INT_TYPES = {"int32", "int64", "uint32", "uint64", "sint32", "sint64"}
FLOAT_TYPES = {"float", "double"}


@dataclass
class EnumType:
    name: str
    values: dict[str, int]

    def name_of(self, number: int) -> str | None:
        for key, val in self.values.items():
            if val == number:
                return key
        return None


@dataclass
class FieldSpec:
    name: str
    number: int
    type: str  # a scalar type name, or the name of an enum or message type
    repeated: bool
    default: object = None
    packed: bool = False
    required: bool = False  # proto2 ``required``: a message lacking it is refused, as protobuf refuses it
    kind: str = "scalar"  # "scalar", "enum" or "message"
    enum: EnumType | None = None
    message: "MessageType | None" = None

    def default_value(self) -> object:
        if self.default is not None:
            return self.default
        if self.kind == "enum":
            assert self.enum is not None
            return next(iter(self.enum.values))  # proto2: the first value
        if self.type in INT_TYPES:
            return 0
        if self.type in FLOAT_TYPES:
            return 0.0
        if self.type == "bool":
            return False
        if self.type == "string":
            return ""
        if self.type == "bytes":
            return b""
        return None


@dataclass
class MessageType:
    name: str
    fields: dict[str, FieldSpec] = field(default_factory=dict)
    by_number: dict[int, FieldSpec] = field(default_factory=dict)
    enums: dict[str, EnumType] = field(default_factory=dict)
    required: list[FieldSpec] = field(default_factory=list)
    # this type or one it (transitively) contains has required fields: only those are walked for them
    reaches_required: bool = False

    def add(self, spec: FieldSpec) -> None:
        self.fields[spec.name] = spec
        self.by_number[spec.number] = spec
        if spec.required:
            self.required.append(spec)


class Schema:
    """All message and enum types of one ``.proto`` file, fields resolved to their types."""

    def __init__(self, text: str) -> None:
        self.messages: dict[str, MessageType] = {}
        self.enums: dict[str, EnumType] = {}
        self._parse(text)
        self._resolve()

    def __getitem__(self, name: str) -> MessageType:
        return self.messages[name]

    # --- a reader for the proto2 subset we write -------------------------------------------------
    _TOKEN = re.compile(r'\s+|//[^\n]*|"[^"]*"|\'[^\']*\'|[A-Za-z_][\w.]*|-?[\d.]+(?:[eE][-+]?\d+)?|[{}\[\]=;,]')

    def _tokens(self, text: str) -> list[str]:
        out = []
        for m in self._TOKEN.finditer(text):
            tok = m.group(0)
            if tok.isspace() or tok.startswith("//"):
                continue
            out.append(tok)
        return out

    def _parse(self, text: str) -> None:
        toks = self._tokens(text)
        self._pending: list[tuple[MessageType, str, str, bool, dict]] = []
        pos = 0
        while pos < len(toks):
            if toks[pos] == "enum":
                enum, pos = self._parse_enum(toks, pos)
                self.enums[enum.name] = enum
            elif toks[pos] == "message":
                pos = self._parse_message(toks, pos)
            else:
                raise ValueError(f"schema: unexpected token {toks[pos]!r}")

    def _parse_enum(self, toks: list[str], pos: int) -> tuple[EnumType, int]:
        name = toks[pos + 1]
        assert toks[pos + 2] == "{"
        pos += 3
        values: dict[str, int] = {}
        while toks[pos] != "}":
            values[toks[pos]] = int(toks[pos + 2])
            pos += 4  # NAME = N ;
        return EnumType(name, values), pos + 1

    def _parse_message(self, toks: list[str], pos: int) -> int:
        msg = MessageType(toks[pos + 1])
        self.messages[msg.name] = msg
        assert toks[pos + 2] == "{"
        pos += 3
        while toks[pos] != "}":
            if toks[pos] == "enum":
                enum, pos = self._parse_enum(toks, pos)
                msg.enums[enum.name] = enum
                continue
            label, ftype, fname, eq, number = toks[pos : pos + 5]
            assert label in ("optional", "required", "repeated") and eq == "=", toks[pos : pos + 5]
            pos += 5
            options: dict[str, str] = {}
            if toks[pos] == "[":
                pos += 1
                while toks[pos] != "]":
                    options[toks[pos]] = toks[pos + 2]
                    pos += 3
                    if toks[pos] == ",":
                        pos += 1
                pos += 1
            assert toks[pos] == ";"
            pos += 1
            spec = FieldSpec(fname, int(number), ftype, label == "repeated", packed=options.get("packed") == "true",
                             required=label == "required")
            msg.add(spec)
            self._pending.append((msg, fname, ftype, label == "repeated", options))
        return pos + 1

    def _resolve(self) -> None:
        for msg, fname, ftype, _repeated, options in self._pending:
            spec = msg.fields[fname]
            if ftype in SCALAR_TYPES:
                spec.kind = "scalar"
            elif ftype in msg.enums or ftype in self.enums:
                spec.kind = "enum"
                spec.enum = msg.enums.get(ftype) or self.enums[ftype]
            elif ftype in self.messages:
                spec.kind = "message"
                spec.message = self.messages[ftype]
            else:
                raise ValueError(f"schema: {msg.name}.{fname} has unknown type {ftype}")
            if "default" in options:
                spec.default = self._default(spec, options["default"])
        del self._pending
        for msg in self.messages.values():
            msg.reaches_required = bool(msg.required)
        changed = True
        while changed:  # a fixpoint: the schema's types may refer to each other in any order
            changed = False
            for msg in self.messages.values():
                if not msg.reaches_required and any(
                    s.kind == "message" and s.message is not None and s.message.reaches_required
                    for s in msg.fields.values()
                ):
                    msg.reaches_required = changed = True

    @staticmethod
    def _default(spec: FieldSpec, raw: str) -> object:
        if spec.kind == "enum":
            return raw
        if spec.type in INT_TYPES:
            return int(raw)
        if spec.type in FLOAT_TYPES:
            return float(raw.rstrip("."))  if raw.endswith(".") else float(raw)
        if spec.type == "bool":
            return raw == "true"
        return raw.strip("\"'")


@lru_cache(maxsize=1)
def caffe_schema() -> Schema:
    """The parsed schema of Caffe's messages (parsed once per process)."""
    text = resources.files("agegender.prototxt").joinpath("caffe_schema.proto").read_text(encoding="utf-8")
    return Schema(text)
