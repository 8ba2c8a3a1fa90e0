"""One converter per Caffe layer type; importing this package registers them all."""

from . import common, elementwise, io, losses, normalization, shape_ops, vision  # noqa: F401
