"""Every layer converter against a numpy reference written from Caffe's sources (tests/reference_ops.py).

Each case builds a one- or two-layer net from a prototxt string, fills its blobs with seeded values,
runs it, and checks (1) the output against the float64 reference and (2) every layer's inferred top
shapes against the tensors it really produced.
"""

from __future__ import annotations

import warnings
import zlib
from typing import Sequence

import numpy as np
import pytest
import torch

from agegender.caffe2torch import CaffeNet, NetState, build_ir
from agegender.errors import NetDefinitionError
from agegender.prototxt import parse_text, upgrade_net

from . import reference_ops as ref

Shape = tuple[int, ...]


# --- helpers ------------------------------------------------------------------------------------------
def make_net(layers: str, inputs: dict[str, Shape], phase: str = "TEST") -> CaffeNet:
    """A net of Input layers for ``inputs`` (declared shapes) followed by ``layers`` (V2 text)."""
    head = "".join(
        f'layer {{ name: "{name}" type: "Input" top: "{name}" '
        f'input_param {{ shape {{ {" ".join(f"dim: {d}" for d in dims)} }} }} }}\n'
        for name, dims in inputs.items()
    )
    net_def = upgrade_net(parse_text(head + layers, "NetParameter"))
    return CaffeNet(build_ir(net_def, None, NetState(phase=phase)))


def fill(net: CaffeNet, layer: str, rng: np.random.Generator) -> list[np.ndarray]:
    """Seeded normal values in every Caffe blob of ``layer``; returns them in Caffe's blob order."""
    arrays = []
    for tensor in net.caffe_tensors(layer):
        array = rng.standard_normal(tuple(tensor.shape)).astype(np.float32)
        with torch.no_grad():
            tensor.copy_(torch.from_numpy(array))
        arrays.append(array)
    return arrays


def set_blob(net: CaffeNet, layer: str, index: int, array: np.ndarray) -> None:
    with torch.no_grad():
        net.caffe_tensors(layer)[index].copy_(torch.from_numpy(np.asarray(array, np.float32)))


@torch.no_grad()
def run(net: CaffeNet, *inputs: np.ndarray, check_shapes: bool = True) -> dict[str, np.ndarray]:
    """Run the net; with ``check_shapes``, every layer's outputs must have the shapes its converter inferred."""
    tensors = [torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) for x in inputs]
    blobs, per_layer = net.run(*tensors, record_layers=True)
    if check_shapes:
        for info in net.layer_info:
            if info.module_name is None:
                continue
            real = [tuple(t.shape) for t in per_layer[info.module_name]]
            assert real == [tuple(s) for s in info.out_shapes], f"{info.name}: inferred {info.out_shapes}, got {real}"
    return {name: value.numpy() for name, value in blobs.items()}


