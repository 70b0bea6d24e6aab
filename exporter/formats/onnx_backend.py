"""The ONNX backend: export once, run the target's passes, emit every ONNX precision variant."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from exporter.artifacts import ArtifactRecord
from exporter.errors import UnsupportedOp
from exporter.formats import blame, onnx_export
from exporter.formats.onnx_quantize import CalibrationFeeds, variant_for
from exporter.trace import TracedModel
from targets import Target, Variant
from validators.reference import Reference

FORMAT = "onnx"
PREFLIGHT_HINT = ("Replace those layers with supported ones, register an ONNX translation "
                  "(torch.onnx custom_translation_table), or choose a target without ONNX")


def preflight(traced: TracedModel) -> list[UnsupportedOp]:
    return onnx_export.preflight(traced)


def _stamp_provenance(path: Path, traced: TracedModel, target: Target, variant: Variant) -> None:
    """Write where the model came from into the file itself (ONNX metadata_props)."""
    import onnx

    from exporter import __version__

    model = onnx.load(str(path))
    props = {"edgeport.version": __version__, "edgeport.model": traced.loaded.name,
             "edgeport.model_sha256": traced.loaded.sha256, "edgeport.target": target.name,
             "edgeport.precision": variant.precision}
    kept = [p for p in model.metadata_props if not p.key.startswith("edgeport.")]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def _diagnose(traced: TracedModel, target: Target, variant: Variant, implementation, feeds, fp32: Path, out: Path,
              model, paths: dict[str, str], reference: Reference, scratch: Path,
              progress: Callable[[str], None]) -> tuple[dict, dict]:
    """Per-layer blame for a static variant, then mixed precision if it misses its budget."""
    from exporter.formats.blame import CandidateCheck, diagnose
    from exporter.formats.onnx_blame import blame_layers, keep_float
    from exporter.formats.onnx_layers import weighted_layers

    def quantize(path: Path, extra: dict) -> dict:
        return implementation.run(fp32, path, feeds, extra)

    layers = weighted_layers(model, paths)
    progress(f"onnx: {variant.precision}: per-layer blame over {len(layers)} weighted layers")
    rows = blame_layers(fp32, out, layers, quantize, reference.inputs, traced.batch, scratch,
                        [s.name for s in traced.outputs], traced)
    check = CandidateCheck(FORMAT, variant, reference, traced, target.runtime) if target.auto_precision else None
    return diagnose(rows, len(layers), out, keep_float(model, quantize, out), check, progress,
                    f"onnx: {variant.precision} misses its budget: keeping the most harmful layers in float")


def convert(traced: TracedModel, target: Target, calibration: dict | None, workdir: Path,
            progress: Callable[[str], None], reference: Reference | None = None) -> list[ArtifactRecord]:
    import onnx

    from exporter.formats.onnx_layers import module_paths
    from exporter.formats.onnx_passes import run_passes

    variants = [v for v in target.variants if v.format == FORMAT]
    records: list[ArtifactRecord] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgeport-onnx-") as scratch:
        raw = Path(scratch) / "raw.onnx"
        progress(f"onnx: exporting ({traced.method})")
        export = onnx_export.export_onnx(traced, raw)
        pass_ids = target.passes.get(FORMAT, ())
        raw_model = onnx.load(str(raw))
        paths = module_paths(raw_model)  # read before the passes, which drop node metadata
        model, pass_records = run_passes(raw_model, pass_ids)
        if pass_records:
            progress("onnx: passes " + ", ".join(f"{r.id} {r.nodes_before}->{r.nodes_after}" for r in pass_records))
        fp32 = Path(scratch) / "model.fp32.onnx"
        onnx.save(model, str(fp32))
        shared_seconds = time.perf_counter() - start  # export and passes, which every variant needs
        feeds = CalibrationFeeds(calibration, traced.batch) if calibration is not None else None
        for variant in variants:
            variant_start = time.perf_counter()
            out = workdir / variant.filename
            if variant.precision == "fp32":
                onnx.save(model, str(out))
                quantization = None
            else:
                progress(f"onnx: {variant.precision}")
                implementation = variant_for(variant.precision, variant.calibration_method,
                                             variant.calibration_samples, Path(scratch))
                quantization = implementation.run(fp32, out, feeds if variant.is_static_quantized else None)
            extra, diagnosis_seconds, measured = {}, 0.0, {}
            if variant.is_static_quantized and blame.wanted(target, variant, reference, traced, FORMAT, out):
                diagnosis_start = time.perf_counter()
                extra["diagnosis"], measured = _diagnose(traced, target, variant, implementation, feeds, fp32, out,
                                                         model, paths, reference, Path(scratch), progress)
                diagnosis_seconds = round(time.perf_counter() - diagnosis_start, 3)
            _stamp_provenance(out, traced, target, variant)
            records.append(ArtifactRecord(
                format=FORMAT, precision=variant.precision, path=variant.filename,
                conversion={**export.to_json(), "passes": [r.to_json() for r in pass_records]},
                quantization=quantization,
                inputs=[s.to_json() for s in traced.inputs], outputs=[s.to_json() for s in traced.outputs],
                reproducible="byte-identical for the same model, data and library versions",
                seconds=round(time.perf_counter() - variant_start + shared_seconds, 3), extra=extra,
                diagnosis_seconds=diagnosis_seconds, measured=measured,
            ))
    return records
