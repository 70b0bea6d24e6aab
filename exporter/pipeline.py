"""`edgeport export` for every model kind, one straight line:

    target -> output place -> kind.prepare (load, data, preflight, reference: every refusal before a long step)
           -> staging -> export.write (lower, emit, diagnose, stamp each artifact) -> manifest -> export log
           -> validate (the kind's judge) -> report

A kind (exporter/kinds/) supplies prepare and write (its Export); staging, the manifest's shared part, the export log,
validation and the report are this module's, the same for every kind."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from exporter.errors import UserInputError
from exporter.lm.source import refuse_encoder_folder
from exporter.options import ExportOptions, Progress
from exporter.staging import check_output_place
from targets import load_target
from targets.prune import pruned_with


def run_export(options: ExportOptions, progress: Progress) -> tuple[Path, dict]:
    """The one entry for every model kind: the target names its kind, the kind's plug-in prepares and writes."""
    from common.artifact_dir import EXPORT_LOG, MANIFEST
    from common.files import write_json
    from exporter import memory
    from exporter.kinds import kind_of_source, model_kind
    from exporter.manifest import build_manifest
    from exporter.staging import staged_directory
    from validators.report import write_reports
    from validators.validate import validate_directory

    started, meter = time.perf_counter(), memory.begin()
    target = load_target(options.target)  # fail on a bad target before any heavy work
    check_output_place(options.out)
    if options.auto_precision is not None:
        target = dataclasses.replace(target, auto_precision=options.auto_precision)
    if options.prune:
        target = dataclasses.replace(target, prune=pruned_with(target, options.prune))
    refuse_encoder_folder(options.model)  # a source no kind exports
    kind = model_kind(target.kind)
    for flag, path in (("--calib", options.calib), ("--eval", options.eval)):  # arrays from the Python API pass
        if isinstance(path, str | os.PathLike) and not Path(path).exists():  # a typo fails now, not after tracing
            raise UserInputError(f"{flag} {path} does not exist; pass {kind.data_files}")
    if options.model is None:
        options.model = kind.default_model
    estimate = getattr(kind, "memory_need", None)  # optional: a kind from outside may have no estimate
    preflight = memory.preflight(estimate and estimate(options.model, target), options.memory_limit, options.model,
                                 progress)
    with memory.step("load and reference"):
        export = kind_of_source(options.model, kind).prepare(options, target, progress)
    final = options.out / export.name / target.name
    with staged_directory(final) as work:
        with memory.step("write"):
            written = export.write(work, progress)
        write_json(work / MANIFEST, build_manifest(target, export, written, work))
        log = {"export_seconds": round(time.perf_counter() - started, 3), **written.log}
        write_json(work / EXPORT_LOG, log | {"memory": meter.record() | {"preflight": preflight}})
        progress(f"[5/5] validating {len(written.artifacts)} artifact(s), each with its own runtime")
        with memory.step("validation"):
            report = validate_directory(work, progress)
        report["export"] = log | {"memory": meter.record() | {"preflight": preflight}}  # validation's peak too
        write_json(work / EXPORT_LOG, report["export"])
        write_reports(work, report)
    return final, report
