"""Validate an artifact directory: run every artifact with its real runtime on the stored eval
inputs, compare with the PyTorch reference outputs, time it, and check the target's budgets.

Reads manifest.json, reference.npz and the artifacts only; it never imports the exporter."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from common.artifact_dir import MANIFEST, Reference, read_export_log, read_manifest, reference_file, require_keys
from common.errors import ArtifactError
from common.files import sha256_file, size_bytes
from common.vela import VelaError, compile_with_vela
from devices import load_device
from targets import Budget, Target
from targets.profile import target_from_dict
from validators import budgets, latency, parity
from validators.candidate import CandidateResult, ModelIO, evaluate, judge_change, parity_violations
from validators.estimate import estimate
from validators.runtimes import extra_sessions, open_session


def _fixed_batch(specs: list[dict]) -> int | None:
    first = specs[0]["shape"][0] if specs and specs[0]["shape"] else None
    return first if isinstance(first, int) else None


def _budget(entry: dict) -> Budget:
    """The budget the export promised for this artifact, as stored in the manifest."""
    try:
        return Budget(**entry["budget"])
    except (KeyError, TypeError) as exc:
        raise ArtifactError(f"manifest entry {entry.get('path')} has no valid budget ({exc}); re-export") from None


def _open(directory: Path, entry: dict, target: Target):
    path = directory / entry["path"]
    if not path.exists():
        raise ArtifactError(f"{path} is listed in the manifest but missing; re-export")
    delegates = target.runtime.tflite_delegates if entry["format"] == "tflite" else (None,)
    return path, delegates, open_session(entry["format"], path, target.runtime.threads, delegates[0])


def _validate_artifact(directory: Path, entry: dict, target: Target, reference: Reference,
                       output_kinds: dict[str, str | None], manifest: dict) -> dict:
    path, delegates, session = _open(directory, entry, target)
    io = ModelIO([spec["name"] for spec in entry["inputs"]], list(output_kinds), _fixed_batch(entry["inputs"]),
                 {name: kind for name, kind in output_kinds.items() if kind})
    budget = _budget(entry)
    recorded = _Recorded(session.run)
    try:
        judged = evaluate(recorded, reference, io, budget)
    except ArtifactError as exc:
        raise ArtifactError(f"{path}: {exc}") from None
    by_runtime = {session.runtime: judged}
    for other in extra_sessions(entry["format"], path, target.runtime.threads):
        by_runtime[other.runtime] = evaluate(other.run, reference, io, budget)
    inputs = {name: reference.inputs[name] for name in io.inputs}
    by_delegate = {}
    for delegate in delegates:
        timed = session if delegate == delegates[0] else open_session(entry["format"], path, target.runtime.threads,
                                                                      delegate)
        by_delegate[delegate or "default"] = latency.measure_first_batch(timed, inputs, io.batch, target.runtime)
    timing = next(iter(by_delegate.values()))

    actual_sha, violations = sha256_file(path), []
    if actual_sha != entry["sha256"]:
        violations.append(f"sha256 {actual_sha[:12]}… differs from the manifest's {entry['sha256'][:12]}…: "
                          "the file changed after export")
    npu = None
    if entry.get("npu_compiled") and target.npu is not None:
        npu, npu_violations = _npu_section(directory, path, entry["npu_compiled"], target)
        violations += npu_violations
    violations += _float_island(entry) + _nothing_quantized(entry)
    nbytes = size_bytes(path)  # a directory walk for an .mlpackage
    delegation = entry.get("delegation") or {}
    metrics = judged.metrics(bytes=nbytes, latency_ms=timing["median"],
                             npu_op_coverage=(npu or {}).get("npu_op_coverage"),
                             npu_sram_kib=(npu or {}).get("sram_kib"), npu_flash_kib=(npu or {}).get("flash_kib"),
                             delegated_op_coverage=delegation.get("delegated_op_coverage"))
    violations += parity_violations(judged.overall, budget.limits(), metrics, _fallback(npu, delegation))
    estimates = [estimate(entry, manifest, directory, device) for device in map(load_device, target.devices)]
    for runtime, other in list(by_runtime.items())[1:]:
        violations += [f"{runtime}: {v}" for v in other.violations]
    pruning_cost, missed = _pruning_cost(recorded, reference, io, target)
    violations += missed
    return _artifact_result(entry, nbytes, actual_sha, session.runtime, judged, metrics, by_runtime, by_delegate,
                            npu, budget, violations) | ({"estimates": estimates} if estimates else {}) | pruning_cost


class _Recorded:
    """A session's run that keeps what it returned, so the same outputs can be judged against a second reference."""

    def __init__(self, run) -> None:
        self.run, self.returned = run, []

    def __call__(self, feeds: dict) -> list:
        self.returned.append(self.run(feeds))
        return self.returned[-1]

    def replay(self):
        returned = iter(self.returned)
        return lambda _feeds: next(returned)


