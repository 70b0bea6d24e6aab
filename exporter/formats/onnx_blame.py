"""Per-layer quantization blame for ONNX QDQ variants, and automatic mixed precision.

For every weighted layer, on eval samples: the SQNR of its output in the quantized model against the
fp32 model (the error accumulated up to it), and, quantizing that layer alone, the SQNR of its own
output and of the model's output (the error it adds on its own). Layers are ranked by the last:
the most harmful first."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from exporter.formats.blame import blame_feeds, blame_row, most_harmful_first
from validators.batching import run_batched

Quantize = Callable[[Path, dict], dict]  # (output path, extra quantizer arguments) -> config


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


def layer_tensor(model: onnx.ModelProto, node_name: str, fp32_tensors: set[str]) -> tuple[str, str]:
    """(tensor in the quantized model, its counterpart in the fp32 model) for a layer's output.

    onnxruntime's QDQ quantizer can fold the activation after a layer into the Q/DQ pair that follows
    it: the Gemm then writes the Relu's tensor name, unclamped, and the clamp happens when that tensor
    is quantized. So the layer's value is the dequantized tensor where a Q/DQ pair follows."""
    node = next(n for n in model.graph.node if n.name == node_name)
    name = node.output[0]
    for quantize in (n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == name):
        for dequantize in (n for n in model.graph.node
                           if n.op_type == "DequantizeLinear" and n.input[0] == quantize.output[0]):
            counterpart = name if name in fp32_tensors else dequantize.output[0]
            if counterpart in fp32_tensors:
                return dequantize.output[0], counterpart
    if name in fp32_tensors:
        return name, name
    raise RuntimeError(f"no fp32 counterpart for the output of {node_name} in the quantized model")


def blame_layers(fp32: Path, quantized: Path, layers: list[dict], quantize: Quantize, feeds: dict,
                 batch: int | None, scratch: Path, model_outputs: list[str]) -> list[dict]:
    feeds = blame_feeds(feeds, batch)
    fp32_model = onnx.load(str(fp32))
    fp32_tensors = {o for n in fp32_model.graph.node for o in n.output}
    quantized_model = onnx.load(str(quantized))
    accumulated_names = {layer["node"]: layer_tensor(quantized_model, layer["node"], fp32_tensors)
                         for layer in layers}
    accumulated = _run_named(quantized, [q for q, _ in accumulated_names.values()], feeds, batch)
    alone_path = scratch / "blame-one-layer.onnx"
    alone_names, alone_values = {}, {}
    for layer in layers:
        quantize(alone_path, {"nodes_to_quantize": [layer["node"]]})
        names = layer_tensor(onnx.load(str(alone_path)), layer["node"], fp32_tensors)
        alone_names[layer["node"]] = names
        alone_values[layer["node"]] = _run_named(alone_path, [names[0]], feeds, batch)
    wanted = {f for _, f in accumulated_names.values()} | {f for _, f in alone_names.values()} | set(model_outputs)
    reference = _run_named(fp32, sorted(wanted), feeds, batch)
    rows = []
    for layer in layers:
        alone = alone_values[layer["node"]]
        alone_q, alone_f = alone_names[layer["node"]]
        acc_q, acc_f = accumulated_names[layer["node"]]
        rows.append(blame_row(
            layer | {"tensor": acc_f, "quantized_tensor": acc_q},
            reference_layer=reference[acc_f], accumulated_layer=accumulated[acc_q],
            alone_layer=alone[alone_q], reference_alone_layer=reference[alone_f],
            reference_outputs=[reference[o] for o in model_outputs], alone_outputs=[alone[o] for o in model_outputs],
            samples=len(next(iter(feeds.values())))))
    return most_harmful_first(rows)


def keep_float(model: onnx.ModelProto, quantize: Quantize, out: Path) -> Callable[[list[dict]], list[str]]:
    """Re-quantize `out` with the given layers, and the non-weighted chain feeding each, in float."""
    from exporter.formats.onnx_layers import float_island

    def rewrite(rows: list[dict]) -> list[str]:
        excluded = sorted({name for row in rows for name in float_island(model, row["node"])})
        quantize(out, {"nodes_to_exclude": excluded})
        return excluded

    return rewrite
