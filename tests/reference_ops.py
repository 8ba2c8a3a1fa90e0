"""Numpy reference implementations of Caffe's layers, written from Caffe's sources (forward passes).

They are deliberately independent of the torch converters: float64, explicit loops over output
positions or Caffe's own (outer, dim, inner) indexing, and none of the library's helpers. Sizes in
the tests are tiny, so clarity wins over speed here.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

FLT_MAX = float(np.finfo(np.float32).max)
FLT_MIN = float(np.finfo(np.float32).tiny)


def _f64(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


# --- vision ------------------------------------------------------------------------------------------
def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride: Sequence[int] = (1, 1),
           pad: Sequence[int] = (0, 0), dilation: Sequence[int] = (1, 1), group: int = 1) -> np.ndarray:
    """Caffe's Convolution: weight (O, C/group, kh, kw); output size (H + 2p - ext) // s + 1."""
    x, weight = _f64(x), _f64(weight)
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    assert cg * group == c and o % group == 0
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dilation
    oh = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    padded = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    padded[:, :, ph:ph + h, pw:pw + w] = x
    out = np.zeros((n, o, oh, ow))
    og = o // group
    for g in range(group):
        xs = padded[:, g * cg:(g + 1) * cg]
        ws = weight[g * og:(g + 1) * og]
        for i in range(oh):
            for j in range(ow):
                # the dilated receptive field of output (i, j)
                patch = xs[:, :, i * sh:i * sh + dh * (kh - 1) + 1:dh, j * sw:j * sw + dw * (kw - 1) + 1:dw]
                out[:, g * og:(g + 1) * og, i, j] = np.einsum("nckl,ockl->no", patch, ws)
    if bias is not None:
        out += _f64(bias)[None, :, None, None]
    return out


def deconv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride: Sequence[int] = (1, 1),
             pad: Sequence[int] = (0, 0), dilation: Sequence[int] = (1, 1), group: int = 1) -> np.ndarray:
    """Caffe's Deconvolution (the convolution's backward pass): weight (C, O/group, kh, kw); each input
    pixel adds its kernel into the output at stride steps; size s * (H - 1) + ext - 2p."""
    x, weight = _f64(x), _f64(weight)
    n, c, h, w = x.shape
    _, og, kh, kw = weight.shape
    o = og * group
    cg = c // group
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dilation
    full_h = sh * (h - 1) + dh * (kh - 1) + 1
    full_w = sw * (w - 1) + dw * (kw - 1) + 1
    full = np.zeros((n, o, full_h, full_w))
    for g in range(group):
        xs = x[:, g * cg:(g + 1) * cg]
        ws = weight[g * cg:(g + 1) * cg]
        for i in range(h):
            for j in range(w):
                contrib = np.einsum("nc,cokl->nokl", xs[:, :, i, j], ws)
                full[:, g * og:(g + 1) * og, i * sh:i * sh + dh * (kh - 1) + 1:dh,
                     j * sw:j * sw + dw * (kw - 1) + 1:dw] += contrib
    out = full[:, :, ph:full_h - ph, pw:full_w - pw]
    if bias is not None:
        out = out + _f64(bias)[None, :, None, None]
    return out


