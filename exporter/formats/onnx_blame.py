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

from validators.batching import run_batched
from validators.parity import output_parity

BLAME_SAMPLES = 64  # eval samples the diagnosis runs on (the first ones, so it is deterministic)

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
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    return lambda feeds: session.run(outputs, feeds), outputs


def _run_named(path: Path, names: list[str], feeds: dict, batch: int | None) -> dict[str, np.ndarray]:
    run, outputs = _session_with_outputs(path, names)
    return dict(zip(outputs, run_batched(run, feeds, batch), strict=True))


def _sqnr(reference: np.ndarray, value: np.ndarray) -> float:
    return round(output_parity(reference, value)["sqnr_db"], 3)


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
    feeds = {k: v[:BLAME_SAMPLES] for k, v in feeds.items()}
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
        rows.append({
            "module": layer["module"], "node": layer["node"], "op": layer["op"],
            "sqnr_db_alone_at_output": min(_sqnr(reference[o], alone[o]) for o in model_outputs),
            "sqnr_db_alone_at_layer": _sqnr(reference[alone_f], alone[alone_q]),
            "sqnr_db_accumulated": _sqnr(reference[acc_f], accumulated[acc_q]),
            "tensor": acc_f, "quantized_tensor": acc_q,
            "samples": len(next(iter(feeds.values()))),
        })
    # Most harmful first; ties keep graph order, so the table is deterministic.
    return sorted(rows, key=lambda r: r["sqnr_db_alone_at_output"])


def auto_precision(model: onnx.ModelProto, rows: list[dict], n_layers: int, quantize: Quantize, out: Path,
                   violations: Callable[[Path], list[str]]) -> dict:
    """Keep layers in float, most harmful first, re-quantizing until the budget is met (or every
    weighted layer is float and it still is not). `out` ends as the last model tried."""
    from exporter.formats.onnx_layers import float_island

    before = violations(out)
    bytes_before = out.stat().st_size
    kept: list[dict] = []
    excluded: list[str] = []
    remaining = before
    for row in rows:
        if not remaining:
            break
        kept.append(row)
        excluded = sorted(set(excluded) | set(float_island(model, row["node"])))
        quantize(out, {"nodes_to_exclude": excluded})
        remaining = violations(out)
    return {
        "met": not remaining,
        "kept_float": [r["module"] or r["node"] for r in kept],
        "excluded_nodes": excluded,
        "int8_layers": n_layers - len(kept), "weighted_layers": n_layers,
        "int8_layer_share": round((n_layers - len(kept)) / n_layers, 4) if n_layers else 0.0,
        "bytes_before": bytes_before, "bytes_after": out.stat().st_size,
        "violations_before": before, "violations_after": remaining,
        "note": "" if not remaining else "the budget is not met even with every weighted layer in float",
    }
