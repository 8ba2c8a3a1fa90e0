"""Export a :class:`CaffeNet` as standalone PyTorch source: one readable ``.py`` that imports only torch,
plus its weights (``torch.save`` of the module's ``state_dict``, a ``.pt`` beside it).

::

    from agegender.caffe2torch.export_python import export_python

    report = export_python(net, "out/age_net.py")      # writes out/age_net.py and out/age_net.pt
    # elsewhere, without agegender:
    import age_net
    model = age_net.load()                              # eval mode, weights from age_net.pt
    prob = model(batch)

The generated class has one attribute per Caffe layer that holds state or has a torch module
(``self.conv1 = nn.Conv2d(...)``, ``self.pool1 = nn.MaxPool2d(...)``); layers without one (Concat,
Eltwise, Split) are one line of ``forward`` under a comment naming the Caffe layer. Caffe's names are
sanitised to identifiers (``inception_3a/1x1`` -> ``inception_3a_1x1``); the file lists the mapping
(``LAYER_NAMES``, ``BLOB_NAMES``). ``forward`` runs the layers in Caffe's order, one line each, blobs as
local variables, in-place layers rebinding their blob as Caffe overwrites it.

Pooling keeps Caffe's windows by writing, per layer, the code path :class:`CaffePooling` takes for the
net's declared input size: ``nn.MaxPool2d``/``nn.AvgPool2d`` with ``ceil_mode`` where PyTorch's windows
and divisors are Caffe's, otherwise a small ``CaffePaddedPool`` helper (explicit padding, Caffe's divisor
map). The module therefore checks that its inputs have the declared shape (any batch size).

The export is verified before anything is written: the source is executed, the weights loaded with
``strict=True`` and the module compared with ``net`` on seeded inputs at batch 1 and 7; they must agree
to :data:`PYTHON_TOLERANCE` (in practice they are equal: the same torch ops run).
"""

from __future__ import annotations

import io
import keyword
import math
import re
import textwrap
import time
import types
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .. import __version__
from .._atomic import atomic_write
from ..errors import AgegenderError, ParityError, UnsupportedLayerError
from .converters.common import Concat, InnerProduct, Split
from .converters.elementwise import Eltwise, Exp, Neuron, PReLU
from .converters.normalization import CaffeBatchNorm, CaffeBias, CaffeScale
from .converters.shape_ops import Flatten
from .converters.vision import CaffePooling, LRNWithinChannel
from .export_onnx import _check_path
from .net import CaffeNet, LayerInfo
from .parity import ParityReport, seeded_inputs

PYTHON_TOLERANCE = 1e-6  # max |Δ| / max |ref| per output
VERIFY_BATCHES = (1, 7)

# names the generated code uses itself: a blob or layer must not shadow them
_RESERVED = {"self", "torch", "nn", "F", "os", "load", "_check_shape"}


# --- names ----------------------------------------------------------------------------------------------------
def python_identifier(name: str, taken: set[str], reserved: set[str] = frozenset()) -> str:  # type: ignore[assignment]
    """``name`` as a Python identifier: other characters become ``_``, a leading digit or a keyword gets
    ``_``, and clashes (with ``taken`` or ``reserved``) get ``_2``, ``_3``..."""
    ident = re.sub(r"\W", "_", name, flags=re.ASCII) or "_"
    if ident[0].isdigit():
        ident = "_" + ident
    if keyword.iskeyword(ident) or keyword.issoftkeyword(ident) or ident in reserved:
        ident += "_"
    base, i = ident, 2
    while ident in taken:
        ident = f"{base}_{i}"
        i += 1
    taken.add(ident)
    return ident


def _class_name(net_name: str) -> str:
    words = re.findall(r"[A-Za-z0-9]+", net_name)
    name = "".join(w[:1].upper() + w[1:] for w in words) or "CaffeModel"
    name = name if not name[0].isdigit() else "Net" + name
    return name + "Net" if name in _HELPERS or name in _RESERVED else name


