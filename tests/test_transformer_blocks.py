"""The static int8 recipe for transformer blocks (exporter/formats/transformer_blocks.py): which operators stay
float, found from the graph's structure in both formats' shapes, and the smoothing of the matmuls reading a
norm, exact in float."""

from __future__ import annotations

import numpy as np
import pytest

from exporter.formats import transformer_blocks as blocks
from exporter.formats.transformer_blocks import GraphOp


def _op(key, kind, inputs, outputs=None):
    return GraphOp(key, kind, tuple(inputs), tuple(outputs or [key]))


def _post_norm_block(norm: list[GraphOp], norm_out: str) -> list[GraphOp]:
    """A BERT block (post-norm) after a norm writing `norm_out`: attention, residual add, norm, FFN, residual add."""
    w, o = blocks.WEIGHTED, blocks.OTHER
    return [
        _op("q", w, [norm_out]), _op("k", w, [norm_out]), _op("v", w, [norm_out]),
        _op("qk", blocks.ACTIVATION_MATMUL, ["q", "k"]), _op("scale", o, ["qk"]), _op("mask", o, ["attention_mask"]),
        _op("masked", blocks.ADD, ["scale", "mask"]), _op("softmax", blocks.SOFTMAX, ["masked"]),
        _op("pv", blocks.ACTIVATION_MATMUL, ["softmax", "v"]), _op("out_proj", w, ["pv"]),
        _op("residual1", blocks.ADD, ["out_proj", norm_out]),
        *norm,
        _op("up", w, ["norm2"]), _op("gelu", blocks.FFN_ACTIVATION, ["up"]), _op("reshape", o, ["gelu"]),
        _op("down", w, ["reshape"]), _op("residual2", blocks.ADD, ["down", "norm2"]),
    ]


def test_onnx_shaped_block_keeps_norms_residual_adds_scores_and_down_projection_float():
    ops = [_op("embed", blocks.WEIGHTED, ["ids"]), _op("norm1", blocks.NORM, ["embed"]),
           *_post_norm_block([_op("norm2", blocks.NORM, ["residual1"])], "norm1")]
    regions = blocks.float_regions(ops)
    assert set(regions.keys) == {"norm1", "norm2", "residual1", "qk", "scale", "masked", "softmax", "down", "reshape",
                                 "gelu"}
    assert (regions.norms, regions.residual_adds, regions.attention_scores, regions.down_projections) == (2, 1, 1, 1)
    assert regions.norm_outputs == ("norm1", "norm2")  # what q/k/v and up read: smoothing's inputs
    # int8: every projection but the down projection, and the probabilities x value matmul
    assert not {"q", "k", "v", "out_proj", "up", "pv"} & set(regions.keys)


def test_decomposed_norm_is_found_around_its_reciprocal_square_root():
    """LiteRT's LayerNorm: mean, squared difference, mean, + eps, rsqrt, then the affine; the region stops at the
    residual add it normalizes and at the matmuls reading it."""
    o = blocks.OTHER
    norm = [_op("mean", o, ["residual1"]), _op("sqdiff", o, ["residual1", "mean"]), _op("var", o, ["sqdiff"]),
            _op("eps", blocks.ADD, ["var"]), _op("rsqrt", blocks.NORM_CORE, ["eps"]),
            _op("centered", o, ["residual1", "rsqrt", "mean"]), _op("norm2", o, ["centered"])]
    ops = [_op("norm1", blocks.NORM, ["ids"]), *_post_norm_block(norm, "norm1")]
    regions = blocks.float_regions(ops)
    assert {"mean", "sqdiff", "var", "eps", "rsqrt", "centered", "norm2", "residual1"} <= set(regions.keys)
    assert regions.residual_adds == 1  # the eps add has one computed input: not a residual add
    assert "up" not in regions.keys and "norm2" in regions.norm_outputs


def test_a_graph_without_norms_is_not_a_transformer():
    ops = [_op("conv", blocks.WEIGHTED, ["image"]), _op("relu", blocks.OTHER, ["conv"]),
           _op("fc", blocks.WEIGHTED, ["relu"])]
    assert blocks.float_regions(ops) is None


