"""Protobuf text format (prototxt) reading and writing, driven by our schema.

The grammar is that of protobuf's C++ ``TextFormat::Parse`` (``io/tokenizer.cc``, ``text_format.cc``),
which Caffe's ``ReadProtoFromTextFile`` calls: ``#`` comments; a minus sign is a token of its own
(``- 5`` is -5); integers in decimal, hex (``0x1F``) or octal (``017``, and ``08`` is refused); floats
with an optional ``f`` suffix, ``inf``/``infinity``/``nan`` in any case; strings in either quote with C,
``\\u`` and ``\\U`` escapes, adjacent literals joined, any bytes inside; ``{}`` or ``<>`` messages with an
optional ``:``; list syntax for repeated fields; ``,`` or ``;`` after a field; a singular field given
twice is refused, as is a message lacking a proto2 ``required`` field.

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
from .message import Message, bytes_string, first_missing_required, string_bytes
from .schema import FLOAT_TYPES, INT_TYPES, FieldSpec, MessageType, caffe_schema

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\f\v]+|\n)
  | (?P<comment>\#[^\n]*)
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[fF]?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<symbol>[{}<>:\[\],;-])
    """,
    re.VERBOSE,
)
# where a quoted string may stop: its quote, an escape or the end of the line (strings are scanned by
# _string_end, not by _TOKEN: a regex group repeated per character or escape keeps ~100-200 bytes of state
# per repetition, far more memory than the file for a long string)
_STRING_STOPS = {'"': re.compile(r'["\\\n]'), "'": re.compile(r"['\\\n]")}
_NUMBER_TAIL = re.compile(r"[\w.]+(?:[eE][-+]?[\w.]*)?")
_HEX = re.compile(r"0[xX][0-9a-fA-F]+")
_OCTAL = re.compile(r"0[0-7]*")
_FLOAT_WORDS = ("inf", "infinity", "nan")  # protobuf's ConsumeDouble, in any case
_BOM = "\ufeff"
_MAX_DEPTH = 100
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "a": "\a", "b": "\b", "f": "\f",
            "v": "\v", "?": "?"}
_HEX_DIGITS = re.compile(r"[0-9a-fA-F]{1,2}")
_OCTAL_DIGITS = re.compile(r"[0-7]{1,3}")
_UNICODE_ESCAPE = {"u": re.compile(r"[0-9a-fA-F]{4}"), "U": re.compile(r"00(?:0[0-9a-fA-F]|10)[0-9a-fA-F]{4}")}


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
            raise PrototxtSyntaxError(_unexpected(text[pos], pos), path=path, line=line, col=pos - line_start + 1)
        kind = m.lastgroup
        tok = m.group(0)
        if kind == "number":
            if m.end() < end and (text[m.end()].isalnum() or text[m.end()] in "_."):
                # "12x", "1e", "1.5.3": protobuf refuses a number glued to more characters
                bad = _NUMBER_TAIL.match(text, pos).group(0)
                raise PrototxtSyntaxError(f"bad number {bad!r}", path=path, line=line, col=pos - line_start + 1)
            if len(tok) > 1 and tok[0] == "0" and tok[1].isdigit() and not _OCTAL.fullmatch(tok):
                # protobuf's tokenizer: a leading zero makes an octal integer ("08", "01.5" are refused)
                raise PrototxtSyntaxError(f"bad number {tok!r}: a number with a leading zero is octal (digits 0-7, "
                                          "no fraction or exponent)", path=path, line=line, col=pos - line_start + 1)
        if kind == "ws":
            if tok == "\n":
                line += 1
                line_start = m.end()
        elif kind != "comment":
            yield _Token(kind, tok, line, pos - line_start + 1)  # type: ignore[arg-type]
        pos = m.end()
    yield _Token("eof", "", line, pos - line_start + 1)


def _unexpected(ch: str, pos: int) -> str:
    """The message for a character no token starts with."""
    if ch == _BOM and pos == 0:
        return ("unexpected character '\\ufeff': a UTF-8 byte order mark, which protobuf's text parser (and so "
                "Caffe) refuses too; save the file without it")
    if "\udc80" <= ch <= "\udcff":  # a byte that is not UTF-8, kept by the reader as a surrogate escape
        return f"unexpected byte 0x{ord(ch) - 0xDC00:02x} (outside strings and comments a prototxt is ASCII)"
    if ord(ch) > 127:
        return f"unexpected character {ch!r} (outside strings and comments a prototxt is ASCII)"
    return f"unexpected character {ch!r}"


