"""model source -> traced program -> per-target passes -> artifacts -> validators -> report."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.data import Dataset, dataset_from_arrays, load_dataset, synthetic_dataset
from exporter.errors import UnsupportedOpsError, UserInputError
from exporter.formats import backend
from exporter.manifest import build_manifest
from exporter.sources import load_model, load_module
from exporter.specs import TensorSpec
from exporter.staging import staged_directory
from exporter.trace import TracedModel, trace
from targets import load_target
from validators.files import write_json
from validators.manifest import FILENAME as MANIFEST
from validators.reference import Reference
from validators.report import write_reports
from validators.validate import validate_directory

Progress = Callable[[str], None]


@dataclass
class ExportOptions:
    model: Any  # a SPEC string, or an nn.Module (then example_inputs)
    target: str
    out: Path = Path("artifacts")
    calib: Path | dict | None = None  # a file, or arrays keyed by input name (plus labels)
    eval: Path | dict | None = None
    example_inputs: tuple | None = None
    inputs: list[TensorSpec] = field(default_factory=list)
    dynamic_batch: bool = False
    weights: Path | None = None
    trust_pickle: bool = False
    name: str | None = None
    auto_precision: bool | None = None  # None: as the target profile says


def _given_data(given: Path | dict, traced: TracedModel, role: str) -> Dataset:
    if isinstance(given, dict):
        return dataset_from_arrays(given, traced.inputs, role, f"{role} arrays given in Python")
    return load_dataset(Path(given), traced.inputs, role)


def _eval_data(options: ExportOptions, traced: TracedModel, progress: Progress) -> Dataset:
    if options.eval is not None:
        return _given_data(options.eval, traced, "eval")
    if traced.loaded.default_eval is not None:
        return traced.loaded.default_eval
    progress("warning: no --eval data: parity runs on synthetic inputs and proves little; pass --eval real data")
    return synthetic_dataset(traced.inputs, _examples(traced))


def _calibration_data(options: ExportOptions, traced: TracedModel, needed: bool, progress: Progress) -> Dataset | None:
    if options.calib is not None:
        return _given_data(options.calib, traced, "calib")
    if traced.loaded.default_calib is not None or not needed:
        return traced.loaded.default_calib
    progress("warning: no --calib data: static int8 variants calibrate on synthetic inputs; "
             "real data calibrates better (pass --calib)")
    return synthetic_dataset(traced.inputs, _examples(traced), seed=1, samples=128)


def _examples(traced: TracedModel) -> dict:
    return {name: t.numpy() for name, t in zip(traced.loaded.input_names, traced.example_inputs, strict=True)}


def _reference(traced: TracedModel, data: Dataset) -> Reference:
    try:
        outputs = traced.reference_outputs(data.inputs)
    except Exception as exc:  # the user's model on the user's data
        raise UserInputError(f"the PyTorch model failed on the eval data ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200]}); check --eval matches the model's inputs") from exc
    reference = Reference(dict(data.inputs), {s.name: o for s, o in zip(traced.outputs, outputs, strict=True)},
                          data.labels)
    if problem := reference.degenerate():
        raise UserInputError(problem)
    return reference


def run_export(options: ExportOptions, progress: Progress) -> tuple[Path, dict]:
    started = time.perf_counter()
    target = load_target(options.target)  # fail on a bad target before any heavy work
    if options.auto_precision is not None:
        target = dataclasses.replace(target, auto_precision=options.auto_precision)
    if isinstance(options.model, str):
        progress(f"[1/5] loading {options.model}")
        loaded = load_model(options.model, options.inputs, weights=options.weights, trust_pickle=options.trust_pickle)
    else:
        progress(f"[1/5] taking the {type(options.model).__name__} given in Python")
        loaded = load_module(options.model, options.example_inputs, options.inputs)
    if options.name:
        loaded.name = options.name
    progress(f"[2/5] tracing {loaded.name} ({loaded.kind})")
    traced = trace(loaded, options.dynamic_batch)
    eval_data = _eval_data(options, traced, progress)
    needs_calibration = any(v.is_static_quantized for v in target.variants)
    calibration = _calibration_data(options, traced, needs_calibration, progress)

    progress(f"[3/5] checking operator support for {', '.join(target.formats)}")
    unsupported = {fmt: (ops, backend(fmt).PREFLIGHT_HINT) for fmt in target.formats
                   if (ops := backend(fmt).preflight(traced))}
    if unsupported:
        raise UnsupportedOpsError(unsupported)

    reference = _reference(traced, eval_data)
    final = options.out / loaded.name / target.name
    timings: dict = {}
    with staged_directory(final) as work:
        reference_path = reference.save(work)
        records = []
        for fmt in target.formats:
            progress(f"[4/5] converting to {fmt}")
            t0 = time.perf_counter()
            calib_inputs = calibration.inputs if calibration is not None else None
            records += backend(fmt).convert(traced, target, calib_inputs, work, progress, reference)
            timings[f"{fmt}_conversion_seconds"] = round(time.perf_counter() - t0, 3)
        write_json(work / MANIFEST, build_manifest(traced, target, eval_data, calibration, reference_path,
                                                   records, work))
        progress(f"[5/5] validating {len(records)} artifact(s) on {eval_data.samples} eval samples")
        report = validate_directory(work, progress)
        timings["total_seconds"] = round(time.perf_counter() - started, 3)
        timings["artifact_seconds"] = {r.path: r.seconds for r in records}
        timings["diagnosis_seconds"] = {r.path: r.diagnosis_seconds for r in records if r.diagnosis_seconds}
        report["export"] = timings
        measured = {r.path: r.measured for r in records if r.measured}
        for artifact in report["artifacts"]:  # what the export measured on the host beside the manifest's decision
            if artifact.get("auto_precision") and artifact["path"] in measured:
                artifact["auto_precision"] |= measured[artifact["path"]].get("auto_precision", {})
        write_reports(work, report)
    return final, report
