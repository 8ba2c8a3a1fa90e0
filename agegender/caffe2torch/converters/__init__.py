"""One converter per Caffe layer type; importing this package registers them all."""

from . import common, io, losses, vision  # noqa: F401
