"""Caffe's file formats without Caffe: one schema (``caffe_schema.proto``), text and binary readers
and writers, and the V1 -> V2 upgrade."""

from .files import (
    CaffeWeights,
    LayerBlobs,
    array_to_blob,
    blob_to_array,
    read_blobproto,
    read_caffemodel,
    read_net,
    read_solver,
    read_text_message,
    write_blobproto,
    write_message_binary,
    write_prototxt,
)
from .message import Message
from .text_format import format_message, parse_text
from .upgrade import upgrade_net
from .wire import decode_message, encode_message

__all__ = [
    "CaffeWeights", "LayerBlobs", "Message", "array_to_blob", "blob_to_array", "decode_message",
    "encode_message", "format_message", "parse_text", "read_blobproto", "read_caffemodel", "read_net",
    "read_solver", "read_text_message", "upgrade_net", "write_blobproto", "write_message_binary",
    "write_prototxt",
]