def _norm_gemm_graph(path, rng):
    """LayerNorm -> Gemm (query) and LayerNorm -> Add (the residual), with a few outlier channels."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    dim = 16
    gamma = rng.uniform(0.5, 1.5, dim).astype(np.float32)
    gamma[3] = 40.0  # an outlier channel, as trained encoders have
    initializers = [numpy_helper.from_array(gamma, "gamma"),
                    numpy_helper.from_array(rng.normal(size=dim).astype(np.float32), "beta"),
                    numpy_helper.from_array(rng.normal(size=(8, dim)).astype(np.float32), "weight"),
                    numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "bias")]
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["normed"], name="norm", axis=-1),
             helper.make_node("Gemm", ["normed", "weight", "bias"], ["query"], name="query", transB=1),
             helper.make_node("Add", ["normed", "x"], ["residual"], name="residual")]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, dim])],
                              [helper.make_tensor_value_info("query", TensorProto.FLOAT, [4, 8]),
                               helper.make_tensor_value_info("residual", TensorProto.FLOAT, [4, dim])], initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(path))


def test_onnx_smoothing_is_exact_in_float_and_evens_the_channels(tmp_path):
    import onnx
    import onnxruntime as ort

    from exporter.formats.onnx.smoothing import smooth

    rng = np.random.default_rng(0)
    source, smoothed = tmp_path / "block.onnx", tmp_path / "smoothed.onnx"
    _norm_gemm_graph(source, rng)
    x = rng.normal(size=(4, 16)).astype(np.float32)
    normed_max = np.abs(_layer_norm(x, onnx.load(str(source)))).max(axis=0)
    assert smooth(source, smoothed, {"normed": normed_max}, alpha=0.5) == 1
    before, after = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})
                     for p in (source, smoothed))
    for b, a in zip(before, after, strict=True):  # the query and the residual: the same in float
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    graph = onnx.load(str(smoothed)).graph
    assert [n.op_type for n in graph.node] == ["LayerNormalization", "Mul", "Gemm", "Add"]
    assert {i.name for i in graph.initializer} >= {"query__smoothed_weight"} and "weight" not in {
        i.name for i in graph.initializer}  # the replaced weight is not left in the file
    # the Gemm's input: the outlier channel's range is no longer 10x the median channel's
    inverse = next(onnx.numpy_helper.to_array(i) for i in graph.initializer if i.name == "normed__inverse_scale")
    spread = normed_max * inverse
    assert spread.max() / np.median(spread) < 0.5 * normed_max.max() / np.median(normed_max)


def _layer_norm(x, model):
    from onnx import numpy_helper

    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    centered = x - x.mean(-1, keepdims=True)
    return centered / np.sqrt((centered ** 2).mean(-1, keepdims=True) + 1e-5) * values["gamma"] + values["beta"]


@pytest.mark.slow
def test_litert_smoothing_is_exact_in_float(tmp_path):
    """The MUL and the scaled weights written into a converted .tflite: its outputs unchanged in float."""
    import litert_torch
    import torch

    from exporter.formats.tflite import smoothing
    from exporter.formats.tflite.layers import read_operators
    from exporter.formats.tflite.quantize import _graph_ops
    from validators.runtimes.litert_runtime import open_session

    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.LayerNorm(16), torch.nn.Linear(16, 8)).eval()
    with torch.no_grad():
        block[0].weight[3] = 40.0
    x = torch.randn(1, 4, 16)
    source, smoothed = tmp_path / "block.tflite", tmp_path / "smoothed.tflite"
    litert_torch.convert(block, (x,)).export(str(source))
    regions = blocks.float_regions(_graph_ops(read_operators(source)))
    assert regions and regions.norms == 1 and len(regions.norm_outputs) == 1
    samples = [{"args_0": torch.randn(1, 4, 16).numpy()} for _ in range(4)]
    maxima = smoothing.channel_maxima(source, list(regions.norm_outputs), samples)
    assert smoothing.smooth(source, smoothed, maxima, alpha=0.5) == 1
    ops = [op.op for op in read_operators(smoothed)]
    assert ops.count("MUL") == [op.op for op in read_operators(source)].count("MUL") + 1
    feeds = {"args_0": x.numpy()}
    before, after = (open_session(p, 1).run(feeds)[0] for p in (source, smoothed))
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)
    assert smoothed.stat().st_size < source.stat().st_size + 1024  # the weight scaled in place, not copied
