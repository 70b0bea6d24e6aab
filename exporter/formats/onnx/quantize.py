"""ONNX precision variants as small classes with typed configs: fp16, dynamic int8, static QDQ.

Static int8 choices, measured on demo:digits: BatchNorm is folded
before quantizing (the target's passes run first), weights are quantized per output channel
(BN folding gives each channel its own range, which one per-tensor scale serves badly), and
activation ranges are calibrated on the user's --calib data, sample by sample at the traced batch.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from common.batching import sample_count, whole_batches
from exporter.formats import transformer_blocks as blocks
from exporter.formats.base import UNREPRESENTABLE_RANGE, UNREPRESENTABLE_REASON
from exporter.formats.onnx import smoothing

_QUANT_TYPES = {"uint8": "QUInt8", "int8": "QInt8", "int16": "QInt16"}
_CALIBRATION = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


@dataclass(frozen=True)
class Fp16Config:
    keep_io_types: bool = True  # float32 inputs/outputs so callers need no conversion


class Fp16Variant:
    precision: ClassVar[str] = "fp16"

    def __init__(self, config: Fp16Config = Fp16Config()):
        self.config = config

    def run(self, fp32: Path, out: Path, calibration: CalibrationFeeds | None) -> dict:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=self.config.keep_io_types)
        onnx.save(model, str(out))
        return {"scheme": "fp16", **asdict(self.config)}


@dataclass(frozen=True)
class DynamicInt8Config:
    weight_type: str = "int8"
    per_channel: bool = False


class DynamicInt8Variant:
    precision: ClassVar[str] = "int8_dynamic"
    calibration: ClassVar[None] = None  # activation ranges are chosen per run: nothing to calibrate

    def __init__(self, config: DynamicInt8Config = DynamicInt8Config()):
        self.config = config

    def run(self, fp32: Path, out: Path, calibration: CalibrationFeeds | None,
            selection: NodeSelection = None) -> dict:
        """selection: for diagnosis, quantize only some nodes, or keep some in float (auto precision)."""
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with _root_logging_at(logging.ERROR):  # the quantizer warns on the root logger about pre-processing
            quantize_dynamic(str(fp32), str(out), per_channel=self.config.per_channel,
                             weight_type=getattr(QuantType, _QUANT_TYPES[self.config.weight_type]),
                             **_selected(selection))
        return {"scheme": "dynamic_int8", **asdict(self.config)}


@dataclass(frozen=True)
class StaticQuantConfig:
    activation_type: str = "uint8"  # U8S8 is onnxruntime's fast path on x86 and Arm CPUs
    weight_type: str = "int8"
    per_channel: bool = True
    calibration_method: str = "minmax"
    max_samples: int = 512
    transformer_recipe: bool = True  # norms, residual adds and down projections float (transformer_blocks.py)
    smoothing_alpha: float = blocks.SMOOTHING_ALPHA  # SmoothQuant's migration strength (smoothing.py)


@dataclass(frozen=True)
class Only:
    """Quantize these nodes only (a layer alone)."""

    nodes: tuple[str, ...]


@dataclass(frozen=True)
class KeepFloat:
    """Quantize everything but these nodes (layers kept in float)."""

    nodes: tuple[str, ...]


NodeSelection = Only | KeepFloat | None


def _selected(selection: NodeSelection, always_float: set[str] = frozenset()) -> dict:
    """onnxruntime's quantize_* arguments for a selection; `always_float`: nodes no selection quantizes."""
    if isinstance(selection, Only):
        return {"nodes_to_quantize": list(selection.nodes)}
    excluded = set(selection.nodes) if isinstance(selection, KeepFloat) else set()
    excluded |= always_float
    return {"nodes_to_exclude": sorted(excluded)} if excluded else {}