def pooled_size(size: int, kernel: int, pad: int, stride: int, round_mode: str = "CEIL",
                any_pad: bool = False) -> int:
    """PoolingLayer::Reshape along one axis (float division then ceil/floor, then the pad rule)."""
    ratio = float(size + 2 * pad - kernel) / stride
    out = (math.ceil(ratio) if round_mode == "CEIL" else math.floor(ratio)) + 1
    if any_pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def pool2d(x: np.ndarray, method: str, kernel: Sequence[int] | None, stride: Sequence[int] = (1, 1),
           pad: Sequence[int] = (0, 0), round_mode: str = "CEIL") -> np.ndarray:
    """Caffe's Pooling forward: MAX (windows clipped to the input, start at -FLT_MAX), AVE (divided by
    the window clipped to the padded input), STOCHASTIC at test time (StoPoolForwardTest: sum x^2 /
    (FLT_MIN + sum x), the sum starting at FLT_MIN; no padding). ``kernel=None`` is global pooling."""
    x = _f64(x)
    n, c, h, w = x.shape
    kh, kw = (h, w) if kernel is None else kernel
    (sh, sw), (ph, pw) = stride, pad
    any_pad = ph > 0 or pw > 0
    oh = pooled_size(h, kh, ph, sh, round_mode, any_pad)
    ow = pooled_size(w, kw, pw, sw, round_mode, any_pad)
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            if method == "MAX":
                hs, ws = i * sh - ph, j * sw - pw
                he, we = min(hs + kh, h), min(ws + kw, w)
                hs, ws = max(hs, 0), max(ws, 0)
                window = x[:, :, hs:he, ws:we].reshape(n, c, -1)
                out[:, :, i, j] = window.max(axis=2, initial=-FLT_MAX)  # an empty window stays -FLT_MAX
            elif method == "AVE":
                hs, ws = i * sh - ph, j * sw - pw
                he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
                pool_size = (he - hs) * (we - ws)
                hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
                out[:, :, i, j] = x[:, :, hs:he, ws:we].sum(axis=(2, 3)) / pool_size
            elif method == "STOCHASTIC":
                hs, ws = i * sh, j * sw
                he, we = min(hs + kh, h), min(ws + kw, w)
                window = x[:, :, hs:he, ws:we]
                cumsum = FLT_MIN + window.sum(axis=(2, 3))  # "to avoid divide-by-zero problems"
                out[:, :, i, j] = (window * window).sum(axis=(2, 3)) / cumsum
            else:
                raise ValueError(method)
    return out


def lrn(x: np.ndarray, size: int, alpha: float, beta: float, k: float = 1.0,
        region: str = "ACROSS_CHANNELS") -> np.ndarray:
    """Caffe's LRN. ACROSS_CHANNELS: x / (k + alpha/size * sum of x^2 over the channel window)^beta.
    WITHIN_CHANNEL (split, square, AVE pool with pad (size-1)/2, power shift 1): x * (1 + alpha *
    mean of x^2 over the zero-padded size x size window)^-beta; k is not used."""
    x = _f64(x)
    n, c, h, w = x.shape
    half = (size - 1) // 2
    sq = x * x
    out = np.zeros_like(x)
    if region == "ACROSS_CHANNELS":
        for ch in range(c):
            lo, hi = max(ch - half, 0), min(ch + half + 1, c)
            scale = k + alpha / size * sq[:, lo:hi].sum(axis=1)
            out[:, ch] = x[:, ch] * scale ** -beta
        return out
    mean_sq = pool2d(sq, "AVE", (size, size), (1, 1), (half, half))
    return x * (1.0 + alpha * mean_sq) ** -beta


# --- common ----------------------------------------------------------------------------------------
def inner_product(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, axis: int = 1,
                  transpose: bool = False) -> np.ndarray:
    """Caffe's InnerProduct: (outer, K) x (K, N) with K the product of the axes from ``axis``."""
    x = _f64(x)
    axis = axis % x.ndim
    outer = int(np.prod(x.shape[:axis]))
    flat = x.reshape(outer, -1)
    wmat = _f64(weight) if transpose else _f64(weight).T  # (K, N)
    out = flat @ wmat
    if bias is not None:
        out = out + _f64(bias)[None, :]
    return out.reshape(*x.shape[:axis], wmat.shape[1])


def softmax(x: np.ndarray, axis: int = 1) -> np.ndarray:
    x = _f64(x)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def concat(xs: Sequence[np.ndarray], axis: int = 1) -> np.ndarray:
    return np.concatenate([_f64(x) for x in xs], axis=axis)


def relu(x: np.ndarray, negative_slope: float = 0.0) -> np.ndarray:
    x = _f64(x)
    return np.maximum(x, 0) + negative_slope * np.minimum(x, 0)


