"""Each MIL op of the reference interpreter against an independent computation (PyTorch's functional
ops or plain NumPy), on small shapes with broadcasting and the edge cases that matter."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.errors import ArtifactError
from validators.mlprogram.interpreter import Interpreter, UnsupportedMilOp
from validators.mlprogram.ops import OPS, Args
from validators.mlprogram.reader import FLOAT16, FLOAT32, Block, Op, Program, unpack_bits

RNG = np.random.default_rng(0)


def run(op_type: str, **inputs):
    values = {k: (list(v) if k in ("values", "loop_vars") else [v]) for k, v in inputs.items()}
    return OPS[op_type](Args(values, {}))


def one(op_type: str, **inputs) -> np.ndarray:
    (out,) = run(op_type, **inputs)
    return np.asarray(out)


def t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


def close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=tol, atol=tol)


def randn(*shape) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


# --- convolution ---------------------------------------------------------------------------------

@pytest.mark.parametrize("stride, dilation, groups, pad_type, pad", [
    (1, 1, 1, "valid", None), (2, 1, 1, "valid", None), (1, 2, 1, "valid", None),
    (1, 1, 4, "custom", [1, 1, 1, 1]), (2, 1, 2, "custom", [0, 1, 2, 0]), (1, 1, 1, "same", None),
    (2, 1, 1, "same", None), (1, 3, 8, "custom", [3, 3, 3, 3]),
])
def test_conv2d_matches_torch(stride, dilation, groups, pad_type, pad):
    x, w, b = randn(2, 8, 9, 10), randn(8, 8 // groups, 3, 3), randn(8)
    inputs = dict(x=x, weight=w, bias=b, strides=np.array([stride] * 2), dilations=np.array([dilation] * 2),
                  groups=np.int32(groups), pad_type=pad_type)
    if pad is not None:
        inputs["pad"] = np.array(pad)
    got = one("conv", **inputs)
    tx = t(x)
    if pad_type == "custom":  # MIL pad is [top, bottom, left, right]
        tx = F.pad(tx, (pad[2], pad[3], pad[0], pad[1]))
        want = F.conv2d(tx, t(w), t(b), stride=stride, dilation=dilation, groups=groups)
    elif pad_type == "same" and stride == 1:
        want = F.conv2d(tx, t(w), t(b), padding="same", dilation=dilation, groups=groups)
    elif pad_type == "same":  # output ceil(n / stride), extra padding at the end
        pads = [max((math.ceil(n / stride) - 1) * stride + 3 - n, 0) for n in x.shape[2:]]
        tx = F.pad(tx, (pads[1] // 2, pads[1] - pads[1] // 2, pads[0] // 2, pads[0] - pads[0] // 2))
        want = F.conv2d(tx, t(w), t(b), stride=stride)
    else:
        want = F.conv2d(tx, t(w), t(b), stride=stride, dilation=dilation, groups=groups)
    close(got, want.numpy(), 1e-4)


def test_conv1d_and_depthwise_without_bias():
    x, w = randn(1, 4, 11), randn(4, 1, 5)
    got = one("conv", x=x, weight=w, strides=np.array([2]), dilations=np.array([1]), groups=np.int32(4),
              pad_type="custom", pad=np.array([2, 2]))
    close(got, F.conv1d(t(x), t(w), stride=2, padding=2, groups=4).numpy(), 1e-4)


# --- pooling and resampling ----------------------------------------------------------------------

@pytest.mark.parametrize("ceil_mode", [False, True])
def test_max_pool(ceil_mode):
    x = randn(1, 3, 7, 7)
    got = one("max_pool", x=x, kernel_sizes=np.array([3, 3]), strides=np.array([2, 2]), pad_type="custom",
              pad=np.array([1, 1, 1, 1]), ceil_mode=ceil_mode)
    close(got, F.max_pool2d(t(x), 3, 2, padding=1, ceil_mode=ceil_mode).numpy())


@pytest.mark.parametrize("exclude", [False, True])
def test_avg_pool_padding_counting(exclude):
    x = randn(2, 2, 6, 6)
    got = one("avg_pool", x=x, kernel_sizes=np.array([3, 3]), strides=np.array([1, 1]), pad_type="custom",
              pad=np.array([1, 1, 1, 1]), exclude_padding_from_average=exclude)
    close(got, F.avg_pool2d(t(x), 3, 1, padding=1, count_include_pad=not exclude).numpy())


def test_upsample_nearest_and_bilinear():
    x = randn(1, 2, 3, 4)
    close(one("upsample_nearest_neighbor", x=x, scale_factor_height=np.float32(2), scale_factor_width=np.float32(3)),
          F.interpolate(t(x), scale_factor=(2, 3), mode="nearest").numpy())
    for align in (False, True):
        got = one("upsample_bilinear", x=x, scale_factor_height=np.float32(2), scale_factor_width=np.float32(2),
                  align_corners=align)
        close(got, F.interpolate(t(x), scale_factor=2, mode="bilinear", align_corners=align).numpy(), 1e-5)


# --- activations ---------------------------------------------------------------------------------------

def test_activations_match_torch():
    x = randn(3, 5) * 4
    close(one("relu", x=x), F.relu(t(x)))
    close(one("sigmoid_hard", x=x, alpha=np.float32(1 / 6), beta=np.float32(0.5)), F.hardsigmoid(t(x)))
    hard_sigmoid = one("sigmoid_hard", x=x, alpha=np.float32(1 / 6), beta=np.float32(0.5))
    close(one("mul", x=x, y=hard_sigmoid), F.hardswish(t(x)))  # coremltools' hardswish: x * sigmoid_hard(x)
    close(one("clip", x=x, alpha=np.float32(0), beta=np.float32(6)), F.relu6(t(x)))
    close(one("gelu", x=x, mode="EXACT"), F.gelu(t(x)))
    close(one("gelu", x=x, mode="TANH_APPROXIMATION"), F.gelu(t(x), approximate="tanh"))
    close(one("silu", x=x), F.silu(t(x)))
    close(one("tanh", x=x), torch.tanh(t(x)))
    close(one("sigmoid", x=x), torch.sigmoid(t(x)))
    close(one("leaky_relu", x=x, alpha=np.float32(0.1)), F.leaky_relu(t(x), 0.1))
    close(one("elu", x=x, alpha=np.float32(1.0)), F.elu(t(x)))
    close(one("thresholded_relu", x=x, alpha=np.float32(1.0)), F.threshold(t(x), 1.0, 0.0))
    close(one("softplus", x=x), F.softplus(t(x)), 1e-5)
    close(one("erf", x=x), torch.erf(t(x)))
    close(one("rsqrt", x=np.abs(x) + 1, epsilon=np.float32(0)), torch.rsqrt(t(np.abs(x) + 1)))


def test_prelu_is_per_channel():
    x, alpha = randn(2, 3, 4, 4), np.array([0.1, 0.2, 0.3], np.float32)
    close(one("prelu", x=x, alpha=alpha), F.prelu(t(x), t(alpha)))


# --- elementwise broadcasting and linear algebra -----------------------------------------------------------

def test_binary_ops_broadcast():
    a, b = randn(2, 1, 4), randn(3, 1)
    close(one("add", x=a, y=b), a + b)
    close(one("real_div", x=a, y=np.abs(b) + 1), a / (np.abs(b) + 1))
    assert one("greater_equal", x=a, y=b).shape == (2, 3, 4)
    close(one("select", cond=a > 0, a=a, b=np.float32(0)), np.where(a > 0, a, 0))


def test_linear_and_matmul_with_transposes():
    x, w, b = randn(2, 5, 6), randn(4, 6), randn(4)
    close(one("linear", x=x, weight=w, bias=b), F.linear(t(x), t(w), t(b)), 1e-5)
    y = randn(2, 7, 6)
    close(one("matmul", x=x, y=y, transpose_x=False, transpose_y=True), t(x) @ t(y).transpose(1, 2), 1e-5)
    close(one("matmul", x=np.swapaxes(x, 1, 2), y=randn(6, 3) * 0 + 1, transpose_x=True, transpose_y=False),
          t(x) @ torch.ones(6, 3), 1e-5)


# --- normalization and softmax -----------------------------------------------------------------------------

def test_softmax_layer_norm_batch_norm():
    x = randn(2, 3, 5)
    close(one("softmax", x=x, axis=np.int32(1)), F.softmax(t(x), dim=1))
    gamma, beta = randn(5), randn(5)
    close(one("layer_norm", x=x, axes=np.array([-1]), gamma=gamma, beta=beta, epsilon=np.float32(1e-5)),
          F.layer_norm(t(x), (5,), t(gamma), t(beta), 1e-5), 1e-5)
    mean, var = randn(3), np.abs(randn(3)) + 0.5
    close(one("batch_norm", x=x, mean=mean, variance=var, gamma=gamma[:3], beta=beta[:3], epsilon=np.float32(1e-3)),
          F.batch_norm(t(x), t(mean), t(var), t(gamma[:3]), t(beta[:3]), False, 0.0, 1e-3), 1e-5)


def test_instance_norm_matches_torch():
    x, gamma, beta = randn(2, 3, 4, 5), randn(3), randn(3)
    close(one("instance_norm", x=x, gamma=gamma, beta=beta, epsilon=np.float32(1e-5)),
          F.instance_norm(t(x), weight=t(gamma), bias=t(beta), eps=1e-5), 1e-4)


def test_reductions():
    x = randn(2, 3, 4)
    close(one("reduce_mean", x=x, axes=np.array([-1]), keep_dims=False), x.mean(-1))
    close(one("reduce_sum", x=x, axes=np.array([0, 2]), keep_dims=True), x.sum((0, 2), keepdims=True))
    close(one("reduce_max", x=x, axes=np.array([1]), keep_dims=False), x.max(1))
    assert one("reduce_argmax", x=x, axis=np.int32(2), keep_dims=False).tolist() == x.argmax(2).tolist()


# --- shape and indexing -------------------------------------------------------------------------------------

def test_shape_ops():
    x = randn(2, 3, 4)
    close(one("reshape", x=x, shape=np.array([4, -1])), x.reshape(4, 6))
    close(one("transpose", x=x, perm=np.array([2, 0, 1])), x.transpose(2, 0, 1))
    assert one("expand_dims", x=x, axes=np.array([0, -1])).shape == (1, 2, 3, 4, 1)
    assert one("squeeze", x=x[:, :1, None], axes=np.array([1, 2])).shape == (2, 4)
    close(one("concat", values=[x, x * 2], axis=np.int32(1), interleave=False), np.concatenate([x, x * 2], 1))
    interleaved = one("concat", values=[x, x * 2], axis=np.int32(1), interleave=True)
    close(interleaved[:, 1::2], x * 2)
    parts = run("split", x=x, axis=np.int32(2), split_sizes=np.array([1, 3]))
    assert [p.shape for p in parts] == [(2, 3, 1), (2, 3, 3)]
    assert [p.shape for p in run("split", x=x, axis=np.int32(0), num_splits=np.int32(2))] == [(1, 3, 4)] * 2
    close(one("tile", x=x, reps=np.array([1, 2, 1])), np.tile(x, (1, 2, 1)))
    close(one("pad", x=x, pad=np.array([1, 2]), mode="reflect"), np.pad(x, [(0, 0), (0, 0), (1, 2)], "reflect"))


def test_slice_by_index_masks_and_strides():
    x = randn(4, 5, 6)
    got = one("slice_by_index", x=x, begin=np.array([1, 0, 5]), end=np.array([3, 4, 0]), stride=np.array([1, 2, -2]),
              begin_mask=np.array([False, True, False]), end_mask=np.array([False, False, True]),
              squeeze_mask=np.array([False, False, False]))
    close(got, x[1:3, :4:2, 5::-2])
    close(one("slice_by_index", x=x, begin=np.array([2, 0, 0]), end=np.array([3, 5, 6]),
              squeeze_mask=np.array([True, False, False])), x[2])


def test_gather_scatter():
    x = randn(3, 4, 5)
    idx = np.array([[2, 0], [1, 1]])
    close(one("gather", x=x, indices=idx, axis=np.int32(1)), np.take(x, idx, axis=1))
    batch_idx = np.array([[0, 3], [2, 2], [1, 0]])
    got = one("gather", x=x, indices=batch_idx, axis=np.int32(1), batch_dims=np.int32(1))
    close(got, np.stack([x[b, batch_idx[b]] for b in range(3)]))
    nd = np.array([[[0, 1], [2, -1]], [[1, 3], [0, 0]]])  # (2, 2, K=2) index tuples into x's first two dims
    close(one("gather_nd", x=x, indices=nd), x[nd[..., 0], nd[..., 1]])
    batch_nd = np.array([[[1], [3]], [[0], [0]], [[2], [1]]])  # batch_dims=1: per-batch rows of x[b]
    close(one("gather_nd", x=x, indices=batch_nd, batch_dims=np.int32(1)),
          np.stack([x[b][batch_nd[b, :, 0]] for b in range(3)]))
    data, updates = np.zeros((4, 3), np.float32), randn(2, 3)
    close(one("scatter", data=data, indices=np.array([3, 1]), updates=updates, axis=np.int32(0), mode="update"),
          np.array([[0] * 3, updates[1], [0] * 3, updates[0]]))


# --- weight decompression ----------------------------------------------------------------------------------

def test_affine_dequantize_and_blockwise_shift_scale():
    q = RNG.integers(-128, 127, (4, 6)).astype(np.int8)
    scale, zero = np.abs(randn(4)) + 0.1, np.array([0, 1, -2, 3], np.int8)
    want = (q.astype(np.float32) - zero[:, None]) * scale[:, None]
    close(one("constexpr_affine_dequantize", quantized_data=q, zero_point=zero, scale=scale, axis=np.int32(0)), want)
    close(one("constexpr_blockwise_shift_scale", data=q, scale=scale[:, None], offset=zero[:, None]), want)
    block_scale = np.abs(randn(4, 2)) + 0.1  # blocks of 3 along the last axis
    close(one("constexpr_blockwise_shift_scale", data=q, scale=block_scale), q * np.repeat(block_scale, 3, axis=1))


def test_lut_to_dense_both_generations():
    lut = np.linspace(-1, 1, 16).astype(np.float32)
    indices = RNG.integers(0, 16, 24).astype(np.uint8)
    packed = np.packbits(((indices[:, None] >> np.arange(4)) & 1).astype(np.uint8).reshape(-1), bitorder="little")
    old = OPS["constexpr_lut_to_dense"](Args({}, {"lut": lut, "indices": packed, "shape": np.array([4, 6])}))[0]
    close(old, lut[indices].reshape(4, 6))
    per_row_lut = np.stack([lut, lut * 2])[:, None, :, None]  # 2 row blocks x 1 x 16 entries x vector 1
    new = one("constexpr_lut_to_dense", indices=indices.reshape(4, 6), lut=per_row_lut)
    close(new, np.concatenate([lut[indices[:12]], 2 * lut[indices[12:]]]).reshape(4, 6))


def test_vector_palettization_is_refused_loudly():
    from common.errors import ArtifactError

    with pytest.raises(ArtifactError, match="vector palettization"):
        one("constexpr_lut_to_dense", indices=np.zeros((2, 2), np.uint8), lut=np.zeros((1, 1, 4, 2), np.float32))


def test_unpack_bits_signed_and_unsigned():
    values = np.array([5, 0, 63, 17], np.uint8)
    packed = np.packbits(((values[:, None] >> np.arange(6)) & 1).astype(np.uint8).reshape(-1), bitorder="little")
    assert unpack_bits(packed.tobytes(), 6, 4, signed=False).tolist() == [5, 0, 63, 17]
    assert unpack_bits(bytes([0xF7]), 4, 2, signed=True).tolist() == [7, -1]


# --- the interpreter itself ------------------------------------------------------------------------------

def _program(ops, inputs, outputs):
    return Program(inputs, outputs, Block([n for n, _, _ in inputs], outputs, ops), "CoreML7")


def test_slice_update_writes_the_slice_slice_by_index_reads():
    x, update = randn(2, 3, 8, 4), randn(2, 1, 3, 4)
    got = one("slice_update", x=x, update=update, begin=np.array([0, 1, 2, 0]), end=np.array([2, 2, 5, 4]),
              begin_mask=np.array([True, False, False, True]), end_mask=np.array([True, False, False, True]))
    want = x.copy()
    want[:, 1:2, 2:5, :] = update
    close(got, want)
    assert not np.array_equal(x, got)  # the input is left as it was (it may be a state's value)
    with pytest.raises(ArtifactError, match="update's shape"):
        one("slice_update", x=x, update=randn(1, 1, 1, 4), begin=np.array([0, 1, 2, 0]),
            end=np.array([2, 2, 5, 4]))


def test_concat_of_scalars_is_a_vector():
    assert one("concat", values=[np.int32(1), np.int32(7)], axis=np.int32(0)).tolist() == [1, 7]


def _cache_program() -> Program:
    """A one-state program as coremltools writes a KV-cache update: read the state, slice_update the row
    given by `position`, write it back (coreml_update_state = write_state + read_state), output the state."""
    ops = [
        Op("read_state", {"input": ["cache"]}, [("old", FLOAT16)], {}),
        Op("add", {"x": ["position"], "y": [np.int32(1)]}, [("end", None)], {}),
        Op("concat", {"values": [np.int32(0), "position"], "axis": [np.int32(0)]}, [("begin_at", None)], {}),
        Op("concat", {"values": [np.int32(1), "end"], "axis": [np.int32(0)]}, [("end_at", None)], {}),
        Op("slice_update", {"x": ["old"], "update": ["row"], "begin": ["begin_at"], "end": ["end_at"]},
           [("new", FLOAT16)], {}),
        Op("write_state", {"input": ["cache"], "data": ["new"]}, [], {}),
        Op("read_state", {"input": ["cache"]}, [("now", FLOAT16)], {}),
    ]
    program = _program(ops, [("row", FLOAT16, (1, 1)), ("position", 23, ())], ["now"])
    program.states = [("cache", FLOAT16, (1, 4))]
    return program


def test_states_persist_across_runs_until_reset():
    interpreter = Interpreter(_cache_program())
    assert interpreter.states["cache"].tolist() == [[0, 0, 0, 0]]  # zero-filled, as make_state() gives it
    for position, value in enumerate([3.0, 5.0]):
        (now,) = interpreter.run({"row": np.array([[value]], np.float16), "position": np.int32(position)})
    assert now.tolist() == [[3.0, 5.0, 0.0, 0.0]] and interpreter.states["cache"].dtype == np.float16
    interpreter.reset_states()
    (now,) = interpreter.run({"row": np.array([[7.0]], np.float16), "position": np.int32(3)})
    assert now.tolist() == [[0.0, 0.0, 0.0, 7.0]]


def test_a_program_that_never_writes_its_state_forgets():
    program = _cache_program()
    program.main.operations = [op for op in program.main.operations if op.type != "write_state"]
    interpreter = Interpreter(program)
    interpreter.run({"row": np.array([[3.0]], np.float16), "position": np.int32(0)})
    (now,) = interpreter.run({"row": np.array([[5.0]], np.float16), "position": np.int32(1)})
    assert now.tolist() == [[0.0, 0.0, 0.0, 0.0]]


def test_while_loop_counts_and_accumulates():
    cond = Block(["i", "acc"], ["keep"], [Op("less", {"x": ["i"], "y": [np.int32(5)]}, [("keep", None)], {})])
    body = Block(["i", "acc"], ["i_next", "acc_next"], [
        Op("add", {"x": ["i"], "y": [np.int32(1)]}, [("i_next", None)], {}),
        Op("add", {"x": ["acc"], "y": ["x"]}, [("acc_next", FLOAT32)], {}),
    ])
    loop = Op("while_loop", {"loop_vars": [np.int32(0), np.zeros(3, np.float32)]},
              [("count", None), ("total", FLOAT32)], {}, [cond, body])
    program = _program([loop], [("x", FLOAT32, (3,))], ["count", "total"])
    count, total = Interpreter(program).run({"x": np.array([1.0, 2.0, 3.0], np.float32)})
    assert int(count) == 5 and total.tolist() == [5.0, 10.0, 15.0]


def test_fp16_tensors_are_stored_as_fp16():
    x = np.array([1.0001, 2049.0], np.float32)  # neither is representable in float16
    program = _program([Op("identity", {"x": ["x"]}, [("y", FLOAT16)], {})], [("x", FLOAT32, (2,))], ["y"])
    (y,) = Interpreter(program).run({"x": x})
    assert y.dtype == np.float16 and y.astype(np.float32).tolist() == [1.0, 2048.0]


def test_unknown_op_stops_with_its_name():
    program = _program([Op("frobnicate", {"x": ["x"]}, [("y", FLOAT32)], {})], [("x", FLOAT32, (2,))], ["y"])
    with pytest.raises(UnsupportedMilOp, match="MIL op.s. frobnicate that the reference interpreter does not"):
        Interpreter(program)


# --- recurrent -------------------------------------------------------------------------------------

def _ifzo_to_ifoz(x: np.ndarray) -> np.ndarray:
    """PyTorch's LSTM gate order (input, forget, cell, output) -> MIL's (input, forget, output, cell)."""
    i, f, z, o = np.split(x, 4)
    return np.concatenate([i, f, o, z])


def _lstm_weights(lstm: torch.nn.LSTM, suffix: str = "") -> dict:
    state = {k: v.detach().numpy() for k, v in lstm.state_dict().items()}
    return {"weight_ih": _ifzo_to_ifoz(state[f"weight_ih_l0{suffix}"]),
            "weight_hh": _ifzo_to_ifoz(state[f"weight_hh_l0{suffix}"]),
            "bias": _ifzo_to_ifoz(state[f"bias_ih_l0{suffix}"] + state[f"bias_hh_l0{suffix}"])}


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("output_sequence", [True, False])
def test_lstm_matches_torch(direction, output_sequence):
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 7)
    x, h0, c0 = randn(6, 3, 5), randn(1, 3, 7), randn(1, 3, 7)
    fed = x[::-1].copy() if direction == "reverse" else x  # MIL's reverse = torch on the flipped sequence
    with torch.no_grad():
        want, (h_n, c_n) = lstm(t(fed), (t(h0), t(c0)))
    out, h, c = run("lstm", x=x, initial_h=h0[0], initial_c=c0[0], direction=direction,
                    output_sequence=output_sequence, **_lstm_weights(lstm))
    close(out, want.numpy() if output_sequence else want.numpy()[-1:])
    close(h, h_n[0].numpy())
    close(c, c_n[0].numpy())


def test_bidirectional_lstm_matches_torch():
    torch.manual_seed(1)
    lstm = torch.nn.LSTM(4, 6, bidirectional=True)
    x, h0, c0 = randn(5, 2, 4), randn(2, 2, 6), randn(2, 2, 6)
    with torch.no_grad():
        want, (h_n, c_n) = lstm(t(x), (t(h0), t(c0)))
    forward, backward = _lstm_weights(lstm), _lstm_weights(lstm, "_reverse")
    out, h, c = run("lstm", x=x, initial_h=np.concatenate([h0[0], h0[1]], 1),
                    initial_c=np.concatenate([c0[0], c0[1]], 1), direction="bidirectional", output_sequence=True,
                    **forward, **{f"{k}_back": v for k, v in backward.items()})
    close(out, want.numpy())
    close(h, torch.cat([h_n[0], h_n[1]], 1).numpy())
    close(c, torch.cat([c_n[0], c_n[1]], 1).numpy())


def test_lstm_peephole_clip_and_activations_follow_the_mil_definition():
    x, h0, c0 = randn(4, 2, 3), randn(2, 5), randn(2, 5)
    w_ih, w_hh, bias, peephole = randn(20, 3), randn(20, 5), randn(20), randn(15)
    out, h, c = run("lstm", x=x, initial_h=h0, initial_c=c0, weight_ih=w_ih, weight_hh=w_hh, bias=bias,
                    peephole=peephole, clip=np.float32(0.5), recurrent_activation="hard_sigmoid",
                    cell_activation="relu", activation="linear", output_sequence=True)
    hs, cs = h0.astype(np.float64), c0.astype(np.float64)
    p_i, p_f, p_o = np.split(peephole, 3)
    for step in range(4):  # one unit at a time, written out from the op's documentation
        g = x[step] @ w_ih.T + hs @ w_hh.T + bias
        i = np.clip(0.2 * (g[:, 0:5] + cs * p_i) + 0.5, 0, 1)
        f = np.clip(0.2 * (g[:, 5:10] + cs * p_f) + 0.5, 0, 1)
        cs = np.clip(f * cs + i * np.maximum(g[:, 15:20], 0), -0.5, 0.5)
        hs = np.clip(0.2 * (g[:, 10:15] + cs * p_o) + 0.5, 0, 1) * cs
        close(out[step], hs)
    close(h, hs)
    close(c, cs)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_gru_follows_core_mls_definition(direction):
    """Core ML's GRU applies the reset gate to h before R_o (PyTorch's applies it after): so it is checked
    against its own definition, and a PyTorch GRU reaches Core ML as a while_loop (tested in the zoo)."""
    x, h0 = randn(5, 2, 3), randn(2, 4)
    w_ih, w_hh, bias = randn(12, 3), randn(12, 4), randn(12)
    out, h = run("gru", x=x, initial_h=h0, weight_ih=w_ih, weight_hh=w_hh, bias=bias, direction=direction,
                 output_sequence=True)
    def sigmoid(v):
        return 1 / (1 + np.exp(-v))

    hs = h0.astype(np.float64)
    for index, step in enumerate(range(4, -1, -1) if direction == "reverse" else range(5)):
        gi, gh = x[step] @ w_ih.T + bias, hs @ w_hh.T
        r, z = sigmoid(gi[:, 0:4] + gh[:, 0:4]), sigmoid(gi[:, 8:12] + gh[:, 8:12])
        o = np.tanh(gi[:, 4:8] + (r * hs) @ w_hh[4:8].T)
        hs = (1 - z) * o + z * hs
        close(out[index], hs)
    close(h, hs)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_rnn_matches_torch(activation):
    torch.manual_seed(2)
    rnn = torch.nn.RNN(3, 5, nonlinearity=activation)
    x, h0 = randn(6, 2, 3), randn(1, 2, 5)
    with torch.no_grad():
        want, h_n = rnn(t(x), t(h0))
    s = {k: v.detach().numpy() for k, v in rnn.state_dict().items()}
    out, h = run("rnn", x=x, initial_h=h0[0], weight_ih=s["weight_ih_l0"], weight_hh=s["weight_hh_l0"],
                 bias=s["bias_ih_l0"] + s["bias_hh_l0"], activation=activation, output_sequence=True)
    close(out, want.numpy())
    close(h, h_n[0].numpy())


# --- ops checked against coremltools' own definitions (each op class's value_inference) ----------------------

X3 = randn(2, 3, 4)
MIL_DEFINED = [
    ("cumsum", dict(x=X3, axis=1)), ("cumsum", dict(x=X3, axis=-1, reverse=True)),
    ("fill_like", dict(ref_tensor=X3, value=2.5)), ("fill_like", dict(ref_tensor=X3, value=np.int32(3))),
    ("band_part", dict(x=X3, lower=0, upper=1)), ("band_part", dict(x=X3, lower=1, upper=-1)),
    ("topk", dict(x=X3, k=2, axis=-1)), ("topk", dict(x=X3, k=2, axis=1, ascending=True)),
    ("argsort", dict(x=X3, axis=-1)), ("argsort", dict(x=X3, axis=0, ascending=True)),
    ("clamped_relu", dict(x=X3, alpha=0.5, beta=0.7)), ("l2_norm", dict(x=randn(2, 2, 3, 4), epsilon=1e-6)),
    ("non_zero", dict(x=(X3 > 0.5).astype(np.float32))),
    ("reduce_log_sum", dict(x=np.abs(X3), axes=[1], keep_dims=True)),
    ("acos", dict(x=np.tanh(X3))), ("asin", dict(x=np.tanh(X3))), ("atan", dict(x=X3)),
    ("atanh", dict(x=0.9 * np.tanh(X3))), ("cosh", dict(x=X3)), ("sinh", dict(x=X3)),
    ("softplus_parametric", dict(x=randn(1, 3, 2, 2), alpha=np.array([1, 2, 3], np.float32),
                                 beta=np.array([0.5, 1, 2], np.float32))),
    ("scatter_along_axis", dict(data=X3, indices=np.array([[[0, 2, 1, 0]], [[2, 2, 0, 1]]], np.int32),
                                updates=randn(2, 1, 4), axis=1, mode="update")),
]


def _coremltools_value(op_type: str, inputs: dict) -> list[np.ndarray]:
    """The op built by coremltools' MIL builder on constants: its value_inference computes the outputs."""
    from coremltools.converters.mil import Builder as mb

    values = []

    @mb.program(input_specs=[mb.TensorSpec(shape=(1,))])
    def _program(unused):
        out = getattr(mb, op_type)(**inputs)
        values.extend(v.val for v in (out if isinstance(out, (list, tuple)) else [out]))
        return unused

    return values


