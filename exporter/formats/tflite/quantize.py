"""TFLite quantization: ai-edge-quantizer for fp16, dynamic int8 and static int8 (float or int8 I/O),
and litert-torch's PT2E path as the second full-integer candidate.

Static int8 calibrates with a global min/max per tensor. ai-edge-quantizer's default
(a moving average of per-sample min/max) clips rare large activations: on demo:digits fed sample by
sample it clipped the logits (max diff 7.56 against fp32, SQNR 18 dB); the global range gives
max diff 1.07, SQNR 40 dB, and the same top-1 accuracy."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from common.artifact_dir import LITERT_SIGNATURE as SIGNATURE
from common.batching import sample_count
from common.errors import first_line
from common.quiet import quiet as _quiet
from exporter.errors import ConversionError
from exporter.formats import transformer_blocks
from exporter.formats.base import UNREPRESENTABLE_RANGE, UNREPRESENTABLE_REASON
from exporter.formats.tflite.layers import RECURRENT_LOCATION, RecurrentScopes, float32_constant
from exporter.trace import TracedModel
from targets import Variant
from targets.catalog import precision as precision_row

# precision id -> what ai-edge-quantizer makes of it (the manifest's "recipe"); fp32 is litert-torch's own
RECIPES = {"fp16": "ai-edge-quantizer float_casting fp16 weights",
           "int8_dynamic": "ai-edge-quantizer dynamic int8 weights, float activations",
           "int8": "ai-edge-quantizer static int8, global min/max calibration, float I/O",
           "int8_full": "ai-edge-quantizer static int8, global min/max calibration, int8 I/O"}
PT2E_RECIPE = "litert-torch PT2E, per-channel symmetric int8 weights, int8 I/O"


def _exactly(scopes: Iterable[str]) -> str:
    """A regex matching exactly these operator scopes (the quantizer re.search-es a scope)."""
    return "^(?:" + "|".join(re.escape(s) for s in sorted(set(scopes))) + ")$"


def quiet():
    """litert-torch and the quantizer print progress bars and absl logs; keep edgeport's output readable."""
    return _quiet("absl")


# Recurrent layers get int8 weights computed in float, whatever the int8 precision. Measured on
# resemblyzer's 3-layer LSTM speaker encoder (160 steps) on speech-like audio: static int8 cosine 0.54,
# dynamic-range int8 0.947, int8 weights computed in float 0.961.
RECURRENT_RECIPE = "int8 weights (per channel), computed in float"
RECURRENT_REASON = ("the converter unrolls a recurrence into one op chain per time step, and quantizing its "
                    "activations at every step compounds the error over the sequence")


FUSED_LSTM = "UNIDIRECTIONAL_SEQUENCE_LSTM"  # recurrent.py: how LiteRT artifacts carry an LSTM
FUSED_LSTM_REASON = f"ai-edge-quantizer leaves {FUSED_LSTM} (weights and compute) in float"