# --- normalization -----------------------------------------------------------------------------------
def batch_norm(x: np.ndarray, mean: np.ndarray, variance: np.ndarray, scale_factor: np.ndarray,
               eps: float, use_global_stats: bool, moving_average_fraction: float = 0.999
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Caffe's BatchNorm forward. Returns (top, mean blob, variance blob, scale_factor blob) after the
    pass (the blobs change only when batch statistics are used)."""
    x = _f64(x)
    n = x.shape[0]
    c = 1 if x.ndim == 1 else x.shape[1]
    v = x.reshape(n, c, -1)  # (num, channels, spatial_dim)
    mean, variance, scale_factor = _f64(mean).copy(), _f64(variance).copy(), _f64(scale_factor).copy()
    if use_global_stats:
        factor = 0.0 if scale_factor[0] == 0 else 1.0 / scale_factor[0]
        mu, var = mean * factor, variance * factor
    else:
        mu = v.mean(axis=(0, 2))
        var = ((v - mu[None, :, None]) ** 2).mean(axis=(0, 2))
        m = x.size // c
        correction = m / (m - 1) if m > 1 else 1.0
        scale_factor = scale_factor * moving_average_fraction + 1
        mean = mu + moving_average_fraction * mean
        variance = correction * var + moving_average_fraction * variance
    top = (v - mu[None, :, None]) / np.sqrt(var + eps)[None, :, None]
    return top.reshape(x.shape), mean, variance, scale_factor


def _outer_dim_inner(shape: tuple[int, ...], axis: int, operand_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(operand_shape) == 0:
        axis = 0
    assert tuple(shape[axis:axis + len(operand_shape)]) == tuple(operand_shape)
    outer = int(np.prod(shape[:axis]))
    dim = int(np.prod(operand_shape))
    inner = int(np.prod(shape[axis + len(operand_shape):]))
    return outer, dim, inner


def scale(x: np.ndarray, factor: np.ndarray, bias: np.ndarray | None = None, axis: int = 1) -> np.ndarray:
    """Caffe's Scale: x viewed as (outer, scale_dim, inner), each of the scale_dim rows multiplied by
    its factor, then Caffe's Bias layer over the same span."""
    x, factor = _f64(x), _f64(factor)
    outer, dim, inner = _outer_dim_inner(x.shape, axis % max(x.ndim, 1), factor.shape)
    out = x.reshape(outer, dim, inner) * factor.reshape(1, dim, 1)
    out = out.reshape(x.shape)
    return out if bias is None else add_bias(out, _f64(bias).reshape(factor.shape), axis)


def add_bias(x: np.ndarray, bias: np.ndarray, axis: int = 1) -> np.ndarray:
    """Caffe's Bias: x viewed as (outer, bias_dim, inner) plus the bias of each of the bias_dim rows."""
    x, bias = _f64(x), _f64(bias)
    outer, dim, inner = _outer_dim_inner(x.shape, axis % max(x.ndim, 1), bias.shape)
    return (x.reshape(outer, dim, inner) + bias.reshape(1, dim, 1)).reshape(x.shape)


# --- element-wise -----------------------------------------------------------------------------------
def eltwise(xs: Sequence[np.ndarray], operation: str = "SUM", coeffs: Sequence[float] | None = None
            ) -> np.ndarray:
    xs = [_f64(x) for x in xs]
    if operation == "SUM":
        coeffs = coeffs or [1.0] * len(xs)
        out = np.zeros_like(xs[0])
        for x, coeff in zip(xs, coeffs):
            out += coeff * x
        return out
    if operation == "PROD":
        out = xs[0] * xs[1]
        for x in xs[2:]:
            out = out * x
        return out
    # MAX: bottom 0 wins over bottom 1 only when strictly greater; later bottoms when strictly greater
    out = np.where(xs[0] > xs[1], xs[0], xs[1])
    for x in xs[2:]:
        out = np.where(x > out, x, out)
    return out


def prelu(x: np.ndarray, slope: np.ndarray, channel_shared: bool = False) -> np.ndarray:
    """Caffe's PReLU: element i has channel (i / count(2)) % channels (slope 0 when shared)."""
    x = _f64(x)
    flat = x.reshape(-1)
    channels = x.shape[1]
    dim = int(np.prod(x.shape[2:]))
    channel = (np.arange(flat.size) // dim) % channels
    slopes = _f64(slope).reshape(-1)[0 if channel_shared else channel]
    return (np.maximum(flat, 0) + slopes * np.minimum(flat, 0)).reshape(x.shape)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-_f64(x)))


def tanh(x: np.ndarray) -> np.ndarray:
    return np.tanh(_f64(x))


