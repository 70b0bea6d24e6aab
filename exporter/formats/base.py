"""The contract every artifact format implements, and the records it hands back.

The pipeline owns the loop over a target's variants (scratch directory, timing, provenance, the
ArtifactRecord); a format only says how to check, lower and emit:

    preflight(traced)                     -> operators the converter cannot take, before any long work
    lower(traced, target, scratch)        -> Lowered: export once + the target's passes, shared by variants
    emit(lowered, variant, calib, out)    -> Emitted: one precision variant written to `out`
    layer_quantizer(lowered, variant, emitted, scratch) -> LayerQuantizer | None, for the diagnosis stage
    finish(lowered, variant, out, ...)    -> Finished: the artifact's own I/O, companion files (after diagnosis)
    stamp(path, provenance)               -> provenance written into the artifact (or files beside it)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from common.artifact_dir import REPRODUCIBLE  # noqa: F401  (the formats' promise, beside their contract)
from exporter.diagnosis.contract import LayerQuantizer, Progress  # noqa: F401  (Progress: what backends take)
from exporter.errors import UnsupportedOp
from exporter.trace import TracedModel
from targets import Target, Variant

# An activation whose calibrated range reaches past this is a fill value (an attention mask's
# finfo.min), not a signal: one int8 scale over it would flatten every real value to zero. Every
# format's static quantizer keeps the tensors beyond it, and the ops touching them, in float.
UNREPRESENTABLE_RANGE = 1e6
UNREPRESENTABLE_REASON = f"calibrated range beyond ±{UNREPRESENTABLE_RANGE:g} (a mask fill value)"


@dataclass(frozen=True)
class Conversion:
    """How an artifact's float program was made: the converter (and the path it took), why, the
    graph passes with node counts, and settings of the format's own (opset, deployment target)."""

    exporter: str
    reason: str
    passes: tuple[dict, ...] = ()  # {"pass", "nodes_before", "nodes_after"} in the order run
    settings: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"exporter": self.exporter, "reason": self.reason, **self.settings, "passes": list(self.passes)}


@dataclass
class Lowered:
    """What every variant of one format starts from: the converted float program (in `scratch`), how
    it was made, and whatever format-specific state the variants share."""

    traced: TracedModel
    target: Target
    scratch: Path
    conversion: Conversion | None  # None where each variant is converted on its own (Emitted.conversion)
    state: Any = None


@dataclass
class Emitted:
    quantization: dict | None  # the scheme and its config; None for float variants
    conversion: Conversion | None = None  # when this variant was converted on its own, not by `lower`


@dataclass
class Finished:
    inputs: list[dict]  # the artifact's own I/O specs (int8-I/O variants differ from the model's)
    outputs: list[dict]
    companions: dict = field(default_factory=dict)  # manifest key -> record, e.g. npu_compiled


class Backend(Protocol):
    format: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]]  # the catalog's precision ids it implements (a guard test checks)
    preflight_hint: ClassVar[str]  # what to do when preflight refuses
    reproducible: ClassVar[str]  # what the manifest promises about the artifact's bytes

    def preflight(self, traced: TracedModel) -> list[UnsupportedOp]: ...

    def lower(self, traced: TracedModel, target: Target, scratch: Path, progress: Progress) -> Lowered: ...

    def emit(self, lowered: Lowered, variant: Variant, calibration: dict[str, np.ndarray] | None, out: Path,
             progress: Progress) -> Emitted: ...

    def layer_quantizer(self, lowered: Lowered, variant: Variant, emitted: Emitted,
                        progress: Progress) -> LayerQuantizer | None: ...

    def finish(self, lowered: Lowered, variant: Variant, out: Path, workdir: Path, progress: Progress) -> Finished: ...

    def stamp(self, path: Path, provenance: dict[str, str]) -> list[Path]: ...  # the files written beside `path`


def calibration_batches(variant: Variant, calibration: dict[str, np.ndarray] | None,
                        batch: int | None) -> list[dict[str, np.ndarray]]:
    """A static variant's calibration data in whole batches of the traced size, at most its
    `calibration_samples`; none for a variant that does not calibrate."""
    from common.batching import whole_batches

    if not variant.needs_calibration or calibration is None:
        return []
    return whole_batches(calibration, batch, variant.options.calibration_samples)


def model_io(traced: TracedModel) -> Finished:
    """The model's own I/O specs, for formats whose artifacts keep them unchanged."""
    return Finished([s.to_json() for s in traced.inputs], [s.to_json() for s in traced.outputs])