def _pruning_cost(recorded: _Recorded, reference: Reference, io: ModelIO, target: Target) -> tuple[dict, list[str]]:
    """A pruned export's artifact judged again, on the same outputs, against the unpruned model by [prune.budget]:
    what pruning, recovery and this variant's conversion cost together."""
    if target.prune is None:
        return {}, []
    if reference.unpruned is None:
        return {}, ["the target prunes, but the stored reference holds no unpruned outputs to judge what pruning "
                    "cost; re-export"]
    metrics, missed = judge_change(recorded.replay(), reference.of_unpruned(), io, target.prune.budget)
    violations = [f"against the unpruned model: {v}" for v in missed]
    if not any(budgets.BOUNDS[limit].metric in metrics for limit in target.prune.budget.limits()):
        violations.append("what pruning cost is not judged: no limit of [prune.budget] was measured for this model "
                          "(accuracy needs --eval labels; set min_cosine or min_sqnr_db for outputs without classes)")
    return {"against_unpruned": {"metrics": metrics, "budget": target.prune.budget.limits(),
                                 "violations": missed}}, violations


def _fallback(npu: dict | None, delegation: dict) -> dict[str, str]:
    """Which operators a coverage shortfall left behind, named with the module they came from."""
    why = {}
    if npu is not None:
        why["npu_op_coverage"] = "on the CPU: " + ", ".join(f"{op['op']} ({op['output']})"
                                                             for op in npu["cpu_fallback"])
    if delegation:
        why["delegated_op_coverage"] = "on the portable kernels: " + "; ".join(
            f"{op['op']} ({op['module'] or 'no module'}: {op['reason']})" for op in delegation["portable_fallback"])
    return why


def _float_island(entry: dict) -> list[str]:
    """An integer-only variant (int8_full) with operators still computing in float: each named with its module."""
    float_ops = entry.get("float_ops") or []
    if not float_ops:
        return []
    by_module: dict[str, list[str]] = {}
    for op in float_ops:
        by_module.setdefault(op["module"], []).append(op["op"])
    listed = "; ".join(f"{module}: {' -> '.join(ops)}" for module, ops in by_module.items())
    return [f"not full-integer: {len(float_ops)} operator(s) compute in float ({listed}); a BatchNorm after a "
            "ReLU is fixed by the tflite pass affine_as_depthwise, other ops need an int8 kernel or a rewrite"]


def _nothing_quantized(entry: dict) -> list[str]:
    """Auto precision that kept every weighted layer float: the fp32 model under a quantized name."""
    decision = (entry.get("diagnosis") or {}).get("auto_precision") or {}
    if decision.get("weighted_layers") and decision.get("int8_layers") == 0:
        return [f"{entry['precision']}: no layer could be quantized within the budget (auto precision kept all "
                f"{decision['weighted_layers']} weighted layers float); ship the fp32 or fp16 variant, or relax "
                "the budget"]
    return []


def _artifact_result(entry: dict, nbytes: int, sha: str, runtime: str, judged: CandidateResult, metrics: dict,
                     by_runtime: dict, by_delegate: dict, npu: dict | None, budget: Budget,
                     violations: list[str]) -> dict:
    host_latency = next(iter(by_delegate.values()))
    result = {"format": entry["format"], "precision": entry["precision"], "path": entry["path"],
              "bytes": nbytes, "sha256": sha, "runtime": runtime, "metrics": metrics,
              "parity": judged.overall, "parity_runtime": runtime}
    if judged.accuracy is not None:
        result["accuracy"] = judged.accuracy
    io_quantization = _io_quantization(entry)
    result |= {
        "latency_ms": host_latency,
        **({"latency_ms_by_delegate": by_delegate} if len(by_delegate) > 1 else {}),
        **({"parity_by_runtime": {k: v.overall for k, v in by_runtime.items()}} if len(by_runtime) > 1 else {}),
        **({"npu": npu} if npu is not None else {}),
        **({"float_ops": entry["float_ops"]} if "float_ops" in entry else {}),
        **({"delegation": entry["delegation"]} if "delegation" in entry else {}),
        **({"state": entry["state"]} if "state" in entry else {}),
        **({"io_quantization": io_quantization} if io_quantization else {}),
        "budget": {"passed": not violations, "violations": violations,
                   "unjudged": budgets.unjudged(budget, judged.overall, judged.accuracy),
                   "limits": budget.limits()},
        "parity_per_output": judged.per_output,
        "conversion": entry.get("conversion", {}),
        "quantization": entry.get("quantization"),
    }
    diagnosis = entry.get("diagnosis") or {}
    if diagnosis:
        result["layers"] = diagnosis["layers"]
        if diagnosis.get("auto_precision"):
            result["auto_precision"] = diagnosis["auto_precision"]
        if diagnosis.get("note"):
            result["diagnosis_note"] = diagnosis["note"]
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
        try:
            result = compile_with_vela(artifact, Path(scratch), npu.accelerator, npu.system_config, npu.memory_mode,
                                       compiled["path"])
        except VelaError as exc:
            raise ArtifactError(str(exc)) from exc
    return result.summary, violations


