""".tflite operators in the user's terms: which operators are weighted layers, which PyTorch module
each came from, and which operators must stay float for a layer to really run in float.

litert-torch names a tensor after the nn_module_stack of the node that made it, one
`<class>_<last name of the module path>` per level (torch.nn.modules.conv.Conv2d_0), joined by '/',
with fused ops' names joined by ';'. The full path (features.0) is not in the name, so edgeport asks
litert-torch to name every node of the traced program the same way and maps names back to paths."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from exporter.diagnosis.contract import Layer, feeding_chain

# Operators whose second input is a weight when it is a constant. TRANSPOSE_CONV takes
# (output shape, weights, input); the rest take (input, weights, ...).
WEIGHTED_OPS = {"CONV_2D": (0, 1), "DEPTHWISE_CONV_2D": (0, 1), "FULLY_CONNECTED": (0, 1),
                "TRANSPOSE_CONV": (2, 1), "BATCH_MATMUL": (0, 1), "CONV_3D": (0, 1)}


@dataclass(frozen=True)
class Operator:
    index: int
    op: str
    scope: str  # ai-edge-quantizer's name for the op: its output tensor names, each followed by ';'
    inputs: tuple[str, ...]  # tensor names ('' for an absent optional input)
    outputs: tuple[str, ...]
    constant_inputs: frozenset[int]  # positions of inputs backed by a constant buffer
    weight_buffer: int
    weight: np.ndarray | None = field(default=None, compare=False, repr=False)  # a weighted op's float weight
    computes_in_float: bool = False  # reads or writes a float tensor


def float32_constant(model, tensor) -> np.ndarray | None:
    """A tensor's constant float32 values in its shape (flatbuffer object API), or None: not a constant, or
    not float32."""
    from ai_edge_litert.schema_py_generated import TensorType
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as flatbuffer

    buffer = model.buffers[tensor.buffer] if tensor.buffer else None
    if buffer is None or tensor.type != TensorType.FLOAT32 or (
            (buffer.data is None or len(buffer.data) == 0) and not getattr(buffer, "offset", 0)):
        return None
    return np.asarray(flatbuffer.get_tensor_data(tensor, model.buffers), np.float32).reshape(tuple(tensor.shape))


def read_operators(path: Path) -> list[Operator]:
    """The main subgraph's operators in execution order."""
    from ai_edge_litert.schema_py_generated import BuiltinOperator, TensorType
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as flatbuffer

    op_names = {code: name for name, code in vars(BuiltinOperator).items() if not name.startswith("_")}
    model = flatbuffer.read_model(str(path))
    subgraph = model.subgraphs[0]

    def name(index: int) -> str:
        return flatbuffer.get_tensor_name(subgraph.tensors[index]) if index >= 0 else ""

    def constant(index: int) -> bool:
        if index < 0 or not subgraph.tensors[index].buffer:
            return False
        buffer = model.buffers[subgraph.tensors[index].buffer]
        return buffer.data is not None and len(buffer.data) > 0 or bool(getattr(buffer, "offset", 0))

    float_types = {TensorType.FLOAT32, TensorType.FLOAT16, TensorType.FLOAT64}
    operators = []
    for i, op in enumerate(subgraph.operators):
        code = model.operatorCodes[op.opcodeIndex]
        op_name = op_names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
        inputs = list(op.inputs)
        weight = WEIGHTED_OPS.get(op_name, (0, 1))[1]
        weight_index = inputs[weight] if len(inputs) > weight else -1
        values = float32_constant(model, subgraph.tensors[weight_index]) \
            if op_name in WEIGHTED_OPS and weight_index >= 0 else None
        operators.append(Operator(
            index=i, op=op_name, scope=flatbuffer.get_op_scope(op, subgraph.tensors),
            inputs=tuple(name(t) for t in inputs), outputs=tuple(name(t) for t in op.outputs),
            constant_inputs=frozenset(k for k, t in enumerate(inputs) if constant(t)),
            weight_buffer=subgraph.tensors[weight_index].buffer if weight_index >= 0 else 0, weight=values,
            computes_in_float=any(subgraph.tensors[t].type in float_types
                                  for t in [*inputs, *op.outputs] if t >= 0)))
    return operators


def float_operators(path: Path, module) -> list[dict]:
    """The operators of a model meant to be integer-only that still read or write float tensors, with
    the PyTorch module each came from (`module`: the traced module the .tflite was converted from)."""
    operators = read_operators(path)
    if not any(op.computes_in_float for op in operators):
        return []
    stacks = {entry[0] for node in module.graph.nodes for entry in node.meta.get("nn_module_stack", {}).values()}
    paths = hierarchy_paths(module, stacks)
    named = {op.index: next((paths[piece] for name in op.outputs for piece in name.split(";") if piece in paths), "")
             for op in operators}
    readers = {name: op.index for op in operators for name in op.inputs if name}

    def module_of(op: Operator) -> str:
        """Its own module, else (a DEQUANTIZE the converter added) the module of the op reading it."""
        reader = next((readers[name] for name in op.outputs if name in readers), None)
        return named[op.index] or (named[reader] if reader is not None else "") or "(model output)"

    return [{"op": op.op, "index": op.index, "module": module_of(op)} for op in operators if op.computes_in_float]