def _unescape(raw: str, tok: _Token, path: str | None) -> bytes:
    """The bytes of a string literal, its escapes decoded as protobuf's ``ParseStringAppend`` does."""
    body = raw[1:-1]
    if "\\" not in body:
        return string_bytes(body)
    out = bytearray()
    i = 0
    n = len(body)
    while i < n:
        ch = body[i]
        if ch != "\\":
            stop = body.find("\\", i)
            stop = n if stop < 0 else stop
            out += string_bytes(body[i:stop])
            i = stop
            continue
        i += 1
        if i >= n:
            break
        esc = body[i]
        if esc in _ESCAPES:
            out += _ESCAPES[esc].encode()
            i += 1
        elif esc in "xX":
            digits = _HEX_DIGITS.match(body, i + 1)
            if not digits:
                raise PrototxtSyntaxError("bad \\x escape in string", path=path, line=tok.line, col=tok.col)
            out.append(int(digits.group(0), 16))
            i = digits.end()
        elif esc in "01234567":
            digits = _OCTAL_DIGITS.match(body, i)
            assert digits
            out.append(int(digits.group(0), 8) & 0xFF)  # "\\777" is one byte, as in protobuf
            i = digits.end()
        elif esc in _UNICODE_ESCAPE:
            digits = _UNICODE_ESCAPE[esc].match(body, i + 1)
            if not digits:
                what = "four hex digits" if esc == "u" else "eight hex digits up to 0010ffff"
                raise PrototxtSyntaxError(f"bad \\{esc} escape in string: expected {what}", path=path, line=tok.line,
                                          col=tok.col)
            code = int(digits.group(0), 16)
            i = digits.end()
            trail = _UNICODE_ESCAPE["u"].match(body, i + 2) if body.startswith("\\u", i) else None
            if 0xD800 <= code < 0xDC00 and trail and 0xDC00 <= int(trail.group(0), 16) < 0xE000:
                # a UTF-16 surrogate pair in two \\u escapes is one code point
                code = 0x10000 + ((code - 0xD800) << 10) + (int(trail.group(0), 16) - 0xDC00)
                i = trail.end()
            out += chr(code).encode("utf-8", "surrogatepass")  # a lone surrogate: its 3 bytes, as protobuf writes
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
        ftype = spec.type
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
            if tok.kind == "number" or self._is_minus(tok):
                number = self._signed_int(tok, spec, 2**31 - 1)
                name = spec.enum.name_of(number)
                if name is None:
                    raise self.error(f"{number} is not a value of {spec.enum.name}", tok)
                return name
            raise self.error(f"expected an enum name for '{spec.name}', found {tok.text!r}", tok)
        if ftype in ("string", "bytes"):
            if tok.kind != "string":
                raise self.error(f"expected a quoted string for '{spec.name}', found {tok.text!r}", tok)
            data = _unescape(tok.text, tok, self.path)
            while self.peek().kind == "string":  # adjacent literals concatenate
                nxt = self.next()
                data += _unescape(nxt.text, nxt, self.path)
            # proto2 strings are not checked for UTF-8 (Caffe reads any bytes): kept as they are
            return data if ftype == "bytes" else bytes_string(data)
        if ftype == "bool":
            if tok.kind == "number" and not _is_float_token(tok.text):
                # protobuf: an integer token for a bool is 0 or 1, in any base ("0x1", "00")
                value = _int_value(tok.text)
                if value in (0, 1):
                    return bool(value)
            elif tok.text in ("true", "True", "t"):
                return True
            elif tok.text in ("false", "False", "f"):
                return False
            raise self.error(f"expected true or false for '{spec.name}', found {tok.text!r}", tok)
        if ftype in INT_TYPES:
            bits = 64 if ftype.endswith("64") else 32
            if ftype.startswith("uint"):
                if self._is_minus(tok):
                    nxt = self.peek()
                    raise self.error(f"-{nxt.text} is out of range for '{spec.name}' ({ftype}): it cannot be negative",
                                     tok)
                value = self._unsigned_int(tok, spec)
                if value > 2**bits - 1:
                    raise self.error(f"{tok.text} is out of range for '{spec.name}' ({ftype})", tok)
                return value
            return self._signed_int(tok, spec, 2 ** (bits - 1) - 1)
        if ftype in FLOAT_TYPES:
            negative = self._is_minus(tok)
            minus = tok
            if negative:
                tok = self.next()
                if tok.kind not in ("number", "ident"):
                    raise self.error(f"unexpected character '-': a number must follow it for '{spec.name}', "
                                     f"found {tok.text!r}", minus)
            if tok.kind == "ident":
                low = tok.text.lower()
                if low not in _FLOAT_WORDS:
                    found = ("-" if negative else "") + tok.text
                    raise self.error(f"expected a number for '{spec.name}', found {found!r}", minus)
                value = math.nan if low == "nan" else math.inf
            elif tok.kind == "number":
                value = _float_value(tok.text)
            else:
                raise self.error(f"expected a number for '{spec.name}', found {tok.text!r}", tok)
            return -value if negative else value
        raise AssertionError(ftype)

    @staticmethod
    def _is_minus(tok: _Token) -> bool:
        return tok.kind == "symbol" and tok.text == "-"

    def _unsigned_int(self, tok: _Token, spec: FieldSpec) -> int:
        """An integer token (decimal, hex or octal) as protobuf's ConsumeUnsignedInteger reads it."""
        if tok.kind != "number" or _is_float_token(tok.text):
            raise self.error(f"expected an integer for '{spec.name}', found {tok.text!r}", tok)
        return _int_value(tok.text)

    def _signed_int(self, tok: _Token, spec: FieldSpec, max_value: int) -> int:
        """An optional minus token, then an integer token, as protobuf's ConsumeSignedInteger reads them
        (``tok`` is the first of them, already consumed); the range is [-max_value - 1, max_value]."""
        first = tok
        negative = self._is_minus(tok)
        if negative:
            tok = self.next()
            if tok.kind != "number":
                raise self.error(f"unexpected character '-': an integer must follow it for '{spec.name}', "
                                 f"found {tok.text!r}", first)
        value = self._unsigned_int(tok, spec)
        if value > max_value + (1 if negative else 0):
            text = ("-" if negative else "") + tok.text
            raise self.error(f"{text} is out of range for '{spec.name}' ({spec.type})", first)
        return -value if negative else value


