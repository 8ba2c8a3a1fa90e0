"""The one-call entry point: ``load(prototxt, caffemodel) -> CaffeNet``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

from ..prototxt.files import read_caffemodel, read_net
from .ir import NetState, build_ir
from .net import CaffeNet
from .weights import WeightsReport, load_weights

log = logging.getLogger(__name__)


def load(
    prototxt: str | Path,
    caffemodel: str | Path | None = None,
    *,
    phase: str = "TEST",
    stages: Sequence[str] = (),
    level: int = 0,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    allow_missing: bool = False,
    channels_last: bool = True,
) -> CaffeNet:
    """Read a Caffe net (deploy or train_val, V1 or V2) and its weights as a :class:`CaffeNet`.

    ``phase`` selects layers as Caffe's NetState does (TEST: dropout off, test data layer). Without a
    caffemodel the parameters are allocated but hold no values: fill them (e.g. ``init_seeded``) before
    use. A caffemodel must hold weights for every layer with parameters; ``allow_missing=True`` leaves the
    others uninitialised (for a new head to be filled before training) and logs a warning naming them.
    The :class:`WeightsReport` of the load is kept on ``net.weights_report``. ``channels_last``
    (the default) runs the net in the NHWC memory layout: the same values up to float rounding, and 1.1-2.6x
    faster on CPU (bench/RESULTS.md); 4-D blobs it returns are NHWC-strided tensors (use ``.reshape``, not
    ``.view``). Pass ``False`` for plain NCHW.
    """
    net_def = read_net(prototxt)
    ir = build_ir(net_def, str(prototxt), NetState(phase=phase, level=level, stages=tuple(stages)))
    net = CaffeNet(ir, input_shapes)
    net.net_def = net_def
    net.weights_report = None
    if caffemodel is not None:
        net.weights_report = load_weights(net, read_caffemodel(caffemodel), allow_missing=allow_missing)
        missing = net.weights_report.missing
        if missing:  # only with allow_missing: without it, load_weights refused them
            log.warning("%s: %d layer(s) of the net have NO WEIGHTS in the caffemodel and are left UNINITIALISED "
                        "(allow_missing=True; fill them before use): %s", caffemodel, len(missing), ", ".join(missing))
    if channels_last:
        net.to_channels_last()
    return net


__all__ = ["WeightsReport", "load"]
