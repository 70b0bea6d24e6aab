"""manifest.json: what an artifact directory holds and how it was made. Written by the exporter,
read here, so validation needs the directory alone."""

from __future__ import annotations

import json
from pathlib import Path

from validators.errors import ArtifactError

FILENAME = "manifest.json"
SCHEMA = 1


def read_manifest(directory: Path) -> dict:
    if not directory.is_dir():
        raise ArtifactError(f"{directory} is not a directory; pass an artifact directory such as "
                            "artifacts/digits/android")
    path = directory / FILENAME
    if not path.is_file():
        raise ArtifactError(f"{directory} has no {FILENAME}; pass a directory written by edgeport export")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); re-export the model") from None
    missing = [k for k in ("schema", "model", "target", "artifacts", "reference", "inputs", "outputs")
               if k not in manifest]
    if missing:
        raise ArtifactError(f"{path} lacks {', '.join(missing)}; it was not written by this edgeport, re-export")
    if manifest["schema"] != SCHEMA:
        raise ArtifactError(f"{path} has manifest schema {manifest['schema']}, this edgeport reads {SCHEMA}; "
                            "re-export with this version")
    return manifest
