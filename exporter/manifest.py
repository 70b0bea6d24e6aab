"""Build manifest.json: hashes and sizes of every artifact, the source model's hash, the I/O spec,
the data used, tool and library versions, and the target profile. No timestamps or absolute paths,
so the same export gives the same manifest."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

from exporter import __version__
from exporter.artifacts import ArtifactRecord
from exporter.data import Dataset
from exporter.trace import TracedModel
from targets import Target
from targets.profile import read_target_file
from validators.files import sha256_file, size_bytes
from validators.manifest import SCHEMA

LIBRARIES = ("torch", "onnx", "onnxruntime", "onnxscript", "onnxslim", "numpy", "scikit-learn", "litert-torch",
             "ai-edge-litert", "ai-edge-quantizer", "ethos-u-vela", "coremltools")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def build_manifest(traced: TracedModel, target: Target, eval_data: Dataset, calibration: Dataset | None,
                   reference_path: Path, records: list[ArtifactRecord], directory: Path) -> dict:
    loaded = traced.loaded
    artifacts = []
    for record in records:
        path = directory / record.path
        artifacts.append({
            "format": record.format, "precision": record.precision, "path": record.path,
            "bytes": size_bytes(path), "sha256": sha256_file(path),
            "inputs": record.inputs, "outputs": record.outputs,
            "conversion": record.conversion, "quantization": record.quantization,
            "reproducible": record.reproducible, **record.extra,
        })
    return {
        "schema": SCHEMA,
        "edgeport": __version__,
        "model": {"name": loaded.name, "source": loaded.source, "kind": loaded.kind, "sha256": loaded.sha256},
        "trace": {"method": traced.method, "dynamic_batch": traced.dynamic_batch, "batch": traced.batch,
                  "notes": traced.notes},
        "inputs": [s.to_json() for s in traced.inputs],
        "outputs": [s.to_json() for s in traced.outputs],
        "target": {"name": target.name, "file": Path(target.origin).name,
                   "profile": read_target_file(Path(target.origin))},
        "data": {"eval": eval_data.describe(), "calibration": calibration.describe() if calibration else None},
        "reference": {"path": reference_path.name, "sha256": sha256_file(reference_path),
                      "samples": eval_data.samples},
        "artifacts": artifacts,
        "libraries": library_versions(),
    }
