"""SmoothQuant (exporter/quant/smooth.divisors) in a LiteRT program, written into the fp32 flatbuffer
before ai-edge-quantizer reads it: each tensor a norm writes and a FULLY_CONNECTED reads goes through a
MUL by 1/s (kept float, with the norm), and each such operator's weight columns are multiplied by s.
Operator scopes are kept, so diagnosis selects the same operators; the MUL's output is named after
the tensor it smooths.

Measured on all-MiniLM-L6-v2 and all-mpnet-base-v2 (static int8, transformer-block recipe, 48
sentences): see README's "Transformer encoders at int8"."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exporter.formats.tflite.layers import float32_constant
from exporter.quant.smooth import matmul_divisors


def channel_maxima(fp32: Path, tensors: list[str], samples: list[dict]) -> dict[str, np.ndarray]:
    """max |value| per channel (last axis) of each tensor over the samples, read from the LiteRT interpreter
    with every intermediate tensor kept."""
    from ai_edge_litert.interpreter import Interpreter

    from common.artifact_dir import LITERT_SIGNATURE

    interpreter = Interpreter(model_path=str(fp32), num_threads=1, experimental_preserve_all_tensors=True)
    index = {detail["name"]: detail["index"] for detail in interpreter.get_tensor_details()}
    runner = interpreter.get_signature_runner(LITERT_SIGNATURE)
    maxima: dict[str, np.ndarray] = {}
    for feeds in samples:
        runner(**feeds)
        for tensor in tensors:
            value = interpreter.get_tensor(index[tensor])
            peak = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
            maxima[tensor] = np.maximum(maxima[tensor], peak) if tensor in maxima else peak
    return maxima


def smooth(fp32: Path, out: Path, channel_max: dict[str, np.ndarray], alpha: float) -> int:
    """Write `fp32` to `out` with the fully connected operators reading each tensor of `channel_max`
    smoothed; how many tensors were."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as flatbuffer

    model = flatbuffer.read_model(fp32)
    subgraph = model.subgraphs[0]
    by_name = {flatbuffer.get_tensor_name(t): i for i, t in enumerate(subgraph.tensors)}
    mul = _opcode(model, schema.BuiltinOperator.MUL)
    reads: dict[int, int] = {}
    for op in subgraph.operators:
        for index in op.inputs:
            reads[index] = reads.get(index, 0) + 1
    smoothed = 0
    for tensor, maxima in channel_max.items():
        source = by_name[tensor]
        readers = [(position, op) for position, op in enumerate(subgraph.operators)
                   if model.operatorCodes[op.opcodeIndex].builtinCode == schema.BuiltinOperator.FULLY_CONNECTED
                   and op.inputs[0] == source and _weight(model, subgraph, op) is not None]
        if not readers:
            continue
        weights = [_weight(model, subgraph, op) for _, op in readers]  # [out, in] float32
        scale = matmul_divisors(maxima, weights, alpha)
        inverse = _constant(model, subgraph, f"{tensor}__inverse_scale", list(scale.shape),
                            np.frombuffer((1.0 / scale).astype(np.float32).tobytes(), np.uint8))
        original = subgraph.tensors[source]
        subgraph.tensors.append(schema.TensorT(
            shape=list(original.shape), type=original.type, buffer=_empty_buffer(model),
            name=f"{tensor}__smoothed".encode(), shapeSignature=original.shapeSignature, hasRank=original.hasRank))
        output = len(subgraph.tensors) - 1
        for (_, op), weight in zip(readers, weights, strict=True):
            op.inputs[0] = output
            scaled = np.frombuffer((weight * scale[None, :]).astype(np.float32).tobytes(), np.uint8)
            if reads[op.inputs[1]] == 1:  # its own weight: scaled in place, so no stale copy stays in the file
                model.buffers[subgraph.tensors[op.inputs[1]].buffer].data = scaled
            else:
                op.inputs[1] = _constant(model, subgraph, f"{tensor}__smoothed_weight_{op.inputs[1]}",
                                         list(weight.shape), scaled)
        options = schema.MulOptionsT()
        subgraph.operators.insert(readers[0][0], schema.OperatorT(
            opcodeIndex=mul, inputs=[source, inverse], outputs=[output],
            builtinOptionsType=schema.BuiltinOptions.MulOptions, builtinOptions=options))
        smoothed += 1
    flatbuffer.write_model(model, out)
    return smoothed


def _weight(model, subgraph, op) -> np.ndarray | None:
    """A fully connected operator's constant float32 weight [out, in], or None."""
    return float32_constant(model, subgraph.tensors[op.inputs[1]])


def _empty_buffer(model) -> int:
    from ai_edge_litert import schema_py_generated as schema

    model.buffers.append(schema.BufferT())
    return len(model.buffers) - 1


def _constant(model, subgraph, name: str, shape: list[int], data: np.ndarray) -> int:
    """A float32 constant tensor holding `data` (its bytes)."""
    from ai_edge_litert import schema_py_generated as schema

    buffer = schema.BufferT()
    buffer.data = data
    model.buffers.append(buffer)
    subgraph.tensors.append(schema.TensorT(shape=shape, type=0, buffer=len(model.buffers) - 1, name=name.encode()))
    return len(subgraph.tensors) - 1


def _opcode(model, builtin: int) -> int:
    from ai_edge_litert import schema_py_generated as schema

    for index, code in enumerate(model.operatorCodes):
        if code.builtinCode == builtin:
            return index
    model.operatorCodes.append(schema.OperatorCodeT(builtinCode=builtin, deprecatedBuiltinCode=min(builtin, 127),
                                                    version=1))
    return len(model.operatorCodes) - 1