def assert_close(actual: np.ndarray, expected: np.ndarray, tol: float = 1e-5) -> None:
    """Same shape, and within ``tol`` relative to the reference's scale (NaNs and -FLT_MAX must agree)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    ordinary = np.abs(expected[np.isfinite(expected)])
    ordinary = ordinary[ordinary < 1e30]
    scale = max(1.0, float(ordinary.max())) if ordinary.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, equal_nan=True)


def rng_for(*key: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def dims(shape: Sequence[int]) -> str:
    return " ".join(f"dim: {d}" for d in shape)


# --- Convolution and Deconvolution ------------------------------------------------------------------------
# (C, H, W, num_output, kernel, stride, pad, dilation, group, bias)
CONV_CASES = [
    (3, 7, 9, 4, (3, 3), (1, 1), (0, 0), (1, 1), 1, True),
    (4, 8, 7, 6, (3, 2), (2, 1), (1, 0), (1, 1), 2, True),    # non-square kernel/stride/pad, groups
    (6, 9, 10, 6, (3, 3), (2, 2), (2, 2), (2, 2), 3, False),  # pad > kernel/2, dilation, no bias
    (2, 5, 6, 4, (5, 5), (3, 3), (4, 4), (1, 1), 1, True),    # pad 4 on a 5-kernel, odd sizes
    (4, 6, 5, 4, (3, 3), (1, 2), (1, 1), (2, 1), 4, True),    # depthwise, mixed dilation
]


def conv_param(num_output, kernel, stride, pad, dilation, group, bias) -> str:
    return (f"num_output: {num_output} kernel_h: {kernel[0]} kernel_w: {kernel[1]} "
            f"stride_h: {stride[0]} stride_w: {stride[1]} pad_h: {pad[0]} pad_w: {pad[1]} "
            f"dilation: {dilation[0]} dilation: {dilation[1]} group: {group} bias_term: {str(bias).lower()}")


@pytest.mark.parametrize("case", CONV_CASES)
def test_convolution(case) -> None:
    c, h, w, o, kernel, stride, pad, dilation, group, bias = case
    net = make_net(f'layer {{ name: "conv" type: "Convolution" bottom: "x" top: "y" convolution_param {{ '
                   f'{conv_param(o, kernel, stride, pad, dilation, group, bias)} }} }}', {"x": (2, c, h, w)})
    rng = rng_for("conv", case)
    blobs = fill(net, "conv", rng)
    assert blobs[0].shape == (o, c // group, *kernel)
    x = rng.standard_normal((2, c, h, w))
    expected = ref.conv2d(x, blobs[0], blobs[1] if bias else None, stride, pad, dilation, group)
    assert_close(run(net, x)["y"], expected)


@pytest.mark.parametrize("case", CONV_CASES)
def test_deconvolution(case) -> None:
    c, h, w, o, kernel, stride, pad, dilation, group, bias = case
    # the padding of a deconvolution trims its output: keep it inside the full output
    pad = tuple(min(p, (s * (n - 1) + d * (k - 1)) // 2) for p, s, n, d, k in zip(pad, stride, (h, w), dilation, kernel))
    net = make_net(f'layer {{ name: "deconv" type: "Deconvolution" bottom: "x" top: "y" convolution_param {{ '
                   f'{conv_param(o, kernel, stride, pad, dilation, group, bias)} }} }}', {"x": (2, c, h, w)})
    rng = rng_for("deconv", case)
    blobs = fill(net, "deconv", rng)
    assert blobs[0].shape == (c, o // group, *kernel)
    x = rng.standard_normal((2, c, h, w))
    expected = ref.deconv2d(x, blobs[0], blobs[1] if bias else None, stride, pad, dilation, group)
    assert_close(run(net, x)["y"], expected)


# --- Pooling -------------------------------------------------------------------------------------------
# (H, W, method, kernel (None: global), stride, pad, round_mode)
POOL_CASES = [
    (7, 7, "MAX", (3, 3), (2, 2), (0, 0), "CEIL"),        # Levi's pools: ceil adds a clipped window
    (6, 6, "AVE", (3, 3), (2, 2), (1, 1), "CEIL"),
    (5, 5, "MAX", (3, 3), (2, 2), (2, 2), "CEIL"),        # pad > kernel/2
    (5, 7, "AVE", (3, 3), (2, 2), (2, 2), "CEIL"),        # pad > kernel/2 with AVE's padded divisors
    (5, 7, "AVE", (2, 2), (3, 3), (1, 1), "CEIL"),        # last window dropped: it starts in the padding
    (5, 5, "MAX", (1, 1), (3, 3), (0, 0), "CEIL"),        # a window starting past the input: -FLT_MAX
    (5, 5, "AVE", (1, 1), (3, 3), (0, 0), "CEIL"),        # ... and 0 for AVE (negative pool size)
    (4, 9, "AVE", (4, 2), (3, 2), (3, 1), "CEIL"),        # non-square everything, pad 3 on kernel 4
    (8, 9, "MAX", (3, 3), (2, 2), (1, 1), "FLOOR"),
    (7, 8, "AVE", (3, 2), (2, 3), (1, 1), "FLOOR"),
    (8, 7, "STOCHASTIC", (3, 3), (2, 2), (0, 0), "CEIL"),  # test-time stochastic: sum x^2 / sum x
    (5, 6, "MAX", None, (1, 1), (0, 0), "CEIL"),
    (5, 6, "AVE", None, (1, 1), (0, 0), "CEIL"),
]


@pytest.mark.parametrize("case", POOL_CASES)
def test_pooling(case) -> None:
    h, w, method, kernel, stride, pad, round_mode = case
    if kernel is None:
        spec = "global_pooling: true"
    else:
        spec = (f"kernel_h: {kernel[0]} kernel_w: {kernel[1]} stride_h: {stride[0]} stride_w: {stride[1]} "
                f"pad_h: {pad[0]} pad_w: {pad[1]}")
    net = make_net(f'layer {{ name: "pool" type: "Pooling" bottom: "x" top: "y" '
                   f'pooling_param {{ pool: {method} {spec} round_mode: {round_mode} }} }}', {"x": (2, 3, h, w)})
    rng = rng_for("pool", case)
    x = rng.standard_normal((2, 3, h, w))
    if method == "STOCHASTIC":
        x = np.abs(x) + 0.1  # stochastic pooling reads activations as probabilities
    expected = ref.pool2d(x, method, kernel, stride, pad, round_mode)
    assert_close(run(net, x)["y"], expected)


def test_stochastic_pooling_of_a_zero_window_is_zero() -> None:
    # StoPoolForwardTest starts its sum at FLT_MIN: a window of zeros (after a ReLU) and the last window,
    # which ceil rounding starts past the input (7x7, kernel 2, stride 4: rows 0, 4, 8), give 0, not 0/0;
    # a window summing to 0 gives sum(x^2) / FLT_MIN, huge but finite
    net = make_net('layer { name: "pool" type: "Pooling" bottom: "x" top: "y" '
                   'pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 4 } }', {"x": (1, 2, 7, 7)})
    x = np.maximum(rng_for("stochastic-zeros").standard_normal((1, 2, 7, 7)), 0) + 0.1
    x[0, 0, :2, :2] = 0.0
    x[0, 1, :2, :2] = [[0.5, -0.5], [0.25, -0.25]]
    y = run(net, x)["y"]
    expected = ref.pool2d(x, "STOCHASTIC", (2, 2), (4, 4))
    assert y.shape == (1, 2, 3, 3) and np.all(np.isfinite(y))
    assert y[0, 0, 0, 0] == 0.0
    assert np.all(y[..., 2, :] == 0.0) and np.all(y[..., :, 2] == 0.0)
    np.testing.assert_allclose(y[0, 1, 0, 0], expected[0, 1, 0, 0], rtol=1e-5)  # 0.625 / FLT_MIN
    y[0, 1, 0, 0] = expected[0, 1, 0, 0] = 0.0
    assert_close(y, expected)


def test_pooling_geometry_follows_the_input_at_run_time() -> None:
    net = make_net('layer { name: "pool" type: "Pooling" bottom: "x" top: "y" '
                   'pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 2 } }', {"x": (1, 2, 6, 6)})
    x = rng_for("pool-runtime").standard_normal((3, 2, 9, 7))
    assert_close(run(net, x, check_shapes=False)["y"], ref.pool2d(x, "AVE", (3, 3), (2, 2), (2, 2)))


# --- LRN -------------------------------------------------------------------------------------------
# (C, size, alpha, beta, k, region)
LRN_CASES = [
    (7, 5, 1e-4, 0.75, 1.0, "ACROSS_CHANNELS"),   # Levi's norm1/norm2
    (4, 9, 0.5, 0.6, 2.0, "ACROSS_CHANNELS"),     # window wider than the channels
    (5, 1, 0.3, 1.2, 0.5, "ACROSS_CHANNELS"),
    (3, 3, 0.7, 0.75, 1.0, "WITHIN_CHANNEL"),
    (3, 5, 0.9, 0.5, 7.0, "WITHIN_CHANNEL"),      # k is ignored by Caffe here
]


@pytest.mark.parametrize("case", LRN_CASES)
def test_lrn(case) -> None:
    c, size, alpha, beta, k, region = case
    net = make_net(f'layer {{ name: "norm" type: "LRN" bottom: "x" top: "y" lrn_param {{ local_size: {size} '
                   f'alpha: {alpha} beta: {beta} k: {k} norm_region: {region} }} }}', {"x": (2, c, 5, 6)})
    x = rng_for("lrn", case).standard_normal((2, c, 5, 6)) * 2
    assert_close(run(net, x)["y"], ref.lrn(x, size, alpha, beta, k, region))


# --- InnerProduct, Softmax, Concat, ReLU, Dropout, Split -------------------------------------------------
@pytest.mark.parametrize("axis,transpose,bias", [(1, False, True), (1, True, True), (2, False, False),
                                                 (-1, True, False), (3, False, True)])
def test_inner_product(axis: int, transpose: bool, bias: bool) -> None:
    shape = (2, 3, 4, 5)
    net = make_net(f'layer {{ name: "fc" type: "InnerProduct" bottom: "x" top: "y" inner_product_param {{ '
                   f'num_output: 6 axis: {axis} transpose: {str(transpose).lower()} '
                   f'bias_term: {str(bias).lower()} }} }}', {"x": shape})
    rng = rng_for("ip", axis, transpose, bias)
    blobs = fill(net, "fc", rng)
    k = int(np.prod(shape[axis % 4:]))
    assert blobs[0].shape == ((k, 6) if transpose else (6, k))
    x = rng.standard_normal(shape)
    expected = ref.inner_product(x, blobs[0], blobs[1] if bias else None, axis, transpose)
    assert_close(run(net, x)["y"], expected)


@pytest.mark.parametrize("axis", [1, 2, -1, 0])
def test_softmax(axis: int) -> None:
    net = make_net(f'layer {{ name: "prob" type: "Softmax" bottom: "x" top: "y" softmax_param {{ axis: {axis} }} }}',
                   {"x": (2, 3, 4, 5)})
    x = rng_for("softmax", axis).standard_normal((2, 3, 4, 5)) * 3
    assert_close(run(net, x)["y"], ref.softmax(x, axis))


@pytest.mark.parametrize("axis_spec,axis", [("axis: 1", 1), ("axis: 0", 0), ("axis: -1", 3), ("concat_dim: 2", 2)])
def test_concat(axis_spec: str, axis: int) -> None:
    shapes = [[2, 3, 4, 5]] * 3
    shapes = [[s + i if j == axis else s for j, s in enumerate(shape)] for i, shape in enumerate(shapes)]
    net = make_net(f'layer {{ name: "cat" type: "Concat" bottom: "a" bottom: "b" bottom: "c" top: "y" '
                   f'concat_param {{ {axis_spec} }} }}', {n: tuple(s) for n, s in zip("abc", shapes)})
    rng = rng_for("concat", axis_spec)
    xs = [rng.standard_normal(s) for s in shapes]
    assert_close(run(net, *xs)["y"], ref.concat(xs, axis))


@pytest.mark.parametrize("slope", [0.0, 0.1, -0.5])
def test_relu(slope: float) -> None:
    net = make_net(f'layer {{ name: "relu" type: "ReLU" bottom: "x" top: "x" relu_param {{ negative_slope: {slope} }} }}',
                   {"x": (2, 3, 4)})
    x = rng_for("relu", slope).standard_normal((2, 3, 4))
    assert_close(run(net, x)["x"], ref.relu(x, slope))


def test_dropout_with_ratio_1_is_the_identity_at_test_time() -> None:
    # DropoutLayer's 0 < ratio < 1 is a DCHECK (debug builds only): a release Caffe loads ratio 1
    net = make_net('layer { name: "drop" type: "Dropout" bottom: "x" top: "x" dropout_param { dropout_ratio: 1 } }',
                   {"x": (2, 5)})
    x = rng_for("drop-1").standard_normal((2, 5))
    assert_close(run(net, x)["x"], x)


def test_dropout_is_the_identity_at_test_time_and_split_copies() -> None:
    net = make_net('layer { name: "drop" type: "Dropout" bottom: "x" top: "x" dropout_param { dropout_ratio: 0.7 } }\n'
                   'layer { name: "split" type: "Split" bottom: "x" top: "a" top: "b" }', {"x": (2, 5)})
    x = rng_for("drop").standard_normal((2, 5))
    out = run(net, x)
    assert_close(out["a"], x)
    assert_close(out["b"], x)


@pytest.mark.parametrize("layer", ['type: "Split" bottom: "x" top: "y"',
                                   'type: "Slice" bottom: "x" top: "y" slice_param { axis: 1 }'])
def test_split_and_slice_with_one_top_pass_the_blob_through(layer: str) -> None:
    # Caffe allows one top (SplitLayer copies, SliceLayer shares the bottom's data): the top is a blob
    net = make_net(f'layer {{ name: "s" {layer} }}\nlayer {{ name: "r" type: "ReLU" bottom: "y" top: "z" }}',
                   {"x": (2, 3, 4)})
    x = rng_for("one-top", layer).standard_normal((2, 3, 4))
    out = run(net, x)
    assert_close(out["y"], x)
    assert_close(out["z"], ref.relu(x))


# --- BatchNorm, Scale, Bias --------------------------------------------------------------------------
# (shape, phase, use_global_stats (None: the phase's default), scale_factor)
BN_CASES = [
    ((3, 4, 5, 6), "TEST", None, 1.0),
    ((3, 4, 5, 6), "TEST", None, 2.5),     # stored statistics are divided by the scale factor
    ((3, 4, 5, 6), "TEST", None, 0.0),     # ... and a zero factor gives zero statistics
    ((3, 4, 5, 6), "TRAIN", None, 1.5),    # TRAIN: batch statistics, stored blobs updated
    ((5, 4), "TRAIN", None, 1.0),
    ((3, 4, 5, 6), "TRAIN", True, 2.0),
    ((3, 4, 5), "TEST", False, 1.0),
    ((6,), "TRAIN", None, 3.0),            # one axis: one channel
]


@pytest.mark.parametrize("case", BN_CASES)
def test_batch_norm(case) -> None:
    shape, phase, use_global, factor = case
    extra = "" if use_global is None else f"use_global_stats: {str(use_global).lower()}"
    net = make_net(f'layer {{ name: "bn" type: "BatchNorm" bottom: "x" top: "x" '
                   f'batch_norm_param {{ eps: 0.001 moving_average_fraction: 0.9 {extra} }} }}', {"x": shape}, phase)
    assert net.layer("bn").caffe_blobs == ("mean", "variance", "scale_factor")
    rng = rng_for("bn", case)
    channels = 1 if len(shape) == 1 else shape[1]
    mean = rng.standard_normal(channels).astype(np.float32)
    variance = (rng.random(channels) + 0.5).astype(np.float32)
    for i, blob in enumerate((mean, variance, np.array([factor], np.float32))):
        set_blob(net, "bn", i, blob)
    x = rng.standard_normal(shape) * 2 + 0.5
    global_stats = (phase == "TEST") if use_global is None else use_global
    expected, new_mean, new_var, new_factor = ref.batch_norm(x, mean, variance, np.array([factor]), 0.001,
                                                             global_stats, 0.9)
    assert_close(run(net, x)["x"], expected)
    stored = [t.numpy() for t in net.caffe_tensors("bn")]
    assert_close(stored[0], new_mean)
    assert_close(stored[1], new_var)
    assert_close(stored[2], new_factor)


# (shape, axis, num_axes, bias_term)
SCALE_CASES = [
    ((2, 3, 4, 5), 1, 1, True),    # the usual per-channel affine after BatchNorm
    ((2, 3, 4, 5), 1, 2, False),
    ((2, 3, 4, 5), 2, -1, True),
    ((2, 3, 4, 5), -1, 1, True),
    ((2, 3, 4, 5), 0, 0, True),    # a learned scalar
    ((4, 6), 0, 2, True),
]


@pytest.mark.parametrize("case", SCALE_CASES)
def test_scale_with_learned_factor(case) -> None:
    shape, axis, num_axes, bias = case
    net = make_net(f'layer {{ name: "sc" type: "Scale" bottom: "x" top: "x" scale_param {{ axis: {axis} '
                   f'num_axes: {num_axes} bias_term: {str(bias).lower()} }} }}', {"x": shape})
    rng = rng_for("scale", case)
    blobs = fill(net, "sc", rng)
    assert net.layer("sc").caffe_blobs == (("weight", "bias") if bias else ("weight",))
    a = axis % len(shape)
    span = shape[a:] if num_axes == -1 else shape[a:a + num_axes]
    assert blobs[0].shape == (tuple(span) or (1,))
    x = rng.standard_normal(shape)
    factor = blobs[0].reshape(span)
    expected = ref.scale(x, factor, blobs[1].reshape(span) if bias else None, a)
    assert_close(run(net, x)["x"], expected)


# (x shape, operand shape, axis, bias_term)
OPERAND_CASES = [
    ((2, 3, 4, 5), (3,), 1, False),
    ((2, 3, 4, 5), (2, 3), 0, True),
    ((2, 3, 4, 5), (4, 5), 2, True),
    ((2, 3, 4, 5), (4, 5), -2, False),
]


@pytest.mark.parametrize("case", OPERAND_CASES)
def test_scale_by_second_bottom(case) -> None:
    shape, operand, axis, bias = case
    net = make_net(f'layer {{ name: "sc" type: "Scale" bottom: "x" bottom: "s" top: "y" scale_param {{ '
                   f'axis: {axis} bias_term: {str(bias).lower()} }} }}', {"x": shape, "s": operand})
    rng = rng_for("scale2", case)
    blobs = fill(net, "sc", rng)
    assert net.layer("sc").caffe_blobs == (("bias",) if bias else ())
    x, s = rng.standard_normal(shape), rng.standard_normal(operand)
    expected = ref.scale(x, s, blobs[0] if bias else None, axis % len(shape))
    assert_close(run(net, x, s)["y"], expected)


@pytest.mark.parametrize("case", SCALE_CASES)
def test_bias_with_learned_blob(case) -> None:
    shape, axis, num_axes, _ = case
    net = make_net(f'layer {{ name: "bl" type: "Bias" bottom: "x" top: "y" bias_param {{ axis: {axis} '
                   f'num_axes: {num_axes} }} }}', {"x": shape})
    rng = rng_for("bias", case)
    (blob,) = fill(net, "bl", rng)
    a = axis % len(shape)
    span = shape[a:] if num_axes == -1 else shape[a:a + num_axes]
    x = rng.standard_normal(shape)
    assert_close(run(net, x)["y"], ref.add_bias(x, blob.reshape(span), a))


@pytest.mark.parametrize("case", OPERAND_CASES)
def test_bias_by_second_bottom(case) -> None:
    shape, operand, axis, _ = case
    net = make_net(f'layer {{ name: "bl" type: "Bias" bottom: "x" bottom: "b" top: "y" bias_param {{ axis: {axis} }} }}',
                   {"x": shape, "b": operand})
    rng = rng_for("bias2", case)
    x, b = rng.standard_normal(shape), rng.standard_normal(operand)
    assert net.layer("bl").caffe_blobs == ()
    assert_close(run(net, x, b)["y"], ref.add_bias(x, b, axis % len(shape)))


# --- Eltwise and PReLU -----------------------------------------------------------------------------------
@pytest.mark.parametrize("operation,coeffs,n", [("SUM", [], 2), ("SUM", [0.5, -2.0, 1.5], 3), ("PROD", [], 3),
                                                ("MAX", [], 2), ("MAX", [], 4)])
def test_eltwise(operation: str, coeffs: list[float], n: int) -> None:
    names = "abcd"[:n]
    bottoms = " ".join(f'bottom: "{b}"' for b in names)
    coeff = " ".join(f"coeff: {c}" for c in coeffs)
    net = make_net(f'layer {{ name: "e" type: "Eltwise" {bottoms} top: "y" eltwise_param {{ operation: {operation} '
                   f'{coeff} }} }}', {b: (2, 3, 5) for b in names})
    rng = rng_for("eltwise", operation, n)
    xs = [rng.standard_normal((2, 3, 5)) for _ in names]
    xs[1][0, 0, :2] = xs[0][0, 0, :2]  # ties for MAX
    assert_close(run(net, *xs)["y"], ref.eltwise(xs, operation, coeffs or None))


def test_eltwise_max_ignores_coeff() -> None:
    # EltwiseLayer refuses coeff only for PROD: MAX accepts them (one per bottom) and ignores them
    net = make_net('layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "y" '
                   'eltwise_param { operation: MAX coeff: 2 coeff: -3 } }', {"a": (2, 5), "b": (2, 5)})
    rng = rng_for("eltwise-max-coeff")
    a, b = rng.standard_normal((2, 5)), rng.standard_normal((2, 5))
    assert_close(run(net, a, b)["y"], ref.eltwise([a, b], "MAX"))


@pytest.mark.parametrize("shape,shared", [((2, 3, 4, 5), False), ((2, 3, 4, 5), True), ((4, 6), False),
                                          ((2, 3, 7), True)])
def test_prelu(shape: Shape, shared: bool) -> None:
    net = make_net(f'layer {{ name: "p" type: "PReLU" bottom: "x" top: "x" prelu_param {{ '
                   f'channel_shared: {str(shared).lower()} }} }}', {"x": shape})
    rng = rng_for("prelu", shape, shared)
    (slope,) = fill(net, "p", rng)
    assert slope.shape == ((1,) if shared else (shape[1],))
    x = rng.standard_normal(shape)
    assert_close(run(net, x)["x"], ref.prelu(x, slope, shared))


# --- neuron layers --------------------------------------------------------------------------------------
# (type, parameter text, reference, input transform)
NEURON_CASES = [
    ("Sigmoid", "", ref.sigmoid, None),
    ("TanH", "", ref.tanh, None),
    ("AbsVal", "", ref.absval, None),
    ("ELU", "elu_param { alpha: 0.5 }", lambda x: ref.elu(x, 0.5), None),
    ("ELU", "", ref.elu, None),
    ("BNLL", "", ref.bnll, lambda x: x * 40),  # large |x| both ways
    ("Threshold", "threshold_param { threshold: 0.2 }", lambda x: ref.threshold(x, 0.2), None),
    ("Power", "power_param { power: 2 scale: 0.5 shift: 1.5 }", lambda x: ref.power(x, 2, 0.5, 1.5), None),
    ("Power", "power_param { power: 0.5 scale: 2 shift: 9 }", lambda x: ref.power(x, 0.5, 2, 9), None),
    ("Power", "power_param { power: -1.5 scale: -1 shift: 8 }", lambda x: ref.power(x, -1.5, -1, 8), None),
    ("Power", "power_param { power: 3 scale: 0 shift: 1.5 }", lambda x: ref.power(x, 3, 0, 1.5), None),
    ("Power", "power_param { power: 0 scale: 2 shift: 1 }", lambda x: ref.power(x, 0, 2, 1), None),
    ("Power", "", ref.power, None),
    ("Exp", "", ref.exp, None),
    ("Exp", "exp_param { base: 2 scale: 0.5 shift: -1 }", lambda x: ref.exp(x, 2, 0.5, -1), None),
    ("Exp", "exp_param { base: -1 scale: 0.3 shift: 0.5 }", lambda x: ref.exp(x, -1, 0.3, 0.5), None),
    ("Log", "", ref.log, lambda x: np.abs(x) + 0.1),
    ("Log", "log_param { base: 10 scale: 2 shift: 5 }", lambda x: ref.log(x, 10, 2, 5), lambda x: np.abs(x) - 2),
    ("Log", "log_param { base: -1 scale: -0.5 shift: 4 }", lambda x: ref.log(x, -1, -0.5, 4), None),
]


@pytest.mark.parametrize("case", NEURON_CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_neuron_layers(case) -> None:
    layer_type, param, reference, transform = case
    net = make_net(f'layer {{ name: "n" type: "{layer_type}" bottom: "x" top: "y" {param} }}', {"x": (2, 3, 4, 5)})
    x = rng_for("neuron", case[:2]).standard_normal((2, 3, 4, 5))
    if transform is not None:
        x = transform(x)
    x = x.astype(np.float32).astype(np.float64)  # the threshold comparison must see the same values
    assert_close(run(net, x)["y"], reference(x))


def test_exp_with_an_overflowing_shift_gives_inf_as_caffe() -> None:
    # ExpLayer does not check outer_scale = base^shift: in float it overflows to inf, and so do the outputs
    net = make_net('layer { name: "n" type: "Exp" bottom: "x" top: "y" exp_param { base: 10 shift: 400 } }',
                   {"x": (3,)})
    y = run(net, np.array([-1.0, 0.0, 1.0]))["y"]
    assert np.all(np.isinf(y)) and np.all(y > 0)


def test_power_with_zero_scale_ignores_even_nan_and_inf_inputs() -> None:
    net = make_net('layer { name: "n" type: "Power" bottom: "x" top: "y" power_param { power: 3 scale: 0 shift: 1.5 } }',
                   {"x": (4,)})
    x = np.array([np.nan, np.inf, -np.inf, 2.0])
    assert_close(run(net, x)["y"], ref.power(x, 3, 0, 1.5))
    assert np.all(run(net, x)["y"] == 1.5 ** 3)


# --- Flatten, Reshape, Slice, Crop, Silence, ArgMax ----------------------------------------------------
@pytest.mark.parametrize("axis,end_axis", [(1, -1), (2, 3), (0, 1), (-3, -2), (1, 1)])
def test_flatten(axis: int, end_axis: int) -> None:
    net = make_net(f'layer {{ name: "f" type: "Flatten" bottom: "x" top: "y" '
                   f'flatten_param {{ axis: {axis} end_axis: {end_axis} }} }}', {"x": (2, 3, 4, 5)})
    x = rng_for("flatten", axis, end_axis).standard_normal((2, 3, 4, 5))
    assert_close(run(net, x)["y"], ref.flatten(x, axis, end_axis))


# (new dims, axis, num_axes)
RESHAPE_CASES = [
    ((0, -1), 0, -1),
    ((-1,), 1, -1),
    ((2, 2), 2, 1),
    ((1,), -1, 0),        # a new trailing axis
    ((3, 0, -1), 1, -1),
    ((0, 0, 20), 0, -1),
    ((-1, 3), 1, 2),
    ((6, 1, 2), 1, 2),
]


@pytest.mark.parametrize("case", RESHAPE_CASES)
def test_reshape(case) -> None:
    new, axis, num_axes = case
    shape = (2, 3, 4, 5)
    net = make_net(f'layer {{ name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param {{ '
                   f'shape {{ {dims(new)} }} axis: {axis} num_axes: {num_axes} }} }}', {"x": shape})
    x = rng_for("reshape", case).standard_normal(shape)
    expected = x.reshape(ref.reshape_shape(shape, new, axis, num_axes))
    assert_close(run(net, x)["y"], expected)


def test_reshape_keeps_the_batch_free() -> None:
    net = make_net('layer { name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 0 dim: -1 } } }',
                   {"x": (2, 3, 4)})
    x = rng_for("reshape-batch").standard_normal((5, 3, 4))
    assert_close(run(net, x, check_shapes=False)["y"], x.reshape(5, 12))


# (param text, axis, slice points, number of tops)
SLICE_CASES = [
    ("axis: 1 slice_point: 1 slice_point: 3", 1, [1, 3], 3),
    ("axis: 2", 2, [], 3),
    ("slice_dim: 0 slice_point: 1", 0, [1], 2),
    ("axis: -1 slice_point: 2", 3, [2], 2),
    ("axis: 1 slice_point: 4", 1, [4], 2),
]


@pytest.mark.parametrize("case", SLICE_CASES)
def test_slice(case) -> None:
    param, axis, points, n = case
    tops = " ".join(f'top: "t{i}"' for i in range(n))
    shape = (2, 5, 6, 4)
    net = make_net(f'layer {{ name: "s" type: "Slice" bottom: "x" {tops} slice_param {{ {param} }} }}', {"x": shape})
    x = rng_for("slice", case).standard_normal(shape)
    out = run(net, x)
    for i, expected in enumerate(ref.slice_blob(x, axis, points, n)):
        assert_close(out[f"t{i}"], expected)


# (x shape, reference shape, axis, offsets)
CROP_CASES = [
    ((2, 3, 9, 8), (2, 3, 5, 4), 2, [1, 2]),
    ((2, 3, 9, 8), (2, 3, 5, 4), 2, [3]),
    ((2, 3, 9, 8), (1, 2, 5, 4), 1, [1]),
    ((2, 3, 9, 8), (2, 3, 9, 5), -1, []),
    ((3, 4, 6, 6), (2, 2, 3, 3), 0, [1, 2, 3, 0]),
    ((2, 3, 9, 8), (2, 3, 5, 4, 7), 2, [1]),   # CropLayer reads the reference's first 4 axes only
]


@pytest.mark.parametrize("case", CROP_CASES)
def test_crop(case) -> None:
    shape, like, axis, offsets = case
    offset = " ".join(f"offset: {o}" for o in offsets)
    net = make_net(f'layer {{ name: "c" type: "Crop" bottom: "x" bottom: "like" top: "y" '
                   f'crop_param {{ axis: {axis} {offset} }} }}', {"x": shape, "like": like})
    rng = rng_for("crop", case)
    x, like_value = rng.standard_normal(shape), rng.standard_normal(like)
    assert_close(run(net, x, like_value)["y"], ref.crop(x, like, axis, offsets))


def test_silence_consumes_a_blob_and_produces_nothing() -> None:
    net = make_net('layer { name: "quiet" type: "Silence" bottom: "label" }\n'
                   'layer { name: "relu" type: "ReLU" bottom: "x" top: "y" }', {"x": (2, 3), "label": (2,)})
    assert net.layer("quiet").out_shapes == ()
    assert net.output_names == ["y"]
    x = rng_for("silence").standard_normal((2, 3))
    assert_close(run(net, x, np.zeros(2))["y"], ref.relu(x))


# (x shape, param text, top_k, out_max_val, axis)
ARGMAX_CASES = [
    ((3, 10), "", 1, False, None),
    ((3, 4, 2, 2), "top_k: 3", 3, False, None),
    ((3, 4, 2, 2), "top_k: 2 out_max_val: true", 2, True, None),
    ((2, 5, 3), "axis: 1 top_k: 2", 2, False, 1),
    ((2, 5, 3), "axis: -1 top_k: 2 out_max_val: true", 2, True, 2),
    ((2, 6), "axis: 0", 1, False, 0),
]


@pytest.mark.parametrize("case", ARGMAX_CASES)
def test_argmax(case) -> None:
    shape, param, top_k, out_max_val, axis = case
    net = make_net(f'layer {{ name: "am" type: "ArgMax" bottom: "x" top: "y" argmax_param {{ {param} }} }}',
                   {"x": shape})
    x = rng_for("argmax", case).integers(0, 4, shape).astype(np.float64)  # many ties: the larger index wins
    assert_close(run(net, x)["y"], ref.argmax(x, top_k, out_max_val, axis))


def test_argmax_keeps_caffes_tie_rule_in_onnx(tmp_path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    net = make_net('layer { name: "am" type: "ArgMax" bottom: "x" top: "y" argmax_param { top_k: 3 out_max_val: true } }\n'
                   'layer { name: "am2" type: "ArgMax" bottom: "x" top: "z" argmax_param { axis: 1 top_k: 2 } }',
                   {"x": (4, 6, 3)})

    class Outputs(torch.nn.Module):
        def __init__(self, inner: CaffeNet) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return self.inner(x)

    path = tmp_path / "argmax.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Outputs(net).eval(), (torch.zeros(4, 6, 3),), str(path), input_names=["x"],
                          dynamic_axes={"x": {0: "n"}}, opset_version=17, dynamo=False)
    x = rng_for("argmax-onnx").integers(0, 3, (5, 6, 3)).astype(np.float32)
    y, z = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert_close(y, ref.argmax(x, 3, True))
    assert_close(z, ref.argmax(x, 2, False, 1))


# --- Accuracy and SoftmaxWithLoss -------------------------------------------------------------------------
# (scores shape, axis, top_k, ignore_label)
ACCURACY_CASES = [
    ((8, 5), 1, 1, None),
    ((8, 5), 1, 2, None),
    ((8, 5), 1, 1, 3),
    ((2, 4, 3, 3), 1, 2, 0),       # spatial labels
    ((4, 3, 6), 2, 1, None),
]


@pytest.mark.parametrize("case", ACCURACY_CASES)
def test_accuracy(case) -> None:
    shape, axis, top_k, ignore = case
    classes = shape[axis]
    label_shape = shape[:axis] + shape[axis + 1:]
    extra = "" if ignore is None else f"ignore_label: {ignore}"
    net = make_net(f'layer {{ name: "acc" type: "Accuracy" bottom: "s" bottom: "l" top: "acc" '
                   f'accuracy_param {{ axis: {axis} top_k: {top_k} {extra} }} }}', {"s": shape, "l": label_shape})
    rng = rng_for("accuracy-ties-count-against", case)
    scores = rng.integers(0, 4, shape).astype(np.float64)  # integer scores: ties, which count against the label
    labels = rng.integers(0, classes, label_shape)
    # half the labels on a top class (a hit unless tied), the rest random
    labels = np.where(rng.random(label_shape) < 0.5, scores.argmax(axis), labels).astype(np.float64)
    expected = ref.accuracy(scores, labels, axis, top_k, ignore)
    assert 0.0 < expected < 1.0  # the case exercises both hits and misses
    assert_close(run(net, scores, labels)["acc"], np.float64(expected))


def test_accuracy_counts_a_tie_with_the_true_class_as_a_miss() -> None:
    # BVLC master's AccuracyLayer: num_better_predictions starts at -1 and counts scores >= the label's,
    # so a class tied with the label's score takes its place (older Caffes counted ties as hits)
    net = make_net('layer { name: "acc" type: "Accuracy" bottom: "s" bottom: "l" top: "acc" }\n'
                   'layer { name: "acc2" type: "Accuracy" bottom: "s" bottom: "l" top: "acc2" '
                   'accuracy_param { top_k: 2 } }', {"s": (4, 3), "l": (4,)})
    scores = np.array([[1.0, 1.0, 0.0],    # label 0 tied with class 1: top-1 miss, top-2 hit
                       [2.0, 1.0, 1.0],    # label 2 tied with class 1, below class 0: top-2 miss
                       [0.0, 3.0, 1.0],    # label 1, alone on top: hit
                       [5.0, 5.0, 5.0]])   # label 1, a three-way tie: top-1 and top-2 miss
    labels = np.array([0.0, 2.0, 1.0, 1.0])
    out = run(net, scores, labels)
    assert_close(out["acc"], np.float64(0.25))
    assert_close(out["acc2"], np.float64(0.5))
    assert ref.accuracy(scores, labels) == 0.25 and ref.accuracy(scores, labels, top_k=2) == 0.5


@pytest.mark.parametrize("ignore", [None, 2])
def test_accuracy_per_class_top(ignore: int | None) -> None:
    # the optional second top: per class, hits / labels of that class (0 for a class without labels)
    extra = "" if ignore is None else f"ignore_label: {ignore}"
    net = make_net(f'layer {{ name: "acc" type: "Accuracy" bottom: "s" bottom: "l" top: "acc" top: "per_class" '
                   f'accuracy_param {{ axis: 1 {extra} }} }}', {"s": (3, 5, 4), "l": (3, 4)})
    rng = rng_for("accuracy-per-class", ignore)
    scores = rng.integers(0, 4, (3, 5, 4)).astype(np.float64)
    labels = rng.integers(0, 4, (3, 4))  # class 4 never occurs: its rate is 0
    labels = np.where(rng.random((3, 4)) < 0.5, scores[:, :4].argmax(1), labels).astype(np.float64)
    assert net.layer("acc").out_shapes == ((), (5,))
    out = run(net, scores, labels)
    accuracy, per_class = ref.accuracy_with_per_class(scores, labels, 1, 1, ignore)
    assert 0.0 < accuracy < 1.0
    assert_close(out["acc"], np.float64(accuracy))
    assert_close(out["per_class"], per_class)


# (scores shape, axis, loss_param text, normalization, ignore_label)
LOSS_CASES = [
    ((6, 4), 1, "", "VALID", None),
    ((6, 4), 1, "ignore_label: 2", "VALID", 2),
    ((6, 4), 1, "normalization: FULL ignore_label: 1", "FULL", 1),
    ((2, 3, 2, 2), 1, "normalization: BATCH_SIZE", "BATCH_SIZE", None),
    ((2, 3, 2, 2), 1, "normalization: NONE ignore_label: 0", "NONE", 0),
    ((2, 3, 4), 2, "normalize: false", "BATCH_SIZE", None),
    ((2, 3, 4), 2, "normalize: true ignore_label: 3", "VALID", 3),
]


@pytest.mark.parametrize("case", LOSS_CASES)
def test_softmax_with_loss(case) -> None:
    shape, axis, param, normalization, ignore = case
    label_shape = shape[:axis] + shape[axis + 1:]
    net = make_net(f'layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "l" top: "loss" '
                   f'softmax_param {{ axis: {axis} }} loss_param {{ {param} }} }}', {"s": shape, "l": label_shape})
    rng = rng_for("loss", case)
    scores = rng.standard_normal(shape) * 3
    labels = rng.integers(0, shape[axis], label_shape).astype(np.float64)
    # item 0's class 0 dominates and its label is another class: p < FLT_MIN, so Caffe's clamp decides
    scores.reshape(-1)[0] = 100.0
    labels.reshape(-1)[0] = next(c for c in range(1, shape[axis]) if c != ignore)
    expected = ref.softmax_with_loss(scores, labels, axis, ignore, normalization)
    assert_close(run(net, scores, labels)["loss"], np.float64(expected))


def test_softmax_with_loss_second_top_is_the_softmax() -> None:
    # SoftmaxWithLossLayer's optional second top shares its internal softmax output (prob_)
    net = make_net('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "l" top: "loss" top: "prob" '
                   'softmax_param { axis: 2 } }', {"s": (2, 3, 4), "l": (2, 3)})
    rng = rng_for("loss-prob")
    scores, labels = rng.standard_normal((2, 3, 4)) * 2, rng.integers(0, 4, (2, 3)).astype(np.float64)
    assert net.layer("loss").out_shapes == ((), (2, 3, 4))
    out = run(net, scores, labels)
    assert_close(out["prob"], ref.softmax(scores, 2))
    assert_close(out["loss"], np.float64(ref.softmax_with_loss(scores, labels, 2)))


# --- the batch size stays free -------------------------------------------------------------------------
def test_new_converters_run_on_another_batch_size() -> None:
    net = make_net('layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" }\n'
                   'layer { name: "sc" type: "Scale" bottom: "x" top: "x" scale_param { bias_term: true } }\n'
                   'layer { name: "s" type: "Slice" bottom: "x" top: "a" top: "b" slice_param { axis: 0 } }\n'
                   'layer { name: "f" type: "Flatten" bottom: "a" top: "fa" }\n'
                   'layer { name: "am" type: "ArgMax" bottom: "fa" top: "y" argmax_param { top_k: 2 } }',
                   {"x": (2, 3, 4, 4)})
    rng = rng_for("batch")
    mean, var = rng.standard_normal(3), rng.random(3) + 0.5
    for i, blob in enumerate((mean, var, [1.0])):
        set_blob(net, "bn", i, np.asarray(blob))
    weight, bias = fill(net, "sc", rng)
    x = rng.standard_normal((6, 3, 4, 4))
    normed = ref.batch_norm(x, mean, var, np.array([1.0]), 1e-5, True)[0]
    scaled = ref.scale(normed, weight, bias, 1)
    first_half = ref.slice_blob(scaled, 0, [], 2)[0]
    expected = ref.argmax(ref.flatten(first_half), 2)
    out = run(net, x, check_shapes=False)
    assert_close(out["y"], expected)
    assert out["b"].shape == (3, 3, 4, 4)


# --- in-place computation as Net::Init allows it -----------------------------------------------------------
@pytest.mark.parametrize("layers", [
    # a second reader of conv's output: InsertSplits renames the ReLU's bottom, its top "c" is then a second source
    'layer { name: "fc" type: "InnerProduct" bottom: "c" top: "f" inner_product_param { num_output: 2 } }\n'
    'layer { name: "relu" type: "ReLU" bottom: "c" top: "c" }',
    'layer { name: "sig" type: "Sigmoid" bottom: "c" top: "s" }\n'
    'layer { name: "cat" type: "Concat" bottom: "s" bottom: "c" top: "y" }\n'
    'layer { name: "abs" type: "AbsVal" bottom: "s" top: "s" }',
    # in place only at the same index: top 0 named like bottom 1
    'layer { name: "e" type: "Eltwise" bottom: "x" bottom: "c" top: "c" }',
])
def test_in_place_on_a_blob_read_elsewhere_is_refused_as_caffe_does(layers: str) -> None:
    head = ('layer { name: "conv" type: "Convolution" bottom: "x" top: "c" '
            'convolution_param { num_output: 3 kernel_size: 1 } }\n')
    with pytest.raises(NetDefinitionError, match="multiple sources"):
        make_net(head + layers, {"x": (2, 3, 4, 4)})


def test_in_place_chains_are_allowed() -> None:
    # each in-place layer reads the latest value of its blob, and nobody else reads that value
    net = make_net('layer { name: "relu" type: "ReLU" bottom: "x" top: "x" }\n'
                   'layer { name: "drop" type: "Dropout" bottom: "x" top: "x" }\n'
                   'layer { name: "split" type: "Split" bottom: "x" top: "a" top: "b" }\n'
                   'layer { name: "neg" type: "Power" bottom: "a" top: "a" power_param { scale: -1 } }\n'
                   'layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "y" }\n'
                   'layer { name: "shift" type: "Power" bottom: "y" top: "y" power_param { shift: 2 } }',
                   {"x": (2, 3)})
    x = rng_for("in-place-chain").standard_normal((2, 3))
    out = run(net, x)
    assert_close(out["y"], np.full((2, 3), 2.0))
    assert_close(out["b"], ref.relu(x))


# --- bad parameters ----------------------------------------------------------------------------------------
BAD_CASES = [
    ('type: "Eltwise" bottom: "x" bottom: "x2" top: "y" eltwise_param { coeff: 1 }', "coeff"),
    ('type: "Eltwise" bottom: "x" bottom: "x2" top: "y" eltwise_param { operation: PROD coeff: 1 coeff: 2 }',
     "only used by SUM"),
    ('type: "Eltwise" bottom: "x" bottom: "z" top: "y"', "must match"),
    ('type: "Eltwise" bottom: "x" top: "y"', "bottom blob"),
    ('type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: -1 dim: -1 } }', "more than one -1"),
    ('type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 7 dim: -1 } }', "cannot infer"),
    ('type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 5 dim: 5 } }', "values"),
    ('type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 0 dim: 0 dim: 0 dim: 0 dim: 0 } }',
     "no axis"),
    ('type: "Slice" bottom: "x" top: "a" top: "b" top: "c" slice_param { axis: 1 slice_point: 2 slice_point: 1 }',
     "increase"),
    ('type: "Slice" bottom: "x" top: "a" top: "b" slice_param { axis: 1 }', "evenly"),
    ('type: "Slice" bottom: "x" top: "a" top: "b" slice_param { axis: 1 slice_dim: 1 }', "not both"),
    ('type: "Crop" bottom: "x" bottom: "z" top: "y" crop_param { axis: 2 offset: 3 }', "runs past"),
    ('type: "Crop" bottom: "x" bottom: "z" top: "y" crop_param { axis: 1 offset: 0 offset: 0 }', "offsets"),
    ('type: "Scale" bottom: "x" top: "y" scale_param { axis: 2 num_axes: 3 }', "extends past"),
    ('type: "Scale" bottom: "x" bottom: "z" top: "y" scale_param { axis: 1 }', "does not match"),
    ('type: "Bias" bottom: "x" top: "y" bias_param { num_axes: -2 }', "num_axes"),
    ('type: "Flatten" bottom: "x" top: "y" flatten_param { axis: 2 end_axis: 1 }', "end_axis"),
    ('type: "Flatten" bottom: "x" top: "y" flatten_param { axis: 4 }', "out of range"),
    ('type: "Exp" bottom: "x" top: "y" exp_param { base: -2 }', "base"),
    ('type: "Log" bottom: "x" top: "y" log_param { base: 1 }', "base 1"),
    ('type: "PReLU" bottom: "v" top: "y"', "2 axes"),
    ('type: "ArgMax" bottom: "x" top: "y" argmax_param { axis: 1 top_k: 4 }', "top_k"),
    ('type: "Silence" bottom: "x" top: "y"', "no tops"),
    ('type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 4 kernel_size: 1 group: 2 }',
     "group"),
    ('type: "Pooling" bottom: "x" top: "y" pooling_param { kernel_size: 2 pad: 2 }', "pad"),
    ('type: "Pooling" bottom: "x" top: "y" pooling_param { pool: STOCHASTIC kernel_size: 3 pad: 1 }', "pad"),
    # PoolingLayer::LayerSetUp: "pad is pad OR pad_h and pad_w are required", the same for stride, and
    # "Filter size is kernel_size OR kernel_h and kernel_w; not both"
    ('type: "Pooling" bottom: "x" top: "y" pooling_param { kernel_size: 3 pad_h: 1 }', "pad_w"),
    ('type: "Pooling" bottom: "x" top: "y" pooling_param { kernel_size: 3 pad: 1 pad_h: 1 pad_w: 1 }', "pad_w"),
    ('type: "Pooling" bottom: "x" top: "y" pooling_param { kernel_size: 3 stride_w: 2 }', "stride_w"),
    ('type: "Pooling" bottom: "x" top: "y" pooling_param { kernel_size: 3 stride: 2 stride_h: 2 stride_w: 2 }',
     "stride_w"),
    ('type: "Pooling" bottom: "x" top: "y" pooling_param { kernel_size: 3 kernel_h: 2 kernel_w: 2 }', "not both"),
    # BaseConvolutionLayer: "Either kernel_size or kernel_h/w should be specified; not both."
    ('type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 2 kernel_size: 3 kernel_h: 1 '
     'kernel_w: 1 }', "not both"),
    ('type: "Crop" bottom: "x" bottom: "v" top: "y" crop_param { axis: 0 }', "fewer axes"),
    ('type: "Accuracy" bottom: "z" bottom: "l" top: "a" top: "b" top: "c"', "at most two tops"),
    # FlattenLayer, ReshapeLayer, SplitLayer: "Layer does not allow in-place computation."
    ('type: "Flatten" bottom: "x" top: "x"', "in-place"),
    ('type: "Reshape" bottom: "x" top: "x" reshape_param { shape { dim: 0 dim: -1 } }', "in-place"),
    ('type: "Split" bottom: "x" top: "x" top: "x_copy"', "in-place"),
    # LossLayer::Reshape: "The data and label should have the same first dimension." (the counts agree here)
    ('type: "SoftmaxWithLoss" bottom: "z" bottom: "l2" top: "loss" softmax_param { axis: 1 }', "first dimension"),
    ('type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 4 }', "odd"),
    ('type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 2 axis: 4 }', "out of range"),
    ('type: "BatchNorm" bottom: "x" top: "y" param { lr_mult: 1 }', "lr_mult"),
]


@pytest.mark.parametrize("layer,message", BAD_CASES, ids=[c[1] for c in BAD_CASES])
def test_bad_parameters_name_the_layer(layer: str, message: str) -> None:
    with pytest.raises(NetDefinitionError) as info:
        make_net(f'layer {{ name: "bad_layer" {layer} }}',
                 {"x": (2, 3, 4, 5), "x2": (2, 3, 4, 5), "z": (2, 3, 2, 2), "v": (6,), "l": (2, 2, 2), "l2": (4, 2)})
    assert info.value.layer == "bad_layer"
    assert "bad_layer" in str(info.value)
    assert message in str(info.value)
