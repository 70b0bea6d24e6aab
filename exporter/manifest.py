"""Build manifest.json for every model kind: the model, the resolved target with every artifact's budget, the
reference's hash, each artifact's entry (sha256 and size of every file it is) and the library versions; the
kind adds its own sections. No timestamps or absolute paths, so the same export gives the same manifest."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from common.artifact_dir import SCHEMA
from common.files import sha256_file
from exporter import __version__
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


def build_manifest(target: Any, export: Any, written: Any, directory: Path) -> dict:
    """The manifest of one export (exporter.pipeline.Export and what its write returned)."""
    reference = written.reference | {"sha256": sha256_file(directory / written.reference["path"])}
    return {
        "schema": SCHEMA,
        "kind": target.kind,
        "edgeport": __version__,
        "model": export.model,
        **written.sections,
        # the target as this export resolved it (command-line overrides, defaults), not the file re-read
        "target": {"name": target.name, "file": Path(target.origin).name, "profile": target.to_profile()},
        "reference": reference,
        "artifacts": written.artifacts,
        "libraries": library_versions(target.formats, export.libraries),
    }
