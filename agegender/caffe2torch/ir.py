"""The typed intermediate representation of a Caffe net: layers with their blobs, filtered by phase.

``build_ir`` applies Caffe's NetState rules (``include``/``exclude`` with phase, level and stages),
checks that every bottom is produced by an earlier layer, and records where each layer was defined
so that every later error can point at the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ..errors import NetDefinitionError
from ..prototxt.message import Message

Shape = tuple[int, ...]

PHASES = ("TRAIN", "TEST")
# Loss layers get an anonymous top when none is named (Caffe's AutoTopBlobs); it is not a net output
AUTO_TOP_TYPES = ("SoftmaxWithLoss", "EuclideanLoss", "SigmoidCrossEntropyLoss", "HingeLoss", "InfogainLoss",
                  "MultinomialLogisticLoss", "ContrastiveLoss")
AUTO_TOP_SUFFIX = "(automatic)"


@dataclass
class NetState:
    """Caffe's NetState: the phase a net is instantiated for, its level and stages."""

    phase: str = "TEST"
    level: int = 0
    stages: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"phase must be TRAIN or TEST, not {self.phase!r}")

    def meets(self, rule: Message) -> bool:
        """Caffe's StateMeetsRule."""
        if rule.has("phase") and rule.phase != self.phase:
            return False
        if rule.has("min_level") and self.level < rule.min_level:
            return False
        if rule.has("max_level") and self.level > rule.max_level:
            return False
        if any(stage not in self.stages for stage in rule.stage):
            return False
        if any(stage in self.stages for stage in rule.not_stage):
            return False
        return True

    def includes(self, layer: Message) -> bool:
        """Caffe's FilterNet decision for one layer."""
        if layer.include and layer.exclude:
            raise NetDefinitionError(
                "a layer may give include rules or exclude rules, not both", layer=layer.name or None
            )
        if layer.include:
            return any(self.meets(rule) for rule in layer.include)
        return not any(self.meets(rule) for rule in layer.exclude)


@dataclass
class LayerIR:
    """One layer of the net: Caffe's name, type, bottoms and tops, and its full parameters."""

    name: str
    type: str
    bottoms: list[str]
    tops: list[str]
    param: Message  # the (V2) LayerParameter
    index: int
    path: str | None = None
    line: int | None = None

    @property
    def in_place(self) -> bool:
        return bool(self.tops) and self.tops == self.bottoms[: len(self.tops)]

    def error(self, message: str, cls: type[NetDefinitionError] = NetDefinitionError, hint: str | None = None):
        """An error of class ``cls`` pointing at this layer's definition."""
        return cls(f"{self.type}: {message}", path=self.path, line=self.line, layer=self.name, hint=hint)


@dataclass
class NetIR:
    """A net for one NetState: its layers in execution order, input blobs and output blobs."""

    name: str
    layers: list[LayerIR]
    state: NetState
    path: str | None = None
    outputs: list[str] = field(default_factory=list)

    def layer(self, name: str) -> LayerIR:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)


def build_ir(net: Message, path: str | None = None, state: NetState | None = None) -> NetIR:
    """The IR of an upgraded (V2) NetParameter for ``state`` (default: the TEST phase)."""
    state = state or NetState()
    layers: list[LayerIR] = []
    available: set[str] = set()
    names: set[str] = set()
    for index, param in enumerate(net.layer):
        line = param.pos[0] if param.pos else None
        name = param.name or f"layer{index}"
        try:
            if not state.includes(param):
                continue
        except NetDefinitionError as exc:
            exc.path, exc.line = path, line
            raise
        if not param.type:
            raise NetDefinitionError("layer has no type", path=path, line=line, layer=name)
        if name in names:
            raise NetDefinitionError(
                "two layers share this name in the same phase; weights are matched by name", path=path,
                line=line, layer=name,
            )
        names.add(name)
        for bottom in param.bottom:
            if bottom not in available:
                known = ", ".join(sorted(available)) or "none"
                raise NetDefinitionError(
                    f"bottom blob '{bottom}' is not produced by any earlier layer (known blobs: {known})",
                    path=path, line=line, layer=name,
                )
        tops = list(param.top)
        if not tops and param.type in AUTO_TOP_TYPES:
            tops = [f"{name}{AUTO_TOP_SUFFIX}"]
        layer = LayerIR(name=name, type=param.type, bottoms=list(param.bottom), tops=tops,
                        param=param, index=index, path=path, line=line)
        layers.append(layer)
        for top in param.top:
            if top in param.bottom:
                continue  # in place: the blob keeps its name
            if top in available:
                raise NetDefinitionError(
                    f"top blob '{top}' is produced by an earlier layer too (only in-place reuse is allowed)",
                    path=path, line=line, layer=name,
                )
            available.add(top)
    # Caffe's net outputs: blobs still unconsumed after the last layer (Net::Init's available_blobs)
    remaining: dict[str, None] = {}
    for layer in layers:
        for bottom in layer.bottoms:
            remaining.pop(bottom, None)
        for top in layer.tops:
            if not top.endswith(AUTO_TOP_SUFFIX):
                remaining[top] = None
    outputs = list(remaining)
    return NetIR(name=net.name, layers=layers, state=state, path=path, outputs=outputs)


def input_blobs(ir: NetIR, input_types: Sequence[str]) -> list[str]:
    """Names of the blobs produced by input-like layers (Input, Data, ...), in order."""
    return [top for layer in ir.layers if layer.type in input_types for top in layer.tops]
