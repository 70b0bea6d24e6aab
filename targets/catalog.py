"""What each artifact format can emit, as plain data: one row per (format, precision), one row per
graph pass, each with its typed options.

No torch and no converters here, so target files can be validated, and `edgeport targets` can
answer, without importing any heavy library. The profile's default budgets, the calibration
decision, the diagnosis stage, the quantizers and the guard tests all read these rows; a new
precision is one row plus its implementation in the format's folder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Budget:
    """Limits one artifact must meet. None means "not checked"."""

    max_abs: float | None = None  # largest absolute output difference against PyTorch
    min_cosine: float | None = None
    min_sqnr_db: float | None = None  # signal-to-quantization-noise ratio of the outputs
    min_top1_agreement: float | None = None  # share of samples whose argmax matches PyTorch's
    max_accuracy_drop: float | None = None  # reference top-1 minus artifact top-1, as a fraction
    max_latency_ms: float | None = None  # median, batch as traced, host figure
    max_size_mb: float | None = None
    min_npu_op_coverage: float | None = None  # share of operators the NPU compiler placed on the NPU
    max_sram_kib: float | None = None  # NPU compiler's SRAM estimate
    max_flash_kib: float | None = None  # NPU compiler's flash estimate
    min_delegated_op_coverage: float | None = None  # ExecuTorch: share of operators in the XNNPACK delegate

    def merged(self, overrides: dict[str, Any]) -> Budget:
        return dataclasses.replace(self, **overrides)

    def limits(self) -> dict[str, float]:
        return {k: v for k, v in vars(self).items() if v is not None}


# Tolerances follow the precision: fp32 tight, fp16 looser, integer variants are judged by
# SQNR, top-1 agreement and task accuracy rather than by max_abs. min_cosine is not set here: unless
# a target sets it, it is the bound min_sqnr_db implies (profile.implied_cosine), so the two never disagree.
FP32_BUDGET = Budget(max_abs=1e-3, min_sqnr_db=60.0, min_top1_agreement=0.99, max_accuracy_drop=0.005)
FP16_BUDGET = Budget(min_sqnr_db=35.0, min_top1_agreement=0.98, max_accuracy_drop=0.005)
INT16_ACTIVATIONS_BUDGET = Budget(min_sqnr_db=30.0, min_top1_agreement=0.98, max_accuracy_drop=0.005)
INT8_BUDGET = Budget(min_sqnr_db=15.0, min_top1_agreement=0.95, max_accuracy_drop=0.01)
WEIGHTS_8BIT_BUDGET = Budget(min_sqnr_db=25.0, min_top1_agreement=0.97, max_accuracy_drop=0.005)

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
# Quantizers for full-integer TFLite; "auto" builds both and keeps the one with the better SQNR
# on the calibration data.
TFLITE_RECIPES = ("auto", "ai-edge-quantizer", "pt2e")


@dataclass(frozen=True)
class NoOptions:
    """A variant that reads no option."""


@dataclass(frozen=True)
class CalibratedOptions:
    """A static variant whose quantizer takes at most `calibration_samples` samples, ranges by global min/max."""

    calibration_samples: int = 512


@dataclass(frozen=True)
class CalibrationMethodOptions(CalibratedOptions):
    calibration_method: str = "minmax"  # how activation ranges are chosen (CALIBRATION_METHODS)


@dataclass(frozen=True)
class FullIntegerOptions(CalibratedOptions):
    recipe: str = "auto"  # which quantizer (TFLITE_RECIPES)


# option -> the values it may take (None: a whole number >= 1)
OPTION_CHOICES: dict[str, tuple[str, ...] | None] = {
    "calibration_samples": None, "calibration_method": CALIBRATION_METHODS, "recipe": TFLITE_RECIPES}

FLOAT, WEIGHT_ONLY, DYNAMIC, STATIC = "float", "weight_only", "dynamic", "static"


@dataclass(frozen=True)
class Precision:
    format: str
    id: str
    description: str
    kind: str  # FLOAT, WEIGHT_ONLY (compressed weights), DYNAMIC (run-time activation ranges), STATIC (calibrated)
    budget: Budget  # the default limits; a target's [budgets] and the variant's own go on top
    options: type = NoOptions  # the typed options a variant of this precision reads
    integer_only: bool = False  # every operator must compute in integers: a float op fails the variant

    @property
    def needs_calibration(self) -> bool:
        return self.kind == STATIC

    @property
    def diagnosable(self) -> bool:
        """Per-layer blame and auto precision apply: layers can be quantized (or compressed) one by one (a
        dynamic variant keeps a layer float by leaving its weights float)."""
        return self.kind in (STATIC, DYNAMIC, WEIGHT_ONLY)

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.options))


PRECISION_ROWS: tuple[Precision, ...] = (
    Precision("onnx", "fp32", "float32 weights and activations", FLOAT, FP32_BUDGET),
    Precision("onnx", "fp16", "float16 weights and activations, float32 model inputs/outputs", FLOAT, FP16_BUDGET),
    Precision("onnx", "int8_dynamic", "int8 weights, activations quantized at run time (dynamic range)", DYNAMIC,
              INT8_BUDGET),
    Precision("onnx", "int8", "static int8 QDQ: per-channel int8 weights, int8 activations calibrated on --calib "
              "data", STATIC, INT8_BUDGET, CalibrationMethodOptions),
    Precision("onnx", "w8a16", "static QDQ with per-channel int8 weights and int16 activations", STATIC,
              INT16_ACTIVATIONS_BUDGET, CalibrationMethodOptions),
    Precision("tflite", "fp32", "float32 LiteRT model (litert-torch)", FLOAT, FP32_BUDGET),
    Precision("tflite", "fp16", "float16 weights, float32 compute and I/O", FLOAT, FP16_BUDGET),
    Precision("tflite", "int8_dynamic", "int8 weights, activations quantized at run time (dynamic range)", DYNAMIC,
              INT8_BUDGET),
    Precision("tflite", "int8", "static int8 weights and activations calibrated on --calib data, float32 "
              "input/output", STATIC, INT8_BUDGET, CalibratedOptions),
    Precision("tflite", "int8_full", "full-integer int8: int8 weights, activations and int8 input/output tensors "
              "(what microcontroller NPUs need), calibrated on --calib data", STATIC, INT8_BUDGET, FullIntegerOptions,
              integer_only=True),
    Precision("coreml", "fp16", "ML Program with fp16 compute precision (the Neural Engine default)", FLOAT,
              FP16_BUDGET),
    Precision("coreml", "fp32", "ML Program with fp32 compute precision", FLOAT, FP32_BUDGET),
    Precision("coreml", "w8", "fp16 program, weights linearly quantized to int8 per output channel", WEIGHT_ONLY,
              WEIGHTS_8BIT_BUDGET),
    Precision("coreml", "palette6", "fp16 program, weights palettized to 6-bit (64-entry k-means LUT)", WEIGHT_ONLY,
              WEIGHTS_8BIT_BUDGET),
    Precision("coreml", "palette4", "fp16 program, weights palettized to 4-bit (16-entry k-means LUT)", WEIGHT_ONLY,
              INT8_BUDGET),
    Precision("executorch", "fp32", "float32 program, delegated to XNNPACK where it takes the operators", FLOAT,
              FP32_BUDGET),
    Precision("executorch", "fp16", "float16 weights and compute in the XNNPACK delegate, float32 inputs/outputs",
              FLOAT, FP16_BUDGET),
    Precision("executorch", "int8", "static int8 (PT2E, XNNPACK quantizer): per-channel int8 weights, int8 "
              "activations calibrated on --calib data", STATIC, INT8_BUDGET, CalibratedOptions),
    Precision("executorch", "int8_dynamic", "per-channel int8 weights, activations quantized at run time (XNNPACK "
              "dynamic)", DYNAMIC, INT8_BUDGET),
)

# format -> {precision id: its row}
PRECISIONS: dict[str, dict[str, Precision]] = {}
for _row in PRECISION_ROWS:
    PRECISIONS.setdefault(_row.format, {})[_row.id] = _row


def precision(fmt: str, precision_id: str) -> Precision:
    return PRECISIONS[fmt][precision_id]


@dataclass(frozen=True)
class FoldConstantsConfig:
    max_output_elements: int = 1 << 22  # do not bloat the file with huge folded tensors


@dataclass(frozen=True)
class FoldBatchNormConfig:
    fold_into_gemm: bool = True  # BatchNorm1d after Linear


@dataclass(frozen=True)
class EliminateDeadNodesConfig:
    remove_identity: bool = True


@dataclass(frozen=True)
class SimplifyConfig:
    skip_fusions: tuple[str, ...] = ()  # onnxslim fusion pattern names to leave alone


@dataclass(frozen=True)
class AffineAsDepthwiseConfig:
    min_channels: int = 1  # leave narrower BatchNorms as they are


@dataclass(frozen=True)
class SingleChannelConvConfig:
    min_taps: int = 8  # shorter kernels stay as they are (a depthwise conv with a few taps is cheap)


@dataclass(frozen=True)
class PassInfo:
    description: str
    config: type  # a frozen dataclass; a target sets its fields in [pass_options.<format>.<pass id>]


# format -> {pass id: its row}; a target lists the ids in [passes].
PASSES: dict[str, dict[str, PassInfo]] = {
    "onnx": {
        "fold_constants": PassInfo("evaluate nodes whose inputs are all constants and store the results",
                                   FoldConstantsConfig),
        "fold_batchnorm": PassInfo("fold BatchNormalization into the preceding Conv / Gemm weights",
                                   FoldBatchNormConfig),
        "eliminate_dead_nodes": PassInfo("drop Identity nodes, nodes nobody reads and unused initializers",
                                         EliminateDeadNodesConfig),
        "simplify": PassInfo("onnxslim: shape inference, pattern fusion, redundant-op removal", SimplifyConfig),
    },
    # litert-torch runs its own graph optimizations during conversion; these rewrite the traced module first
    "tflite": {
        "affine_as_depthwise": PassInfo("a BatchNorm the converter cannot fold (after a ReLU) as a depthwise 1x1 "
                                        "conv: one int8 op instead of a float island", AffineAsDepthwiseConfig),
        "single_channel_conv": PassInfo("a strided conv over one input channel (an audio front end) as a regular "
                                        "conv over the stride's phases, kernel along the width: what NPUs take",
                                        SingleChannelConvConfig),
    },
    "coreml": {},  # coremltools runs its MIL pass pipeline during conversion
    "executorch": {},  # to_edge runs ExecuTorch's own passes; the XNNPACK partitioner fuses what it takes
}

@dataclass(frozen=True)
class Format:
    """One artifact format, registered once: what the exporter, the validators and the manifest look up by its
    name. Modules are named, not imported, so `edgeport --help` and `edgeport targets` load no converter."""

    name: str
    extension: str
    backends: dict[str, str]  # model kind -> the module exposing that kind's BACKEND (exporter/formats/<name>/)
    runtime: str  # the module in validators/runtimes/ that opens its artifacts (open_session, open_lm)
    libraries: tuple[str, ...]  # pip packages whose versions the manifest records


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("onnx", ".onnx", {"tensor": "exporter.formats.onnx.backend", "causal-lm": "exporter.formats.onnx.lm"},
           "validators.runtimes.onnxruntime_runtime", ("onnx", "onnxruntime", "onnxscript", "onnxslim")),
    Format("tflite", ".tflite", {"tensor": "exporter.formats.tflite.backend",
                                 "causal-lm": "exporter.formats.tflite.lm"},
           "validators.runtimes.litert_runtime",
           ("litert-torch", "ai-edge-litert", "ai-edge-quantizer", "ethos-u-vela")),
    Format("coreml", ".mlpackage", {"tensor": "exporter.formats.coreml.backend",
                                    "causal-lm": "exporter.formats.coreml.lm"},
           "validators.runtimes.coreml_runtime", ("coremltools",)),
    Format("executorch", ".pte", {"tensor": "exporter.formats.executorch.backend",
                                  "causal-lm": "exporter.formats.executorch.lm"},
           "validators.runtimes.executorch_runtime", ("executorch",)),
)}


def artifact_filename(fmt: str, precision_id: str) -> str:
    """model.onnx for the fp32 variant, model.<precision>.onnx for the others, whatever the model kind."""
    ext = FORMATS[fmt].extension
    return f"model{ext}" if precision_id == "fp32" else f"model.{precision_id}{ext}"
