"""Each ONNX pass on hand-built graphs: node counts after the pass, and outputs unchanged (onnxruntime)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporter.formats.onnx.passes import PassBrokeGraphError, run_passes

RNG = np.random.default_rng(0)


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array.astype(np.float32), name)


def _model(nodes, inits, in_shape, out_shape) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _bn(name: str, channels: int, inp: str, out: str):
    inits = [_init(f"{name}.s", RNG.uniform(0.5, 1.5, channels)), _init(f"{name}.b", RNG.uniform(-.3, .3, channels)),
             _init(f"{name}.m", RNG.uniform(-.5, .5, channels)), _init(f"{name}.v", RNG.uniform(.5, 2, channels))]
    node = helper.make_node("BatchNormalization", [inp, f"{name}.s", f"{name}.b", f"{name}.m", f"{name}.v"], [out],
                            epsilon=1e-5)
    return node, inits


def _passes_preserve(model, pass_ids, x, expected_counts):
    before = _run(model, x)
    optimized, records = run_passes(onnx.ModelProto.FromString(model.SerializeToString()), pass_ids)
    assert [(r.id, r.nodes_before, r.nodes_after) for r in records] == expected_counts
    np.testing.assert_allclose(_run(optimized, x), before, rtol=1e-5, atol=1e-5)
    return optimized


@pytest.mark.parametrize("groups", [1, 4])
def test_fold_batchnorm_into_conv(groups):
    w = _init("w", RNG.standard_normal((4, 4 // groups, 3, 3)))
    conv = helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], group=groups)
    bn, bn_inits = _bn("bn", 4, "c", "b")
    relu = helper.make_node("Relu", ["b"], ["y"])
    model = _model([conv, bn, relu], [w, *bn_inits], [1, 4, 6, 6], [1, 4, 6, 6])
    x = RNG.standard_normal((1, 4, 6, 6)).astype(np.float32)
    out = _passes_preserve(model, ("fold_batchnorm", "eliminate_dead_nodes"), x,
                           [("fold_batchnorm", 3, 2), ("eliminate_dead_nodes", 2, 2)])
    assert [n.op_type for n in out.graph.node] == ["Conv", "Relu"]
    assert len(out.graph.initializer) == 2  # folded weight and bias; BN params and old weight removed


def test_fold_batchnorm_into_gemm():
    w = _init("w", RNG.standard_normal((6, 5)))
    gemm = helper.make_node("Gemm", ["x", "w"], ["g"], transB=1)
    bn, bn_inits = _bn("bn", 6, "g", "y")
    model = _model([gemm, bn], [w, *bn_inits], [3, 5], [3, 6])
    _passes_preserve(model, ("fold_batchnorm",), RNG.standard_normal((3, 5)).astype(np.float32),
                     [("fold_batchnorm", 2, 1)])


def test_batchnorm_with_two_readers_is_not_folded():
    w = _init("w", RNG.standard_normal((2, 2, 1, 1)))
    conv = helper.make_node("Conv", ["x", "w"], ["c"])
    bn, bn_inits = _bn("bn", 2, "c", "b")
    add = helper.make_node("Add", ["b", "c"], ["y"])  # the conv output is read twice
    model = _model([conv, bn, add], [w, *bn_inits], [1, 2, 3, 3], [1, 2, 3, 3])
    _passes_preserve(model, ("fold_batchnorm",), RNG.standard_normal((1, 2, 3, 3)).astype(np.float32),
                     [("fold_batchnorm", 3, 3)])


def test_fold_constants_evaluates_constant_subgraphs():
    shape_a = helper.make_node("Constant", [], ["a"], value=numpy_helper.from_array(np.array([2.0], np.float32)))
    mul = helper.make_node("Mul", ["a", "k"], ["ak"])  # constant * initializer
    add = helper.make_node("Add", ["x", "ak"], ["y"])
    model = _model([shape_a, mul, add], [_init("k", np.array([3.0]))], [2], [2])
    out = _passes_preserve(model, ("fold_constants", "eliminate_dead_nodes"), np.array([1.0, 2.0], np.float32),
                           [("fold_constants", 3, 1), ("eliminate_dead_nodes", 1, 1)])
    assert [n.op_type for n in out.graph.node] == ["Add"]
    assert numpy_helper.to_array(next(i for i in out.graph.initializer if i.name == "ak")).tolist() == [6.0]


def test_eliminate_dead_nodes_drops_identity_and_unread_nodes():
    ident = helper.make_node("Identity", ["x"], ["i"])
    used = helper.make_node("Relu", ["i"], ["y"])
    unused = helper.make_node("Sigmoid", ["x"], ["dead"])
    model = _model([ident, unused, used], [_init("orphan", np.ones(3))], [4], [4])
    out = _passes_preserve(model, ("eliminate_dead_nodes",), RNG.standard_normal(4).astype(np.float32),
                           [("eliminate_dead_nodes", 3, 1)])
    assert [n.op_type for n in out.graph.node] == ["Relu"] and not out.graph.initializer


def test_simplify_removes_redundant_ops():
    shape = helper.make_node("Shape", ["x"], ["s"])
    reshape = helper.make_node("Reshape", ["x", "s"], ["r"])  # a no-op reshape onnxslim removes
    relu = helper.make_node("Relu", ["r"], ["y"])
    model = _model([shape, reshape, relu], [], [2, 3], [2, 3])
    out = _passes_preserve(model, ("simplify",), RNG.standard_normal((2, 3)).astype(np.float32),
                           [("simplify", 3, 1)])
    assert [n.op_type for n in out.graph.node] == ["Relu"]


def test_a_pass_that_breaks_the_graph_is_caught(monkeypatch):
    from exporter.formats.onnx import passes as onnx_passes

    def breaking(self, model):
        model.graph.node[0].input[0] = "does_not_exist"
        return model

    monkeypatch.setattr(onnx_passes.EliminateDeadNodes, "run", breaking)
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [], [2], [2])
    with pytest.raises(PassBrokeGraphError, match="eliminate_dead_nodes produced an invalid graph"):
        run_passes(model, ("eliminate_dead_nodes",))