def _is_float_token(text: str) -> bool:
    """Whether protobuf's tokenizer makes ``text`` (a number token) a float, not an integer."""
    if _HEX.fullmatch(text):
        return False
    return any(c in text for c in ".eEfF")


def _int_value(text: str) -> int:
    """An integer token's value: hex, octal (a leading zero) or decimal, as protobuf's ParseInteger."""
    if _HEX.fullmatch(text):
        return int(text, 16)
    if len(text) > 1 and text[0] == "0":
        return int(text, 8)
    return int(text)


def _float_value(text: str) -> float:
    """A number token's value for a float field. An integer token is read as an integer, hex and octal
    ones included (protobuf 3.0-3.x's ConsumeDouble; later releases refuse those two)."""
    if _is_float_token(text):
        return float(text.rstrip("fF"))  # strtod: out of range is inf
    if _HEX.fullmatch(text) or text[0] == "0":
        try:
            return float(_int_value(text))
        except OverflowError:
            return math.inf
    return float(text)


def parse_text(text: str, mtype: MessageType | str, path: str | Path | None = None) -> Message:
    """Parse protobuf text ``text`` as a message of type ``mtype`` (e.g. ``"NetParameter"``)."""
    if isinstance(mtype, str):
        mtype = caffe_schema()[mtype]
    parser = _Parser(text, str(path) if path is not None else None)
    msg = Message(mtype)
    object.__setattr__(msg, "_pos", (1, 1))
    parser.parse_message(msg, None, 0)
    missing = first_missing_required(msg, mtype.name)
    if missing is not None:
        # protobuf's TextFormat::Parse: "Message missing required fields: ..." (Caffe then refuses the file)
        owner, where, name = missing
        line, col = owner.pos or (None, None)
        raise PrototxtSyntaxError(
            f"{owner.type_name} lacks its required field '{name}' ({where}.{name}); protobuf refuses such a file",
            path=parser.path, line=line, col=col,
        )
    return msg


# --- writing ---------------------------------------------------------------------------------------
def _format_scalar(spec: FieldSpec, value: Any) -> str:
    if spec.kind == "enum":
        return str(value)
    if spec.type == "bool":
        return "true" if value else "false"
    if spec.type in ("string", "bytes"):
        data = string_bytes(value)
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
