"""The ONNX backend: export once, run the target's passes, emit every ONNX precision variant."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from exporter.errors import UnsupportedOp
from exporter.formats.base import REPRODUCIBLE, Conversion, Emitted, Finished, Lowered, Progress, model_io
from exporter.formats.onnx import export as onnx_export
from exporter.formats.onnx.quantize import QUANTIZERS, CalibrationFeeds, DynamicInt8Variant, StaticQuantVariant
from exporter.trace import TracedModel
from targets import Target, Variant


@dataclass
class _OnnxState:
    model: onnx.ModelProto  # after the passes
    fp32: Path  # that model saved, what every quantizer reads
    paths: dict[str, str]  # node and tensor names -> PyTorch module path, read before the passes
    quantizers: dict  # precision -> the quantizer its artifact came from


class OnnxBackend:
    format = "onnx"
    precisions = ("fp32", *QUANTIZERS)
    preflight_hint = ("Replace those layers with supported ones, register an ONNX translation "
                      "(torch.onnx custom_translation_table), or choose a target without ONNX")
    reproducible = REPRODUCIBLE

    def preflight(self, traced: TracedModel) -> list[UnsupportedOp]:
        return onnx_export.preflight(traced)

    def lower(self, traced: TracedModel, target: Target, scratch: Path, progress: Progress) -> Lowered:
        from exporter.formats.onnx.layers import module_paths
        from exporter.formats.onnx.passes import run_passes

        raw = scratch / "raw.onnx"
        progress(f"onnx: exporting ({traced.method})")
        export = onnx_export.export_onnx(traced, raw)
        raw_model = onnx.load(str(raw))
        paths = module_paths(raw_model)  # read before the passes, which drop node metadata
        model, pass_records = run_passes(raw_model, target.passes.get(self.format, ()),
                                         target.pass_configs.get(self.format))
        if pass_records:
            progress("onnx: passes " + ", ".join(f"{r.id} {r.nodes_before}->{r.nodes_after}" for r in pass_records))
        fp32 = scratch / "model.fp32.onnx"
        onnx.save(model, str(fp32))
        conversion = Conversion(export.exporter, export.reason, tuple(r.to_json() for r in pass_records),
                                {"opset": export.opset})
        return Lowered(traced, target, scratch, conversion, _OnnxState(model, fp32, paths, {}))

    def emit(self, lowered: Lowered, variant: Variant, calibration: dict | None, out: Path,
             progress: Progress) -> Emitted:
        state: _OnnxState = lowered.state
        if variant.precision == "fp32":
            onnx.save(state.model, str(out))
            return Emitted(None)
        progress(f"onnx: {variant.precision}")
        quantizer = QUANTIZERS[variant.precision](variant.options, lowered.scratch)
        state.quantizers[variant.precision] = quantizer
        feeds = CalibrationFeeds(calibration, lowered.traced.batch) \
            if variant.needs_calibration and calibration is not None else None
        return Emitted(quantizer.run(state.fp32, out, feeds))

    def layer_quantizer(self, lowered: Lowered, variant: Variant, emitted: Emitted, progress: Progress):
        from exporter.formats.onnx.blame import OnnxLayerQuantizer

        state: _OnnxState = lowered.state
        quantizer = state.quantizers.get(variant.precision)
        if not isinstance(quantizer, StaticQuantVariant | DynamicInt8Variant):
            return None
        calibration = quantizer.calibration

        def quantize(path: Path, selection) -> dict:
            return quantizer.run(state.fp32, path, calibration, selection)

        return OnnxLayerQuantizer(state.model, state.paths, quantize, state.fp32, lowered.traced, lowered.scratch)

    def finish(self, lowered: Lowered, variant: Variant, out: Path, workdir: Path, progress: Progress) -> Finished:
        return model_io(lowered.traced)

    def stamp(self, path: Path, provenance: dict[str, str]) -> list[Path]:
        """Provenance in the graph file itself (ONNX metadata_props); a language model's external weights
        (.data) stay as they are."""
        model = onnx.load(str(path), load_external_data=False)
        kept = [p for p in model.metadata_props if not p.key.startswith("edgeport.")]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
        for key, value in provenance.items():
            model.metadata_props.add(key=key, value=value)
        onnx.save(model, str(path))
        return []


BACKEND = OnnxBackend()
