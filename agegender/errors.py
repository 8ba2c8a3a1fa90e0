"""One error hierarchy for the whole toolkit.

Every error a user can meet is an :class:`AgegenderError`. Each carries where it happened (file, line
and column, layer, record) so the CLI can print one precise line and map the class to an exit code.
"""

from __future__ import annotations

from pathlib import Path


class AgegenderError(Exception):
    """Base class of every error the toolkit raises on purpose.

    ``path``, ``line``, ``col`` and ``layer`` say where; ``hint`` says what to do about it.
    """

    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        col: int | None = None,
        layer: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        self.col = col
        self.layer = layer
        self.hint = hint
        super().__init__(self.one_line())

    def __str__(self) -> str:
        # built on demand: code that adds the file or layer after raising (e.g. build_ir) changes it
        return self.one_line()

    def where(self) -> str:
        parts = []
        if self.path:
            loc = self.path
            if self.line is not None:
                loc += f":{self.line}"
                if self.col is not None:
                    loc += f":{self.col}"
            parts.append(loc)
        if self.layer:
            parts.append(f"layer '{self.layer}'")
        return ", ".join(parts)

    def one_line(self) -> str:
        where = self.where()
        text = f"{where}: {self.message}" if where else self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


class MissingFileError(AgegenderError):
    """A file the user named does not exist or cannot be read."""

    exit_code = 2


class FileFormatError(AgegenderError):
    """A file is not of the kind expected (e.g. a prototxt given where a caffemodel is wanted)."""

    exit_code = 3


class PrototxtSyntaxError(FileFormatError):
    """Malformed protobuf text: the position is the offending token."""


class UnknownFieldError(FileFormatError):
    """A field name that the message type does not have (Caffe refuses these too)."""


class CaffemodelError(FileFormatError):
    """A binary protobuf file (caffemodel, binaryproto, Datum) is truncated or corrupted."""


class NetDefinitionError(AgegenderError):
    """The net is well-formed text but not a valid net: missing bottom, bad parameters, bad shapes."""

    exit_code = 4


class UnsupportedLayerError(NetDefinitionError):
    """A layer type no converter is registered for."""


class WeightsMismatchError(AgegenderError):
    """A caffemodel does not fit the net: other layers, wrong blob shapes, missing weights."""

    exit_code = 5


class MeanFileError(AgegenderError):
    """A mean image of the wrong size or layout for the net's input."""

    exit_code = 5


class ParityError(AgegenderError):
    """Our module and a reference engine disagree beyond tolerance."""

    exit_code = 6


class ZooError(AgegenderError):
    """A model name the zoo does not know, or files of a zoo model that cannot be found or fetched."""

    exit_code = 7


class TrainingError(AgegenderError):
    """Training cannot start or cannot go on: an unsupported solver setting, a loss that became NaN or
    infinite, a checkpoint that does not belong to the run being resumed."""

    exit_code = 8
