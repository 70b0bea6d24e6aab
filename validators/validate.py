"""Validate an artifact directory: run every artifact with its real runtime on the stored eval
inputs, compare with the PyTorch reference outputs, time it, and check the target's budgets.

Reads manifest.json, reference.npz and the artifacts only; it never imports the exporter."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from targets import Target
from targets.profile import target_from_dict
from validators import budgets, latency, parity
from validators.batching import run_batched
from validators.errors import ArtifactError
from validators.files import sha256_file, size_bytes
from validators.manifest import read_manifest
from validators.npu import compile_with_vela
from validators.reference import Reference
from validators.runtimes import extra_sessions, open_session


def _fixed_batch(specs: list[dict]) -> int | None:
    first = specs[0]["shape"][0] if specs and specs[0]["shape"] else None
    return first if isinstance(first, int) else None


def _variant(target: Target, fmt: str, precision: str):
    for v in target.variants:
        if (v.format, v.precision) == (fmt, precision):
            return v
    raise ArtifactError(f"manifest lists {fmt}/{precision}, which its target profile does not; re-export")


def parity_against_reference(run, reference: Reference, input_names: list[str], output_names: list[str],
                             batch: int | None, min_sqnr_db: float | None = None) -> tuple[dict, dict, dict | None]:
    """Run an artifact on the stored eval inputs: (per-output parity, worst case, task accuracy).
    min_sqnr_db: the budget's bound, which sets the noise a top-1 flip is excused by."""
    inputs = {name: reference.inputs[name] for name in input_names}
    outputs = dict(zip(output_names, run_batched(run, inputs, batch), strict=True))
    per_output, problems = {}, []
    for name in output_names:
        try:
            per_output[name] = parity.output_parity(reference.outputs[name], outputs[name], min_sqnr_db)
        except ValueError as exc:
            problems.append(f"output {name}: {exc}")
    if problems:
        raise ArtifactError("; ".join(problems) + "; the artifact does not match its manifest")
    accuracy = parity.accuracy(reference.outputs, outputs, reference.labels) if reference.labels is not None else None
    return per_output, parity.worst_case(per_output), accuracy


def _validate_artifact(directory: Path, entry: dict, target: Target, reference: Reference,
                       output_names: list[str]) -> dict:
    path = directory / entry["path"]
    if not path.exists():
        raise ArtifactError(f"{path} is listed in the manifest but missing; re-export")
    actual_sha = sha256_file(path)
    delegates = target.runtime.tflite_delegates if entry["format"] == "tflite" else (None,)
    session = open_session(entry["format"], path, target.runtime.threads, delegates[0])
    batch = _fixed_batch(entry["inputs"])
    input_names = [spec["name"] for spec in entry["inputs"]]
    inputs = {name: reference.inputs[name] for name in input_names}
    variant = _variant(target, entry["format"], entry["precision"])
    min_sqnr_db = variant.budget.min_sqnr_db
    try:
        per_output, overall, accuracy = parity_against_reference(session.run, reference, input_names, output_names,
                                                                 batch, min_sqnr_db)
    except ArtifactError as exc:
        raise ArtifactError(f"{path}: {exc}") from None
    by_runtime = {session.runtime: overall}
    for extra in extra_sessions(entry["format"], path, target.runtime.threads):
        by_runtime[extra.runtime] = parity_against_reference(extra.run, reference, input_names, output_names,
                                                             batch, min_sqnr_db)[1]

    by_delegate = {}
    for delegate in delegates:
        timed = session if delegate == delegates[0] else open_session(entry["format"], path, target.runtime.threads,
                                                                      delegate)
        by_delegate[delegate or "default"] = latency.measure_first_batch(timed, inputs, batch, target.runtime)
    timing = next(iter(by_delegate.values()))

    violations = []
    if actual_sha != entry["sha256"]:
        violations.append(f"sha256 {actual_sha[:12]}… differs from the manifest's {entry['sha256'][:12]}…: "
                          "the file changed after export")
    npu = None
    if entry.get("npu_compiled") and target.npu is not None:
        npu, npu_violations = _npu_section(directory, path, entry["npu_compiled"], target)
        violations += npu_violations
    nbytes = size_bytes(path)  # a directory walk for an .mlpackage
    violations += budgets.check(variant.budget, overall, accuracy, timing, nbytes, npu)
    for runtime, runtime_parity in list(by_runtime.items())[1:]:
        violations += [f"{runtime}: {v}" for v in budgets.check(variant.budget, runtime_parity, None, None, 0)]
    result = {
        "format": entry["format"], "precision": entry["precision"], "path": entry["path"],
        "bytes": nbytes, "sha256": actual_sha,
        "parity": overall,
        "parity_runtime": session.runtime,
    }
    if accuracy is not None:
        result["accuracy"] = accuracy
    io_quantization = _io_quantization(entry)
    result |= {
        "latency_ms": timing,
        **({"latency_ms_by_delegate": by_delegate} if len(by_delegate) > 1 else {}),
        **({"parity_by_runtime": by_runtime} if len(by_runtime) > 1 else {}),
        **({"npu": npu} if npu is not None else {}),
        **({"io_quantization": io_quantization} if io_quantization else {}),
        "budget": {"passed": not violations, "violations": violations,
                   "unjudged": budgets.unjudged(variant.budget, overall, accuracy),
                   "limits": {k: v for k, v in vars(variant.budget).items() if v is not None}},
        "parity_per_output": per_output,
        "conversion": entry.get("conversion", {}),
        "quantization": entry.get("quantization"),
    }
    if entry.get("diagnosis"):
        result["layers"] = entry["diagnosis"]["layers"]
        if entry["diagnosis"].get("auto_precision"):
            result["auto_precision"] = entry["diagnosis"]["auto_precision"]
    return result


