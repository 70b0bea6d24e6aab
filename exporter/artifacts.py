"""What the pipeline records for each artifact it wrote; the manifest is built from these."""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter import __version__
from exporter.diagnosis.stage import Diagnosis
from exporter.formats.base import Conversion
from targets import Variant


@dataclass
class ArtifactRecord:
    variant: Variant
    conversion: Conversion
    quantization: dict | None  # the quantizer's own config (its keys are the library's), None for float variants
    inputs: list[dict]  # the artifact's own I/O specs (int8-I/O variants differ from the model's)
    outputs: list[dict]
    reproducible: str
    companions: dict = field(default_factory=dict)  # further files made from it, e.g. npu_compiled
    diagnosis: Diagnosis | None = None
    seconds: float = 0.0  # conversion time of this variant (shared lowering included): export.json only

    @property
    def path(self) -> str:  # relative to the artifact directory
        return self.variant.filename


def provenance(model: str, model_sha256: str, target: str, precision: str) -> dict[str, str]:
    """Where an artifact came from, written into the artifact itself by its format's stamp."""
    return {"edgeport.version": __version__, "edgeport.model": model, "edgeport.model_sha256": model_sha256,
            "edgeport.target": target, "edgeport.precision": precision}
