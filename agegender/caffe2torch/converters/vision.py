"""Convolution, Deconvolution, Pooling and LRN with Caffe's exact output sizes and arithmetic."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...prototxt.message import Message
from ..ir import LayerIR, Shape
from ..registry import Converted, register
from ._util import FLT_MIN, NetDefinitionError, check_blob_shape, check_bottoms, spatial_values

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_DECONV = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


def _uninitialised(module_cls: type[nn.Module], *args, **kwargs) -> nn.Module:
    """``module_cls(*args, **kwargs)`` with allocated but uninitialised parameters: the weights come from
    the caffemodel, so the (slow) default init is skipped. Built on the meta device, then given empty
    tensors (cheaper than ``skip_init``, whose ``to_empty`` pulls in torch's symbolic-shape machinery)."""
    module = module_cls(*args, device="meta", **kwargs)
    for name, param in list(module.named_parameters(recurse=False)):
        setattr(module, name, nn.Parameter(torch.empty(param.shape, dtype=param.dtype)))
    return module


def _conv_geometry(layer: LayerIR, shape: Shape) -> tuple[int, list[int], list[int], list[int], list[int], int, int]:
    p = layer.param.convolution_param
    if p.axis not in (1, -len(shape) + 1):
        raise layer.error("only axis: 1 (channels) is supported for convolution")
    n_spatial = len(shape) - 2
    if n_spatial not in _CONV:
        raise layer.error(f"needs a 3- to 5-axis input blob, got shape {list(shape)}")
    if not p.has("num_output") or p.num_output == 0:
        raise layer.error("convolution_param.num_output must be set and positive")
    kernel = spatial_values(layer, p, "kernel_size", n_spatial, None)
    pad = spatial_values(layer, p, "pad", n_spatial, 0)
    stride = spatial_values(layer, p, "stride", n_spatial, 1)
    dilation = spatial_values(layer, p, "dilation", n_spatial, 1)
    if any(k <= 0 for k in kernel) or any(s <= 0 for s in stride) or any(d <= 0 for d in dilation):
        raise layer.error(f"kernel {kernel}, stride {stride} and dilation {dilation} must be positive")
    group = int(p.group)
    channels = shape[1]
    if group <= 0 or channels % group or p.num_output % group:
        raise layer.error(
            f"group {group} must divide both the input channels ({channels}) and num_output ({p.num_output})"
        )
    try:  # the weight blob's size, before torch sees it
        check_blob_shape((int(p.num_output), channels // group, *kernel), "the weight blob")
    except NetDefinitionError as exc:
        raise layer.error(exc.message) from None
    return n_spatial, kernel, pad, stride, dilation, group, channels


@register("Convolution")
def convert_convolution(layer: LayerIR, shapes: list[Shape]) -> Converted:
    check_bottoms(layer, shapes, 1)
    shape = shapes[0]
    n_spatial, kernel, pad, stride, dilation, group, channels = _conv_geometry(layer, shape)
    p = layer.param.convolution_param
    out_spatial = []
    for size, k, pd, s, d in zip(shape[2:], kernel, pad, stride, dilation):
        extent = d * (k - 1) + 1
        out = (size + 2 * pd - extent) // s + 1
        if size + 2 * pd < extent:
            raise layer.error(f"kernel extent {extent} is larger than the padded input ({size} + 2*{pd})")
        out_spatial.append(out)
    module = _uninitialised(
        _CONV[n_spatial], channels, int(p.num_output), kernel, stride=stride, padding=pad, dilation=dilation,
        groups=group, bias=bool(p.bias_term),
    )
    blobs = ["weight", "bias"] if p.bias_term else ["weight"]
    return Converted(module, [(shape[0], int(p.num_output), *out_spatial)], blobs)


@register("Deconvolution")
def convert_deconvolution(layer: LayerIR, shapes: list[Shape]) -> Converted:
    check_bottoms(layer, shapes, 1)
    shape = shapes[0]
    n_spatial, kernel, pad, stride, dilation, group, channels = _conv_geometry(layer, shape)
    p = layer.param.convolution_param
    out_spatial = []
    for size, k, pd, s, d in zip(shape[2:], kernel, pad, stride, dilation):
        out = s * (size - 1) + d * (k - 1) + 1 - 2 * pd
        if out <= 0:
            raise layer.error(f"output size {out} is not positive")
        out_spatial.append(out)
    module = _uninitialised(
        _DECONV[n_spatial], channels, int(p.num_output), kernel, stride=stride, padding=pad, dilation=dilation,
        groups=group, bias=bool(p.bias_term),
    )
    blobs = ["weight", "bias"] if p.bias_term else ["weight"]
    return Converted(module, [(shape[0], int(p.num_output), *out_spatial)], blobs)


# --- pooling ----------------------------------------------------------------------------------------
def caffe_pooled_size(size: int, kernel: int, pad: int, stride: int, ceil: bool, any_pad: bool) -> int:
    """Caffe's PoolingLayer::Reshape output size along one axis.

    CEIL (every Caffe before 2018, and the default since): ``ceil((size + 2*pad - kernel) / stride) + 1``,
    then, if the layer has any padding, a last window that would start inside the right padding is
    dropped. FLOOR rounds down instead.
    """
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    if any_pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _torch_pooled_size(size: int, kernel: int, pad: int, stride: int, ceil: bool) -> int:
    """PyTorch's pooling_output_shape, to know when its native ops give Caffe's windows."""
    span = size + 2 * pad - kernel + ((stride - 1) if ceil else 0)
    out = span // stride + 1
    if ceil and (out - 1) * stride >= size + pad:
        out -= 1
    return out


class CaffePooling(nn.Module):
    """2-D MAX, AVE or STOCHASTIC (test-time) pooling with Caffe's window placement.

    The geometry is worked out per input size, as Caffe's Reshape does. The native PyTorch op is used
    when its windows and divisors equal Caffe's (the usual case); other cases (padding over half the
    kernel, a last window starting past the input) use an explicit padded form that reproduces Caffe
    exactly: MAX ignores padding, AVE divides by the window clipped to the padded input (Caffe's
    ``pool_size``), STOCHASTIC at test time is the activation-weighted mean sum(x^2) / (FLT_MIN + sum(x))
    (Caffe's StoPoolForwardTest starts its sum at FLT_MIN: a window of zeros, or one past the input, gives 0).
    """

    def __init__(self, method: str, kernel: tuple[int, int] | None, stride: tuple[int, int],
                 pad: tuple[int, int], ceil: bool = True) -> None:
        super().__init__()
        self.method = method
        self.kernel = kernel  # None: global pooling over the whole input
        self.stride, self.pad, self.ceil = stride, pad, ceil

    def extra_repr(self) -> str:
        kernel = "global" if self.kernel is None else self.kernel
        return f"{self.method}, kernel={kernel}, stride={self.stride}, pad={self.pad}, ceil={self.ceil}"

    def geometry(self, in_size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """(kernel, output size) for an input of spatial size ``in_size``."""
        kernel = in_size if self.kernel is None else self.kernel
        any_pad = self.pad != (0, 0)
        out = tuple(
            caffe_pooled_size(i, k, p, s, self.ceil, any_pad)
            for i, k, p, s in zip(in_size, kernel, self.pad, self.stride)
        )
        return kernel, out  # type: ignore[return-value]

    def _native(self, in_size: tuple[int, int], kernel: tuple[int, int], out: tuple[int, int]) -> bool:
        if self.method not in ("MAX", "AVE") or any(p > k // 2 for p, k in zip(self.pad, kernel)):
            return False
        return all(
            _torch_pooled_size(i, k, p, s, self.ceil) == o
            for i, k, p, s, o in zip(in_size, kernel, self.pad, self.stride, out)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_size = (int(x.shape[-2]), int(x.shape[-1]))
        kernel, (oh, ow) = self.geometry(in_size)
        if self._native(in_size, kernel, (oh, ow)):
            if self.method == "MAX":
                return F.max_pool2d(x, kernel, self.stride, self.pad, ceil_mode=self.ceil)
            return F.avg_pool2d(x, kernel, self.stride, self.pad, ceil_mode=self.ceil, count_include_pad=True)
        pads = []
        for axis, out_len in ((1, ow), (0, oh)):  # F.pad takes the last axis first
            need = (out_len - 1) * self.stride[axis] + kernel[axis]
            pads += [self.pad[axis], max(need - in_size[axis] - self.pad[axis], 0)]

        def window_sum(t: torch.Tensor) -> torch.Tensor:
            return F.avg_pool2d(F.pad(t, pads), kernel, self.stride, divisor_override=1)[..., :oh, :ow]

        if self.method == "MAX":
            lowest = torch.finfo(x.dtype).min  # Caffe starts each window at -FLT_MAX
            return F.max_pool2d(F.pad(x, pads, value=lowest), kernel, self.stride)[..., :oh, :ow]
        if self.method == "AVE":
            sizes = []
            for axis, out_len in ((0, oh), (1, ow)):
                starts = torch.arange(out_len, device=x.device) * self.stride[axis] - self.pad[axis]
                ends = torch.clamp(starts + kernel[axis], max=in_size[axis] + self.pad[axis])
                sizes.append((ends - starts).to(x.dtype))
            return window_sum(x) / (sizes[0][:, None] * sizes[1][None, :])
        return window_sum(x * x) / (window_sum(x) + FLT_MIN)


def _pool_pair(layer: LayerIR, p: Message, name: str) -> tuple[int, int]:
    """Pooling's ``pad``/``stride``: one value, or ``name_h`` and ``name_w`` together (PoolingLayer's
    LayerSetUp CHECKs "pad is pad OR pad_h and pad_w are required", and the same for stride)."""
    h_name, w_name = f"{name}_h", f"{name}_w"
    if p.has(h_name) or p.has(w_name):
        if p.has(name) or not (p.has(h_name) and p.has(w_name)):
            raise layer.error(f"give either {name} or both {h_name} and {w_name}")
        return int(getattr(p, h_name)), int(getattr(p, w_name))
    return int(getattr(p, name)), int(getattr(p, name))


@register("Pooling")
def convert_pooling(layer: LayerIR, shapes: list[Shape]) -> Converted:
    check_bottoms(layer, shapes, 1)
    shape = shapes[0]
    p = layer.param.pooling_param
    if len(shape) != 4:
        raise layer.error(f"pooling needs a 4-axis (N, C, H, W) input, got shape {list(shape)}")
    height, width = shape[2], shape[3]
    if p.global_pooling:
        if p.has("kernel_size") or p.has("kernel_h") or p.has("kernel_w"):
            raise layer.error("global_pooling takes no kernel size")
        kernel = (height, width)
    elif p.has("kernel_h") or p.has("kernel_w"):
        if not (p.has("kernel_h") and p.has("kernel_w")):
            raise layer.error("kernel_h and kernel_w must be given together")
        if p.has("kernel_size"):
            raise layer.error("give either kernel_size or kernel_h/kernel_w, not both")
        kernel = (int(p.kernel_h), int(p.kernel_w))
    elif p.has("kernel_size"):
        kernel = (int(p.kernel_size), int(p.kernel_size))
    else:
        raise layer.error("pooling_param needs kernel_size (or kernel_h/kernel_w, or global_pooling)")
    pad = _pool_pair(layer, p, "pad")
    stride = _pool_pair(layer, p, "stride")
    if p.global_pooling and (pad != (0, 0) or stride != (1, 1)):
        raise layer.error("global pooling needs pad 0 and stride 1")
    if min(kernel) <= 0 or min(stride) <= 0:
        raise layer.error(f"kernel {kernel} and stride {stride} must be positive")
    if any(pd >= k for pd, k in zip(pad, kernel)):
        raise layer.error(f"pad {pad} must be smaller than the kernel {kernel} (Caffe checks this too)")
    if pad != (0, 0) and p.pool == "STOCHASTIC":
        raise layer.error(f"pad {pad}: Caffe implements padding only for MAX and AVE pooling")
    ceil = p.round_mode == "CEIL" and p.ceil_mode
    module = CaffePooling(p.pool, None if p.global_pooling else kernel, stride, pad, ceil)
    _, out = module.geometry((height, width))
    if min(out) <= 0:
        raise layer.error(f"output would be empty: kernel {kernel} on a {height}x{width} input")
    return Converted(module, [(shape[0], shape[1], out[0], out[1])])


# --- local response normalization -----------------------------------------------------------------------
class LRNWithinChannel(nn.Module):
    """Caffe's WITHIN_CHANNEL LRN: ``x * (1 + alpha * mean_{n x n}(x^2)) ** -beta``.

    Caffe builds it from layers (square, AVE pooling with pad (n-1)/2, power with shift 1): the mean is
    over the zero-padded n x n window, and ``k`` is not used (the shift is always 1).
    """

    def __init__(self, size: int, alpha: float, beta: float) -> None:
        super().__init__()
        self.size, self.alpha, self.beta = size, alpha, beta

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = (self.size - 1) // 2
        mean_sq = F.avg_pool2d(x * x, self.size, stride=1, padding=pad, ceil_mode=True, count_include_pad=True)
        return x * torch.pow(1.0 + self.alpha * mean_sq, -self.beta)


class CaffeLRN(nn.LocalResponseNorm):
    """Caffe's ACROSS_CHANNELS LRN: ``x * (k + alpha/n * sum_{window} x^2) ** -beta``, the channel window
    zero-padded. The same function as ``nn.LocalResponseNorm`` (it stays one, for exporters), computed
    with shifted adds over channels: about 3x faster than torch's avg_pool3d formulation on CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        square = x * x
        window = square.clone()
        for shift in range(1, (self.size - 1) // 2 + 1):
            window[:, shift:] += square[:, :-shift]
            window[:, :-shift] += square[:, shift:]
        return x * torch.pow(window * (self.alpha / self.size) + self.k, -self.beta)


@register("LRN")
def convert_lrn(layer: LayerIR, shapes: list[Shape]) -> Converted:
    check_bottoms(layer, shapes, 1)
    shape = shapes[0]
    p = layer.param.lrn_param
    size = int(p.local_size)
    if size % 2 == 0 or size <= 0:
        raise layer.error(f"local_size must be odd and positive, got {size}")
    if len(shape) != 4:
        raise layer.error(f"LRN needs a 4-axis input, got shape {list(shape)}")
    if p.norm_region == "ACROSS_CHANNELS":
        module: nn.Module = CaffeLRN(size, alpha=float(p.alpha), beta=float(p.beta), k=float(p.k))
    else:
        module = LRNWithinChannel(size, float(p.alpha), float(p.beta))
    return Converted(module, [shape])

