"""Build manifest.json: hashes and sizes of every artifact, the source model's hash, the I/O spec,
the data used, tool and library versions, and the resolved target with every artifact's budget. No
timestamps or absolute paths, so the same export gives the same manifest."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

from common.artifact_dir import SCHEMA
from common.files import sha256_file, size_bytes
from exporter import __version__
from exporter.artifacts import ArtifactRecord
from exporter.data import Dataset
from exporter.trace import TracedModel
from targets import Target
from targets.catalog import FORMATS

LIBRARIES = ("torch", "numpy", "scikit-learn")  # besides each format's own (targets.catalog.FORMATS)


def library_versions(formats: tuple[str, ...], extra: tuple[str, ...] = ()) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    names = list(LIBRARIES) + [name for fmt in formats for name in FORMATS[fmt].libraries] + list(extra)
    for name in dict.fromkeys(names):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _artifact_entry(record: ArtifactRecord, directory: Path) -> dict:
    path = directory / record.path
    entry = {
        "format": record.variant.format, "precision": record.variant.precision, "path": record.path,
        "bytes": size_bytes(path), "sha256": sha256_file(path),
        "inputs": record.inputs, "outputs": record.outputs,
        "conversion": record.conversion.to_json(), "quantization": record.quantization,
        "reproducible": record.reproducible,
        "budget": record.variant.budget.limits(),  # what validation judges it by, whatever the version
        **record.companions,
    }
    if record.diagnosis is not None:
        entry["diagnosis"] = record.diagnosis.to_json()
    return entry


def build_manifest(traced: TracedModel, target: Target, eval_data: Dataset, calibration: Dataset | None,
                   reference_path: Path, records: list[ArtifactRecord], directory: Path,
                   allow_synthetic_eval: bool = False) -> dict:
    loaded = traced.loaded
    return {
        "schema": SCHEMA,
        "kind": target.kind,
        "edgeport": __version__,
        "model": {"name": loaded.name, "source": loaded.source, "kind": loaded.kind, "sha256": loaded.sha256},
        "trace": {"method": traced.method, "dynamic_batch": traced.dynamic_batch, "batch": traced.batch,
                  "notes": traced.notes},
        "inputs": [s.to_json() for s in traced.inputs],
        "outputs": [s.to_json() for s in traced.outputs],
        # the target as this export resolved it (command-line overrides, defaults), not the file re-read
        "target": {"name": target.name, "file": Path(target.origin).name, "profile": target.to_profile()},
        "data": {"eval": eval_data.describe() | ({"synthetic_allowed": True} if allow_synthetic_eval else {}),
                 "calibration": calibration.describe() if calibration else None},
        "reference": {"path": reference_path.name, "sha256": sha256_file(reference_path),
                      "samples": eval_data.samples},
        "artifacts": [_artifact_entry(record, directory) for record in records],
        "libraries": library_versions(target.formats),
    }