class StaticQuantVariant:
    """QDQ static quantization; `precision` picks int8 or int16 activations. Calibrates once per
    variant (onnxruntime's calibration cache in `scratch`): every later model built from the same
    fp32 graph (a layer alone, some layers in float) reuses those ranges."""

    def __init__(self, precision: str, config: StaticQuantConfig, scratch: Path):
        self.precision = precision
        self.config = config
        self.ranges = scratch / f"calibration-{precision}.json"
        self.smoothed = scratch / f"smoothed-{precision}.onnx"
        self.source: Path | None = None  # the fp32 graph quantized: the lowered one, or it smoothed
        self.norms_smoothed = 0
        self.calibration: CalibrationFeeds | None = None
        self.float_nodes: list[str] = []  # producers and readers of tensors int8 cannot hold
        self.float_tensors: list[str] = []
        self.recurrent_weight_nodes: list[str] = []  # what computes an LSTM/GRU/RNN's weights
        self.transformer: blocks.FloatRegions | None = None

    def run(self, fp32: Path, out: Path, calibration: CalibrationFeeds | None,
            selection: NodeSelection = None) -> dict:
        """selection: for diagnosis, quantize only some nodes, or keep some in float (auto precision)."""
        if calibration is None:
            raise ValueError("static quantization needs calibration data")
        self.calibration = calibration  # diagnosis re-quantizes with the same data
        if self.source is None:
            self._prepare(fp32, calibration)
        source = self.source
        reader = calibration.reader(self.config.max_samples)
        calibrated = self.ranges.exists()
        self._quantize(source, out, reader, selection)
        if not calibrated:
            self.float_tensors, self.float_nodes = _unrepresentable(source, self.ranges)
            if self.float_nodes:
                self._quantize(source, out, reader, selection)
        record = {"scheme": f"static_qdq_{self.precision}", "calibration_samples": reader.samples_used,
                  **asdict(self.config)}
        if self.float_tensors:
            record["float_tensors"] = self.float_tensors
            record["float_tensors_reason"] = UNREPRESENTABLE_REASON
        if self.recurrent_weight_nodes:
            record["recurrent_weight_nodes"] = len(self.recurrent_weight_nodes)
            record["recurrent_weight_nodes_reason"] = RECURRENT_WEIGHTS_REASON
        if self.transformer:
            record["transformer_blocks"] = self.transformer.record(
                self.norms_smoothed, blocks.SMOOTHING_REASON.format(alpha=self.config.smoothing_alpha))
        return record

    def _prepare(self, fp32: Path, calibration: CalibrationFeeds) -> None:
        """What the graph needs, found once: recurrent weights, and for a transformer its float regions
        and the matmuls reading its norms smoothed (node names are kept, so diagnosis selects the
        same nodes)."""
        self.recurrent_weight_nodes = _recurrent_weight_nodes(fp32)
        self.source = fp32
        regions = blocks.float_regions(_graph_ops(fp32)) if self.config.transformer_recipe else None
        if not regions:
            return
        if regions.norm_outputs and self.config.smoothing_alpha > 0:
            maxima = _channel_maxima(fp32, list(regions.norm_outputs), calibration.reader(self.config.max_samples))
            self.norms_smoothed = smoothing.smooth(fp32, self.smoothed, maxima, self.config.smoothing_alpha)
            self.source = self.smoothed
        self.transformer = blocks.float_regions(_graph_ops(self.source))

    def _quantize(self, fp32: Path, out: Path, reader, selection: NodeSelection) -> None:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        always_float = {*self.float_nodes, *self.recurrent_weight_nodes, *(self.transformer.keys if self.transformer
                                                                            else ())}
        options = _selected(selection, always_float)
        with _root_logging_at(logging.ERROR):  # the quantizer warns on the root logger about pre-processing
            quantize_static(
                str(fp32), str(out), reader, quant_format=QuantFormat.QDQ,
                per_channel=self.config.per_channel,
                activation_type=getattr(QuantType, _QUANT_TYPES[self.config.activation_type]),
                weight_type=getattr(QuantType, _QUANT_TYPES[self.config.weight_type]),
                calibrate_method=getattr(CalibrationMethod, _CALIBRATION[self.config.calibration_method]),
                calibration_cache_path=self.ranges, **options,
            )


RECURRENT_OPS = {"LSTM", "GRU", "RNN"}
# Measured on resemblyzer's LSTM speaker encoder without the fold_constants pass: cosine 0.65 with those
# nodes quantized, 0.9998 without.
RECURRENT_WEIGHTS_REASON = ("nodes that compute an LSTM/GRU/RNN's weights from constants stay float: quantized as "
                            "activations (one per-tensor uint8 scale) they wreck the recurrence; onnxruntime runs "
                            "the recurrent op itself in float")


