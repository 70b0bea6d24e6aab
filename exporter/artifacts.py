"""What a backend hands back for each artifact it wrote; the manifest is built from these."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ArtifactRecord:
    format: str
    precision: str
    path: str  # relative to the artifact directory
    conversion: dict  # exporter used and why, passes with node counts
    quantization: dict | None  # the scheme and its config, None for float variants
    inputs: list[dict]  # the artifact's own I/O specs (int8-I/O variants differ from the model's)
    outputs: list[dict]
    reproducible: str = ""
    extra: dict = field(default_factory=dict)
    seconds: float = 0.0  # conversion time of this variant; goes to report.json, not the manifest
    diagnosis_seconds: float = 0.0  # of which per-layer blame and auto precision took this long
    # host measurements made while exporting (auto precision's latency cost): report only, not reproducible
    measured: dict = field(default_factory=dict)
