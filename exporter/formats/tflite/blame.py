"""Per-layer quantization blame for int8 .tflite variants (static and dynamic), and automatic mixed precision.

Intermediate tensors are read with LiteRT's builtin kernels (XNNPACK computes its partition
internally and keeps no intermediates) and dequantized with each tensor's own scale and zero point.
A layer alone is the fp32 model with only that layer's operators quantized (ai-edge-quantizer, same
calibration ranges as the artifact)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from common.batching import run_batched, sample_count
from exporter.diagnosis import blame
from exporter.diagnosis.blame import BlameRow
from exporter.diagnosis.contract import Layer, Progress
from exporter.formats.tflite.layers import Operator, float_island, is_weighted, read_operators, weighted_layers
from exporter.formats.tflite.quantize import AiEdgeQuantizer, quiet


def tensor_values(path: Path, names: list[str], feeds: dict, batch: int | None) -> tuple[dict, list[np.ndarray]]:
    """The named tensors and the model's outputs over all samples, run with builtin kernels."""
    from validators.runtimes.litert_runtime import LiteRtSession

    session = LiteRtSession(path, 1, "none", keep_intermediates=True)

    def run(chunk: dict) -> list[np.ndarray]:
        outputs = session.run(chunk)
        return outputs + [session.tensor(name) for name in names]

    values = run_batched(run, feeds, batch)
    n_outputs = len(values) - len(names)
    return dict(zip(names, values[n_outputs:], strict=True)), values[:n_outputs]


def quantized_tensor_names(quantized: Path, fp32_operators: list[Operator], layers: list[Layer]) -> list[str] | None:
    """Each layer's output tensor in the quantized model. ai-edge-quantizer keeps the fp32 names;
    another quantizer (PT2E) names tensors anew, so weighted operators are paired in graph order."""
    operators = read_operators(quantized)
    names = {name for op in operators for name in op.outputs}
    if all(layer.tensor in names for layer in layers):
        return [layer.tensor for layer in layers]
    fp32_weighted = [op.index for op in fp32_operators if is_weighted(op)]
    quantized_weighted = [op for op in operators if is_weighted(op)]
    if len(fp32_weighted) != len(quantized_weighted):
        return None
    by_fp32_index = dict(zip(fp32_weighted, quantized_weighted, strict=True))
    return [by_fp32_index[layer.operators[-1]].outputs[0] for layer in layers]


_QRANGES = {"INT8": (-128, 127), "INT16": (-32768, 32767), "UINT8": (0, 255)}


def quantized_layers(quantized: Path, fp32_operators: list[Operator], layers: list[Layer],
                     quantized_names: list[str]) -> tuple[list, set[str]]:
    """What quantization did to each single-operator layer (exporter.diagnosis.alone.QuantizedLayer): the
    fp32 model's weight, the artifact's integer weight dequantized with its scales, and the scale and
    zero point of the operator's input; None where the operator is not quantized that way. And the
    output names of the layers whose weight the artifact keeps float."""
    from ai_edge_litert.schema_py_generated import TensorType
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as flatbuffer

    from exporter.diagnosis.alone import DYNAMIC_INPUT, InputQuant, QuantizedLayer
    from exporter.formats.tflite.layers import WEIGHTED_OPS

    type_names = {code: name for name, code in vars(TensorType).items() if not name.startswith("_")}
    model = flatbuffer.read_model(str(quantized))
    subgraph = model.subgraphs[0]
    by_output = {flatbuffer.get_tensor_name(subgraph.tensors[op.outputs[0]]): op for op in subgraph.operators}

    def params(index: int):
        q = subgraph.tensors[index].quantization
        if q is None or q.scale is None or not len(q.scale):
            return None
        return np.asarray(q.scale, np.float64), np.asarray(q.zeroPoint, np.float64), int(q.quantizedDimension)

    def float_constant(index: int) -> bool:  # not int8 weights a DEQUANTIZE makes float (computed in float)
        tensor = subgraph.tensors[index]
        buffer = model.buffers[tensor.buffer]
        stored = (buffer.data is not None and len(buffer.data) > 0) or (getattr(buffer, "offset", 0) or 0) > 1
        return type_names.get(tensor.type) == "FLOAT32" and stored

    found, kept_float = [], set()
    for layer, name in zip(layers, quantized_names, strict=True):
        op = by_output.get(name)
        fp32_op = fp32_operators[layer.operators[0]]
        if op is not None and fp32_op.op in WEIGHTED_OPS and float_constant(op.inputs[WEIGHTED_OPS[fp32_op.op][1]]):
            kept_float.add(name)
        if len(layer.operators) != 1 or op is None or fp32_op.weight is None:
            found.append(None)
            continue
        activation_at, weight_at = WEIGHTED_OPS[fp32_op.op]
        weight_index, input_index = op.inputs[weight_at], op.inputs[activation_at]
        weight_params, input_params = params(weight_index), params(input_index)
        input_type = type_names.get(subgraph.tensors[input_index].type, "")
        dynamic = input_type == "FLOAT32" and input_params is None  # a hybrid kernel: int8 weights, float input
        if weight_params is None or not dynamic and (
                input_params is None or input_type not in _QRANGES or len(input_params[0]) != 1):
            found.append(None)
            continue
        tensor = subgraph.tensors[weight_index]
        q = np.asarray(flatbuffer.get_tensor_data(tensor, model.buffers), np.float64).reshape(tuple(tensor.shape))
        scale, zero, axis = weight_params
        shape = [1] * q.ndim
        shape[axis] = -1
        dequantized = ((q - zero.reshape(shape if zero.size > 1 else [1])) * scale.reshape(shape)).astype(np.float32)
        activation = DYNAMIC_INPUT if dynamic else InputQuant(float(input_params[0][0]), int(input_params[1][0]),
                                                               *_QRANGES[input_type])
        found.append(QuantizedLayer(layer.module, fp32_op.weight, dequantized, activation))
    return found, kept_float


