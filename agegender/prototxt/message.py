"""A protobuf message as a plain Python object, typed by our schema.

``msg.field`` reads a field: the value if set, else the schema's default (scalars and enums), an empty
message (message fields) or an empty list (repeated fields). Enum values are held as their names
(``"MAX"``). Packed numeric repeated fields read from binary files are numpy arrays (views into the
file's bytes, no per-element copies); from text they are lists. ``msg.has(name)`` tells presence.
String fields are ``str``; bytes of them that are not UTF-8 are kept as surrogate escapes
(:func:`string_bytes` gives the bytes back), as proto2 strings, and so Caffe's files, may hold any.
Text positions (line, column) are kept for error messages.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from .schema import FieldSpec, MessageType, caffe_schema


def string_bytes(value: str | bytes) -> bytes:
    """The bytes of a string field's value. Strings hold the file's bytes as read: bytes that are not UTF-8
    (protobuf's proto2 strings may hold any, as Caffe's files then do) are kept as surrogate escapes."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is no escape (a \ud800 given in Python): as protobuf would
        return value.encode("utf-8", "surrogatepass")


def bytes_string(data: bytes) -> str:
    """A string field's value from its bytes (the inverse of :func:`string_bytes`)."""
    return data.decode("utf-8", "surrogateescape")


def first_missing_required(msg: "Message", path: str) -> "tuple[Message, str, str] | None":
    """The first proto2 ``required`` field missing in ``msg`` or a message inside it, as (the message
    lacking it, its path from ``path``, the field's name); None when every required field is there."""
    mtype = msg.mtype
    if not mtype.reaches_required:
        return None
    values = msg._values
    for spec in mtype.required:
        if spec.name not in values:
            return msg, path, spec.name
    for spec, value in msg.set_fields():
        if spec.kind != "message" or spec.message is None or not spec.message.reaches_required:
            continue
        children = list(enumerate(value)) if spec.repeated else [(None, value)]
        for index, child in children:
            found = first_missing_required(child, f"{path}.{spec.name}" + ("" if index is None else f"[{index}]"))
            if found:
                return found
    return None


class Message:
    __slots__ = ("_type", "_values", "_pos", "_field_pos")

    def __init__(self, mtype: MessageType | str, **fields: Any) -> None:
        if isinstance(mtype, str):
            mtype = caffe_schema()[mtype]
        object.__setattr__(self, "_type", mtype)
        object.__setattr__(self, "_values", {})
        object.__setattr__(self, "_pos", None)
        object.__setattr__(self, "_field_pos", None)
        for key, value in fields.items():
            setattr(self, key, value)

    # --- reading ---------------------------------------------------------------------------------
    @property
    def type_name(self) -> str:
        return self._type.name

    @property
    def mtype(self) -> MessageType:
        return self._type

    @property
    def pos(self) -> tuple[int, int] | None:
        """(line, column) where this message starts in a text file, if it came from one."""
        return self._pos

    def field_pos(self, name: str) -> tuple[int, int] | None:
        """(line, column) of a field's first occurrence in a text file, if known."""
        if self._field_pos and name in self._field_pos:
            return self._field_pos[name]
        return self._pos

    def spec(self, name: str) -> FieldSpec:
        try:
            return self._type.fields[name]
        except KeyError:
            raise AttributeError(f"{self._type.name} has no field {name!r}") from None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        spec = self.spec(name)
        values = self._values
        if name in values:
            return values[name]
        if spec.repeated:
            lst: list = []
            values[name] = lst  # so that .append() on it sticks, as in protobuf
            return lst
        if spec.kind == "message":
            assert spec.message is not None
            return Message(spec.message)
        return spec.default_value()

    def has(self, name: str) -> bool:
        """Presence: an optional field was set, or a repeated field has elements."""
        self.spec(name)
        if name not in self._values:
            return False
        value = self._values[name]
        if self._type.fields[name].repeated:
            return len(value) > 0
        return True

    def set_fields(self) -> Iterator[tuple[FieldSpec, Any]]:
        """The fields that are present, in schema order."""
        values = self._values
        if not values:
            return
        # direct dict lookups: this runs for every message of every read, write and comparison
        for name, spec in self._type.fields.items():
            if name in values:
                value = values[name]
                if spec.repeated and len(value) == 0:
                    continue
                yield spec, value

    # --- writing ---------------------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        spec = self.spec(name)
        if spec.repeated and not hasattr(value, "__len__"):
            raise TypeError(f"{self._type.name}.{name} is repeated: assign a list or array")
        self._values[name] = value

    def mutable(self, name: str) -> "Message":
        """The message in field ``name``, created (and so made present) if absent."""
        spec = self.spec(name)
        assert spec.kind == "message" and not spec.repeated
        if name not in self._values:
            assert spec.message is not None
            self._values[name] = Message(spec.message)
        return self._values[name]

    def add(self, name: str, /, **fields: Any) -> "Message":
        """Append a new message to repeated message field ``name`` and return it."""
        spec = self.spec(name)
        assert spec.kind == "message" and spec.repeated and spec.message is not None
        child = Message(spec.message, **fields)
        getattr(self, name).append(child)
        return child

    def clear(self, name: str) -> None:
        self.spec(name)
        self._values.pop(name, None)

    def copy(self) -> "Message":
        """A deep copy of the message structure (numpy arrays are shared, not copied)."""
        out = Message(self._type)
        object.__setattr__(out, "_pos", self._pos)
        object.__setattr__(out, "_field_pos", dict(self._field_pos) if self._field_pos else None)
        for spec, value in self.set_fields():
            if spec.kind == "message":
                value = [v.copy() for v in value] if spec.repeated else value.copy()
            elif spec.repeated and isinstance(value, list):
                value = list(value)
            out._values[spec.name] = value
        return out

    def __repr__(self) -> str:
        from .text_format import format_message

        return f"<{self._type.name}\n{format_message(self, indent=1)}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message) or other._type is not self._type:
            return NotImplemented
        mine = dict((s.name, v) for s, v in self.set_fields())
        theirs = dict((s.name, v) for s, v in other.set_fields())
        if mine.keys() != theirs.keys():
            return False
        fields = self._type.fields
        for key, value in mine.items():
            other_value = theirs[key]
            if fields[key].type == "float":
                # a float field holds float32 (as in protobuf): 0.1 read from text equals 0.1 read back
                # from a binary file, where it was stored as the float32 nearest to 0.1
                with np.errstate(over="ignore"):
                    a = np.asarray(value, dtype=np.float32)
                    b = np.asarray(other_value, dtype=np.float32)
                if not np.array_equal(a, b):
                    return False
            elif hasattr(value, "dtype") or hasattr(other_value, "dtype"):
                if list(map(float, value)) != list(map(float, other_value)):
                    return False
            elif value != other_value:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]

    # pickling and copy.deepcopy (e.g. of a CaffeNet that keeps its net definition): the type goes by name
    def __getstate__(self) -> tuple:
        return (self._type.name, self._values, self._pos, self._field_pos)

    def __setstate__(self, state: tuple) -> None:
        name, values, pos, field_pos = state
        object.__setattr__(self, "_type", caffe_schema()[name])
        object.__setattr__(self, "_values", values)
        object.__setattr__(self, "_pos", pos)
        object.__setattr__(self, "_field_pos", field_pos)