def _recurrent_weight_nodes(fp32: Path) -> list[str]:
    """Nodes computing only from initializers whose results are a recurrent op's W, R or B (the exporter
    transposes and concatenates the gate weights; the fold_constants pass folds them when a target runs it)."""
    import onnx

    graph = onnx.load(str(fp32)).graph
    constant = {i.name for i in graph.initializer} | {""}  # "": an absent optional input
    producers = {}  # output -> the node computing it from constants alone
    for node in graph.node:  # in topological order, so a node's inputs are settled before it
        if node.op_type not in RECURRENT_OPS and all(name in constant for name in node.input):
            constant.update(node.output)
            producers.update(dict.fromkeys(node.output, node))
    chosen: set[str] = set()
    stack = [name for node in graph.node if node.op_type in RECURRENT_OPS for name in node.input[1:4]]
    while stack:
        node = producers.get(stack.pop())
        if node is not None and node.name not in chosen:
            chosen.add(node.name)
            stack.extend(node.input)
    return sorted(chosen)


_KINDS = {"LayerNormalization": blocks.NORM, "SimplifiedLayerNormalization": blocks.NORM,
          "RMSNormalization": blocks.NORM, "Add": blocks.ADD, "Gelu": blocks.FFN_ACTIVATION,
          "FastGelu": blocks.FFN_ACTIVATION, "Erf": blocks.FFN_ACTIVATION, "Tanh": blocks.FFN_ACTIVATION,
          "Sigmoid": blocks.FFN_ACTIVATION, "Softmax": blocks.SOFTMAX, "MatMul": blocks.ACTIVATION_MATMUL}


def _graph_ops(fp32: Path) -> list[blocks.GraphOp]:
    import onnx

    from exporter.formats.onnx.layers import WEIGHTED_OPS

    graph = onnx.load(str(fp32)).graph
    constant = {i.name for i in graph.initializer} | {""}
    constant |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    ops = []
    for node in graph.node:
        weighted = node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in constant
        kind = blocks.WEIGHTED if weighted else _KINDS.get(node.op_type, blocks.OTHER)
        ops.append(blocks.GraphOp(node.name, kind, tuple(i for i in node.input if i not in constant),
                                  tuple(node.output)))
    return ops


def _channel_maxima(fp32: Path, tensors: list[str], reader) -> dict[str, np.ndarray]:
    """max |value| per channel (last axis) of each tensor over the calibration samples, by onnxruntime
    on the fp32 graph with those tensors made outputs."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(fp32))
    model.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    maxima: dict[str, np.ndarray] = {}
    while (feeds := reader.get_next()) is not None:
        for tensor, value in zip(tensors, session.run(tensors, feeds), strict=True):
            peak = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
            maxima[tensor] = np.maximum(maxima[tensor], peak) if tensor in maxima else peak
    return maxima


def _unrepresentable(fp32: Path, ranges: Path) -> tuple[list[str], list[str]]:
    """Tensors whose calibrated range int8 cannot hold, and the nodes that write or read them."""
    import onnx
    from onnxruntime.quantization.calibrate import load_tensors_data

    data = load_tensors_data(ranges).data
    tensors = sorted(name for name, value in data.items()
                     if max(float(np.max(np.abs(bound))) for bound in value.range_value) > UNREPRESENTABLE_RANGE)
    graph = onnx.load(str(fp32)).graph
    nodes = sorted({n.name for n in graph.node if set(tensors) & (set(n.output) | set(n.input))})
    return tensors, nodes


@contextlib.contextmanager
def _root_logging_at(level: int):
    root = logging.getLogger()
    previous = root.level
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(previous)


class CalibrationFeeds:
    """Calibration inputs fed at the model's batch size (sample by sample for a batch-1 trace)."""

    def __init__(self, inputs: dict[str, np.ndarray], batch: int | None):
        self.inputs = inputs
        self.batch = batch

    def reader(self, max_samples: int):
        from onnxruntime.quantization import CalibrationDataReader

        used = min(max_samples, sample_count(self.inputs))
        batches: Iterator = iter(whole_batches(self.inputs, self.batch, max_samples))

        class _Reader(CalibrationDataReader):
            samples_used = used

            def get_next(self):
                return next(batches, None)

        return _Reader()


def _static(precision: str, activation_type: str):
    def build(options, scratch: Path) -> StaticQuantVariant:
        return StaticQuantVariant(precision, StaticQuantConfig(
            activation_type=activation_type, calibration_method=options.calibration_method,
            max_samples=options.calibration_samples, transformer_recipe=activation_type != "int16"), scratch)
    return build


# precision id -> (the variant's typed options, scratch dir) -> its quantizer; fp32 is the lowered graph itself
QUANTIZERS = {
    "fp16": lambda options, scratch: Fp16Variant(),
    "int8_dynamic": lambda options, scratch: DynamicInt8Variant(),
    "int8": _static("int8", "uint8"),
    "w8a16": _static("w8a16", "int16"),
}