@pytest.mark.parametrize("op_type,inputs", MIL_DEFINED, ids=lambda v: v if isinstance(v, str) else "")
def test_op_matches_coremltools_own_definition(op_type, inputs):
    expected = _coremltools_value(op_type, inputs)
    got = run(op_type, **inputs)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert np.asarray(g).dtype == np.asarray(e).dtype and np.shape(g) == np.shape(e)
        close(g, e)


def test_ops_coremltools_defines_without_a_value_match_torch():
    indices = np.array([[0, 2], [1, 3]], np.int32)
    close(one("one_hot", indices=indices, one_hot_vector_size=4), F.one_hot(t(indices).long(), 4).numpy())
    close(one("one_hot", indices=indices, one_hot_vector_size=4, axis=0, on_value=5.0, off_value=-1.0),
          np.moveaxis(F.one_hot(t(indices).long(), 4).numpy() * 6.0 - 1.0, -1, 0))
    x = randn(1, 8, 2, 3)
    close(one("pixel_shuffle", x=x, upscale_factor=2), F.pixel_shuffle(t(x), 2).numpy())
    x = randn(1, 2, 4, 6)
    close(one("pixel_unshuffle", x=x, downscale_factor=2), F.pixel_unshuffle(t(x), 2).numpy())
    # scatter's reducing modes (coremltools' value_inference applies every mode as "update")
    indices, updates = np.array([[[0, 2, 1, 0], [0, 0, 1, 2]]], np.int32), randn(1, 2, 4)
    data = randn(1, 3, 4)
    for mode, reduce in (("add", "sum"), ("max", "amax"), ("mul", "prod"), ("min", "amin")):
        close(one("scatter_along_axis", data=data, indices=indices, updates=updates, axis=1, mode=mode),
              torch.scatter_reduce(t(data), 1, t(indices).long(), t(updates), reduce).numpy())
    q, k, v = randn(2, 3, 5, 8), randn(2, 3, 6, 8), randn(2, 3, 6, 8)
    mask = RNG.random((5, 6)) > 0.3
    mask[:, 0] = True
    close(one("scaled_dot_product_attention", query=q, key=k, value=v, attn_mask=mask),
          F.scaled_dot_product_attention(t(q), t(k), t(v), attn_mask=t(mask)).numpy())
    additive = randn(5, 6)
    close(one("scaled_dot_product_attention", query=q, key=k, value=v, attn_mask=additive),
          F.scaled_dot_product_attention(t(q), t(k), t(v), attn_mask=t(additive)).numpy())