def _recipe(precision: str, only: Iterable[str] = (), keep_float: Iterable[str] = (),
            recurrent: RecurrentScopes | None = None):
    """The whole model at `precision`; or only the operators whose scopes are listed (a layer
    alone, float I/O); with the `recurrent` layers' weights int8 and their compute in float; and
    with the `keep_float` operators left in float."""
    from ai_edge_quantizer import qtyping, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    manager = recipe_manager.RecipeManager()
    ops = qtyping.TFLOperationName
    only, keep_float = list(only), list(keep_float)
    scope = _exactly(only) if only else ".*"
    if precision == "fp16":
        manager.add_weight_only_config(regex=scope, operation_name=ops.ALL_SUPPORTED, num_bits=16,
                                       algorithm_key=AlgorithmName.FLOAT_CASTING)
    elif precision == "int8_dynamic":
        manager.add_dynamic_config(regex=scope, operation_name=ops.ALL_SUPPORTED, num_bits=8)
    elif precision in ("int8", "int8_full"):
        manager.add_static_config(regex=scope, operation_name=ops.ALL_SUPPORTED, activation_num_bits=8,
                                  weight_num_bits=8)
        if precision == "int8":  # float I/O: QUANTIZE / DEQUANTIZE at the model's edges
            for io_op in (ops.INPUT, ops.OUTPUT):
                manager.add_quantization_config(regex=".*", operation_name=io_op,
                                                algorithm_key=AlgorithmName.NO_QUANTIZE)
    else:
        raise KeyError(f"no ai-edge-quantizer recipe for TFLite precision {precision!r}")
    if recurrent and precision != "fp16":
        # The recipe groups configs by regex in order of first appearance and the later matching config
        # wins within a group: so the weight-only config shares the regex it must override.
        if only:  # one layer alone: only its operators are quantized anyway
            weighted = [s for s in recurrent.weighted if s in set(only)]
            if weighted:
                manager.add_weight_only_config(regex=_exactly(weighted), operation_name=ops.FULLY_CONNECTED,
                                               num_bits=8)
        else:
            manager.add_quantization_config(regex=RECURRENT_LOCATION.pattern, operation_name=ops.ALL_SUPPORTED,
                                            algorithm_key=AlgorithmName.NO_QUANTIZE)
            manager.add_weight_only_config(regex=RECURRENT_LOCATION.pattern, operation_name=ops.FULLY_CONNECTED,
                                           num_bits=8)
    if keep_float:
        manager.add_quantization_config(regex=_exactly(keep_float), operation_name=ops.ALL_SUPPORTED,
                                        algorithm_key=AlgorithmName.NO_QUANTIZE)
    return manager.get_quantization_recipe()


_KINDS = {"RSQRT": transformer_blocks.NORM_CORE, "ADD": transformer_blocks.ADD,
          "GELU": transformer_blocks.FFN_ACTIVATION, "TANH": transformer_blocks.FFN_ACTIVATION,
          "LOGISTIC": transformer_blocks.FFN_ACTIVATION, "SOFTMAX": transformer_blocks.SOFTMAX,
          "BATCH_MATMUL": transformer_blocks.ACTIVATION_MATMUL}


def _graph_ops(operators) -> list[transformer_blocks.GraphOp]:
    """The operators as transformer_blocks reads them (LiteRT decomposes a LayerNorm around an RSQRT)."""
    from exporter.formats.tflite.layers import WEIGHTED_OPS, is_weighted

    ops = []
    for op in operators:
        dynamic = [name for k, name in enumerate(op.inputs) if name and k not in op.constant_inputs]
        if is_weighted(op):  # its activation input first
            first = op.inputs[WEIGHTED_OPS[op.op][0]]
            dynamic = [first, *(name for name in dynamic if name != first)]
        kind = transformer_blocks.WEIGHTED if is_weighted(op) else _KINDS.get(op.op, transformer_blocks.OTHER)
        ops.append(transformer_blocks.GraphOp(op.scope, kind, tuple(dynamic), op.outputs))
    return ops