# --- helpers written into the file when a layer needs them ------------------------------------------------------
_HELPERS = {
    "CaffePaddedPool": '''
class CaffePaddedPool(nn.Module):
    """Caffe pooling where PyTorch's own pooling would give other windows: the input is padded to exactly
    Caffe's windows (MAX with the lowest float: Caffe ignores padding; AVE with zeros, each window then
    divided by its size clipped to the padded input, as Caffe does; STOCHASTIC at test time is
    sum(x^2) / (FLT_MIN + sum(x)) over the window, 0 for a window of zeros)."""

    def __init__(self, method, kernel, stride, pads, out_size, rows=None, cols=None):
        super().__init__()
        self.method, self.kernel, self.stride, self.pads, self.out_size = method, kernel, stride, pads, out_size
        if rows is not None:
            rows, cols = torch.tensor(rows, dtype=torch.float32), torch.tensor(cols, dtype=torch.float32)
            divisor = rows[:, None] * cols[None, :]
            self.register_buffer("divisor", divisor, persistent=False)

    def extra_repr(self):
        return f"{self.method}, kernel={self.kernel}, stride={self.stride}, pads={self.pads}, out={self.out_size}"

    def _window_sum(self, x):
        return F.avg_pool2d(F.pad(x, self.pads), self.kernel, self.stride, divisor_override=1)

    def forward(self, x):
        oh, ow = self.out_size
        if self.method == "MAX":
            x = F.pad(x, self.pads, value=torch.finfo(x.dtype).min)
            return F.max_pool2d(x, self.kernel, self.stride)[..., :oh, :ow]
        if self.method == "AVE":
            return self._window_sum(x)[..., :oh, :ow] / self.divisor.to(x.dtype)
        flt_min = torch.finfo(torch.float32).tiny
        return self._window_sum(x * x)[..., :oh, :ow] / (self._window_sum(x)[..., :oh, :ow] + flt_min)
''',
    "LRNWithinChannel": '''
class LRNWithinChannel(nn.Module):
    """Caffe's WITHIN_CHANNEL LRN: x * (1 + alpha * mean of x^2 over the zero-padded size x size window) ** -beta."""

    def __init__(self, size, alpha, beta):
        super().__init__()
        self.size, self.alpha, self.beta = size, alpha, beta

    def forward(self, x):
        pad = (self.size - 1) // 2
        mean_sq = F.avg_pool2d(x * x, self.size, stride=1, padding=pad, ceil_mode=True, count_include_pad=True)
        return x * torch.pow(1.0 + self.alpha * mean_sq, -self.beta)
''',
    "CaffeLRN": '''
class CaffeLRN(nn.LocalResponseNorm):
    """Caffe's ACROSS_CHANNELS LRN: x * (k + alpha/size * sum of x^2 over the zero-padded channel window) ** -beta,
    the window sum as shifted adds over channels (the same function as nn.LocalResponseNorm)."""

    def forward(self, x):
        square = x * x
        window = square.clone()
        for shift in range(1, (self.size - 1) // 2 + 1):
            window[:, shift:] += square[:, :-shift]
            window[:, :-shift] += square[:, shift:]
        return x * torch.pow(window * (self.alpha / self.size) + self.k, -self.beta)
''',
    "CaffeBatchNorm": '''
class CaffeBatchNorm(nn.Module):
    """Caffe's BatchNorm with its stored statistics: (x - mean/s) / sqrt(var/s + eps), s = scale_factor
    (0 gives 0). No affine part: Caffe's following Scale layer holds it."""

    def __init__(self, channels, eps):
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("variance", torch.ones(channels))
        self.register_buffer("scale_factor", torch.ones(1))

    def forward(self, x):
        factor = self.scale_factor[0]
        inv = torch.where(factor == 0, torch.zeros_like(factor), 1.0 / factor)
        trailing = (None,) * max(x.dim() - 2, 0)
        mean, var = (self.mean * inv)[(...,) + trailing], (self.variance * inv)[(...,) + trailing]
        return (x - mean) / torch.sqrt(var + self.eps)
''',
    "CaffeScale": '''
class CaffeScale(nn.Module):
    """Caffe's Scale (and Bias) with learned blobs spanning some axes of x: x * weight (+ bias), the
    blobs followed by `trailing` size-1 axes so that they broadcast from their axis."""

    def __init__(self, weight_shape, bias_shape, trailing):
        super().__init__()
        self.trailing = trailing
        self.weight = nn.Parameter(torch.ones(weight_shape or (1,))) if weight_shape is not None else None
        self.bias = nn.Parameter(torch.zeros(bias_shape or (1,))) if bias_shape is not None else None
        self.weight_scalar, self.bias_scalar = weight_shape == (), bias_shape == ()

    def _expand(self, t, scalar):
        return t if scalar or not self.trailing else t[(...,) + (None,) * self.trailing]

    def forward(self, x):
        if self.weight is not None:
            x = x * self._expand(self.weight, self.weight_scalar)
        if self.bias is not None:
            x = x + self._expand(self.bias, self.bias_scalar)
        return x
''',
}


