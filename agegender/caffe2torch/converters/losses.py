"""Accuracy and SoftmaxWithLoss, with Caffe's tie rule, ignore_label and normalization modes.

They appear in train_val nets; in a deploy net they are absent. Both take Caffe's float label blob.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..ir import LayerIR, Shape
from ..registry import Converted, register
from ._util import FLT_MIN, canonical_axis, check_bottoms, count

_LOG_FLT_MIN = math.log(FLT_MIN)  # a Python float: no tensor op (and no torch.compile graph break) per call


def _labels(layer: LayerIR, shapes: list[Shape], axis: int) -> None:
    outer, inner = count(shapes[0], 0, axis), count(shapes[0], axis + 1)
    if count(shapes[1]) != outer * inner:
        raise layer.error(
            f"label blob has {count(shapes[1])} values but the prediction {list(shapes[0])} needs "
            f"{outer * inner} (outer x inner around axis {axis})"
        )


class Accuracy(nn.Module):
    """Caffe's Accuracy (BVLC master): a label is a hit when fewer than ``top_k`` other classes score at
    least as high as it (``num_better_predictions`` counts ``>=``, the true class included, from -1), so a
    tie with the true class counts against it. The mean over the labels not ignored (0 if none); with
    ``per_class``, also each class's hit rate over its labels (0 for a class without labels)."""

    def __init__(self, axis: int, top_k: int, ignore_label: int | None, per_class: bool = False) -> None:
        super().__init__()
        self.axis, self.top_k, self.ignore_label, self.per_class = axis, top_k, ignore_label, per_class

    def extra_repr(self) -> str:
        return (f"axis={self.axis}, top_k={self.top_k}, ignore_label={self.ignore_label}"
                + (", per_class=True" if self.per_class else ""))

    def forward(self, scores: torch.Tensor, label: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        classes = scores.shape[self.axis]
        s = scores.movedim(self.axis, -1).reshape(-1, classes)
        lab = label.reshape(-1).long()
        valid = torch.ones_like(lab, dtype=torch.bool)
        if self.ignore_label is not None:
            valid = lab != self.ignore_label
        safe = torch.where(valid, lab, torch.zeros_like(lab)).clamp(0, classes - 1)
        true_score = s.gather(1, safe[:, None])
        better = (s >= true_score).sum(1) - 1  # the true class counts itself: Caffe starts at -1
        hit = (better < self.top_k) & valid
        n_valid = valid.sum()
        zero = torch.zeros((), dtype=s.dtype, device=s.device)
        accuracy = torch.where(n_valid > 0, hit.sum().to(s.dtype) / n_valid.clamp(min=1).to(s.dtype), zero)
        if not self.per_class:
            return accuracy
        per_label = torch.zeros(classes, dtype=s.dtype, device=s.device)
        counts = per_label.index_add(0, safe[valid], torch.ones_like(safe[valid], dtype=s.dtype))
        hits = per_label.index_add(0, safe[hit], torch.ones_like(safe[hit], dtype=s.dtype))
        return accuracy, torch.where(counts > 0, hits / counts.clamp(min=1), torch.zeros_like(hits))


@register("Accuracy")
def convert_accuracy(layer: LayerIR, shapes: list[Shape]) -> Converted:
    check_bottoms(layer, shapes, 2)
    p = layer.param.accuracy_param
    axis = canonical_axis(layer, int(p.axis), len(shapes[0]))
    _labels(layer, shapes, axis)
    if int(p.top_k) > shapes[0][axis]:
        raise layer.error(f"top_k {p.top_k} is larger than the number of classes {shapes[0][axis]}")
    if len(layer.tops) > 2:
        raise layer.error(f"has at most two tops (accuracy, per-class accuracy), got {len(layer.tops)}")
    ignore = int(p.ignore_label) if p.has("ignore_label") else None
    per_class = len(layer.tops) == 2
    out: list[Shape] = [()] + ([(shapes[0][axis],)] if per_class else [])
    return Converted(Accuracy(axis, int(p.top_k), ignore, per_class), out)


class SoftmaxWithLoss(nn.Module):
    """Caffe's SoftmaxWithLoss: ``-sum(log(max(p[label], FLT_MIN))) / normalizer``; its gradient is Caffe's
    ``(softmax - onehot(label)) / normalizer`` (the clamp does not stop it). With ``with_prob`` the
    second top, Caffe's softmax probabilities, comes after the loss."""

    def __init__(self, axis: int, ignore_label: int | None, normalization: str, with_prob: bool = False) -> None:
        super().__init__()
        self.axis, self.ignore_label, self.normalization = axis, ignore_label, normalization
        self.with_prob = with_prob

    def extra_repr(self) -> str:
        return (f"axis={self.axis}, ignore_label={self.ignore_label}, normalization={self.normalization}"
                + (", with_prob=True" if self.with_prob else ""))

    def forward(self, scores: torch.Tensor, label: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        loss = self._loss(scores, label)
        return (loss, torch.softmax(scores, dim=self.axis)) if self.with_prob else loss

    def _loss(self, scores: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        classes = scores.shape[self.axis]
        logp = torch.log_softmax(scores, dim=self.axis).movedim(self.axis, -1).reshape(-1, classes)
        lab = label.reshape(-1).long()
        valid = torch.ones_like(lab, dtype=torch.bool)
        if self.ignore_label is not None:
            valid = lab != self.ignore_label
        safe = torch.where(valid, lab, torch.zeros_like(lab))
        picked = logp.gather(1, safe[:, None])[:, 0]
        # forward: log(max(p, FLT_MIN)) as Caffe; backward: Caffe's (p - 1{label}), which ignores the clamp,
        # so a hopelessly wrong prediction still gets a gradient
        picked = picked + (picked.clamp(min=_LOG_FLT_MIN) - picked).detach()
        loss = -(picked * valid.to(picked.dtype)).sum()
        outer = scores.shape[: self.axis].numel()
        total = lab.numel()
        if self.normalization == "FULL":
            norm = torch.tensor(float(total))
        elif self.normalization == "VALID":
            norm = valid.sum().to(loss.dtype) if self.ignore_label is not None else torch.tensor(float(total))
        elif self.normalization == "BATCH_SIZE":
            norm = torch.tensor(float(outer))
        else:
            norm = torch.tensor(1.0)
        return loss / norm.to(loss.dtype).clamp(min=1.0)


@register("SoftmaxWithLoss")
def convert_softmax_with_loss(layer: LayerIR, shapes: list[Shape]) -> Converted:
    check_bottoms(layer, shapes, 2)
    axis = canonical_axis(layer, int(layer.param.softmax_param.axis), len(shapes[0]))
    _labels(layer, shapes, axis)
    # LossLayer::Reshape: "The data and label should have the same first dimension."
    if not shapes[1] or shapes[1][0] != shapes[0][0]:
        raise layer.error(f"the label blob {list(shapes[1])} and the scores {list(shapes[0])} must have the same "
                          "first dimension")
    lp = layer.param.loss_param
    if lp.has("normalization"):
        normalization = lp.normalization
    elif lp.has("normalize"):
        normalization = "VALID" if lp.normalize else "BATCH_SIZE"
    else:
        normalization = "VALID"
    ignore = int(lp.ignore_label) if lp.has("ignore_label") else None
    if len(layer.tops) > 2:
        raise layer.error(f"has at most two tops (loss, probabilities), got {len(layer.tops)}")
    with_prob = len(layer.tops) == 2
    out: list[Shape] = [()] + ([shapes[0]] if with_prob else [])
    return Converted(SoftmaxWithLoss(axis, ignore, normalization, with_prob), out)