def _io_quantization(entry: dict) -> dict:
    """Scale and zero point of each integer input/output, which device code needs to feed and read it."""
    return {spec["name"]: {"dtype": spec["dtype"], **spec["quantization"]}
            for spec in entry["inputs"] + entry["outputs"] if "quantization" in spec}


def _npu_section(directory: Path, artifact: Path, compiled: dict, target: Target) -> tuple[dict, list[str]]:
    """Compile the artifact again with vela for the report's figures; check the stored compiled file."""
    violations = []
    stored = directory / compiled["path"]
    if not stored.is_file():
        violations.append(f"{compiled['path']} (the vela-compiled model) is missing")
    elif sha256_file(stored) != compiled["sha256"]:
        violations.append(f"{compiled['path']} differs from the manifest's sha256: the compiled model changed")
    npu = target.npu
    with tempfile.TemporaryDirectory(prefix="edgeport-vela-") as scratch:
        result = compile_with_vela(artifact, Path(scratch), npu.accelerator, npu.system_config, npu.memory_mode,
                                   compiled["path"])
    return result.summary, violations


def validate_directory(directory: Path, progress: Callable[[str], None] = lambda _: None) -> dict:
    manifest = read_manifest(directory)
    target = target_from_dict(manifest["target"]["profile"], f"{directory}/manifest.json (target)")
    ref_entry = manifest["reference"]
    ref_path = directory / ref_entry["path"]
    if not ref_path.is_file():
        raise ArtifactError(f"{ref_path} is missing; validation needs the stored reference outputs, re-export")
    run_violations = []
    if sha256_file(ref_path) != ref_entry["sha256"]:
        run_violations.append(f"{ref_entry['path']} differs from the manifest's sha256: reference data was altered")
    try:
        reference = Reference.load(ref_path)
    except (ValueError, OSError, KeyError) as exc:
        raise ArtifactError(f"{ref_path} cannot be read ({exc}); re-export") from None
    if problem := reference.degenerate():
        raise ArtifactError(f"{ref_path}: {problem}")
    output_names = [o["name"] for o in manifest["outputs"]]

    results = []
    for entry in manifest["artifacts"]:
        progress(f"validating {entry['path']} with its runtime")
        results.append(_validate_artifact(directory, entry, target, reference, output_names))
    ref_accuracy = None
    if reference.labels is not None:
        ref_accuracy = next((parity.top1_accuracy(v, reference.labels) for v in reference.outputs.values()
                             if parity.is_classifier_output(v)), None)
    return {
        "model": {k: manifest["model"][k] for k in ("name", "source", "sha256")},
        "target": target.name,
        "passed": not run_violations and all(r["budget"]["passed"] for r in results),
        "violations": run_violations,
        "data": manifest.get("data", {}),
        "reference_accuracy": ref_accuracy,
        "artifacts": results,
        "notes": manifest.get("trace", {}).get("notes", []),
    }


def all_unjudged(report: dict) -> list[str]:
    return [f"{a['path']}: {note}" for a in report["artifacts"] for note in a["budget"].get("unjudged", [])]


def all_violations(report: dict) -> list[str]:
    found = list(report.get("violations", []))
    for a in report["artifacts"]:
        found += [f"{a['path']}: {v}" for v in a["budget"]["violations"]]
    return found

