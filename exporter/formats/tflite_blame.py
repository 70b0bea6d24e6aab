"""Per-layer quantization blame for static int8 .tflite variants, and automatic mixed precision.

Intermediate tensors are read with LiteRT's builtin kernels (XNNPACK computes its partition
internally and keeps no intermediates) and dequantized with each tensor's own scale and zero point.
A layer alone is the fp32 model with only that layer's operators quantized (ai-edge-quantizer, same
calibration ranges as the artifact)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from exporter.formats.blame import blame_feeds, blame_row, most_harmful_first
from exporter.formats.tflite_layers import Operator, float_island, is_weighted, read_operators
from exporter.formats.tflite_quantize import AeqQuantizer
from validators.batching import run_batched
from validators.quiet import silenced


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


def quantized_tensor_names(quantized: Path, fp32_operators: list[Operator], layers: list[dict]) -> list[str] | None:
    """Each layer's output tensor in the quantized model. ai-edge-quantizer keeps the fp32 names;
    another quantizer (PT2E) names tensors anew, so weighted operators are paired in graph order."""
    operators = read_operators(quantized)
    names = {name for op in operators for name in op.outputs}
    if all(layer["tensor"] in names for layer in layers):
        return [layer["tensor"] for layer in layers]
    fp32_weighted = [op.index for op in fp32_operators if is_weighted(op)]
    quantized_weighted = [op for op in operators if is_weighted(op)]
    if len(fp32_weighted) != len(quantized_weighted):
        return None
    by_fp32_index = dict(zip(fp32_weighted, quantized_weighted, strict=True))
    return [by_fp32_index[layer["operators"][-1]].outputs[0] for layer in layers]


def blame_layers(fp32: Path, quantized: Path, operators: list[Operator], layers: list[dict], aeq: AeqQuantizer,
                 feeds: dict, batch: int | None, scratch: Path) -> list[dict]:
    feeds = blame_feeds(feeds, batch)
    samples = len(next(iter(feeds.values())))
    quantized_names = quantized_tensor_names(quantized, operators, layers)
    if quantized_names is None:
        return []
    reference, reference_outputs = tensor_values(fp32, [layer["tensor"] for layer in layers], feeds, batch)
    accumulated, _ = tensor_values(quantized, quantized_names, feeds, batch)
    alone_path = scratch / "blame-one-layer.tflite"
    rows = []
    for layer, quantized_name in zip(layers, quantized_names, strict=True):
        aeq.build(alone_path, only=layer["scopes"])
        alone, alone_outputs = tensor_values(alone_path, [layer["tensor"]], feeds, batch)
        rows.append(blame_row(
            {**layer, "quantized_tensor": quantized_name},
            reference_layer=reference[layer["tensor"]], accumulated_layer=accumulated[quantized_name],
            alone_layer=alone[layer["tensor"]], reference_outputs=reference_outputs, alone_outputs=alone_outputs,
            samples=samples))
    return most_harmful_first(rows)


def keep_float(operators: list[Operator], layers: list[dict], aeq: AeqQuantizer,
               out: Path) -> Callable[[list[dict]], list[str]]:
    """Re-quantize `out` with the given layers, and the non-weighted operators feeding each, in float."""
    by_node = {layer["node"]: layer for layer in layers}
    by_scope = {op.scope: op for op in operators}

    def rewrite(rows: list[dict]) -> list[str]:
        scopes = sorted({s for row in rows for s in float_island(operators, by_node[row["node"]])})
        with silenced():  # the quantizer's progress and overwrite warnings
            aeq.build(out, keep_float=scopes)
        return [f"{by_scope[s].op}#{by_scope[s].index}" for s in sorted(scopes, key=lambda s: by_scope[s].index)]

    return rewrite