def _fill_constants(path: Path) -> list[str]:
    """Constant tensors beyond UNREPRESENTABLE_RANGE (a mask's finfo.min that a SELECT_V2 writes into the
    scores): calibration records no range for them, and an int8 SELECT_V2 wrote all-MiniLM-L6-v2's mask as
    zeros, so padded keys were attended (cosine 0.84 with the rest of the transformer recipe, 0.998 with this)."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as flatbuffer

    model = flatbuffer.read_model(path)
    found = []
    for tensor in model.subgraphs[0].tensors:
        values = float32_constant(model, tensor)
        if values is not None and values.size and float(np.max(np.abs(values))) > UNREPRESENTABLE_RANGE:
            found.append(flatbuffer.get_tensor_name(tensor))
    return found


class AiEdgeQuantizer:
    """ai-edge-quantizer for one precision of one fp32 .tflite. A static precision calibrates once;
    every model built after (the whole model, one layer alone, some layers in float) uses those ranges."""

    def __init__(self, fp32: Path, precision: str, batches: list[dict], signature_inputs: dict[str, np.dtype]):
        from exporter.formats.tflite.layers import read_operators, recurrent_scopes

        self.fp32, self.precision, self.qsvs = fp32, precision, None
        self.float_scopes: list[str] = []
        self.config: dict = {"recipe": RECIPES[precision]}
        operators = read_operators(fp32)
        self.recurrent = recurrent_scopes(operators) if precision != "fp16" else None
        fused = sum(op.op == FUSED_LSTM for op in operators)
        if fused:
            self.config["recurrent_layers"] = {"fused_operators": fused, "recipe": "float",
                                               "reason": FUSED_LSTM_REASON}
        elif self.recurrent:
            self.config["recurrent_layers"] = {"operators": len(self.recurrent.weighted) + len(self.recurrent.other),
                                               "recipe": RECURRENT_RECIPE, "reason": RECURRENT_REASON}
        if precision_row("tflite", precision).needs_calibration:
            from ai_edge_quantizer import calibrator, quantizer
            from ai_edge_quantizer.utils import qsv_utils

            samples = [{name: value.astype(dtype, copy=False)
                        for (name, dtype), value in zip(signature_inputs.items(), feeds.values(), strict=True)}
                       for feeds in batches]
            regions = None
            if precision == "int8":  # float I/O, run on a CPU: float operators are allowed and fast
                regions = self._transformer_blocks(samples)
            q = quantizer.Quantizer(str(self.fp32))
            q.load_quantization_recipe(_recipe(precision, recurrent=self.recurrent))
            # The Quantizer's calibrate() offers only the moving-average update; its Calibrator takes the
            # global min/max update (the library's own pieces, used as its calibrate() uses them).
            calib = calibrator.Calibrator(q._float_model_buffer, num_threads=1,
                                          qsv_update_func=qsv_utils.min_max_update)
            calib.calibrate({SIGNATURE: samples}, q._recipe_manager)
            self.qsvs = calib.get_model_qsvs()
            self.config |= {"calibration": "global min/max", "calibration_batches": len(samples)}
            self.float_scopes = self._unrepresentable()
            if regions:
                self.float_scopes = sorted(set(self.float_scopes) | set(regions.keys))

    def _transformer_blocks(self, samples: list[dict]) -> transformer_blocks.FloatRegions | None:
        """For a transformer: the matmuls reading its norms smoothed (self.fp32 becomes the smoothed
        program, beside the lowered one), and the operators to keep float."""
        from exporter.formats.tflite import smoothing
        from exporter.formats.tflite.layers import read_operators

        regions = transformer_blocks.float_regions(_graph_ops(read_operators(self.fp32)))
        if not regions:
            return None
        smoothed = 0
        if regions.norm_outputs and transformer_blocks.SMOOTHING_ALPHA > 0:
            path = self.fp32.with_name(f"smoothed-{self.precision}.tflite")
            maxima = smoothing.channel_maxima(self.fp32, list(regions.norm_outputs), samples)
            smoothed = smoothing.smooth(self.fp32, path, maxima, transformer_blocks.SMOOTHING_ALPHA)
            self.fp32 = path
            regions = transformer_blocks.float_regions(_graph_ops(read_operators(self.fp32)))
        self.config["transformer_blocks"] = regions.record(
            smoothed, transformer_blocks.SMOOTHING_REASON.format(alpha=transformer_blocks.SMOOTHING_ALPHA))
        return regions

    def _unrepresentable(self) -> list[str]:
        """Scopes of the operators that write or read a tensor whose calibrated range int8 cannot hold
        (an attention mask's fill value): kept in float, and said so in the config."""
        from exporter.formats.tflite.layers import read_operators

        tensors = sorted({name for name, qsv in self.qsvs.items() if "min" in qsv and max(
            float(np.max(np.abs(qsv["min"]))), float(np.max(np.abs(qsv["max"])))) > UNREPRESENTABLE_RANGE}
                         | set(_fill_constants(self.fp32)))
        if not tensors:
            return []
        reason = UNREPRESENTABLE_REASON
        self.config |= {"float_tensors": tensors, "float_tensors_reason": reason}
        return sorted({op.scope for op in read_operators(self.fp32) if set(tensors) & set(op.inputs + op.outputs)})

    def build(self, out: Path, only: Iterable[str] = (), keep_float: Iterable[str] = ()) -> dict:
        from ai_edge_quantizer import quantizer

        if not only:
            keep_float = sorted(set(keep_float) | set(self.float_scopes))
        q = quantizer.Quantizer(str(self.fp32))
        q.load_quantization_recipe(_recipe(self.precision, only, keep_float, self.recurrent))
        q.quantize(self.qsvs, enable_progress_report=False).export_model(str(out), overwrite=True)
        return dict(self.config)


def _quantize_pt2e(module, traced: TracedModel, out: Path, batches: list[dict]) -> dict:
    """litert-torch's PT2E path: per-channel symmetric int8 weights, histogram-observed activations."""
    import litert_torch
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    module = prepare_pt2e(copy.deepcopy(module), quantizer)  # the one traced program (after the passes)
    with torch.no_grad():
        for feeds in batches:
            module(*(torch.from_numpy(np.ascontiguousarray(v)) for v in feeds.values()))
    module = convert_pt2e(module, fold_quantize=False)
    litert_torch.convert(module, traced.example_inputs,
                         quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(str(out))
    return {"recipe": PT2E_RECIPE, "calibration": "histogram observer", "calibration_batches": len(batches)}


def _sqnr_against(candidate: Path, reference: Path, batches: list[dict]) -> float:
    """Worst-output SQNR of a candidate against the fp32 .tflite on the calibration batches."""
    from common.batching import run_batched
    from validators.parity import output_parity
    from validators.runtimes.litert_runtime import open_session

    arrays = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    batch = sample_count(batches[0])
    ref = run_batched(open_session(reference, 1).run, arrays, batch)
    got = run_batched(open_session(candidate, 1).run, arrays, batch)
    return min(output_parity(r, g)["sqnr_db"] for r, g in zip(ref, got, strict=True))


def quantize_full_int8(module, traced: TracedModel, quantizer: AiEdgeQuantizer, out: Path, variant: Variant,
                       batches: list[dict], scratch: Path) -> dict:
    """Build the requested recipe, or with recipe "auto" both, keeping the better on calibration data."""
    builders = {"ai-edge-quantizer": quantizer.build,
                "pt2e": lambda path: _quantize_pt2e(module, traced, path, batches)}
    names = list(builders) if variant.options.recipe == "auto" else [variant.options.recipe]
    results = {}
    for name in names:
        path = scratch / f"candidate-{name}.tflite"
        try:
            config = builders[name](path)
        except Exception as exc:  # one quantizer failing leaves the other; the record says why
            results[name] = {"error": first_line(exc)}
            continue
        results[name] = {"config": config, "sqnr_db": round(_sqnr_against(path, quantizer.fp32, batches), 3),
                         "path": path}
    built = {n: r for n, r in results.items() if "path" in r}
    if not built:
        reasons = "; ".join(f"{n}: {r['error']}" for n, r in results.items())
        raise ConversionError(f"full-integer int8 TFLite failed ({reasons})")
    chosen = max(built, key=lambda n: built[n]["sqnr_db"])
    built[chosen]["path"].replace(out)
    return {**built[chosen]["config"], "chosen_by": "calibration-data SQNR against fp32" if len(names) > 1
            else "profile", "candidates": {n: {k: v for k, v in r.items() if k != "path" and k != "config"}
                                           for n, r in results.items()}}
