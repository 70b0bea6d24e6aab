"""Diagnosis, the stage after emit: per-layer blame of a quantized variant and, when the target
allows it and the variant misses its budget, automatic mixed precision (the fewest most harmful
layers kept in float that meet it). Generic: a format only supplies its LayerQuantizer; every
candidate is judged by the validator's own public call (validators.candidate)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from common.artifact_dir import Reference
from common.files import size_bytes
from exporter.diagnosis.blame import BlameRow, blame_feeds
from exporter.diagnosis.contract import LayerQuantizer, Progress
from exporter.diagnosis.search import fewest_kept_set
from targets import Target, Variant
from validators.candidate import Candidate


@dataclass
class AutoPrecisionDecision:
    """Which layers stayed float and what that bought; reproducible, so it goes into the manifest."""

    met: bool
    kept_float: list[str]
    excluded_nodes: list[str]
    weighted_layers: int
    bytes_before: int
    bytes_after: int
    violations_before: list[str]
    violations_after: list[str]
    candidates_tried: int
    put_back: int = 0  # layers of the shortest meeting prefix of the blame order found quantizable after all

    def to_json(self) -> dict:
        int8_layers = self.weighted_layers - len(self.kept_float)
        met = self.met and int8_layers > 0  # an "int8" variant with every layer float is the fp32 model
        note = ("" if met else NONE_QUANTIZED if self.met
                else "the budget is not met even with every weighted layer in float")
        return {
            "met": met, "kept_float": self.kept_float, "excluded_nodes": self.excluded_nodes,
            "int8_layers": int8_layers, "weighted_layers": self.weighted_layers,
            "int8_layer_share": round(int8_layers / self.weighted_layers, 4) if self.weighted_layers else 0.0,
            "bytes_before": self.bytes_before, "bytes_after": self.bytes_after,
            "violations_before": self.violations_before, "violations_after": self.violations_after,
            "candidates_tried": self.candidates_tried, "put_back": self.put_back, "minimal": met,
            "note": note,
        }


# the validator turns this note into a violation: the variant would ship the float model under an int8 name
NONE_QUANTIZED = "no layer could be quantized within the budget: every weighted layer is float"


@dataclass
class Diagnosis:
    rows: list[BlameRow]
    auto_precision: AutoPrecisionDecision | None = None
    note: str = ""
    # measured on this host while deciding (latency before and after): not reproducible, report only
    host_latency_ms: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict:
        record: dict = {"layers": [r.to_json() for r in self.rows]}
        if self.auto_precision is not None:
            record["auto_precision"] = self.auto_precision.to_json()
        if self.note:
            record["note"] = self.note
        return record


def wanted(target: Target, variant: Variant, candidate: Candidate, out: Path) -> bool:
    """Whether a quantized variant gets per-layer blame: the target's `diagnose` says always, never,
    or only when the variant misses its budget (checked with the validator's own code)."""
    if target.diagnose == "off" or not variant.row.diagnosable:
        return False
    return target.diagnose == "always" or bool(candidate.violations(out))


def diagnose(quantizer: LayerQuantizer, out: Path, reference: Reference, candidate: Candidate, auto: bool,
             progress: Progress) -> Diagnosis:
    """The blame table of `out`; and, when `auto` and `out` misses its budget, auto precision, which
    leaves `out` as the model decided on."""
    rows = quantizer.blame(out, blame_feeds(reference.inputs, candidate.io.batch), progress)
    if not rows:
        return Diagnosis(rows, note="no per-layer blame: the quantized model's layers could not be paired "
                                    "with the float model's")
    diagnosis = Diagnosis(rows)
    if not auto:
        return diagnosis
    before = candidate.violations(out)
    if before:
        progress("misses its budget: keeping the most harmful layers in float")
        latency_before = candidate.latency_ms(out)
        diagnosis.auto_precision = auto_precision(quantizer, rows, out, candidate, before)
        diagnosis.host_latency_ms = {"latency_ms_before": latency_before,
                                     "latency_ms_after": candidate.latency_ms(out)}
    return diagnosis


def auto_precision(quantizer: LayerQuantizer, rows: list[BlameRow], out: Path, candidate: Candidate,
                   before: list[str]) -> AutoPrecisionDecision:
    """Keep the fewest most-harmful layers in float that meet the budget (or every weighted layer,
    when even that does not). `before` is what the fully quantized `out` violates."""
    bytes_before = size_bytes(out)
    excluded: list[str] = []  # the graph nodes the variant on disk keeps out of the quantized scheme

    def attempt(indices: list[int]) -> list[str]:
        excluded[:] = quantizer.keep_float([rows[i] for i in indices], out)
        return candidate.violations(out)

    # every weighted layer in float first: if that misses too, the miss is elsewhere (activations between layers)
    kept = fewest_kept_set(len(rows), attempt)
    return AutoPrecisionDecision(
        met=not kept.violations, kept_float=[rows[i].name for i in kept.indices], excluded_nodes=list(excluded),
        weighted_layers=quantizer.weighted_layers, bytes_before=bytes_before, bytes_after=size_bytes(out),
        violations_before=before, violations_after=kept.violations, candidates_tried=kept.candidates_tried,
        put_back=kept.put_back)
