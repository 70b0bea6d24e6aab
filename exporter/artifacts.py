"""What the pipeline records for each artifact it wrote; the manifest is built from these."""

from __future__ import annotations

from dataclasses import dataclass, field

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
