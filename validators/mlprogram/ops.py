"""NumPy implementations of MIL operations, written from the MIL op specifications
(coremltools.converters.mil.mil.ops.defs). Each takes an Args view of its bound inputs and returns a
list of outputs. An op missing here stops the interpreter with its name: never a silent skip."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from common.errors import ArtifactError

OPS: dict[str, Callable] = {}


def op(*names: str):
    def register(fn):
        for name in names:
            OPS[name] = fn
        return fn
    return register


class Args:
    """An op's inputs by name (from bound inputs or, for constexpr ops, attributes)."""

    def __init__(self, values: dict[str, list], attributes: dict):
        self._values = values
        self._attributes = attributes

    def has(self, name: str) -> bool:
        return name in self._values or name in self._attributes

    def __getitem__(self, name: str):
        if name in self._values:
            return self._values[name][0]
        return self._attributes[name]

    def get(self, name: str, default=None):
        return self[name] if self.has(name) else default

    def list(self, name: str) -> list:
        return self._values.get(name, [])


def _f(x: np.ndarray) -> np.ndarray:
    """Compute in float32 (fp16 inputs are widened; the interpreter rounds fp16 results back)."""
    x = np.asarray(x)
    return x.astype(np.float32) if x.dtype == np.float16 else x


def _axes(axes, rank: int) -> tuple[int, ...]:
    return tuple(int(a) % rank for a in np.atleast_1d(axes))


# --- elementwise ---------------------------------------------------------------------------------

_BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "real_div": np.divide, "pow": np.power,
    "maximum": np.maximum, "minimum": np.minimum, "floor_div": np.floor_divide, "mod": np.mod,
    "equal": np.equal, "not_equal": np.not_equal, "less": np.less, "less_equal": np.less_equal,
    "greater": np.greater, "greater_equal": np.greater_equal, "logical_and": np.logical_and,
    "logical_or": np.logical_or, "logical_xor": np.logical_xor,
}
for _name, _fn in _BINARY.items():
    OPS[_name] = (lambda fn: lambda a: [fn(_f(a["x"]), _f(a["y"]))])(_fn)

def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # = 1 / (1 + exp(-x)), without exp's overflow for large -x


_UNARY = {
    "relu": lambda x: np.maximum(x, 0), "relu6": lambda x: np.clip(x, 0, 6), "tanh": np.tanh,
    "sigmoid": _sigmoid, "exp": np.exp, "exp2": np.exp2, "log": np.log, "sqrt": np.sqrt,
    "abs": np.abs, "floor": np.floor, "ceil": np.ceil, "round": np.round, "sign": np.sign, "sin": np.sin,
    "cos": np.cos, "tan": np.tan, "square": np.square, "logical_not": np.logical_not, "identity": lambda x: x,
    "erf": np.vectorize(math.erf, otypes=[np.float32]), "silu": lambda x: x * _sigmoid(x),
    "softsign": lambda x: x / (1 + np.abs(x)), "softplus": lambda x: np.logaddexp(0, x),
    "acos": np.arccos, "asin": np.arcsin, "atan": np.arctan, "atanh": np.arctanh, "cosh": np.cosh, "sinh": np.sinh,
}
for _name, _fn in _UNARY.items():
    OPS[_name] = (lambda fn: lambda a: [fn(_f(a["x"]))])(_fn)


@op("rsqrt")
def _rsqrt(a):
    return [1 / np.sqrt(_f(a["x"]) + a.get("epsilon", 1e-12))]


@op("inverse")
def _inverse(a):
    return [1 / (_f(a["x"]) + a.get("epsilon", 1e-4))]


@op("clip")
def _clip(a):
    return [np.clip(_f(a["x"]), _f(a["alpha"]), _f(a["beta"]))]


@op("threshold")
def _threshold(a):
    return [np.maximum(_f(a["x"]), _f(a["alpha"]))]


@op("thresholded_relu")
def _thresholded_relu(a):
    x = _f(a["x"])
    return [np.where(x > a.get("alpha", 1.0), x, 0).astype(x.dtype)]


@op("leaky_relu")
def _leaky_relu(a):
    x = _f(a["x"])
    return [np.where(x >= 0, x, a.get("alpha", 0.01) * x)]


@op("elu")
def _elu(a):
    x = _f(a["x"])
    return [np.where(x > 0, x, a.get("alpha", 1.0) * (np.exp(x) - 1))]


@op("sigmoid_hard")
def _sigmoid_hard(a):
    return [np.clip(a.get("alpha", 0.2) * _f(a["x"]) + a.get("beta", 0.5), 0, 1)]


@op("linear_activation")
def _linear_activation(a):
    return [a.get("alpha", 1.0) * _f(a["x"]) + a.get("beta", 0.0)]


@op("scaled_tanh")
def _scaled_tanh(a):
    return [a.get("alpha", 1.0) * np.tanh(a.get("beta", 1.0) * _f(a["x"]))]


