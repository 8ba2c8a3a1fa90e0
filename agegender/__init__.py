"""agegender: the Adience age and gender Caffe networks in PyTorch, without Caffe."""

__version__ = "0.1.0"