# --- per-layer emitters ---------------------------------------------------------------------------------------
@dataclass
class _Emitted:
    """What one layer contributes: a constructor line (or None), a forward expression, state tensors."""

    init: str | None
    call: str  # an expression of the bottom variables ({0}, {1}...) and {attr}
    state: dict[str, torch.Tensor] = field(default_factory=dict)  # key relative to the attribute
    helper: str | None = None
    note: str = ""


def _dict_source(mapping: dict) -> str:
    if not mapping:
        return "{}"
    return "{\n" + "".join(f"    {k!r}: {v!r},\n" for k, v in mapping.items()) + "}"


def _tuple(values) -> str:
    values = tuple(int(v) for v in values)
    return repr(values)


def _float(value: float) -> str:
    return repr(float(value))


def _number(value: float) -> str:
    """A float literal for generated code, inf and NaN included (``repr`` gives the bare names)."""
    value = float(value)
    return repr(value) if math.isfinite(value) else f"float({str(value)!r})"


def _emit(info: LayerInfo, module: nn.Module, net: CaffeNet) -> _Emitted:
    """The code of one layer; :class:`UnsupportedLayerError` for types the Python export does not write."""
    params = {name: t.detach().cpu().clone().contiguous() for name, t in module.named_parameters(recurse=False)}
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                           nn.ConvTranspose3d)):
        cls = type(module).__name__
        extra = f", output_padding={_tuple(module.output_padding)}" if "Transpose" in cls and any(
            module.output_padding) else ""
        init = (f"nn.{cls}({module.in_channels}, {module.out_channels}, kernel_size={_tuple(module.kernel_size)}, "
                f"stride={_tuple(module.stride)}, padding={_tuple(module.padding)}, "
                f"dilation={_tuple(module.dilation)}, groups={module.groups}, bias={module.bias is not None}{extra})")
        return _Emitted(init, "self.{attr}({0})", params)
    if isinstance(module, InnerProduct):
        weight = params["weight"].t().contiguous() if module.transpose else params["weight"]
        state = {"weight": weight}
        if module.bias is not None:
            state["bias"] = params["bias"]
        init = f"nn.Linear({module.in_features}, {module.out_features}, bias={module.bias is not None})"
        note = " (Caffe stores this weight transposed)" if module.transpose else ""
        bottom_dims = len(net.blob_shapes[info.bottoms[0]])
        flatten = bottom_dims > module.axis + 1
        call = "self.{attr}(torch.flatten({0}, %d))" % module.axis if flatten else "self.{attr}({0})"
        return _Emitted(init, call, state, note=note)
    if isinstance(module, CaffePooling):
        in_shape = net.blob_shapes[info.bottoms[0]]
        in_size = (int(in_shape[2]), int(in_shape[3]))
        kernel, out = module.geometry(in_size)
        kernel = (int(kernel[0]), int(kernel[1]))
        if module._native(in_size, kernel, out):
            if module.method == "MAX":
                init = (f"nn.MaxPool2d({_tuple(kernel)}, stride={_tuple(module.stride)}, "
                        f"padding={_tuple(module.pad)}, ceil_mode={module.ceil})")
            else:
                init = (f"nn.AvgPool2d({_tuple(kernel)}, stride={_tuple(module.stride)}, padding={_tuple(module.pad)}, "
                        f"ceil_mode={module.ceil}, count_include_pad=True)")
            return _Emitted(init, "self.{attr}({0})", note=f" -> {out[0]}x{out[1]}")
        pads = []
        for axis in (1, 0):
            need = (out[axis] - 1) * module.stride[axis] + kernel[axis]
            pads += [module.pad[axis], max(need - in_size[axis] - module.pad[axis], 0)]
        rows_cols = ""
        if module.method == "AVE":
            sizes = []
            for axis in (0, 1):
                starts = [o * module.stride[axis] - module.pad[axis] for o in range(out[axis])]
                sizes.append([min(s + kernel[axis], in_size[axis] + module.pad[axis]) - s for s in starts])
            rows_cols = f", rows={sizes[0]!r}, cols={sizes[1]!r}"
        init = (f"CaffePaddedPool({module.method!r}, {_tuple(kernel)}, {_tuple(module.stride)}, {list(pads)!r}, "
                f"{_tuple(out)}{rows_cols})")
        return _Emitted(init, "self.{attr}({0})", helper="CaffePaddedPool", note=f" -> {out[0]}x{out[1]}")
    if isinstance(module, nn.LocalResponseNorm):
        # the converter's own formulation (torch's, or CaffeLRN's shifted adds), so that the sums round alike
        cls = "nn.LocalResponseNorm" if type(module) is nn.LocalResponseNorm else "CaffeLRN"
        init = f"{cls}({module.size}, alpha={_float(module.alpha)}, beta={_float(module.beta)}, k={_float(module.k)})"
        return _Emitted(init, "self.{attr}({0})", helper=None if cls.startswith("nn.") else "CaffeLRN")
    if isinstance(module, LRNWithinChannel):
        init = f"LRNWithinChannel({module.size}, {_float(module.alpha)}, {_float(module.beta)})"
        return _Emitted(init, "self.{attr}({0})", helper="LRNWithinChannel")
    if isinstance(module, nn.LeakyReLU):
        return _Emitted(f"nn.LeakyReLU({_float(module.negative_slope)})", "self.{attr}({0})")
    simple = {nn.ReLU: "nn.ReLU()", nn.Sigmoid: "nn.Sigmoid()", nn.Tanh: "nn.Tanh()"}
    if type(module) in simple:
        return _Emitted(simple[type(module)], "self.{attr}({0})")
    if isinstance(module, nn.ELU):
        return _Emitted(f"nn.ELU(alpha={_float(module.alpha)})", "self.{attr}({0})")
    if isinstance(module, nn.Dropout):
        return _Emitted(f"nn.Dropout(p={_float(module.p)})", "self.{attr}({0})", note=" (identity in eval mode)")
    if isinstance(module, nn.Softmax):
        return _Emitted(f"nn.Softmax(dim={module.dim})", "self.{attr}({0})")
    if isinstance(module, Flatten):
        return _Emitted(f"nn.Flatten({module.axis}, {module.end_axis})", "self.{attr}({0})")
    if isinstance(module, PReLU):
        return _Emitted(f"nn.PReLU({module.weight.numel()})", "self.{attr}({0})", {"weight": params["weight"]})
    if isinstance(module, Exp):
        expr = "torch.exp({0})" if module.inner_scale == 1.0 else "torch.exp({0} * %s)" % _number(module.inner_scale)
        return _Emitted(None, expr if module.outer_scale == 1.0 else "%s * %s" % (expr, _number(module.outer_scale)))
    if isinstance(module, Neuron) and module.name == "AbsVal":
        return _Emitted(None, "torch.abs({0})")
    if isinstance(module, Concat):
        return _Emitted(None, "torch.cat([{all}], dim=%d)" % module.axis)
    if isinstance(module, Split):
        return _Emitted(None, "{0}")
    if isinstance(module, Eltwise):
        n = len(info.bottoms)
        if module.operation == "SUM":
            terms = [("{%d}" % i) if c == 1.0 else ("{%d} * %r" % (i, c)) for i, c in enumerate(module.coeffs)]
            return _Emitted(None, " + ".join(terms) if n > 1 else terms[0])
        if module.operation == "PROD":
            return _Emitted(None, " * ".join("{%d}" % i for i in range(n)))
        expr = "{0}"
        for i in range(1, n):
            expr = "torch.maximum(%s, {%d})" % (expr, i)
        return _Emitted(None, expr)
    if isinstance(module, CaffeBatchNorm):
        if module.use_global_stats is False:
            raise UnsupportedLayerError(
                "BatchNorm with use_global_stats: false (batch statistics) cannot be exported to Python source",
                path=net.ir.path, line=info.line, layer=info.name)
        state = {k: getattr(module, k).detach().cpu().clone() for k in ("mean", "variance", "scale_factor")}
        return _Emitted(f"CaffeBatchNorm({module.channels}, {_float(module.eps)})", "self.{attr}({0})", state,
                        helper="CaffeBatchNorm", note=" (stored statistics)")
    if isinstance(module, (CaffeScale, CaffeBias)) and len(info.bottoms) == 1:
        weight = getattr(module, "weight", None)
        bias = module.bias
        weight_scalar = getattr(module, "weight_scalar", False)
        weight_shape = None if weight is None else (() if weight_scalar else tuple(weight.shape))
        bias_shape = None if bias is None else (() if module.bias_scalar else tuple(bias.shape))
        state = {k: v for k, v in params.items()}
        init = f"CaffeScale({weight_shape!r}, {bias_shape!r}, {module.trailing})"
        return _Emitted(init, "self.{attr}({0})", state, helper="CaffeScale")
    raise UnsupportedLayerError(
        f"layer type '{info.type}' cannot be exported to Python source", path=net.ir.path, line=info.line,
        layer=info.name, hint="supported: " + ", ".join(PYTHON_SUPPORTED),
    )