def elu(x: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    x = _f64(x)
    return np.where(x > 0, x, alpha * (np.exp(np.minimum(x, 0)) - 1))


def absval(x: np.ndarray) -> np.ndarray:
    return np.abs(_f64(x))


def power(x: np.ndarray, power: float = 1.0, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    """Caffe's Power: (shift + scale * x)^power, a constant when power * scale == 0."""
    x = _f64(x)
    if power * scale == 0:
        value = 1.0 if power == 0 else np.float64(shift) ** power
        return np.full_like(x, value)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (shift + scale * x) ** power


def exp(x: np.ndarray, base: float = -1.0, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    """Caffe's Exp: base^(shift + scale * x), base -1 meaning e."""
    b = math.e if base == -1 else base
    return b ** (shift + scale * _f64(x))


def log(x: np.ndarray, base: float = -1.0, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    """Caffe's Log: log_base(shift + scale * x), base -1 meaning e."""
    y = np.log(shift + scale * _f64(x))
    return y if base == -1 else y / math.log(base)


def bnll(x: np.ndarray) -> np.ndarray:
    """Caffe's BNLL: x + log(1 + exp(-x)) for x > 0, else log(1 + exp(x))."""
    x = _f64(x)
    positive = x + np.log1p(np.exp(-np.where(x > 0, x, 0)))
    other = np.log1p(np.exp(np.where(x > 0, 0, x)))
    return np.where(x > 0, positive, other)


def threshold(x: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    return (_f64(x) > threshold).astype(np.float64)


# --- shapes ----------------------------------------------------------------------------------------
def flatten(x: np.ndarray, axis: int = 1, end_axis: int = -1) -> np.ndarray:
    axis, end_axis = axis % x.ndim, end_axis % x.ndim
    shape = x.shape[:axis] + (int(np.prod(x.shape[axis:end_axis + 1])),) + x.shape[end_axis + 1:]
    return _f64(x).reshape(shape)


def reshape_shape(shape: tuple[int, ...], dims: Sequence[int], axis: int = 0, num_axes: int = -1
                  ) -> tuple[int, ...]:
    """ReshapeLayer::Reshape: copy axes for 0, infer the -1 from the other dims' product."""
    start = axis if axis >= 0 else len(shape) + axis + 1
    end = len(shape) if num_axes == -1 else start + num_axes
    top = list(shape[:start]) + list(dims) + list(shape[end:])
    copy_axes = [i for i, d in enumerate(dims) if d == 0]
    inferred = [i for i, d in enumerate(dims) if d == -1]
    for i in copy_axes:
        top[start + i] = shape[start + i]
    if inferred:
        explicit = int(np.prod([d for d in dims if d > 0])) * int(np.prod(shape[:start])) * int(np.prod(shape[end:]))
        explicit *= int(np.prod([shape[start + i] for i in copy_axes]))
        top[start + inferred[0]] = int(np.prod(shape)) // explicit
    assert int(np.prod(top)) == int(np.prod(shape))
    return tuple(top)


def slice_blob(x: np.ndarray, axis: int, slice_points: Sequence[int], n_tops: int) -> list[np.ndarray]:
    x = _f64(x)
    size = x.shape[axis]
    if slice_points:
        bounds = [0, *slice_points, size]
    else:
        step = size // n_tops
        bounds = [i * step for i in range(n_tops + 1)]
    return [np.take(x, np.arange(a, b), axis=axis) for a, b in zip(bounds[:-1], bounds[1:])]


def crop(x: np.ndarray, like_shape: tuple[int, ...], axis: int = 2, offsets: Sequence[int] = ()) -> np.ndarray:
    """CropLayer: axes from ``axis`` take the reference's size starting at their offset (one offset
    for all, one per axis, or none meaning 0)."""
    axis = axis % x.ndim
    index = []
    for i in range(x.ndim):
        if i < axis:
            index.append(slice(None))
            continue
        off = 0 if not offsets else offsets[0] if len(offsets) == 1 else offsets[i - axis]
        index.append(slice(off, off + like_shape[i]))
    return _f64(x)[tuple(index)]


def argmax(x: np.ndarray, top_k: int = 1, out_max_val: bool = False, axis: int | None = None) -> np.ndarray:
    """ArgMaxLayer: per item (or along ``axis``) sort (value, index) pairs descending and keep top_k;
    without an axis the top is (N, 1 or 2, top_k, 1...) with indices then values."""
    x = _f64(x)

    def top_pairs(values: np.ndarray) -> list[tuple[float, int]]:
        return sorted(((float(v), j) for j, v in enumerate(values)), reverse=True)[:top_k]

    if axis is not None:
        moved = np.moveaxis(x, axis, -1)
        out = np.zeros(moved.shape[:-1] + (top_k,))
        for idx in np.ndindex(moved.shape[:-1]):
            pairs = top_pairs(moved[idx])
            out[idx] = [v if out_max_val else j for v, j in pairs]
        return np.moveaxis(out, -1, axis)
    n = x.shape[0]
    flat = x.reshape(n, -1)
    ndim = max(x.ndim, 3)
    out = np.zeros((n, 2 if out_max_val else 1, top_k) + (1,) * (ndim - 3))
    for i in range(n):
        pairs = top_pairs(flat[i])
        out[i, 0, :, ...] = np.array([j for _, j in pairs]).reshape((top_k,) + (1,) * (ndim - 3))
        if out_max_val:
            out[i, 1, :, ...] = np.array([v for v, _ in pairs]).reshape((top_k,) + (1,) * (ndim - 3))
    return out


# --- losses ----------------------------------------------------------------------------------------
def accuracy(scores: np.ndarray, labels: np.ndarray, axis: int = 1, top_k: int = 1,
             ignore_label: int | None = None) -> float:
    """AccuracyLayer (BVLC master): num_better_predictions starts at -1 and counts every class whose score
    is >= the label's (the label's own included), so ties with the label count against it; a hit when
    it stays below top_k. The mean over the labels not ignored, 0 if there are none."""
    return accuracy_with_per_class(scores, labels, axis, top_k, ignore_label)[0]


def accuracy_with_per_class(scores: np.ndarray, labels: np.ndarray, axis: int = 1, top_k: int = 1,
                            ignore_label: int | None = None) -> tuple[float, np.ndarray]:
    """AccuracyLayer's two tops: the accuracy and, per class, hits / labels of that class (0 if none)."""
    scores = _f64(scores)
    axis = axis % scores.ndim
    outer = int(np.prod(scores.shape[:axis]))
    dim = scores.shape[axis]
    inner = int(np.prod(scores.shape[axis + 1:]))
    s = scores.reshape(outer, dim, inner)
    lab = np.asarray(labels).reshape(outer, inner)
    hits = counted = 0
    class_hits, class_counts = np.zeros(dim), np.zeros(dim)
    for i in range(outer):
        for j in range(inner):
            label = int(lab[i, j])
            if ignore_label is not None and label == ignore_label:
                continue
            class_counts[label] += 1
            num_better = -1  # the true class also counts as "better"
            for k in range(dim):
                if num_better >= top_k:
                    break
                num_better += int(s[i, k, j] >= s[i, label, j])
            if num_better < top_k:
                hits += 1
                class_hits[label] += 1
            counted += 1
    per_class = np.where(class_counts == 0, 0.0, class_hits / np.maximum(class_counts, 1))
    return (0.0 if counted == 0 else hits / counted), per_class


def softmax_with_loss(scores: np.ndarray, labels: np.ndarray, axis: int = 1, ignore_label: int | None = None,
                      normalization: str = "VALID") -> float:
    """SoftmaxWithLossLayer: -sum log(max(p[label], FLT_MIN)) / max(1, normalizer)."""
    prob = softmax(scores, axis)
    axis = axis % prob.ndim
    outer = int(np.prod(prob.shape[:axis]))
    inner = int(np.prod(prob.shape[axis + 1:]))
    p = prob.reshape(outer, prob.shape[axis], inner)
    lab = np.asarray(labels).reshape(outer, inner)
    loss, valid = 0.0, 0
    for i in range(outer):
        for j in range(inner):
            label = int(lab[i, j])
            if ignore_label is not None and label == ignore_label:
                continue
            loss -= math.log(max(p[i, label, j], FLT_MIN))
            valid += 1
    normalizer = {"FULL": outer * inner, "VALID": valid, "BATCH_SIZE": outer, "NONE": 1}[normalization]
    return loss / max(1.0, float(normalizer))