def is_weighted(op: Operator) -> bool:
    return op.op in WEIGHTED_OPS and WEIGHTED_OPS[op.op][1] in op.constant_inputs


# litert-torch's location name of a torch.nn recurrent module (its class, then its attribute name)
RECURRENT_LOCATION = re.compile(r"torch\.nn\.modules\.rnn\.(?:LSTM|GRU|RNN)_")


@dataclass(frozen=True)
class RecurrentScopes:
    """The operators of torch.nn recurrent layers (LSTM, GRU, RNN), unrolled by the converter into one
    chain per time step: their weighted operators, and the gate arithmetic between them."""

    weighted: tuple[str, ...]
    other: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.weighted or self.other)


def recurrent_scopes(operators: list[Operator]) -> RecurrentScopes:
    inside = [op for op in operators if any(RECURRENT_LOCATION.search(name) for name in op.outputs)]
    weighted = {op.scope for op in inside if is_weighted(op)}
    return RecurrentScopes(tuple(sorted(weighted)), tuple(sorted({op.scope for op in inside} - weighted)))


def hierarchy_paths(program, owners: set[str]) -> dict[str, str]:
    """litert-torch's location name for each level of the traced program's module stacks -> the
    module path, for the `owners`, the modules owning a weight matrix or kernel (a BatchNorm folded
    into a conv also names the conv's weight, but owns only vectors)."""
    from litert_torch.backend.debuginfo._build import build_mlir_debuginfo

    paths: dict[str, str] = {}
    for node in program.graph.nodes:
        stack = list(node.meta.get("nn_module_stack", {}).values())
        if not stack or (stack[-1][0] not in owners):
            continue
        name = build_mlir_debuginfo(node)
        if name:
            paths.setdefault(name.rstrip(";"), stack[-1][0])
    return paths


def _same_values(weight: np.ndarray, parameter: np.ndarray) -> bool:
    if weight.size != parameter.size:
        return False
    return bool(np.allclose(weight.ravel(), parameter.ravel(), atol=1e-6)
                or (parameter.ndim == 2 and np.allclose(weight.ravel(), parameter.T.ravel(), atol=1e-6)))


def _module_of(op: Operator, paths: dict[str, str], matrices: dict[str, list[np.ndarray]]) -> str:
    """The weight's name speaks for the layer first (the output may carry a fused activation's name
    first, or the model output's name); then the output's. Inside that module, a child whose
    parameter holds exactly the operator's weight is more specific: nn.MultiheadAttention calls
    out_proj's weight itself, so the name says only self_attn."""
    weight = op.inputs[WEIGHTED_OPS[op.op][1]]
    named = next((paths[piece] for name in (weight, *op.outputs) for piece in name.split(";") if piece in paths), "")
    if op.weight is not None:
        owners = {owner for owner, arrays in matrices.items()
                  if (not named or owner == named or owner.startswith(named + "."))
                  and any(_same_values(op.weight, a) for a in arrays)}
        if len(owners) == 1:
            return owners.pop()
    return named


def weighted_layers(operators: list[Operator], paths: dict[str, str],
                    matrices: dict[str, list[np.ndarray]]) -> list[Layer]:
    """Weighted operators grouped by (module, weight buffer): a recurrent layer applies one weight at
    every time step, and quantizing that layer means all of those operators. In graph order."""
    groups: dict[tuple[str, int], list[Operator]] = {}
    for op in operators:
        if is_weighted(op):
            groups.setdefault((_module_of(op, paths, matrices), op.weight_buffer), []).append(op)
    layers = []
    for (module, _), ops in groups.items():
        last = ops[-1]
        node = f"{last.op}#{ops[0].index}" + (f"..#{last.index} ({len(ops)} ops)" if len(ops) > 1 else "")
        layers.append(Layer(node, last.op, module, last.outputs[0], operators=tuple(op.index for op in ops),
                            scopes=tuple(op.scope for op in ops)))
    return layers


def float_island(operators: list[Operator], layer: Layer) -> list[str]:
    """The scopes of the layer's operators and of the non-weighted chain feeding their activation inputs
    (the quantizer quantizes a tensor where it is produced)."""
    producers = {name: op for op in operators for name in op.outputs if name}
    own = {operators[i].scope for i in layer.operators}
    chain = feeding_chain([operators[i].inputs[WEIGHTED_OPS[operators[i].op][0]] for i in layer.operators], producers,
                          lambda op: is_weighted(op) or op.scope in own, lambda op: op.scope,
                          lambda op: [n for k, n in enumerate(op.inputs) if n and k not in op.constant_inputs])
    return sorted(own | set(chain))
