"""Per-layer quantization blame for ONNX QDQ variants, and automatic mixed precision.

For every weighted layer, on eval samples: the SQNR of its output in the quantized model against the
fp32 model (the error accumulated up to it), and, quantizing that layer alone, the SQNR of its own
output and of the model's output (the error it adds on its own). Layers are ranked by the last:
the most harmful first."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from common.batching import run_batched, sample_count
from exporter.diagnosis import blame
from exporter.diagnosis.blame import BlameRow
from exporter.diagnosis.contract import Layer, Progress
from exporter.formats.onnx.layers import float_island
from exporter.formats.onnx.quantize import KeepFloat, NodeSelection, Only

Quantize = Callable[[Path, NodeSelection], dict]  # (output path, which nodes) -> quantization record


def _session_with_outputs(path: Path, names: list[str]):
    """An onnxruntime session that also returns the named intermediate tensors."""
    import onnxruntime as ort

    model = onnx.load(str(path))
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    # The QDQ model as written: onnxruntime's fusions (DQ-op-Q into integer kernels) depend on
    # which tensors are graph outputs, so with them an intermediate read would change what it reads.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    return lambda feeds: session.run(outputs, feeds), outputs


def _run_named(path: Path, names: list[str], feeds: dict, batch: int | None) -> dict[str, np.ndarray]:
    run, outputs = _session_with_outputs(path, names)
    return dict(zip(outputs, run_batched(run, feeds, batch), strict=True))


def layer_tensor(model: onnx.ModelProto, layer: Layer, fp32_tensors: set[str]) -> tuple[str, str]:
    """(tensor in the quantized model, its counterpart in the fp32 model) for a layer's output.

    onnxruntime's QDQ quantizer can fold the activation after a layer into the Q/DQ pair that follows
    it: the Gemm then writes the Relu's tensor name, unclamped, and the clamp happens when that tensor
    is quantized. So the layer's value is the dequantized tensor where a Q/DQ pair follows. Dynamic
    quantization replaces the node (ConvInteger, MatMulInteger and a rescale) under the same output name."""
    node = next((n for n in model.graph.node if n.name == layer.node), None)
    name = node.output[0] if node is not None else layer.tensor
    for quantize in (n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == name):
        for dequantize in (n for n in model.graph.node
                           if n.op_type == "DequantizeLinear" and n.input[0] == quantize.output[0]):
            counterpart = name if name in fp32_tensors else dequantize.output[0]
            if counterpart in fp32_tensors:
                return dequantize.output[0], counterpart
    if name in fp32_tensors:
        return name, name
    raise RuntimeError(f"no fp32 counterpart for the output of {layer.node} in the quantized model")


_QRANGE = {onnx.TensorProto.UINT8: (0, 255), onnx.TensorProto.INT8: (-128, 127),
           onnx.TensorProto.UINT16: (0, 65535), onnx.TensorProto.INT16: (-32768, 32767)}


def quantized_layers(fp32_model: onnx.ModelProto, quantized_model: onnx.ModelProto, layers: list[Layer]) -> list:
    """What quantization did to each layer (exporter.diagnosis.alone.QuantizedLayer): its weight before and
    after (DequantizeLinear of the artifact's integer weight) and its input's Q/DQ; None where the
    QDQ pattern is not there."""
    from onnx import numpy_helper

    from exporter.diagnosis.alone import InputQuant, QuantizedLayer

    constants = {i.name: i for i in quantized_model.graph.initializer}
    fp32_constants = {i.name: i for i in fp32_model.graph.initializer}
    producers = {o: n for n in quantized_model.graph.node for o in n.output}
    nodes = {n.name: n for n in quantized_model.graph.node}
    fp32_nodes = {n.name: n for n in fp32_model.graph.node}

    def dequantize_linear(node) -> np.ndarray | None:
        if node is None or node.op_type != "DequantizeLinear" or node.input[0] not in constants:
            return None
        q = numpy_helper.to_array(constants[node.input[0]]).astype(np.float64)
        scale = numpy_helper.to_array(constants[node.input[1]]).astype(np.float64)
        zero = numpy_helper.to_array(constants[node.input[2]]).astype(np.float64) if len(node.input) > 2 else 0.0
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if np.ndim(scale):
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), np.reshape(zero, shape) if np.ndim(zero) else zero
        return ((q - zero) * scale).astype(np.float32)

    def input_quant(name: str):
        dq = producers.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3 or dq.input[2] not in constants:
            return None
        zero = constants[dq.input[2]]
        if zero.data_type not in _QRANGE or dq.input[1] not in constants:
            return None
        scale = numpy_helper.to_array(constants[dq.input[1]])
        if np.ndim(scale):
            return None
        return InputQuant(float(scale), int(numpy_helper.to_array(zero)), *_QRANGE[zero.data_type])

    found = []
    for layer in layers:
        node, fp32_node = nodes.get(layer.node), fp32_nodes.get(layer.node)
        weight = fp32_constants.get(fp32_node.input[1]) if fp32_node is not None else None
        quantized = dequantize_linear(producers.get(node.input[1])) if node is not None else None
        activation = input_quant(node.input[0]) if node is not None else None
        if weight is None or quantized is None or activation is None:
            found.append(None)
            continue
        found.append(QuantizedLayer(layer.module, numpy_helper.to_array(weight), quantized, activation))
    return found


def float_weight_layers(quantized_model: onnx.ModelProto, layers: list[Layer]) -> set[str]:
    """The layers whose weight the artifact stores as a float initializer (no DequantizeLinear)."""
    floats = {i.name for i in quantized_model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    nodes = {n.name: n for n in quantized_model.graph.node}
    return {layer.node for layer in layers
            if layer.node in nodes and len(nodes[layer.node].input) > 1 and nodes[layer.node].input[1] in floats}


def blame_layers(fp32: Path, quantized: Path, layers: list[Layer], quantize: Quantize, feeds: dict,
                 batch: int | None, scratch: Path, model_outputs: list[str], traced=None) -> list[BlameRow]:
    fp32_model = onnx.load(str(fp32))
    fp32_tensors = {o for n in fp32_model.graph.node for o in n.output}
    quantized_model = onnx.load(str(quantized))
    accumulated_names = {layer.node: layer_tensor(quantized_model, layer, fp32_tensors) for layer in layers}
    accumulated = _run_named(quantized, [q for q, _ in accumulated_names.values()], feeds, batch)
    in_pytorch = blame.alone_in_pytorch(traced, quantized_layers(fp32_model, quantized_model, layers), feeds)
    kept_float = float_weight_layers(quantized_model, layers)
    alone_path = scratch / "blame-one-layer.onnx"
    alone_names, alone_values = {}, {}
    for layer, measured in zip(layers, in_pytorch, strict=True):
        if measured is None and layer.node not in kept_float:  # in the runtime: quantized at this layer only
            quantize(alone_path, Only((layer.node,)))
            names = layer_tensor(onnx.load(str(alone_path)), layer, fp32_tensors)
            alone_names[layer.node] = names
            alone_values[layer.node] = _run_named(alone_path, [names[0]], feeds, batch)
    wanted = {f for _, f in accumulated_names.values()} | {f for _, f in alone_names.values()} | set(model_outputs)
    reference = _run_named(fp32, sorted(wanted), feeds, batch)
    rows = []
    for layer, measured in zip(layers, in_pytorch, strict=True):
        acc_q, acc_f = accumulated_names[layer.node]
        alone_by = blame.ALONE_IN_ARTIFACT if layer.node in alone_names else blame.ALONE_IN_PYTORCH
        if measured is None and layer.node in kept_float:
            measured, alone_by = blame.float_alone(sample_count(feeds)), blame.FLOAT_IN_ARTIFACT
        elif measured is None:
            alone = alone_values[layer.node]
            alone_q, alone_f = alone_names[layer.node]
            measured = blame.alone_from_values(reference[alone_f], alone[alone_q],
                                               [reference[o] for o in model_outputs], [alone[o] for o in model_outputs])
        rows.append(blame.blame_row(
            dataclasses.replace(layer, tensor=acc_f, quantized_tensor=acc_q),
            reference_layer=reference[acc_f], accumulated_layer=accumulated[acc_q], alone=measured,
            alone_by=alone_by, samples=sample_count(feeds)))
    return blame.most_harmful_first(rows)


class OnnxLayerQuantizer:
    """The diagnosis stage's view of a static ONNX variant: its weighted layers, quantized one at a
    time for the blame table, or all but some (kept in float, with the chain feeding each)."""

    def __init__(self, model: onnx.ModelProto, paths: dict[str, str], quantize: Quantize, fp32: Path, traced,
                 scratch: Path):
        from exporter.formats.onnx.layers import weighted_layers

        self.model, self.quantize, self.fp32, self.traced, self.scratch = model, quantize, fp32, traced, scratch
        self.layers = weighted_layers(model, paths)
        self.weighted_layers = len(self.layers)

    def blame(self, out: Path, feeds: dict[str, np.ndarray], progress: Progress) -> list[BlameRow]:
        progress(f"per-layer blame over {len(self.layers)} weighted layers")
        return blame_layers(self.fp32, out, self.layers, self.quantize, feeds, self.traced.batch, self.scratch,
                            [s.name for s in self.traced.outputs], self.traced)

    def keep_float(self, rows: list[BlameRow], out: Path) -> list[str]:
        """Re-quantize `out` with the given layers, and the non-weighted chain feeding each, in float."""
        excluded = sorted({name for row in rows for name in float_island(self.model, row.layer.node)})
        self.quantize(out, KeepFloat(tuple(excluded)))
        return excluded

    def record_kept(self, quantization: dict | None, kept: list[str]) -> dict | None:
        return quantization
