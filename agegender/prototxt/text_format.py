"""Protobuf text format (prototxt) reading and writing, driven by our schema.

Errors carry the file, line and column of the offending token: malformed text raises
:class:`PrototxtSyntaxError`, a field the message type lacks raises :class:`UnknownFieldError` (with the
closest known name as a hint), as Caffe refuses such files too.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any, Iterator

from ..errors import PrototxtSyntaxError, UnknownFieldError
from .message import Message
from .schema import FLOAT_TYPES, INT_TYPES, FieldSpec, MessageType, caffe_schema

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\f\v]+|\n)
  | (?P<comment>\#[^\n]*)
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)[fF]?)
  | (?P<ident>-?[A-Za-z_][A-Za-z0-9_]*)
  | (?P<symbol>[{}<>:\[\],;])
    """,
    re.VERBOSE,
)
# where a quoted string may stop: its quote, an escape or the end of the line (strings are scanned by
# _string_end, not by _TOKEN: a regex group repeated per character or escape keeps ~100-200 bytes of state
# per repetition, far more memory than the file for a long string)
_STRING_STOPS = {'"': re.compile(r'["\\\n]'), "'": re.compile(r"['\\\n]")}
_NUMBER_TAIL = re.compile(r"[-+]?[\w.]+(?:[eE][-+]?[\w.]*)?")
_MAX_DEPTH = 100
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "a": "\a", "b": "\b", "f": "\f",
            "v": "\v", "?": "?"}


class _Token:
    __slots__ = ("kind", "text", "line", "col")

    def __init__(self, kind: str, text: str, line: int, col: int) -> None:
        self.kind, self.text, self.line, self.col = kind, text, line, col


def _string_end(text: str, start: int) -> int | None:
    """The end of the quoted string starting at ``start`` (after its closing quote); None when the line
    ends first. A backslash escapes the next character, except a line break."""
    stops = _STRING_STOPS[text[start]]
    pos = start + 1
    while True:
        stop = stops.search(text, pos)
        if stop is None or stop.group() == "\n":
            return None
        if stop.group() != "\\":
            return stop.end()
        if stop.end() >= len(text) or text[stop.end()] == "\n":
            return None
        pos = stop.end() + 1


def _tokenize(text: str, path: str | None) -> Iterator[_Token]:
    """The tokens of ``text``, one at a time (the parser needs one of lookahead: holding them all would
    take ~100 bytes per token, far more memory than the file for a file of one-character tokens), then
    an ``eof`` token."""
    line, line_start, pos, end = 1, 0, 0, len(text)
    match = _TOKEN.match
    while pos < end:
        if text[pos] in "\"'":
            stop = _string_end(text, pos)
            if stop is None:
                raise PrototxtSyntaxError("string not closed before the end of the line", path=path, line=line,
                                          col=pos - line_start + 1)
            yield _Token("string", text[pos:stop], line, pos - line_start + 1)
            pos = stop
            continue
        m = match(text, pos)
        if m is None:
            raise PrototxtSyntaxError(f"unexpected character {text[pos]!r}", path=path, line=line,
                                      col=pos - line_start + 1)
        kind = m.lastgroup
        tok = m.group(0)
        if kind == "number" and m.end() < end and (text[m.end()].isalnum() or text[m.end()] in "_."):
            # "12x", "1e", "1.5.3": protobuf refuses a number glued to more characters
            bad = _NUMBER_TAIL.match(text, pos).group(0)
            raise PrototxtSyntaxError(f"bad number {bad!r}", path=path, line=line, col=pos - line_start + 1)
        if kind == "ws":
            if tok == "\n":
                line += 1
                line_start = m.end()
        elif kind != "comment":
            yield _Token(kind, tok, line, pos - line_start + 1)  # type: ignore[arg-type]
        pos = m.end()
    yield _Token("eof", "", line, pos - line_start + 1)


def _unescape(raw: str, tok: _Token, path: str | None) -> bytes:
    body = raw[1:-1]
    if "\\" not in body:
        return body.encode("utf-8")
    out = bytearray()
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out += ch.encode("utf-8")
            i += 1
            continue
        i += 1
        if i >= len(body):
            break
        esc = body[i]
        if esc in _ESCAPES:
            out += _ESCAPES[esc].encode()
            i += 1
        elif esc in "xX":
            digits = re.match(r"[0-9a-fA-F]{1,2}", body[i + 1 :])
            if not digits:
                raise PrototxtSyntaxError("bad \\x escape in string", path=path, line=tok.line, col=tok.col)
            out.append(int(digits.group(0), 16))
            i += 1 + len(digits.group(0))
        elif esc in "01234567":
            digits = re.match(r"[0-7]{1,3}", body[i:])
            assert digits
            out.append(int(digits.group(0), 8) & 0xFF)
            i += len(digits.group(0))
        else:
            raise PrototxtSyntaxError(f"unknown escape \\{esc} in string", path=path, line=tok.line, col=tok.col)
    return bytes(out)


