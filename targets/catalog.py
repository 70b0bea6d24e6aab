"""What each artifact format can emit: precision variants and graph passes, by id.

A plain-data catalog (no torch, no converters) so target files can be validated, and
`edgeport targets` can answer, without importing any heavy library. The exporter registers an
implementation for every id here; tests/test_catalog.py checks that nothing is left without one.
"""

from __future__ import annotations

# format -> {precision id: one-line description}
PRECISIONS: dict[str, dict[str, str]] = {
    "onnx": {
        "fp32": "float32 weights and activations",
        "fp16": "float16 weights and activations, float32 model inputs/outputs",
        "int8_dynamic": "int8 weights, activations quantized at run time (dynamic range)",
        "int8": "static int8 QDQ: per-channel int8 weights, int8 activations calibrated on --calib data",
        "w8a16": "static QDQ with per-channel int8 weights and int16 activations",
    },
    "tflite": {
        "fp32": "float32 LiteRT model (litert-torch)",
        "fp16": "float16 weights, float32 compute and I/O",
        "int8_dynamic": "int8 weights, activations quantized at run time (dynamic range)",
        "int8": "static int8 weights and activations calibrated on --calib data, float32 input/output",
        "int8_full": "full-integer int8: int8 weights, activations and int8 input/output tensors "
                     "(what microcontroller NPUs need), calibrated on --calib data",
    },
    "coreml": {
        "fp16": "ML Program with fp16 compute precision (the Neural Engine default)",
        "fp32": "ML Program with fp32 compute precision",
        "w8": "fp16 program, weights linearly quantized to int8 per output channel",
        "palette6": "fp16 program, weights palettized to 6-bit (64-entry k-means LUT)",
        "palette4": "fp16 program, weights palettized to 4-bit (16-entry k-means LUT)",
    },
}

# format -> {pass id: one-line description}; a target lists these in [passes].
PASSES: dict[str, dict[str, str]] = {
    "onnx": {
        "fold_constants": "evaluate nodes whose inputs are all constants and store the results",
        "fold_batchnorm": "fold BatchNormalization into the preceding Conv / Gemm weights",
        "eliminate_dead_nodes": "drop Identity nodes, nodes nobody reads and unused initializers",
        "simplify": "onnxslim: shape inference, pattern fusion, redundant-op removal",
    },
    "tflite": {},  # litert-torch runs its own graph optimizations during conversion
    "coreml": {},  # coremltools runs its MIL pass pipeline during conversion
}

FILE_EXTENSIONS: dict[str, str] = {"onnx": ".onnx", "tflite": ".tflite", "coreml": ".mlpackage"}


def artifact_filename(fmt: str, precision: str) -> str:
    """model.onnx for the fp32 variant, model.<precision>.onnx for the others."""
    ext = FILE_EXTENSIONS[fmt]
    return f"model{ext}" if precision == "fp32" else f"model.{precision}{ext}"