PYTHON_SUPPORTED = ("Convolution", "Deconvolution", "InnerProduct", "Pooling", "LRN", "ReLU", "Sigmoid", "TanH",
                    "ELU", "AbsVal", "Exp", "PReLU", "Dropout", "Softmax", "Flatten", "Concat", "Split", "Eltwise",
                    "BatchNorm", "Scale", "Bias")


# --- the source -----------------------------------------------------------------------------------------------
@dataclass
class GeneratedModule:
    """The source of a standalone module and the ``state_dict`` it loads."""

    source: str
    state_dict: "OrderedDict[str, torch.Tensor]"
    class_name: str
    layer_names: dict[str, str | None]  # Caffe layer -> attribute (None: a line of forward)
    blob_names: dict[str, str]  # Caffe blob -> local variable


def generate_module(net: CaffeNet, weights_file: str, source_note: str = "") -> GeneratedModule:
    """Write the source of a standalone ``nn.Module`` equivalent to ``net`` (see the module docstring)."""
    class_name = _class_name(net.net_name)
    reserved = _RESERVED | {class_name} | {n for n in dir(nn.Module)}
    attr_taken: set[str] = set()
    var_taken: set[str] = set()
    blob_vars: dict[str, str] = {}

    def var(blob: str) -> str:
        if blob not in blob_vars:
            blob_vars[blob] = python_identifier(blob, var_taken, _RESERVED | {class_name})
        return blob_vars[blob]

    inputs = [var(name) for name in net.input_names]
    init_lines: list[str] = []
    forward_lines: list[str] = []
    state: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    helpers: list[str] = []
    layer_names: dict[str, str | None] = {}
    for info in net.layer_info:
        if info.module_name is None:
            continue
        module = net._modules[info.module_name]
        emitted = _emit(info, module, net)
        if emitted.helper and emitted.helper not in helpers:
            helpers.append(emitted.helper)
        bottoms = [blob_vars[b] for b in info.bottoms]
        tops = [var(t) for t in info.tops]
        if emitted.init is not None:
            attr = python_identifier(info.name, attr_taken, reserved)
            layer_names[info.name] = attr
            caffe_name = "" if attr == info.name else f"Caffe layer {info.name!r}, "
            init_lines.append(f"        self.{attr} = {emitted.init}  # {caffe_name}{info.type}{emitted.note}")
            comment = f"# {info.type}"
            for key, tensor in emitted.state.items():
                state[f"{attr}.{key}"] = tensor
        else:
            attr = ""
            layer_names[info.name] = None
            comment = f"# {info.name!r} ({info.type}){emitted.note}"
        expr = emitted.call.format(*bottoms, attr=attr, all=", ".join(bottoms))
        if not tops:
            forward_lines.append(f"        {comment}: consumes {', '.join(bottoms)}")
            continue
        if len(tops) > 1 and isinstance(module, Split):
            forward_lines.append(f"        {' = '.join(tops)} = {expr}  {comment}")
        else:
            target = tops[0] if len(tops) == 1 else ", ".join(tops)
            forward_lines.append(f"        {target} = {expr}  {comment}")

    outputs = [blob_vars[name] for name in net.output_names]
    input_shapes = {name: tuple(int(d) for d in net.blob_shapes[name]) for name in net.input_names}
    output_shapes = {name: tuple(int(d) for d in net.blob_shapes[name]) for name in net.output_names}
    renamed_layers = {k: v for k, v in layer_names.items() if v is not None and v != k}
    renamed_blobs = {k: v for k, v in blob_vars.items() if v != k}
    n_renamed = len(renamed_layers) + len(renamed_blobs)
    examples = ", ".join(f"{k!r} -> self.{v}" for k, v in list(renamed_layers.items())[:2])
    mapping = ("Layers with state or a torch module are attributes (self.conv1), the others one line of "
               "forward(); blobs are variables of forward(). ")
    if n_renamed:
        mapping += (f"{n_renamed} Caffe names are not identifiers: LAYER_NAMES and BLOB_NAMES below map them"
                    + (f" (e.g. {examples})." if examples else "."))
    else:
        mapping += "Every Caffe name is an identifier already: they are used as they are."
    mapping = textwrap.fill(mapping, width=100)

    def shape_text(shape: tuple[int, ...]) -> str:
        return " x ".join(["N", *map(str, shape[1:])]) if shape else "scalar"

    tuple_note = " (a tuple, in this order)" if len(outputs) > 1 else ""
    doc = f'''"""{class_name}: the Caffe net "{net.net_name}" as a standalone PyTorch module.

Generated by agegender {__version__} from {source_note or Path(str(net.ir.path)).name}. Imports only torch.
Weights: {weights_file} beside this file (torch.save of the state_dict; `load()` reads it).

    model = load()            # eval mode
    out = model({", ".join(inputs)})

Inputs: {"; ".join(f"{n} ({shape_text(s)})" for n, s in input_shapes.items())}.
Outputs: {"; ".join(f"{n} ({shape_text(s)})" for n, s in output_shapes.items())}{tuple_note}.
The module is exact for these input shapes with any batch size N: Caffe's pooling windows are laid out
for them (the shapes are checked).

{mapping}
"""'''
    helper_src = "".join(_HELPERS[h] for h in helpers)
    checks = [f"        _check_shape({n!r}, {blob_vars[n]}, {input_shapes[n][1:]!r})" for n in net.input_names]
    channels_last = bool(getattr(net, "channels_last", False))
    if channels_last:  # as CaffeNet.run does for a net converted with channels_last=True
        checks += [f"        {blob_vars[n]} = {blob_vars[n]}.contiguous(memory_format=torch.channels_last)"
                   for n in net.input_names if len(input_shapes[n]) == 4]
    returns = outputs[0] if len(outputs) == 1 else "(" + ", ".join(outputs) + ("," if len(outputs) == 1 else "") + ")"
    source = f'''{doc}

import os

import torch
import torch.nn.functional as F
from torch import nn

INPUT_NAMES = {tuple(net.input_names)!r}
OUTPUT_NAMES = {tuple(net.output_names)!r}
INPUT_SHAPES = {input_shapes!r}  # the batch size (first axis) is free
# Caffe names that changed: layer -> attribute of the module, blob -> variable of forward(); every other
# layer with state or a torch module is the attribute of its own name, every other blob a variable of its name
LAYER_NAMES = {_dict_source(renamed_layers)}
BLOB_NAMES = {_dict_source(renamed_blobs)}
WEIGHTS_FILE = {weights_file!r}
CHANNELS_LAST = {channels_last!r}  # the NHWC memory layout (faster on CPU) the net was converted with


def _check_shape(name, x, shape):
    if tuple(x.shape[1:]) != shape:
        raise ValueError(f"input {{name!r}} must be N x {{' x '.join(map(str, shape))}}, got {{tuple(x.shape)}}")
{helper_src}

class {class_name}(nn.Module):
    """The layers of "{net.net_name}" in Caffe's order (see the module docstring)."""

    def __init__(self):
        super().__init__()
{chr(10).join(init_lines) if init_lines else "        pass"}

    def forward(self, {", ".join(inputs)}):
{chr(10).join(checks)}
{chr(10).join(forward_lines)}
        return {returns}


def load(weights=None, map_location="cpu"):
    """A {class_name} with its weights (default: {weights_file} beside this file), in eval mode."""
    model = {class_name}()
    if weights is None:
        weights = os.path.join(os.path.dirname(os.path.abspath(__file__)), WEIGHTS_FILE)
    model.load_state_dict(torch.load(weights, map_location=map_location, weights_only=True))
    if CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)
    return model.eval()
'''
    return GeneratedModule(source=source, state_dict=state, class_name=class_name, layer_names=layer_names,
                           blob_names=blob_vars)