def _load_reference(directory: Path, manifest: dict) -> tuple[Reference, list[str]]:
    ref_path, violations = reference_file(directory, manifest)
    try:
        reference = Reference.load(ref_path)
    except (ValueError, OSError, KeyError) as exc:
        raise ArtifactError(f"{ref_path} cannot be read ({exc}); re-export") from None
    if problem := reference.degenerate():
        raise ArtifactError(f"{ref_path}: {problem}")
    return reference, violations


def provisional_reason(data: dict, allow_synthetic_eval: bool) -> str:
    """Why a verdict cannot pass: parity that ran on synthetic inputs only proves little."""
    evaluation = data.get("eval") or {}
    if not evaluation.get("synthetic") or allow_synthetic_eval or evaluation.get("synthetic_allowed"):
        return ""
    return ("parity ran on synthetic eval inputs only, so the verdict is provisional; pass --eval real data "
            "(or --allow-synthetic-eval to accept it)")


def validate_directory(directory: Path, progress: Callable[[str], None] = lambda _: None,
                       allow_synthetic_eval: bool = False) -> dict:
    """Every model kind's export directory, judged by its kind's judge (validators/judges/)."""
    from validators.judges import check_report, judge_for

    manifest = read_manifest(directory)
    judge = judge_for(manifest)
    require_keys(manifest, judge.manifest_keys, directory / MANIFEST)
    return check_report(judge.validate(directory, progress, allow_synthetic_eval))


def validate_tensor_directory(directory: Path, progress: Callable[[str], None], allow_synthetic_eval: bool) -> dict:
    manifest = read_manifest(directory)
    target = target_from_dict(manifest["target"]["profile"], f"{directory}/manifest.json (target)")
    reference, run_violations = _load_reference(directory, manifest)
    if (pruning := manifest.get("pruning")) and not pruning["met"]:
        run_violations.append(f"pruning: {pruning['not_met']}")
    output_kinds = {o["name"]: o.get("kind") for o in manifest["outputs"]}
    results = []
    for entry in manifest["artifacts"]:
        progress(f"validating {entry['path']} with its runtime")
        results.append(_validate_artifact(directory, entry, target, reference, output_kinds, manifest))
    ref_accuracy = None
    if reference.labels is not None:
        kinds = {name: kind or parity.infer_output_kind(reference.outputs[name])[0]
                 for name, kind in output_kinds.items()}
        classifier = parity.first_classifier(reference.outputs, kinds)
        ref_accuracy = parity.top1_accuracy(reference.outputs[classifier], reference.labels) if classifier else None
    export_log = read_export_log(directory)
    for result in results:  # auto precision's host latencies, measured by the export
        measured = ((export_log or {}).get("auto_precision_latency_ms") or {}).get(result["path"])
        if result.get("auto_precision") and measured:
            result["auto_precision"] = {**result["auto_precision"], **measured}
    provisional = provisional_reason(manifest.get("data", {}), allow_synthetic_eval)
    return {
        "kind": manifest.get("kind", target.kind),
        "model": {k: manifest["model"][k] for k in ("name", "source", "sha256")},
        "target": target.name,
        "passed": not provisional and not run_violations and all(r["budget"]["passed"] for r in results),
        "provisional": provisional,
        "violations": run_violations,
        "data": manifest.get("data", {}),
        **({"pruning": manifest["pruning"]} if "pruning" in manifest else {}),
        "outputs": [{k: o[k] for k in ("name", "kind", "kind_basis") if k in o} for o in manifest["outputs"]],
        "reference_accuracy": ref_accuracy,
        "artifacts": results,
        "notes": manifest.get("trace", {}).get("notes", []) + list(filter(None, [latency.contention_note()])),
        "latency_contended": bool(latency.contention_note()),
        "export": export_log,
    }


def all_unjudged(report: dict) -> list[str]:
    return [f"{a['path']}: {note}" for a in report["artifacts"] for note in a["budget"].get("unjudged", [])]


def all_violations(report: dict) -> list[str]:
    found = list(report.get("violations", []))
    for a in report["artifacts"]:
        found += [f"{a['path']}: {v}" for v in a["budget"]["violations"]]
    return found