@op("prelu")
def _prelu(a):
    x, alpha = _f(a["x"]), _f(a["alpha"])
    return [np.where(x >= 0, x, alpha.reshape(_channel_shape(x)) * x)]


@op("gelu")
def _gelu(a):
    x = _f(a["x"])
    mode = a.get("mode", "EXACT")
    if mode == "TANH_APPROXIMATION":
        return [0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))]
    if mode == "SIGMOID_APPROXIMATION":
        return [x / (1 + np.exp(-1.702 * x))]
    return [0.5 * x * (1 + _UNARY["erf"](x / math.sqrt(2)))]


@op("select")
def _select(a):
    return [np.where(a["cond"], _f(a["a"]), _f(a["b"]))]


_CAST = {"fp16": np.float16, "fp32": np.float32, "fp64": np.float64, "int32": np.int32, "int64": np.int64,
         "int16": np.int16, "int8": np.int8, "uint8": np.uint8, "uint16": np.uint16, "bool": np.bool_}


@op("cast")
def _cast(a):
    return [np.asarray(a["x"]).astype(_CAST[str(a["dtype"])])]


# --- linear algebra ----------------------------------------------------------------------------------

@op("linear")
def _linear(a):
    x, w = _f(a["x"]), _f(a["weight"])
    out = x @ w.T
    return [out + _f(a["bias"]) if a.has("bias") else out]


@op("matmul")
def _matmul(a):
    x, y = _f(a["x"]), _f(a["y"])
    if a.get("transpose_x", False):
        x = np.swapaxes(x, -1, -2)
    if a.get("transpose_y", False):
        y = np.swapaxes(y, -1, -2)
    return [np.matmul(x, y)]


@op("einsum")
def _einsum(a):
    return [np.einsum(str(a["equation"]), *[_f(v) for v in a.list("values")])]


# --- convolution and pooling -------------------------------------------------------------------------

def _same_pads(size: int, kernel: int, stride: int, dilation: int, lower: bool) -> tuple[int, int]:
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    small, big = total // 2, total - total // 2
    return (big, small) if lower else (small, big)


def _spatial_pads(a, spatial: tuple[int, ...], kernel: tuple[int, ...], strides, dilations) -> list[tuple[int, int]]:
    pad_type = str(a.get("pad_type", "valid"))
    if pad_type == "custom":
        pad = [int(p) for p in np.atleast_1d(a.get("pad", np.zeros(2 * len(spatial), np.int32)))]
        return [(pad[2 * i], pad[2 * i + 1]) for i in range(len(spatial))]
    if pad_type in ("same", "same_lower"):
        return [_same_pads(spatial[i], kernel[i], strides[i], dilations[i], pad_type == "same_lower")
                for i in range(len(spatial))]
    return [(0, 0)] * len(spatial)


def _windows(x: np.ndarray, kernel, strides, dilations, out_shape) -> np.ndarray:
    """x: N x C x *spatial (padded). Returns N x C x *out x *kernel views."""
    n_spatial = len(kernel)
    view_shape = (*x.shape[:2], *out_shape, *kernel)
    st = x.strides
    view_strides = (*st[:2], *(st[2 + i] * strides[i] for i in range(n_spatial)),
                    *(st[2 + i] * dilations[i] for i in range(n_spatial)))
    return np.lib.stride_tricks.as_strided(x, view_shape, view_strides, writeable=False)