# --- the export -----------------------------------------------------------------------------------------------
@dataclass
class PythonExportReport:
    """What :func:`export_python` wrote and how it was verified."""

    source_path: Path
    weights_path: Path
    class_name: str
    layer_names: dict[str, str | None]
    blob_names: dict[str, str]
    source_bytes: int = 0
    weights_bytes: int = 0
    export_seconds: float = 0.0
    tolerance: float = PYTHON_TOLERANCE
    verification: list[ParityReport] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.verification) and all(r.passed for r in self.verification)

    def summary(self) -> str:
        """One line: files, class and the verification's worst error."""
        text = (f"{self.source_path.name} ({self.class_name}, {self.source_bytes / 1e3:.1f} kB) + "
                f"{self.weights_path.name} ({self.weights_bytes / 1e6:.1f} MB)")
        if not self.verification:
            return text + ", not verified"
        worst = max(r.worst.max_rel for r in self.verification if r.worst is not None)
        verdict = "verified" if self.passed else "FAILED"
        return f"{text}, {verdict} (worst max_rel {worst:.2g}, tolerance {self.tolerance:g})"

    def as_dict(self) -> dict:
        return {
            "source": str(self.source_path), "weights": str(self.weights_path), "class": self.class_name,
            "source_bytes": self.source_bytes, "weights_bytes": self.weights_bytes, "passed": self.passed,
            "export_seconds": round(self.export_seconds, 3), "tolerance": self.tolerance,
            "layer_names": self.layer_names, "blob_names": self.blob_names,
            "verification": [r.as_dict() for r in self.verification],
        }