def blame_layers(fp32: Path, quantized: Path, operators: list[Operator], layers: list[Layer],
                 quantizer: AiEdgeQuantizer, feeds: dict, batch: int | None, scratch: Path,
                 traced=None) -> list[BlameRow]:
    quantized_names = quantized_tensor_names(quantized, operators, layers)
    if quantized_names is None:
        return []
    reference, reference_outputs = tensor_values(fp32, [layer.tensor for layer in layers], feeds, batch)
    accumulated, _ = tensor_values(quantized, quantized_names, feeds, batch)
    placed, kept_float = quantized_layers(quantized, operators, layers, quantized_names)
    in_pytorch = blame.alone_in_pytorch(traced, placed, feeds)
    alone_path = scratch / "blame-one-layer.tflite"
    rows = []
    for layer, quantized_name, measured in zip(layers, quantized_names, in_pytorch, strict=True):
        alone_by = blame.ALONE_IN_PYTORCH
        if measured is None and quantized_name in kept_float:
            measured, alone_by = blame.float_alone(sample_count(feeds)), blame.FLOAT_IN_ARTIFACT
        elif measured is None:  # measured in the runtime: the model quantized at this layer only
            quantizer.build(alone_path, only=layer.scopes)
            alone, alone_outputs = tensor_values(alone_path, [layer.tensor], feeds, batch)
            measured = blame.alone_from_values(reference[layer.tensor], alone[layer.tensor], reference_outputs,
                                               alone_outputs)
            alone_by = blame.ALONE_IN_ARTIFACT
        rows.append(blame.blame_row(
            dataclasses.replace(layer, quantized_tensor=quantized_name),
            reference_layer=reference[layer.tensor], accumulated_layer=accumulated[quantized_name],
            alone=measured, alone_by=alone_by, samples=sample_count(feeds)))
    return blame.most_harmful_first(rows)


class TfliteLayerQuantizer:
    """The diagnosis stage's view of an int8 .tflite variant, quantized with ai-edge-quantizer: one
    layer at a time for the blame table, or all but some (with the operators feeding each)."""

    def __init__(self, fp32: Path, quantizer: AiEdgeQuantizer, traced, scratch: Path):
        from exporter.diagnosis.blame import weight_matrices
        from exporter.formats.tflite.layers import hierarchy_paths

        self.fp32, self.quantizer, self.traced, self.scratch = fp32, quantizer, traced, scratch
        matrices = weight_matrices(traced.loaded.module)
        self.operators = read_operators(fp32)
        self.layers = weighted_layers(self.operators, hierarchy_paths(traced.program, set(matrices)), matrices)
        self.weighted_layers = len(self.layers)

    def blame(self, out: Path, feeds: dict[str, np.ndarray], progress: Progress) -> list[BlameRow]:
        progress(f"per-layer blame over {len(self.layers)} weighted layers")
        with quiet():
            return blame_layers(self.fp32, out, self.operators, self.layers, self.quantizer, feeds,
                                self.traced.batch, self.scratch, self.traced)

    def keep_float(self, rows: list[BlameRow], out: Path) -> list[str]:
        """Re-quantize `out` with the given layers, and the non-weighted operators feeding each, in float."""
        by_scope = {op.scope: op for op in self.operators}
        scopes = sorted({s for row in rows for s in float_island(self.operators, row.layer)})
        with quiet():  # the quantizer's progress and overwrite warnings
            self.quantizer.build(out, keep_float=scopes)
        return [f"{by_scope[s].op}#{by_scope[s].index}" for s in sorted(scopes, key=lambda s: by_scope[s].index)]

    def record_kept(self, quantization: dict | None, kept: list[str]) -> dict | None:
        # the artifact is now ai-edge-quantizer's, mixed (int8_full's PT2E candidate is not rebuilt)
        return {**self.quantizer.config, "kept_float": kept}
