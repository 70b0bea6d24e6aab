"""torch.nn.LSTM as LiteRT's fused UNIDIRECTIONAL_SEQUENCE_LSTM, one op per layer, instead of the chain
litert-torch unrolls it into (about 16 operators per time step and layer: resemblyzer's 3-layer, 160-step
speaker encoder became 7,676 operators, 74 s to convert and 3.3x slower than its ONNX).

The traced program's aten.lstm becomes one `edgeport::lstm_layer` call per layer, lowered straight to the
TFL dialect op (LiteRT's converter keeps a TFL op it is handed; a StableHLO custom_call cannot carry the
op's absent operands). The rewrite takes the layers it can compute the same sums for and leaves the rest
unrolled: zero initial state, unidirectional, no projection, evaluation mode, and the final cell state not
read (the fused op outputs the sequence only; the final hidden state is the sequence's last step).
"""

from __future__ import annotations

import copy
from typing import Any

LAYER_OP = "edgeport::lstm_layer"
_registered = False


def fused_lstm_module(module: Any) -> tuple[Any, int]:
    """A copy of the GraphModule with every LSTM that fits as fused layers, and how many LSTMs that was
    (the module itself when none fits: the full-integer path still converts the unrolled chain)."""
    import torch

    lstms = [n for n in module.graph.nodes if n.op == "call_function" and n.target == torch.ops.aten.lstm.input]
    if not any(_fits(module, n) for n in lstms):
        return module, 0
    _register()
    fused = copy.deepcopy(module)
    count = 0
    for node in [n for n in fused.graph.nodes if n.op == "call_function" and n.target == torch.ops.aten.lstm.input]:
        if _fits(fused, node):
            _rewrite(fused, node)
            count += 1
    fused.graph.eliminate_dead_code()
    fused.graph.lint()
    fused.recompile()
    return fused, count


def _fits(module: Any, node: Any) -> bool:
    import operator

    import torch

    x, hx, params, has_biases, layers, _dropout, train, bidirectional = node.args[:8]
    zero_state = all(getattr(h, "target", None) in (torch.ops.aten.zeros.default, torch.ops.aten.zeros_like.default)
                     for h in hx)
    value = x.meta.get("val")
    cell_state_read = any(u.target is operator.getitem and u.args[1] == 2 and u.users for u in node.users)
    return (zero_state and not train and not bidirectional and value is not None and value.dim() == 3
            and len(params) == layers * (4 if has_biases else 2) and all(p.op == "get_attr" for p in params)
            and not cell_state_read)


def _rewrite(module: Any, node: Any) -> None:
    import operator

    import torch

    from exporter.formats.tflite.passes import _attribute

    x, _hx, params, has_biases, layers, *_ = node.args
    batch_first = node.args[8] if len(node.args) > 8 else False
    graph, per_layer = module.graph, 4 if has_biases else 2
    with graph.inserting_before(node):
        sequence = x if batch_first else graph.call_function(torch.ops.aten.permute.default, (x, [1, 0, 2]))
        last_steps = []
        for layer in range(layers):
            w_ih, w_hh, *biases = params[layer * per_layer:(layer + 1) * per_layer]
            if biases:
                bias = graph.call_function(torch.ops.aten.add.Tensor, tuple(biases))
            else:
                zeros = f"_edgeport_{node.name}_bias_{layer}"
                module.register_buffer(zeros, torch.zeros(4 * _attribute(module, w_hh).shape[1]))
                bias = graph.get_attr(zeros)
            sequence = graph.call_function(torch.ops.edgeport.lstm_layer.default, (sequence, w_ih, w_hh, bias))
            last_steps.append(graph.call_function(torch.ops.aten.select.int, (sequence, 1, -1)))
        output = sequence if batch_first else graph.call_function(torch.ops.aten.permute.default,
                                                                   (sequence, [1, 0, 2]))
        final_hidden = graph.call_function(torch.ops.aten.stack.default, (last_steps, 0))
    for user in list(node.users):
        if user.target is operator.getitem and user.args[1] in (0, 1):
            user.replace_all_uses_with(output if user.args[1] == 0 else final_hidden)
        graph.erase_node(user)
    graph.erase_node(node)


