"""The ONNX backend: export once, run the target's passes, emit every ONNX precision variant."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from exporter.artifacts import ArtifactRecord
from exporter.errors import UnsupportedOp
from exporter.formats import onnx_export
from exporter.formats.onnx_quantize import CalibrationFeeds, variant_for
from exporter.trace import TracedModel
from targets import Target, Variant

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


def convert(traced: TracedModel, target: Target, calibration: dict | None, workdir: Path,
            progress: Callable[[str], None]) -> list[ArtifactRecord]:
    import onnx

    from exporter.formats.onnx_passes import run_passes

    variants = [v for v in target.variants if v.format == FORMAT]
    records: list[ArtifactRecord] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgeport-onnx-") as scratch:
        raw = Path(scratch) / "raw.onnx"
        progress(f"onnx: exporting ({traced.method})")
        export = onnx_export.export_onnx(traced, raw)
        pass_ids = target.passes.get(FORMAT, ())
        model, pass_records = run_passes(onnx.load(str(raw)), pass_ids)
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
                                             variant.calibration_samples)
                quantization = implementation.run(fp32, out, feeds if variant.is_static_quantized else None)
            _stamp_provenance(out, traced, target, variant)
            records.append(ArtifactRecord(
                format=FORMAT, precision=variant.precision, path=variant.filename,
                conversion={**export.to_json(), "passes": [r.to_json() for r in pass_records]},
                quantization=quantization,
                inputs=[s.to_json() for s in traced.inputs], outputs=[s.to_json() for s in traced.outputs],
                reproducible="byte-identical for the same model, data and library versions",
                seconds=round(time.perf_counter() - variant_start + shared_seconds, 3),
            ))
    return records