@op("conv")
def _conv(a):
    x, w = _f(a["x"]), _f(a["weight"])
    n_spatial = w.ndim - 2
    strides = [int(s) for s in np.atleast_1d(a.get("strides", [1] * n_spatial))]
    dilations = [int(d) for d in np.atleast_1d(a.get("dilations", [1] * n_spatial))]
    groups = int(a.get("groups", 1))
    kernel = w.shape[2:]
    pads = _spatial_pads(a, x.shape[2:], kernel, strides, dilations)
    x = np.pad(x, [(0, 0), (0, 0), *pads])
    out_shape = [(x.shape[2 + i] - (kernel[i] - 1) * dilations[i] - 1) // strides[i] + 1 for i in range(n_spatial)]
    patches = _windows(np.ascontiguousarray(x), kernel, strides, dilations, out_shape)  # N C *out *k
    n, c_in = x.shape[:2]
    c_out = w.shape[0]
    cg, og = c_in // groups, c_out // groups
    patches = patches.reshape(n, groups, cg, *out_shape, *kernel)
    wg = w.reshape(groups, og, cg, *kernel)
    spatial = "".join("hwd"[i] for i in range(n_spatial))
    kern = "".join("klm"[i] for i in range(n_spatial))
    out = np.einsum(f"ngc{spatial}{kern},goc{kern}->ngo{spatial}", patches, wg, optimize=True)
    out = out.reshape(n, c_out, *out_shape)
    if a.has("bias"):
        out = out + _f(a["bias"]).reshape(1, -1, *([1] * n_spatial))
    return [out]


def _pool(a, reduce: str):
    x = _f(a["x"])
    kernel = [int(k) for k in np.atleast_1d(a["kernel_sizes"])]
    n_spatial = len(kernel)
    strides = [int(s) for s in np.atleast_1d(a.get("strides", [1] * n_spatial))]
    ones = [1] * n_spatial
    pads = _spatial_pads(a, x.shape[2:], kernel, strides, ones)
    if a.get("ceil_mode", False):  # extend the end padding so the last partial window is kept
        pads = [(lo, hi + (strides[i] - (x.shape[2 + i] + lo + hi - kernel[i]) % strides[i]) % strides[i])
                for i, (lo, hi) in enumerate(pads)]
    fill = -np.inf if reduce == "max" else 0.0
    padded = np.pad(x, [(0, 0), (0, 0), *pads], constant_values=fill)
    out_shape = [(padded.shape[2 + i] - kernel[i]) // strides[i] + 1 for i in range(n_spatial)]
    win = _windows(np.ascontiguousarray(padded), kernel, strides, ones, out_shape)
    axes = tuple(range(2 + n_spatial, 2 + 2 * n_spatial))
    if reduce == "max":
        return [win.max(axis=axes)]
    if reduce == "l2":
        return [np.sqrt((win ** 2).sum(axis=axes))]
    total = win.sum(axis=axes)
    if a.get("exclude_padding_from_average", False):
        valid = np.pad(np.ones((1, 1, *x.shape[2:]), np.float32), [(0, 0), (0, 0), *pads])
        counts = _windows(valid, kernel, strides, ones, out_shape).sum(axis=axes)
        return [total / counts]
    return [total / float(np.prod(kernel))]


OPS["max_pool"] = lambda a: _pool(a, "max")
OPS["avg_pool"] = lambda a: _pool(a, "avg")
OPS["l2_pool"] = lambda a: _pool(a, "l2")


@op("upsample_nearest_neighbor")
def _upsample_nearest(a):
    x = _f(a["x"])
    sh, sw = float(a.get("scale_factor_height", 1)), float(a.get("scale_factor_width", 1))
    h, w = x.shape[-2:]
    rows = np.minimum((np.arange(int(h * sh)) / sh).astype(np.int64), h - 1)
    cols = np.minimum((np.arange(int(w * sw)) / sw).astype(np.int64), w - 1)
    return [x[..., rows, :][..., cols]]


@op("upsample_bilinear")
def _upsample_bilinear(a):
    x = _f(a["x"])
    sh, sw = float(a.get("scale_factor_height", 1)), float(a.get("scale_factor_width", 1))
    align = bool(a.get("align_corners", False))

    def coords(size: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = int(size * scale)
        if align and out > 1:
            src = np.arange(out) * (size - 1) / (out - 1)
        else:
            src = np.clip((np.arange(out) + 0.5) / scale - 0.5, 0, size - 1)
        lo = np.floor(src).astype(np.int64)
        hi = np.minimum(lo + 1, size - 1)
        return lo, hi, (src - lo).astype(np.float32)

    h0, h1, fh = coords(x.shape[-2], sh)
    w0, w1, fw = coords(x.shape[-1], sw)
    top = x[..., h0, :] * (1 - fh)[:, None] + x[..., h1, :] * fh[:, None]
    return [top[..., w0] * (1 - fw) + top[..., w1] * fw]


# --- normalization and softmax ---------------------------------------------------------------------------

def _scale_shift(out: np.ndarray, a, shape: tuple | None = None) -> list[np.ndarray]:
    """The optional gamma and beta of the normalization ops (reshaped per channel where given)."""
    if a.has("gamma"):
        out = out * (_f(a["gamma"]).reshape(shape) if shape else _f(a["gamma"]))
    if a.has("beta"):
        out = out + (_f(a["beta"]).reshape(shape) if shape else _f(a["beta"]))
    return [out]


def _channel_shape(x: np.ndarray) -> tuple:
    return (1, -1, *([1] * (x.ndim - 2)))


@op("batch_norm")
def _batch_norm(a):
    x = _f(a["x"])
    shape = _channel_shape(x)
    out = (x - _f(a["mean"]).reshape(shape)) / np.sqrt(_f(a["variance"]).reshape(shape) + a.get("epsilon", 1e-5))
    return _scale_shift(out, a, shape)


@op("layer_norm")
def _layer_norm(a):
    x = _f(a["x"])
    axes = _axes(a.get("axes", [-1]), x.ndim)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return _scale_shift((x - mean) / np.sqrt(var + a.get("epsilon", 1e-5)), a)


@op("instance_norm")
def _instance_norm(a):
    x = _f(a["x"])
    axes = tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    out = (x - mean) / np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + a.get("epsilon", 1e-5))
    return _scale_shift(out, a, _channel_shape(x))


@op("softmax")
def _softmax(a):
    x = _f(a["x"])
    axis = int(a.get("axis", -1))
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return [e / e.sum(axis=axis, keepdims=True)]


# --- reductions ------------------------------------------------------------------------------------------

def _reduce(fn):
    def run(a):
        x = _f(a["x"])
        axes = a.get("axes")
        axes = tuple(range(x.ndim)) if axes is None else _axes(axes, x.ndim)
        return [fn(x, axis=axes, keepdims=bool(a.get("keep_dims", False)))]
    return run


for _name, _fn in {"reduce_mean": np.mean, "reduce_sum": np.sum, "reduce_max": np.max, "reduce_min": np.min,
                   "reduce_prod": np.prod, "reduce_l1_norm": lambda x, **k: np.abs(x).sum(**k),
                   "reduce_l2_norm": lambda x, **k: np.sqrt((x * x).sum(**k)),
                   "reduce_sum_square": lambda x, **k: (x * x).sum(**k),
                   "reduce_log_sum_exp": lambda x, **k: np.log(np.exp(x).sum(**k)),
                   "reduce_log_sum": lambda x, **k: np.log(x.sum(**k))}.items():
    OPS[_name] = _reduce(_fn)


def _arg_reduce(fn):
    def run(a):
        x = _f(a["x"])
        axis = int(a.get("axis", -1))
        out = fn(x, axis=axis).astype(np.int32)
        return [np.expand_dims(out, axis) if a.get("keep_dims", False) else out]
    return run


OPS["reduce_argmax"] = _arg_reduce(np.argmax)
OPS["reduce_argmin"] = _arg_reduce(np.argmin)


# --- shapes and indexing -----------------------------------------------------------------------------------

@op("reshape")
def _reshape(a):
    return [np.reshape(a["x"], [int(s) for s in np.atleast_1d(a["shape"])])]


@op("transpose")
def _transpose(a):
    return [np.transpose(a["x"], [int(p) for p in a["perm"]])]


@op("expand_dims")
def _expand_dims(a):
    x = np.asarray(a["x"])
    axes = sorted(int(ax) % (x.ndim + len(np.atleast_1d(a["axes"]))) for ax in np.atleast_1d(a["axes"]))
    for axis in axes:
        x = np.expand_dims(x, axis)
    return [x]


@op("squeeze")
def _squeeze(a):
    x = np.asarray(a["x"])
    axes = a.get("axes")
    return [np.squeeze(x) if axes is None else np.squeeze(x, axis=_axes(axes, x.ndim))]


@op("concat")
def _concat(a):
    values = [np.asarray(v) for v in a.list("values")]
    if all(v.ndim == 0 for v in values):  # MIL concatenates scalars into a vector (shapes built from sizes)
        values = [v.reshape(1) for v in values]
    axis = int(a["axis"])
    if a.get("interleave", False):
        stacked = np.stack(values, axis=axis + 1 if axis >= 0 else axis)
        shape = list(values[0].shape)
        shape[axis] *= len(values)
        return [stacked.reshape(shape)]
    return [np.concatenate(values, axis=axis)]


@op("stack")
def _stack(a):
    return [np.stack([np.asarray(v) for v in a.list("values")], axis=int(a["axis"]))]


@op("split")
def _split(a):
    x = np.asarray(a["x"])
    axis = int(a["axis"])
    if a.has("split_sizes"):
        bounds = np.cumsum([int(s) for s in np.atleast_1d(a["split_sizes"])])[:-1]
        return list(np.split(x, bounds, axis=axis))
    return list(np.split(x, int(a["num_splits"]), axis=axis))


@op("slice_by_index")
def _slice_by_index(a):
    x = np.asarray(a["x"])
    return [x[_slice_index(a, x.ndim)]]


@op("slice_update")
def _slice_update(a):
    """x with the slice slice_by_index would read replaced by update (a copy: x may be a state's value)."""
    x = np.array(a["x"], copy=True)
    index = _slice_index(a, x.ndim)
    update = np.asarray(a["update"])
    if x[index].shape != update.shape:
        raise ArtifactError(f"slice_update: the update's shape {update.shape} is not the slice's {x[index].shape}")
    x[index] = update
    return [x]


def _slice_index(a, rank: int) -> tuple:
    begin = [int(v) for v in np.atleast_1d(a["begin"])]
    end = [int(v) for v in np.atleast_1d(a["end"])]
    stride = [int(v) for v in np.atleast_1d(a.get("stride", [1] * rank))]
    masks = {k: [bool(v) for v in np.atleast_1d(a.get(k, [False] * rank))]
             for k in ("begin_mask", "end_mask", "squeeze_mask")}
    index = []
    for i in range(rank):
        if masks["squeeze_mask"][i]:
            index.append(begin[i])
            continue
        start = None if masks["begin_mask"][i] else begin[i]
        stop = None if masks["end_mask"][i] else end[i]
        index.append(slice(start, stop, stride[i]))
    return tuple(index)


@op("slice_by_size")
def _slice_by_size(a):
    x = np.asarray(a["x"])
    begin = [int(v) for v in np.atleast_1d(a["begin"])]
    size = [int(v) for v in np.atleast_1d(a["size"])]
    return [x[tuple(slice(b, None if s == -1 else b + s) for b, s in zip(begin, size, strict=True))]]


@op("gather")
def _gather(a):
    x, indices = np.asarray(a["x"]), np.asarray(a["indices"]).astype(np.int64)
    axis = int(a.get("axis", 0)) % x.ndim
    batch_dims = int(a.get("batch_dims", 0))
    if batch_dims == 0:
        return [np.take(x, indices, axis=axis)]
    flat_x = x.reshape(-1, *x.shape[batch_dims:])
    flat_i = indices.reshape(-1, *indices.shape[batch_dims:])
    out = np.stack([np.take(xi, ii, axis=axis - batch_dims) for xi, ii in zip(flat_x, flat_i, strict=True)])
    return [out.reshape(*x.shape[:batch_dims], *out.shape[1:])]


@op("gather_nd")
def _gather_nd(a):
    """x[indices[..., 0], ..., indices[..., K-1]] over the leading batch_dims shared by x and indices."""
    x, indices = np.asarray(a["x"]), np.asarray(a["indices"]).astype(np.int64)
    batch_dims = int(a.get("batch_dims", 0))
    depth = indices.shape[-1]
    flat_x = x.reshape(-1, *x.shape[batch_dims:])
    flat_i = indices.reshape(-1, *indices.shape[batch_dims:])
    out = np.stack([xi[tuple(np.moveaxis(ii, -1, 0) % np.array(xi.shape[:depth]).reshape(-1, *[1] * (ii.ndim - 1)))]
                    for xi, ii in zip(flat_x, flat_i, strict=True)])
    return [out.reshape(*x.shape[:batch_dims], *out.shape[1:])]


@op("gather_along_axis")
def _gather_along_axis(a):
    return [np.take_along_axis(np.asarray(a["x"]), np.asarray(a["indices"]).astype(np.int64),
                               axis=int(a.get("axis", 0)))]


_SCATTER_MODES = {"update": None, "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
                  "max": np.maximum, "min": np.minimum}


@op("scatter")
def _scatter(a):
    data = np.array(a["data"], copy=True)
    indices, updates = np.asarray(a["indices"]).astype(np.int64), np.asarray(a["updates"])
    axis = int(a.get("axis", 0)) % data.ndim
    moved = np.moveaxis(data, axis, 0)
    moved_updates = np.moveaxis(updates, axis, 0)
    mode = _SCATTER_MODES[str(a.get("mode", "update"))]
    for position, index in enumerate(indices):
        moved[index] = moved_updates[position] if mode is None else mode(moved[index], moved_updates[position])
    return [np.moveaxis(moved, 0, axis)]


@op("tile")
def _tile(a):
    return [np.tile(a["x"], [int(r) for r in np.atleast_1d(a["reps"])])]


@op("pad")
def _pad(a):
    x = _f(a["x"])
    pad = [int(p) for p in np.atleast_1d(a["pad"])]
    pairs = [(0, 0)] * (x.ndim - len(pad) // 2) + [(pad[2 * i], pad[2 * i + 1]) for i in range(len(pad) // 2)]
    mode = str(a.get("mode", "constant"))
    if mode == "constant":
        return [np.pad(x, pairs, constant_values=a.get("constant_val", 0.0))]
    return [np.pad(x, pairs, mode={"reflect": "reflect", "replicate": "edge"}[mode])]


@op("shape")
def _shape(a):
    return [np.array(np.shape(a["x"]), np.int32)]


@op("fill")
def _fill(a):
    return [np.full([int(s) for s in np.atleast_1d(a["shape"])], a.get("value", 0.0), np.float32)]


@op("fill_like")
def _fill_like(a):
    value = np.asarray(a.get("value", 0.0))
    narrow = {np.dtype(np.float64): np.float32, np.dtype(np.int64): np.int32}  # MIL has fp32 and int32 scalars
    dtype = _CAST[str(a["dtype"])] if a.has("dtype") else narrow.get(value.dtype, value.dtype)
    return [np.full(np.shape(a["ref_tensor"]), value, dtype)]


@op("range_1d")
def _range_1d(a):
    return [np.arange(a["start"], a["end"], a["step"])]


@op("flatten2d")
def _flatten2d(a):
    x = np.asarray(a["x"])
    axis = int(a.get("axis", 1)) % max(x.ndim, 1)
    return [x.reshape(int(np.prod(x.shape[:axis])), -1)]


@op("reverse")
def _reverse(a):
    x = np.asarray(a["x"])
    axes = a.get("axes")
    return [np.flip(x, axis=None if axes is None else _axes(axes, x.ndim))]


# --- weight decompression (constexpr ops, iOS16/17 and their iOS18 successors) --------------------------

def _per_axis(values: np.ndarray, rank: int, axis: int) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim == 0:
        return values
    shape = [1] * rank
    shape[axis] = -1
    return values.reshape(shape)


@op("constexpr_affine_dequantize")
def _affine_dequantize(a):
    q = np.asarray(a["quantized_data"])
    axis = int(a["axis"]) % q.ndim
    zero_point = _per_axis(a["zero_point"], q.ndim, axis).astype(np.float32)
    scale = _per_axis(a["scale"], q.ndim, axis).astype(np.float32)
    return [(q.astype(np.float32) - zero_point) * scale]


def _blockwise(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Repeat per-block parameters (same rank as the data) up to the data's shape."""
    for axis, (n_data, n_param) in enumerate(zip(shape, values.shape, strict=True)):
        values = np.repeat(values, n_data // n_param, axis=axis)
    return values


@op("constexpr_blockwise_shift_scale")
def _blockwise_shift_scale(a):
    data = np.asarray(a["data"])
    out = data.astype(np.float32)
    if a.has("offset"):
        out = out - _blockwise(np.asarray(a["offset"]).astype(np.float32), data.shape)
    return [out * _blockwise(np.asarray(a["scale"]).astype(np.float32), data.shape)]


@op("constexpr_lut_to_dense")
def _lut_to_dense(a):
    lut = np.asarray(a["lut"])
    indices = np.asarray(a["indices"])
    if a.has("shape"):  # iOS16/17: a flat LUT and packed uint8 indices, unpacked to shape
        from validators.mlprogram.reader import unpack_bits

        shape = tuple(int(s) for s in np.atleast_1d(a["shape"]))
        count = int(np.prod(shape))
        bits = int(math.log2(lut.size))
        unpacked = unpack_bits(indices.astype(np.uint8).tobytes(), bits, count, signed=False)
        return [lut.reshape(-1)[unpacked.astype(np.int64)].reshape(shape)]
    # iOS18: indices hold one palette index per element; the LUT has a palette per block, the
    # palette on its second-to-last axis and the vector size on its last.
    n_palette, vector = lut.shape[-2], lut.shape[-1]
    block_rank = lut.ndim - 2
    palettes = _blockwise(np.arange(int(np.prod(lut.shape[:block_rank]))).reshape(lut.shape[:block_rank]),
                          indices.shape) if block_rank else np.zeros(indices.shape, np.int64)
    flat_lut = lut.reshape(-1, n_palette, vector)
    if vector != 1:  # edgeport never emits it; a program from elsewhere may
        raise ArtifactError("constexpr_lut_to_dense with vector_size > 1 (vector palettization) is beyond the "
                            "reference interpreter; validate that model on macOS with Core ML")
    return [flat_lut[palettes.astype(np.int64), indices.astype(np.int64), 0]]


@op("constexpr_cast")
def _constexpr_cast(a):
    return [np.asarray(a["source_val"]).astype(_CAST[str(a["output_dtype"])])]


@op("dequantize")
def _dequantize(a):
    x = np.asarray(a["input"])
    axis = a.get("axis")
    rank = x.ndim
    scale = np.asarray(a["scale"]).astype(np.float32)
    zero_point = np.asarray(a.get("zero_point", 0)).astype(np.float32)
    if axis is not None:
        scale, zero_point = _per_axis(scale, rank, int(axis)), _per_axis(zero_point, rank, int(axis))
    return [(x.astype(np.float32) - zero_point) * scale]


# --- recurrent (lstm, gru, rnn): x is <sequence, batch, input>; semantics as coremltools' own tests
# (ops/tests/iOS14/test_recurrent.py): a "reverse" layer emits its steps in processing order, a
# bidirectional LSTM puts the backward steps back at their input positions --------------------------

_RECURRENT_ACTIVATIONS = {
    "tanh": np.tanh, "scaled_tanh": np.tanh,  # alpha = beta = 1, the defaults
    "sigmoid": _sigmoid, "hard_sigmoid": lambda x: np.clip(0.2 * x + 0.5, 0, 1),
    "sigmoid_hard": lambda x: np.clip(0.2 * x + 0.5, 0, 1), "relu": lambda x: np.maximum(x, 0),
    "linear": lambda x: x,
}


def _recurrent_activation(a, name: str, default: str) -> Callable:
    chosen = str(a.get(name, default)).lower()
    if chosen not in _RECURRENT_ACTIVATIONS:
        raise ArtifactError(f"recurrent activation {chosen!r} is not one MIL defines "
                            f"({', '.join(_RECURRENT_ACTIVATIONS)})")
    return _RECURRENT_ACTIVATIONS[chosen]


def _recur(x: np.ndarray, step: Callable, state: tuple, reverse: bool) -> tuple[np.ndarray, tuple]:
    """Run `step` over the sequence; the stacked hidden states in processing order, and the final state."""
    hidden = []
    for t in (range(len(x) - 1, -1, -1) if reverse else range(len(x))):
        state = step(x[t], state)
        hidden.append(state[0])
    return np.stack(hidden), state


def _recurrent_outputs(a, steps: np.ndarray, final: tuple) -> list[np.ndarray]:
    sequence = steps if bool(a.get("output_sequence", False)) else final[0][None]
    return [sequence, *final]


def _bias(a, name: str, size: int) -> np.ndarray:
    return _f(a[name]) if a.get(name) is not None else np.zeros(size, np.float32)


@op("lstm")
def _lstm(a):
    x = _f(a["x"])
    hidden = a["weight_hh"].shape[1]
    gate, cell, output = (_recurrent_activation(a, "recurrent_activation", "sigmoid"),
                          _recurrent_activation(a, "cell_activation", "tanh"),
                          _recurrent_activation(a, "activation", "tanh"))
    clip = a.get("clip")

    def layer(suffix: str) -> Callable:
        w_ih, w_hh = _f(a["weight_ih" + suffix]), _f(a["weight_hh" + suffix])
        bias = _bias(a, "bias" + suffix, 4 * hidden)
        p_i, p_f, p_o = np.split(_bias(a, "peephole" + suffix, 3 * hidden), 3)

        def step(x_t, state):
            h, c = state
            g_i, g_f, g_o, g_z = np.split(x_t @ w_ih.T + h @ w_hh.T + bias, 4, axis=-1)  # ifoz layout
            c = gate(g_f + c * p_f) * c + gate(g_i + c * p_i) * cell(g_z)
            if clip is not None:
                c = np.clip(c, -float(clip), float(clip))
            return gate(g_o + c * p_o) * output(c), c
        return step

    h0, c0 = _f(a["initial_h"]), _f(a["initial_c"])
    direction = str(a.get("direction", "forward"))
    if direction != "bidirectional":
        steps, final = _recur(x, layer(""), (h0, c0), direction == "reverse")
        return _recurrent_outputs(a, steps, final)
    forward, (h_f, c_f) = _recur(x, layer(""), (h0[:, :hidden], c0[:, :hidden]), False)
    backward, (h_b, c_b) = _recur(x, layer("_back"), (h0[:, hidden:], c0[:, hidden:]), True)
    final = (np.concatenate([h_f, h_b], -1), np.concatenate([c_f, c_b], -1))
    steps = np.concatenate([forward, backward[::-1]], axis=-1)
    return _recurrent_outputs(a, steps, final)


@op("gru")
def _gru(a):
    x, w_ih, w_hh = _f(a["x"]), _f(a["weight_ih"]), _f(a["weight_hh"])
    hidden = w_hh.shape[1]
    gate, output = (_recurrent_activation(a, "recurrent_activation", "sigmoid"),
                    _recurrent_activation(a, "activation", "tanh"))
    w_r, w_o, w_z = np.split(w_ih, 3)  # the MIL layout: reset, output (new), update
    r_r, r_o, r_z = np.split(w_hh, 3)
    b_r, b_o, b_z = np.split(_bias(a, "bias", 3 * hidden), 3)

    def step(x_t, state):
        (h,) = state
        z = gate(x_t @ w_z.T + h @ r_z.T + b_z)
        r = gate(x_t @ w_r.T + h @ r_r.T + b_r)
        o = output(x_t @ w_o.T + (r * h) @ r_o.T + b_o)  # the reset gate scales h before R_o (Core ML's GRU)
        return ((1 - z) * o + z * h,)

    steps, final = _recur(x, step, (_f(a["initial_h"]),), str(a.get("direction", "forward")) == "reverse")
    return _recurrent_outputs(a, steps, final)


@op("rnn")
def _rnn(a):
    x, w_ih, w_hh = _f(a["x"]), _f(a["weight_ih"]), _f(a["weight_hh"])
    bias = _bias(a, "bias", w_hh.shape[0])
    activation = _recurrent_activation(a, "activation", "tanh")

    def step(x_t, state):
        return (activation(x_t @ w_ih.T + state[0] @ w_hh.T + bias),)

    steps, final = _recur(x, step, (_f(a["initial_h"]),), str(a.get("direction", "forward")) == "reverse")
    return _recurrent_outputs(a, steps, final)


# --- ops the converter emits for less common layers (positions, masks, selection) ---------------------------

@op("clamped_relu")
def _clamped_relu(a):
    x = _f(a["x"])
    return [np.minimum(np.where(x >= 0, x, a.get("alpha", 0.0) * x), a.get("beta", 6.0))]


@op("softplus_parametric")
def _softplus_parametric(a):
    x = _f(a["x"])  # alpha and beta per channel, axis -3 ([C, H, W] or [N, C, H, W])
    shape = (-1,) + (1,) * (x.ndim - 2 if x.ndim == 4 else x.ndim - 1)
    alpha, beta = (np.reshape(_f(a[name]), shape) for name in ("alpha", "beta"))
    return [alpha * np.logaddexp(0, beta * x)]


@op("l2_norm")
def _l2_norm(a):
    x = _f(a["x"])  # normalized over the last three dimensions, the ones before them are batch
    axes = tuple(range(x.ndim - 3, x.ndim))
    return [x / np.sqrt((x * x).sum(axis=axes, keepdims=True) + a.get("epsilon", 1e-6))]


@op("cumsum")
def _cumsum(a):
    x = np.asarray(a["x"])
    axis = int(a.get("axis", 0)) % x.ndim
    if a.get("reverse", False):
        x = np.flip(x, axis)
    out = np.cumsum(x, axis=axis, dtype=x.dtype)
    if a.get("exclusive", False):
        out = out - x
    return [np.flip(out, axis) if a.get("reverse", False) else out]


@op("one_hot")
def _one_hot(a):
    indices = np.asarray(a["indices"]).astype(np.int64)
    depth, axis = int(a["one_hot_vector_size"]), int(a.get("axis", -1))
    on, off = np.asarray(a.get("on_value", 1)), np.asarray(a.get("off_value", 0))
    hot = np.arange(depth) == indices[..., None]
    out = np.where(hot, on, off).astype(np.result_type(on, off))
    return [np.moveaxis(out, -1, axis % out.ndim)]


def _sort_order(x: np.ndarray, axis: int, ascending: bool) -> np.ndarray:
    """A stable order along `axis` (descending keeps equal values in index order, as the spec's examples do)."""
    return np.argsort(x if ascending else -x, axis=axis, kind="stable")


@op("argsort")
def _argsort(a):
    return [_sort_order(_f(a["x"]), int(a.get("axis", -1)), bool(a.get("ascending", False))).astype(np.int32)]


@op("topk")
def _topk(a):
    x = _f(a["x"])
    axis, k = int(a.get("axis", -1)), int(a.get("k", 1))
    indices = np.take(_sort_order(x, axis, bool(a.get("ascending", False))), np.arange(k), axis=axis)
    return [np.take_along_axis(x, indices, axis=axis), indices.astype(np.int32)]


@op("band_part")
def _band_part(a):
    x = np.asarray(a["x"])
    lower, upper = int(a.get("lower", -1)), int(a.get("upper", -1))
    rows, cols = np.indices(x.shape[-2:])
    keep = ((lower < 0) | (rows - cols <= lower)) & ((upper < 0) | (cols - rows <= upper))
    return [np.where(keep, x, np.zeros((), x.dtype))]


@op("scatter_along_axis")
def _scatter_along_axis(a):
    data = np.array(a["data"], copy=True)
    indices, updates = np.asarray(a["indices"]).astype(np.int64), np.asarray(a["updates"])
    axis = int(a.get("axis", 0)) % data.ndim
    indices = np.where(indices < 0, indices + data.shape[axis], indices)
    mode = str(a.get("mode", "add"))
    if mode == "update":
        np.put_along_axis(data, indices, updates, axis)
        return [data]
    combine = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "max": np.maximum,
               "min": np.minimum}[mode]
    grid = list(np.indices(indices.shape, sparse=True))
    grid[axis] = indices
    combine.at(data, tuple(grid), updates)
    return [data]


@op("non_zero")
def _non_zero(a):
    return [np.argwhere(np.asarray(a["x"])).astype(np.int32)]


@op("pixel_shuffle")
def _pixel_shuffle(a):
    x, r = np.asarray(a["x"]), int(a["upscale_factor"])
    n, c, h, w = x.shape
    out = x.reshape(n, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3)
    return [out.reshape(n, c // (r * r), h * r, w * r)]


@op("pixel_unshuffle")
def _pixel_unshuffle(a):
    x, r = np.asarray(a["x"]), int(a["downscale_factor"])
    n, c, h, w = x.shape
    out = x.reshape(n, c, h // r, r, w // r, r).transpose(0, 1, 3, 5, 2, 4)
    return [out.reshape(n, c * r * r, h // r, w // r)]


@op("scaled_dot_product_attention")
def _scaled_dot_product_attention(a):
    query, key, value = _f(a["query"]), _f(a["key"]), _f(a["value"])
    scores = query @ np.swapaxes(key, -1, -2) / np.sqrt(query.shape[-1])
    if a.has("attn_mask"):
        mask = np.asarray(a["attn_mask"])
        scores = np.where(mask, scores, -np.inf) if mask.dtype == np.bool_ else scores + _f(mask)
    (weights,) = _softmax(Args({"x": [scores]}, {}))
    return [weights @ value]