def python_paths(out: str | Path, stem: str) -> tuple[Path, Path]:
    """(``.py``, ``.pt``) for ``out``: a ``.py`` file (weights beside it, same stem) or a folder."""
    out = Path(out)
    if out.suffix == ".py":
        return out, out.with_suffix(".pt")
    return out / f"{stem}.py", out / f"{stem}.pt"


def load_generated(source: str, module_name: str = "agegender_generated") -> types.ModuleType:
    """Execute generated source as a fresh module (not registered in ``sys.modules``)."""
    module = types.ModuleType(module_name)
    module.__file__ = f"<{module_name}>"
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def export_python(
    net: CaffeNet,
    out: str | Path,
    *,
    name: str | None = None,
    verify: bool = True,
    verify_batches: Sequence[int] = VERIFY_BATCHES,
    seed: int = 0,
    tolerance: float = PYTHON_TOLERANCE,
) -> PythonExportReport:
    """Write ``net`` as standalone PyTorch source and weights; see the module docstring.

    ``out``: a ``.py`` path (weights: the same stem with ``.pt``) or a folder (files ``<name>.py`` and
    ``<name>.pt``, ``name`` defaulting to the net's name). Raises :class:`UnsupportedLayerError` for a
    layer type it cannot write (nothing written), :class:`ParityError` if the generated module disagrees
    with ``net`` (nothing written), :class:`AgegenderError` for an output path that cannot be written.
    """
    started = time.perf_counter()
    stem = python_identifier(name or net.net_name.lower() or "model", set(), _RESERVED)
    source_path, weights_path = python_paths(out, stem)
    if not re.fullmatch(r"[A-Za-z_]\w*", source_path.stem, flags=re.ASCII):
        raise AgegenderError(f"'{source_path.name}' cannot be imported as a Python module",
                             path=source_path, hint="use letters, digits and _ (e.g. age_net.py)")
    _check_path(source_path)
    _check_path(weights_path)
    generated = generate_module(net, weights_path.name, Path(str(net.ir.path)).name)
    buffer = io.BytesIO()
    torch.save(generated.state_dict, buffer)
    weights_data = buffer.getvalue()
    report = PythonExportReport(source_path=source_path, weights_path=weights_path,
                                class_name=generated.class_name, layer_names=generated.layer_names,
                                blob_names=generated.blob_names, source_bytes=len(generated.source.encode()),
                                weights_bytes=len(weights_data), tolerance=tolerance)
    if verify:
        report.verification = verify_generated(net, generated.source, weights_data, verify_batches, seed, tolerance)
        if not report.passed:
            failed = next(r for r in report.verification if not r.passed)
            raise ParityError(f"the generated module disagrees with the torch module, nothing written: "
                              f"{failed.summary()}", path=source_path)
    with atomic_write(weights_path, "wb") as handle:
        handle.write(weights_data)
    try:
        with atomic_write(source_path, "w") as handle:
            handle.write(generated.source)
    except BaseException:
        weights_path.unlink(missing_ok=True)  # no weights without their module
        raise
    report.export_seconds = time.perf_counter() - started
    return report


