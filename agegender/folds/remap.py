"""Point the data paths of a published train_val net at the files on this machine.

The Adience train_val files hold absolute paths of their authors' machines, e.g.
``/home/lapuschkin/Desktop/FaceRecognition/code/AgeGenderDeepLearning/lmdb/Test_fold_is_0/age_train_lmdb``
(``data_param.source``) and ``.../AgeGenderDeepLearning/mean_image/Test_fold_is_0/mean.binaryproto``
(``transform_param.mean_file``). :func:`remap_data_paths` rewrites them in a copy of the net.

Rules, applied to each path in this order (the first that applies wins):

1. ``mapping`` (``{old: new}``): a path equal to ``old``, or inside the folder ``old`` (``old`` followed
   by a separator), has that part replaced by ``new``; the longest matching ``old`` wins. The result
   is used as given (a relative result stays relative, as Caffe reads it from its working directory).
2. A root for the kind of path (``data_root`` for sources, ``mean_root`` for mean files; ``mean_root``
   defaults to ``data_root``): the path's trailing components are looked up under the root, longest
   first: for ``/a/b/lmdb/Test_fold_is_0/age_train_lmdb`` that is ``root/a/b/lmdb/Test_fold_is_0/
   age_train_lmdb``, ..., ``root/Test_fold_is_0/age_train_lmdb``, ``root/age_train_lmdb``. The first
   that exists is taken (so a root holding the authors' ``lmdb/Test_fold_is_K/...`` layout, or the
   fold's folder itself, both work; a relative path that exists under the root is taken whole). When
   none exists, the path becomes ``root`` joined with its last :data:`FALLBACK_COMPONENTS` components
   (the authors' layout, e.g. ``root/lmdb/Test_fold_is_0/age_train_lmdb``) and is reported missing.
3. Otherwise the path is kept, and only checked (a relative path against ``base_dir``, by default the
   working directory, as Caffe resolves it).

Separators ``/`` and ``\\`` both split components; ``.`` and empty components are dropped, and a suffix
holding ``..`` is never tried (it could leave the root).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, NamedTuple

from ..errors import MissingFileError
from ..prototxt.message import Message

log = logging.getLogger(__name__)

FALLBACK_COMPONENTS = 3
"""Trailing components kept when no candidate exists (``lmdb/Test_fold_is_0/age_train_lmdb``)."""

# (parameter message of a layer, field, kind): every path a data layer reads. The deprecated
# ``*_param.mean_file`` fields are here for nets that were not upgraded (Caffe moves them).
PATH_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("data_param", "source", "data"),
    ("image_data_param", "source", "data"),
    ("hdf5_data_param", "source", "data"),
    ("window_data_param", "source", "data"),
    ("transform_param", "mean_file", "mean"),
    ("data_param", "mean_file", "mean"),
    ("image_data_param", "mean_file", "mean"),
    ("window_data_param", "mean_file", "mean"),
)

_SEPARATORS = re.compile(r"[\\/]+")


@dataclass(frozen=True)
class PathChange:
    """One path of a data layer: where it pointed, where it points now, whether that exists.

    ``rule`` is ``"mapping"``, ``"root"`` (found under the root), ``"root-missing"`` (not found; the
    expected place under the root) or ``"kept"``. ``phases`` are the phases of the layer's include rules
    (empty: every phase). ``line`` is the field's line in the prototxt, when known.
    """

    layer: str
    field: str
    kind: str  # "data" | "mean"
    old: str
    new: str
    exists: bool
    rule: str
    phases: tuple[str, ...] = ()
    line: int | None = None

    @property
    def changed(self) -> bool:
        """True when the path was rewritten."""
        return self.new != self.old

    def describe(self) -> str:
        """One line: ``layer 'data' data_param.source: OLD -> NEW (missing)``."""
        phase = f" [{'/'.join(self.phases)}]" if self.phases else ""
        target = f"{self.old} -> {self.new}" if self.changed else f"{self.old} (kept)"
        return f"layer '{self.layer}'{phase} {self.field}: {target}{'' if self.exists else ' (missing)'}"


@dataclass(frozen=True)
class RemapReport:
    """What :func:`remap_data_paths` did: every data path of the net, changed or not."""

    changes: tuple[PathChange, ...]
    net_path: str | None = None

    @property
    def changed(self) -> tuple[PathChange, ...]:
        """The paths that were rewritten."""
        return tuple(c for c in self.changes if c.changed)

    @property
    def missing(self) -> tuple[PathChange, ...]:
        """The paths (rewritten or kept) that do not exist."""
        return tuple(c for c in self.changes if not c.exists)

    @property
    def ok(self) -> bool:
        """True when every data path exists."""
        return not self.missing

    def for_phase(self, phase: str) -> "RemapReport":
        """Only the paths of layers that a net of ``phase`` includes by their phase rules."""
        return RemapReport(tuple(c for c in self.changes if not c.phases or phase in c.phases), self.net_path)

    def describe(self) -> str:
        """Several lines: one per path, then a summary."""
        lines = [c.describe() for c in self.changes]
        lines.append(f"{len(self.changed)} of {len(self.changes)} data paths rewritten, {len(self.missing)} missing")
        return "\n".join(lines)

    def raise_if_missing(self) -> None:
        """Raise :class:`MissingFileError` naming the first missing path (and how many there are)."""
        if self.ok:
            return
        first = self.missing[0]
        more = f" ({len(self.missing)} missing paths in all)" if len(self.missing) > 1 else ""
        raise MissingFileError(
            f"{first.field} not found: {first.new}{more}", path=self.net_path, line=first.line, layer=first.layer,
            hint="give data_root/mean_root holding these files, or a mapping old -> new path",
        )


class RemapResult(NamedTuple):
    """The remapped copy of the net and the report: ``net, report = remap_data_paths(...)``."""

    net: Message
    report: RemapReport


def path_components(path: str) -> list[str]:
    """The components of a path written on any system: ``/a/b\\c/`` -> ``["a", "b", "c"]``."""
    return [part for part in _SEPARATORS.split(path) if part not in ("", ".")]


def locate_under_root(path: str, root: str | Path) -> tuple[Path, bool]:
    """Rule 2: the longest trailing part of ``path`` that exists under ``root``, as ``(path, True)``;
    ``(root / last FALLBACK_COMPONENTS components, False)`` when none does."""
    root = Path(root)
    parts = path_components(path)
    drive = re.compile(r"^[A-Za-z]:$")  # "C:" of a Windows path is not a folder under the root
    parts = parts[1:] if parts and drive.match(parts[0]) else parts
    for start in range(len(parts)):
        suffix = parts[start:]
        if ".." in suffix:
            continue
        candidate = root.joinpath(*suffix)
        if candidate.exists():
            return candidate, True
    fallback = [p for p in parts[-FALLBACK_COMPONENTS:] if p != ".."]
    return root.joinpath(*fallback), False


def _apply_mapping(path: str, mapping: Mapping[str, str | Path]) -> str | None:
    """Rule 1: ``path`` with its longest mapped prefix replaced, or None when no key matches."""
    best: tuple[int, str] | None = None
    for old, new in mapping.items():
        old_text = str(old).rstrip("/\\") or str(old)
        if path == old_text or path.rstrip("/\\") == old_text:
            rest = ""
        elif path.startswith(old_text) and path[len(old_text)] in "/\\":
            rest = path[len(old_text):].lstrip("/\\")
        else:
            continue
        if best is None or len(old_text) > best[0]:
            mapped = str(Path(new) / rest) if rest else str(new)
            best = (len(old_text), mapped)
    return None if best is None else best[1]


def remap_path(path: str, kind: str, *, data_root: str | Path | None = None, mean_root: str | Path | None = None,
               mapping: Mapping[str, str | Path] | None = None,
               base_dir: str | Path | None = None) -> tuple[str, bool, str]:
    """Where one ``path`` of ``kind`` ``"data"`` or ``"mean"`` points after the module's rules:
    ``(new path, exists, rule)``."""
    if kind not in ("data", "mean"):
        raise ValueError(f"kind must be 'data' or 'mean', not {kind!r}")
    mapped = _apply_mapping(path, mapping) if mapping else None
    if mapped is not None:
        return mapped, _exists(mapped, base_dir), "mapping"
    root = data_root if kind == "data" else (mean_root if mean_root is not None else data_root)
    if root is not None:
        found, exists = locate_under_root(path, root)
        return str(found), exists, "root" if exists else "root-missing"
    return path, _exists(path, base_dir), "kept"


def _exists(path: str, base_dir: str | Path | None) -> bool:
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = Path(base_dir if base_dir is not None else os.getcwd()) / candidate
    return candidate.exists()


def _layer_phases(layer: Message) -> tuple[str, ...]:
    return tuple(dict.fromkeys(rule.phase for rule in layer.include if rule.has("phase")))


def _data_paths(net: Message) -> Iterator[tuple[Message, Message, str, str, str]]:
    """(layer, parameter message, parameter name, field, kind) for every path field that is set."""
    for layer in list(net.layer) + list(net.layers):
        for param_name, field, kind in PATH_FIELDS:
            if not layer.has(param_name):
                continue
            param = getattr(layer, param_name)
            if param.has(field) and getattr(param, field):
                yield layer, param, param_name, field, kind


def remap_data_paths(net_param: Message, *, data_root: str | Path | None = None,
                     mean_root: str | Path | None = None, mapping: Mapping[str, str | Path] | None = None,
                     base_dir: str | Path | None = None, net_path: str | Path | None = None) -> RemapResult:
    """A copy of ``net_param`` (a NetParameter) with its data paths rewritten by the module's rules,
    and a :class:`RemapReport` of every data path: old, new, whether it exists.

    Paths: ``data_param``/``image_data_param``/``hdf5_data_param``/``window_data_param`` ``source`` (kind
    ``"data"``) and ``transform_param.mean_file`` (kind ``"mean"``; also the deprecated ``*_param.mean_file``).
    Nothing is raised for a missing path: check ``report.missing`` or call ``report.raise_if_missing()``.
    ``net_path`` names the prototxt in the report's errors.
    """
    net = net_param.copy()
    changes = []
    for layer, param, param_name, field, kind in _data_paths(net):
        old = str(getattr(param, field))
        new, exists, rule = remap_path(old, kind, data_root=data_root, mean_root=mean_root, mapping=mapping,
                                       base_dir=base_dir)
        if new != old:
            setattr(param, field, new)
        position = param.field_pos(field)
        changes.append(PathChange(
            layer=str(layer.name), field=f"{param_name}.{field}", kind=kind, old=old, new=new, exists=exists,
            rule=rule, phases=_layer_phases(layer), line=position[0] if position else None,
        ))
        if not exists:
            log.info("%s", changes[-1].describe())
    return RemapResult(net, RemapReport(tuple(changes), str(net_path) if net_path is not None else None))


__all__ = [
    "FALLBACK_COMPONENTS", "PATH_FIELDS", "PathChange", "RemapReport", "RemapResult", "locate_under_root",
    "path_components", "remap_data_paths", "remap_path",
]
