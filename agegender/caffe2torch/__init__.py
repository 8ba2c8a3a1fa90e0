"""Caffe nets as PyTorch modules: the IR, one converter per layer type, ``CaffeNet``, weights, parity.

Typical use::

    from agegender import caffe2torch
    net = caffe2torch.load("deploy.prototxt", "age_net.caffemodel")
    probs = net(torch.from_numpy(batch))            # the net's output blob
    blobs = net(batch_t, outputs=["conv1", "fc8"])  # any blobs, as Caffe names them
"""

from .api import load
from .ir import LayerIR, NetIR, NetState, build_ir
from .net import CaffeNet, LayerInfo, build_net
from .registry import Converted, register, supported_types
from .weights import WeightsReport, init_seeded, load_weights, save_caffemodel, weights_message

__all__ = [
    "CaffeNet", "Converted", "LayerIR", "LayerInfo", "NetIR", "NetState", "WeightsReport", "build_ir", "build_net",
    "init_seeded", "load", "load_weights", "register", "save_caffemodel", "supported_types", "weights_message",
]