def _register() -> None:
    """The custom op (its eager definition is PyTorch's LSTM cell, for tests) and its TFL lowering."""
    global _registered
    if _registered:
        return
    import torch
    from litert_converter.mlir import ir
    from litert_converter.mlir.dialects import stablehlo
    from litert_torch.backend.lowerings import registry
    from litert_torch.backend.lowerings import utils as lowering_utils

    @torch.library.custom_op(LAYER_OP, mutates_args=(),
                             schema="(Tensor x, Tensor w_ih, Tensor w_hh, Tensor bias) -> Tensor")
    def lstm_layer(x, w_ih, w_hh, bias):
        hidden = w_hh.shape[1]
        h, c, steps = x.new_zeros(x.shape[0], hidden), x.new_zeros(x.shape[0], hidden), []
        for t in range(x.shape[1]):
            i, f, g, o = (x[:, t] @ w_ih.T + h @ w_hh.T + bias).chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            steps.append(h)
        return torch.stack(steps, 1)

    @lstm_layer.register_fake
    def _(x, w_ih, w_hh, bias):
        return x.new_empty(x.shape[0], x.shape[1], w_hh.shape[1])

    @registry.lower(torch.ops.edgeport.lstm_layer.default)
    def _lower(lctx, x, w_ih, w_hh, bias):
        f32 = ir.F32Type.get()
        hidden = ir.RankedTensorType(w_hh.type).shape[1]
        batch = ir.RankedTensorType(x.type).shape[0]

        def gate(value: Any, index: int) -> Any:  # PyTorch stacks the gates i, f, g, o: TFLite's order
            shape = list(ir.RankedTensorType(value.type).shape)
            start, limit = [index * hidden] + [0] * (len(shape) - 1), [(index + 1) * hidden] + shape[1:]
            return stablehlo.slice(value, ir.DenseI64ArrayAttr.get(start), ir.DenseI64ArrayAttr.get(limit),
                                   ir.DenseI64ArrayAttr.get([1] * len(shape)))

        def absent() -> Any:
            return ir.Operation.create("tfl.no_value", results=[ir.NoneType.get()],
                                       attributes={"value": ir.UnitAttr.get()}).result

        def zero_state() -> Any:
            # the converter makes these variable tensors, carried from one invoke to the next (it refuses a
            # state computed in the graph): an app resets them before each call (the manifest says so)
            kind = ir.RankedTensorType.get([batch, hidden], f32)
            return stablehlo.constant(ir.DenseElementsAttr.get_splat(kind, ir.FloatAttr.get(f32, 0.0)))

        # UNIDIRECTIONAL_SEQUENCE_LSTM's 24 operands: input; input and recurrent weights per gate; three
        # peephole weights; biases per gate; projection weights and bias; output and cell state; four
        # layer-norm coefficients
        operands = [x, *(gate(w_ih, k) for k in range(4)), *(gate(w_hh, k) for k in range(4)),
                    absent(), absent(), absent(), *(gate(bias, k) for k in range(4)), absent(), absent(),
                    zero_state(), zero_state(), absent(), absent(), absent(), absent()]
        attributes = {"fused_activation_function": ir.StringAttr.get("TANH"),
                      "cell_clip": ir.FloatAttr.get(f32, 0.0), "proj_clip": ir.FloatAttr.get(f32, 0.0),
                      "time_major": ir.BoolAttr.get(False)}
        return ir.Operation.create("tfl.unidirectional_sequence_lstm",
                                   results=lowering_utils.node_meta_to_ir_types(lctx.node), operands=operands,
                                   attributes=attributes).result

    _registered = True