def verify_generated(net: CaffeNet, source: str, weights: bytes, batches: Sequence[int], seed: int,
                     tolerance: float) -> list[ParityReport]:
    """Run the generated module (its weights from the bytes to be written) against ``net``."""
    from .export_onnx import _device, compare_outputs
    from .net import eval_mode

    try:
        module = load_generated(source)
        model = getattr(module, _class_name(net.net_name))()
        model.load_state_dict(torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True))
        if module.CHANNELS_LAST:
            model = model.to(memory_format=torch.channels_last)
        model.eval()
    except Exception as exc:  # a bug of the generator: name it, as a ParityError (nothing is written)
        raise ParityError(f"the generated module does not load: {type(exc).__name__}: {exc}",
                          path=net.ir.path) from exc
    device = _device(net)
    model.to(device)
    reports = []
    for index, batch in enumerate(batches):
        inputs = seeded_inputs(net, batch=batch, seed=seed + 1 + index)
        tensors = {k: torch.from_numpy(v).to(device) for k, v in inputs.items()}
        with torch.no_grad(), eval_mode(net):
            ours = model(*[tensors[n] for n in net.input_names])
            ref = net(outputs=net.output_names, **tensors)
        ours = (ours,) if len(net.output_names) == 1 else tuple(ours)
        ours_np = {n: t.cpu().numpy() for n, t in zip(net.output_names, ours)}
        ref_np = {n: t.cpu().numpy() for n, t in ref.items()}
        reports.append(compare_outputs(ours_np, ref_np, net.output_names, tolerance,
                                       f"generated module vs torch CaffeNet, batch {batch}"))
    return reports


__all__ = ["GeneratedModule", "PYTHON_SUPPORTED", "PythonExportReport", "export_python", "generate_module",
           "load_generated", "python_identifier", "python_paths", "verify_generated"]