class _Parser:
    def __init__(self, text: str, path: str | None) -> None:
        self.path = path
        self.tokens = _tokenize(text, path)
        self.current = next(self.tokens)

    def error(self, message: str, tok: _Token | None = None) -> PrototxtSyntaxError:
        tok = tok or self.current
        return PrototxtSyntaxError(message, path=self.path, line=tok.line, col=tok.col)

    def peek(self) -> _Token:
        return self.current

    def next(self) -> _Token:
        tok = self.current
        if tok.kind != "eof":  # the end of file stays the current token
            self.current = next(self.tokens)
        return tok

    def accept(self, text: str) -> bool:
        if self.current.kind == "symbol" and self.current.text == text:
            self.next()
            return True
        return False

    def expect(self, text: str, what: str) -> None:
        if not self.accept(text):
            tok = self.peek()
            found = "end of file" if tok.kind == "eof" else repr(tok.text)
            raise self.error(f"expected {what}, found {found}")

    def parse_message(self, msg: Message, close: str | None, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise self.error(f"messages nested deeper than {_MAX_DEPTH} levels")
        mtype = msg.mtype
        field_pos: dict[str, tuple[int, int]] = {}
        object.__setattr__(msg, "_field_pos", field_pos)
        while True:
            tok = self.peek()
            if tok.kind == "eof":
                if close is None:
                    return
                opened = f" opened at line {msg.pos[0]}:{msg.pos[1]}" if msg.pos else ""
                raise self.error(f"missing '{close}' at end of file: the {msg.type_name} message{opened} is not closed")
            if tok.kind == "symbol" and tok.text == close:
                self.next()
                return
            if tok.kind != "ident":
                raise self.error(f"expected a field name, found {tok.text!r}")
            self.next()
            name = tok.text
            spec = mtype.fields.get(name)
            if spec is None:
                close_names = difflib.get_close_matches(name, list(mtype.fields), n=1)
                hint = f"did you mean '{close_names[0]}'?" if close_names else None
                raise UnknownFieldError(
                    f"{mtype.name} has no field named '{name}'", path=self.path, line=tok.line, col=tok.col, hint=hint
                )
            field_pos.setdefault(name, (tok.line, tok.col))
            if spec.kind == "message":
                self.accept(":")
                if self.accept("["):  # a list of messages: field: [ {..}, {..} ]
                    if not spec.repeated:
                        raise self.error(f"field '{name}' is not repeated", tok)
                    if not self.accept("]"):
                        while True:
                            self._one_message(msg, spec, tok, depth)
                            if self.accept("]"):
                                break
                            self.expect(",", "',' or ']'")
                else:
                    self._one_message(msg, spec, tok, depth)
            else:
                self.expect(":", f"':' after '{name}'")
                if self.accept("["):
                    if not spec.repeated:
                        raise self.error(f"field '{name}' is not repeated", tok)
                    if not self.accept("]"):
                        while True:
                            self._store(msg, spec, self.scalar(spec), tok)
                            if self.accept("]"):
                                break
                            self.expect(",", "',' or ']'")
                else:
                    self._store(msg, spec, self.scalar(spec), tok)
            if not self.accept(","):
                self.accept(";")

    def _one_message(self, msg: Message, spec: FieldSpec, name_tok: _Token, depth: int) -> None:
        open_tok = self.peek()
        if self.accept("{"):
            close = "}"
        elif self.accept("<"):
            close = ">"
        else:
            raise self.error(f"expected '{{' to open message field '{spec.name}'")
        assert spec.message is not None
        child = Message(spec.message)
        object.__setattr__(child, "_pos", (name_tok.line, name_tok.col))
        self.parse_message(child, close, depth + 1)
        del open_tok
        self._store(msg, spec, child, name_tok)

    def _store(self, msg: Message, spec: FieldSpec, value: Any, tok: _Token) -> None:
        if spec.repeated:
            getattr(msg, spec.name).append(value)
        else:
            # protobuf text format: a repeated occurrence of a singular field is an error
            if msg.has(spec.name):
                raise PrototxtSyntaxError(
                    f"field '{spec.name}' of {msg.type_name} is given twice but is not repeated",
                    path=self.path, line=tok.line, col=tok.col,
                )
            setattr(msg, spec.name, value)

    def scalar(self, spec: FieldSpec) -> Any:
        tok = self.next()
        if spec.kind == "enum":
            assert spec.enum is not None
            if tok.kind == "ident":
                if tok.text not in spec.enum.values:
                    raise PrototxtSyntaxError(
                        f"'{tok.text}' is not a value of {spec.enum.name} (field '{spec.name}'); "
                        f"expected one of {', '.join(spec.enum.values)}",
                        path=self.path, line=tok.line, col=tok.col,
                    )
                return tok.text
            if tok.kind == "number":
                name = spec.enum.name_of(self._int(tok, spec))
                if name is None:
                    raise self.error(f"{tok.text} is not a value of {spec.enum.name}", tok)
                return name
            raise self.error(f"expected an enum name for '{spec.name}', found {tok.text!r}", tok)
        ftype = spec.type
        if ftype in ("string", "bytes"):
            if tok.kind != "string":
                raise self.error(f"expected a quoted string for '{spec.name}', found {tok.text!r}", tok)
            data = _unescape(tok.text, tok, self.path)
            while self.peek().kind == "string":  # adjacent literals concatenate
                nxt = self.next()
                data += _unescape(nxt.text, nxt, self.path)
            if ftype == "bytes":
                return data
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                raise self.error(f"string for '{spec.name}' is not valid UTF-8", tok) from None
        if ftype == "bool":
            if tok.text in ("true", "True", "t", "1"):
                return True
            if tok.text in ("false", "False", "f", "0"):
                return False
            raise self.error(f"expected true or false for '{spec.name}', found {tok.text!r}", tok)
        if ftype in INT_TYPES:
            if tok.kind != "number":
                raise self.error(f"expected an integer for '{spec.name}', found {tok.text!r}", tok)
            return self._int(tok, spec)
        if ftype in FLOAT_TYPES:
            if tok.kind == "ident":
                low = tok.text.lower()
                if low in ("inf", "infinity", "-inf", "-infinity", "nan", "-nan"):
                    return float(low.replace("infinity", "inf"))
                raise self.error(f"expected a number for '{spec.name}', found {tok.text!r}", tok)
            if tok.kind != "number":
                raise self.error(f"expected a number for '{spec.name}', found {tok.text!r}", tok)
            text = tok.text.rstrip("fF") if not tok.text.lower().startswith(("0x", "-0x", "+0x")) else tok.text
            try:
                if text.lower().lstrip("+-").startswith("0x"):
                    return float(int(text, 16))
                return float(text)
            except ValueError:
                raise self.error(f"bad number {tok.text!r}", tok) from None
        raise AssertionError(ftype)

    def _int(self, tok: _Token, spec: FieldSpec) -> int:
        text = tok.text
        try:
            if re.fullmatch(r"[-+]?0[xX][0-9a-fA-F]+", text):
                value = int(text, 16)
            elif re.fullmatch(r"[-+]?0[0-7]+", text):
                value = int(text, 8)
            else:
                value = int(text)
        except ValueError:
            raise self.error(f"expected an integer for '{spec.name}', found {text!r}", tok) from None
        bits = 64 if spec.type.endswith("64") else 32
        if spec.type.startswith("uint"):
            lo, hi = 0, 2**bits - 1
        else:
            lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        if spec.kind == "enum":
            lo, hi = -(2**31), 2**31 - 1
        if not lo <= value <= hi:
            raise self.error(f"{text} is out of range for '{spec.name}' ({spec.type})", tok)
        return value


def parse_text(text: str, mtype: MessageType | str, path: str | Path | None = None) -> Message:
    """Parse protobuf text ``text`` as a message of type ``mtype`` (e.g. ``"NetParameter"``)."""
    if isinstance(mtype, str):
        mtype = caffe_schema()[mtype]
    parser = _Parser(text, str(path) if path is not None else None)
    msg = Message(mtype)
    object.__setattr__(msg, "_pos", (1, 1))
    parser.parse_message(msg, None, 0)
    return msg


# --- writing ---------------------------------------------------------------------------------------
def _format_scalar(spec: FieldSpec, value: Any) -> str:
    if spec.kind == "enum":
        return str(value)
    if spec.type == "bool":
        return "true" if value else "false"
    if spec.type in ("string", "bytes"):
        data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        out = []
        for byte in data:
            ch = chr(byte)
            if ch == '"':
                out.append('\\"')
            elif ch == "\\":
                out.append("\\\\")
            elif ch == "\n":
                out.append("\\n")
            elif 32 <= byte < 127:
                out.append(ch)
            else:
                out.append(f"\\{byte:03o}")
        return '"' + "".join(out) + '"'
    if spec.type in FLOAT_TYPES:
        value = float(value)
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value == int(value) and abs(value) < 1e15:
            return str(int(value))
        if spec.type == "float":
            import numpy as np

            return repr(float(np.float32(value))) if len(repr(float(np.float32(value)))) < 12 else f"{value:.9g}"
        return repr(value)
    return str(int(value))


def format_message(msg: Message, indent: int = 0) -> str:
    """Protobuf text of ``msg``, two spaces per level, fields in schema order."""
    lines: list[str] = []
    pad = "  " * indent
    for spec, value in msg.set_fields():
        items = value if spec.repeated else [value]
        for item in items:
            if spec.kind == "message":
                lines.append(f"{pad}{spec.name} {{")
                body = format_message(item, indent + 1)
                if body:
                    lines.append(body)
                lines.append(f"{pad}}}")
            else:
                lines.append(f"{pad}{spec.name}: {_format_scalar(spec, item)}")
    return "\n".join(lines)
