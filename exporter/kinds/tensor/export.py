"""The tensor kind's export, one straight data path: source -> trace -> preflight -> reference (prepared), then
lower (+passes) -> emit variants -> diagnose -> stamp (written); exporter/pipeline.py writes the manifest,
validates and reports. Formats plug in behind exporter.formats.base.Backend; this module owns the loop every
format shares (scratch directories, timing, provenance, records)."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

from common.artifact_dir import Reference
from common.files import sha256_file, size_bytes
from exporter import memory
from exporter.artifacts import ArtifactRecord, provenance
from exporter.costs import op_costs
from exporter.data import Dataset, dataset_from_arrays, load_dataset, synthetic_dataset
from exporter.diagnosis.stage import Diagnosis, diagnose, wanted
from exporter.errors import UnsupportedOpsError, UserInputError
from exporter.formats import backend
from exporter.formats.base import Backend, Lowered
from exporter.kinds import Written
from exporter.options import Progress
from exporter.sources import load_model, load_module
from exporter.trace import TracedModel, trace
from targets import Target, Variant
from targets.prune import said_limits
from validators.candidate import Candidate, ModelIO


def _given_data(given: Path | dict, traced: TracedModel, role: str, progress: Progress) -> Dataset:
    if isinstance(given, dict):
        data = dataset_from_arrays(given, traced.inputs, role, f"{role} arrays given in Python")
    else:
        data = load_dataset(Path(given), traced.inputs, role)
    for note in data.notes:
        progress(f"note: {note}")
    return data


def _eval_data(options: Any, traced: TracedModel, progress: Progress) -> Dataset:
    if options.eval is not None:
        return _given_data(options.eval, traced, "eval", progress)
    if traced.loaded.default_eval is not None:
        return traced.loaded.default_eval
    verdict = "allowed to pass (--allow-synthetic-eval)" if options.allow_synthetic_eval else \
        "the verdict is provisional (exit 1) until you pass --eval real data or --allow-synthetic-eval"
    progress(f"warning: no --eval data: parity runs on synthetic inputs and proves little; {verdict}")
    return synthetic_dataset(traced.inputs, _examples(traced))


def _calibration_data(options: Any, traced: TracedModel, needed: bool, progress: Progress) -> Dataset | None:
    if options.calib is not None:
        return _given_data(options.calib, traced, "calib", progress)
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


MODULE_OUTPUT_KINDS = "edgeport_output_kinds"  # a model may declare {output name: kind} as this attribute


def _judge_outputs_as(traced: TracedModel, reference: Reference, options: Any, progress: Progress) -> None:
    """Fix how each output is judged: as declared (the model's attribute, then --output-kind), else as
    inferred from the reference outputs. Recorded in the manifest, so validation judges the same way."""
    from validators.parity import OUTPUT_KINDS, infer_output_kind

    declared = dict(getattr(traced.loaded.module, MODULE_OUTPUT_KINDS, None) or {}) | options.output_kinds
    names = [spec.name for spec in traced.outputs]
    for name, kind in declared.items():
        if name not in names:
            raise UserInputError(f"--output-kind (or the model's {MODULE_OUTPUT_KINDS}) names output {name!r}, "
                                 f"but the model's outputs are {', '.join(names)}")
        if kind not in OUTPUT_KINDS:
            raise UserInputError(f"output {name!r} is declared as {kind!r}; a kind is one of {', '.join(OUTPUT_KINDS)}")
    judged = []
    for spec in traced.outputs:
        kind, basis = (declared[spec.name], "declared") if spec.name in declared \
            else infer_output_kind(reference.outputs[spec.name])
        judged.append(dataclasses.replace(spec, kind=kind, kind_basis=basis))
        progress(f"output {spec.name} is judged as {kind} ({basis})")
    traced.outputs = judged


def _check_labels(traced: TracedModel, reference: Reference) -> None:
    """Labels must name classes the classification output scores: one past its width is no class at all."""
    from validators.parity import first_classifier

    name = first_classifier(reference.outputs, {spec.name: spec.kind for spec in traced.outputs})
    if reference.labels is None or name is None or not len(reference.labels):
        return
    classes = reference.outputs[name].shape[1]
    low, high = int(reference.labels.min()), int(reference.labels.max())
    if low < 0 or high >= classes:
        raise UserInputError(f"--eval labels run {low}..{high}, but output {name!r} scores {classes} classes "
                             f"(0..{classes - 1}); pass labels of the model's classes")


def _load(options: Any, progress: Progress) -> TracedModel:
    if isinstance(options.model, str):
        progress(f"[1/5] loading {options.model}")
        loaded = load_model(options.model, options.inputs, weights=options.weights, trust_pickle=options.trust_pickle)
    else:
        progress(f"[1/5] taking the {type(options.model).__name__} given in Python")
        loaded = load_module(options.model, options.example_inputs, options.inputs)
    if options.name:
        loaded.name = options.name
    progress(f"[2/5] tracing {loaded.name} ({loaded.kind})")
    return trace(loaded, options.dynamic_batch)


def _preflight(traced: TracedModel, target: Target, progress: Progress) -> None:
    """Every operator every requested format cannot take, gathered before any long conversion."""
    progress(f"[3/5] checking operator support for {', '.join(target.formats)}")
    unsupported = {fmt: (ops, backend(fmt).preflight_hint) for fmt in target.formats
                   if (ops := backend(fmt).preflight(traced))}
    if unsupported:
        raise UnsupportedOpsError(unsupported)


def _model_io(traced: TracedModel) -> ModelIO:
    return ModelIO([s.name for s in traced.inputs], [s.name for s in traced.outputs], traced.batch,
                   {s.name: s.kind for s in traced.outputs})


def _quiet(_: str) -> None:
    pass


def _pruned(traced: TracedModel, target: Target, calibration: Dataset, reference: Reference,
            progress: Progress) -> tuple[TracedModel, dict]:
    """The target's [prune] step: the pruned and recovered module traced again for every format, and what it
    removed and cost. Each candidate's quality is judged against the unpruned reference on the eval inputs (a
    report figure: labels, where given, are read only by the verdict's accuracy)."""
    from exporter.prune import prune
    from validators.candidate import judge_change

    loaded, io = traced.loaded, _model_io(traced)
    if loaded.kind != "module":
        raise UserInputError(f"[prune] needs the model as a PyTorch module; {loaded.source} is a {loaded.kind} "
                             "(pass its factory, Hugging Face folder or nn.Module, or drop [prune] from the target)")

    def quality(module) -> dict:
        candidate = dataclasses.replace(traced, loaded=dataclasses.replace(loaded, module=module))
        metrics, _ = judge_change(candidate.reference_outputs, reference, io, target.prune.budget)
        return {k: v for k, v in metrics.items() if k != "mean_abs"}

    first = target.variants[0]

    def latency_ms(module) -> float:  # the target's first variant, as it would be emitted, timed as validated
        fmt = backend(first.format)
        candidate = trace(dataclasses.replace(loaded, module=module), traced.dynamic_batch)
        with tempfile.TemporaryDirectory(prefix="edgeport-prune-") as scratch:
            out = Path(scratch) / first.filename
            fmt.emit(fmt.lower(candidate, target, Path(scratch), _quiet), first, calibration.inputs, out, _quiet)
            return Candidate(first.format, reference, io, first.budget, target.runtime).latency_ms(out)

    progress(f"[3/5] pruning {loaded.name} towards {said_limits(target.prune.limits())}")
    pruned = prune(loaded.module, loaded.example_inputs, loaded.input_names, [s.kind for s in traced.outputs],
                   calibration.inputs, target.prune, quality, latency_ms if target.prune.max_latency_ms else None,
                   progress)
    retraced = trace(dataclasses.replace(loaded, module=pruned.module), traced.dynamic_batch)
    retraced.outputs = traced.outputs  # the same outputs, judged as the unpruned model's were
    measured_on = {"latency_measured_on": f"{first.format}/{first.precision} ({target.runtime.threads} thread(s))"} \
        if target.prune.max_latency_ms else {}
    return retraced, pruned.section | {"calibration": calibration.describe()} | measured_on


def _pruned_program(traced: TracedModel, work: Path) -> dict:
    """The pruned model as a PyTorch program, to fine-tune further (torch.export.load)."""
    if traced.program is None:
        return {"pruned_model": None, "pruned_model_note": "the pruned model traced only as TorchScript: no .pt2 "
                "written"}
    import torch

    path = work / PRUNED_PROGRAM
    torch.export.save(traced.program, path)
    return {"pruned_model": {"path": path.name, "form": "PyTorch program (torch.export.load)",
                             "sha256": sha256_file(path), "bytes": size_bytes(path)}}


PRUNED_PROGRAM = "model.pruned.pt2"


class TensorExport:
    """Prepared: traced once, eval and calibration data read, every format's operators checked, the reference
    computed and judged sane. write() emits every format's variants, diagnoses and stamps them."""

    libraries: tuple[str, ...] = ()

    def __init__(self, options: Any, target: Target, progress: Progress) -> None:
        self.options, self.target = options, target
        self.traced = _load(options, progress)
        self.eval_data = _eval_data(options, self.traced, progress)
        self.calibration = _calibration_data(options, self.traced, target.needs_calibration or bool(target.prune),
                                             progress)
        _preflight(self.traced, target, progress)
        self.reference = _reference(self.traced, self.eval_data)
        _judge_outputs_as(self.traced, self.reference, options, progress)
        _check_labels(self.traced, self.reference)
        self.pruning = None
        if target.prune is not None:
            self.traced, self.pruning = _pruned(self.traced, target, self.calibration, self.reference, progress)
            unpruned = self.reference.outputs
            self.reference = dataclasses.replace(_reference(self.traced, self.eval_data), unpruned=unpruned)
        loaded = self.traced.loaded
        self.name = loaded.name
        self.model = {"name": loaded.name, "source": loaded.source, "kind": loaded.kind, "sha256": loaded.sha256}

    def write(self, work: Path, progress: Progress) -> Written:
        traced, target, data = self.traced, self.target, self.eval_data
        reference_path = self.reference.save(work)
        calib_inputs = self.calibration.inputs if self.calibration is not None else None
        records: list[ArtifactRecord] = []
        for fmt in target.formats:
            progress(f"[4/5] converting to {fmt}")
            records += _emit_format(backend(fmt), traced, target, calib_inputs, self.reference, work, progress)
            memory.hand_back()  # the format's lowering, and what the libraries cached of it
        sections = {
            "trace": {"method": traced.method, "dynamic_batch": traced.dynamic_batch, "batch": traced.batch,
                      "notes": traced.notes},
            "costs": op_costs(traced.program),
            "inputs": [s.to_json() for s in traced.inputs],
            "outputs": [s.to_json() for s in traced.outputs],
            "data": {"eval": data.describe() | ({"synthetic_allowed": True} if self.options.allow_synthetic_eval
                                                else {}),
                     "calibration": self.calibration.describe() if self.calibration else None}}
        if self.pruning is not None:
            sections["pruning"] = self.pruning | _pruned_program(traced, work)
        return Written([_artifact_entry(r, work) for r in records], sections,
                       {"path": reference_path.name, "samples": data.samples}, _export_log(records))


def _emit_format(fmt_backend: Backend, traced: TracedModel, target: Target, calibration: dict | None,
                 reference: Reference, work: Path, progress: Progress) -> list[ArtifactRecord]:
    """Lower once, then emit, diagnose, stamp and finish every variant of the format."""
    with tempfile.TemporaryDirectory(prefix=f"edgeport-{fmt_backend.format}-") as scratch:
        start = time.perf_counter()
        lowered = fmt_backend.lower(traced, target, Path(scratch), progress)
        shared_seconds = time.perf_counter() - start  # export and passes, which every variant needs
        return [_emit_variant(fmt_backend, lowered, variant, calibration, reference, work, progress, shared_seconds)
                for variant in target.variants_of(fmt_backend.format)]


def _emit_variant(fmt_backend: Backend, lowered: Lowered, variant: Variant, calibration: dict | None,
                  reference: Reference, work: Path, progress: Progress, shared_seconds: float) -> ArtifactRecord:
    start = time.perf_counter()
    traced, target, out = lowered.traced, lowered.target, work / variant.filename
    emitted = fmt_backend.emit(lowered, variant, calibration, out, progress)
    record = ArtifactRecord(variant, emitted.conversion or lowered.conversion, emitted.quantization, [], [],
                            fmt_backend.reproducible)
    candidate = Candidate(variant.format, reference, _model_io(traced), variant.budget, target.runtime)
    if wanted(target, variant, candidate, out):
        _diagnose(fmt_backend, lowered, emitted, record, candidate, reference, out, progress)
    fmt_backend.stamp(out, provenance(traced.loaded.name, traced.loaded.sha256, target.name, variant.precision))
    finished = fmt_backend.finish(lowered, variant, out, work, progress)
    record.inputs, record.outputs, record.companions = finished.inputs, finished.outputs, finished.companions
    record.seconds = round(time.perf_counter() - start + shared_seconds, 3)
    return record


INTEGER_ONLY_NOTE = ("auto precision does not apply to a full-integer variant: a layer kept in float would be a "
                     "float island; the blame table names the layers to fix, or use int8 for mixed precision")


def _diagnose(fmt_backend: Backend, lowered: Lowered, emitted, record: ArtifactRecord, candidate: Candidate,
              reference: Reference, out: Path, progress: Progress) -> None:
    """The diagnosis stage for one variant: blame, and auto precision when the target allows it."""
    start = time.perf_counter()
    variant = record.variant
    quantizer = fmt_backend.layer_quantizer(lowered, variant, emitted, progress)
    if quantizer is None:  # said, so a missing table is never mistaken for a clean one
        record.diagnosis = Diagnosis([], note=f"no per-layer blame: the {variant.format} backend does not offer "
                                              "it yet")
        return
    label = f"{variant.format}: {variant.precision}: "
    auto = lowered.target.auto_precision and not variant.row.integer_only
    record.diagnosis = diagnose(quantizer, out, reference, candidate, auto, lambda message: progress(label + message))
    if lowered.target.auto_precision and not auto:
        record.diagnosis.note = " ".join(filter(None, [record.diagnosis.note, INTEGER_ONLY_NOTE]))
    if record.diagnosis.auto_precision is not None:
        record.quantization = quantizer.record_kept(record.quantization, record.diagnosis.auto_precision.kept_float)
    record.diagnosis.seconds = round(time.perf_counter() - start, 3)


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


def _export_log(records: list[ArtifactRecord]) -> dict:
    """What this export measured on the host: timings and auto precision's latencies (not reproducible)."""
    return {
        "artifact_seconds": {r.path: r.seconds for r in records},
        "diagnosis_seconds": {r.path: r.diagnosis.seconds for r in records if r.diagnosis and r.diagnosis.seconds},
        "auto_precision_latency_ms": {r.path: r.diagnosis.host_latency_ms for r in records
                                      if r.diagnosis and r.diagnosis.host_latency_ms},
    }