# coremltools' core ops the interpreter does not implement, each with why no family it validates emits it
NOT_EMITTED = {
    "const": "read by the program reader as a value, never run as an op",
    "_const_symbolic": "a builder-internal symbolic constant, never serialized",
    "cond": "control flow: torch.export programs have none (data-dependent branches are refused at trace)",
    "while_loop": "control flow: torch.export programs have none",
    "make_list": "list ops come from TensorFlow's TensorArray, not from the PyTorch frontend",
    "list_gather": "list ops come from TensorFlow's TensorArray", "list_length": "list ops come from TensorFlow",
    "list_read": "list ops come from TensorFlow", "list_scatter": "list ops come from TensorFlow",
    "list_write": "list ops come from TensorFlow",
    "random_bernoulli": "random ops: eval-mode models draw nothing", "random_categorical": "random ops",
    "random_normal": "random ops", "random_uniform": "random ops",
    "classify": "the NeuralNetwork classifier head; edgeport converts to ML Programs without one",
    "non_maximum_suppression": "detection post-processing added by hand, not by the PyTorch frontend",
    "crop_resize": "TensorFlow's crop_and_resize", "resample": "grid_sample, not in the validated families",
    "resize": "iOS17 image resize, not in the validated families",
    "resize_bilinear": "TensorFlow-style resize; torch interpolate converts to upsample_bilinear",
    "resize_nearest_neighbor": "TensorFlow-style resize; torch interpolate converts to upsample_nearest_neighbor",
    "crop": "TensorFlow's crop, not from the PyTorch frontend", "affine": "affine_grid, not in the validated families",
    "batch_to_space": "TensorFlow's space-to-batch convolutions", "space_to_batch": "TensorFlow's space-to-batch",
    "depth_to_space": "TensorFlow's layout op; torch's pixel_shuffle converts to pixel_shuffle",
    "space_to_depth": "TensorFlow's layout op; torch's pixel_unshuffle converts to pixel_unshuffle",
    "local_response_norm": "LRN (AlexNet-era), not in the validated families",
    "reverse_sequence": "TensorFlow's reverse_sequence", "sliding_windows": "TensorFlow's extract patches",
    "conv_transpose": "transposed convolution: no validated family has one (a decoder upsampler would)",
    "conv_quantized": "a legacy NeuralNetwork op", "quantize": "activation quantization: edgeport's Core ML "
    "variants compress weights only (constexpr ops)",
    "constexpr_lut_to_sparse": "sparse weights: edgeport does not prune Core ML weights to sparse",
    "constexpr_sparse_blockwise_shift_scale": "sparse weights", "constexpr_sparse_to_dense": "sparse weights",
    "reshape_like": "a TensorFlow shape op", "scatter_nd": "TensorFlow's scatter_nd",
}


def test_every_op_coremltools_can_emit_is_implemented_or_named_with_its_reason():
    """The interpreter claims the families it validates: every core MIL op of coremltools 9 is either run by it or
    listed in NOT_EMITTED with why those families never produce it; a new coremltools op fails this test."""
    import coremltools.converters.mil.mil.ops.defs  # noqa: F401  (registers the ops)
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    from validators.mlprogram.interpreter import _STATE_OPS

    core = set(SSAOpRegistry.core_ops)
    implemented = set(OPS) | set(_STATE_OPS)
    assert not core - implemented - set(NOT_EMITTED), sorted(core - implemented - set(NOT_EMITTED))
    assert not set(NOT_EMITTED) & implemented, "listed as not emitted but implemented"
    assert set(NOT_EMITTED) <= core, sorted(set(NOT_EMITTED) - core)
