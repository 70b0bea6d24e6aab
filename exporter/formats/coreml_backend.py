"""The Core ML backend: an ML Program (.mlpackage) per variant, with coremltools.

The torch.export path (after run_decompositions) is tried first; models coremltools only converts
through TorchScript tracing (recurrent layers: nn.GRU becomes a while_loop) fall back to
torch.jit.trace, and the manifest records which path was used and why. Weight compression
(8-bit linear, 6- and 4-bit palettization) is applied to the fp16 program, as deployed on the
Neural Engine."""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

from exporter import __version__
from exporter.artifacts import ArtifactRecord
from exporter.errors import ConversionError, UnsupportedOp, UnsupportedOpsError
from exporter.formats import blame
from exporter.formats.coreml_rewrites import decomposed
from exporter.trace import TracedModel, module_of, unsupported_ops
from targets import Target, Variant
from targets.errors import first_line
from validators.quiet import silenced

FORMAT = "coreml"
PREFLIGHT_HINT = "Replace those layers, register a coremltools torch op (register_torch_op), or drop Core ML"
TORCH_EXPORT_PATH, TRACE_PATH = "torch.export", "torch.jit.trace"
# Compress every weight tensor of more than this many elements (coremltools' default is 2048,
# which would leave small models uncompressed and the variant meaningless).
WEIGHT_THRESHOLD = 256
_UNSUPPORTED = re.compile(r"(?:Unsupported fx node \S+, kind |convert function for op ')([\w.:]+)")


def _quiet():
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="coremltools")
    return silenced()


def _registry():
    with _quiet():
        from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY
    return _TORCH_OPS_REGISTRY


def _kind(target) -> str:
    try:
        return target.name()
    except AttributeError:
        return getattr(target, "__name__", str(target))


def preflight(traced: TracedModel) -> list[UnsupportedOp]:
    """Ops coremltools has no converter for on either path, after the rewrites conversion applies."""
    if traced.program is None:
        return []
    registry = _registry()
    program = decomposed(traced.program)

    def converts(target) -> bool:
        """The converter's own lookup, for the exported op (torch.export path) or for its base name
        (the TorchScript path the conversion falls back to: nn.GRU converts only there)."""
        kind = _kind(target)
        return registry.get_func(kind) is not None or registry.get_func(kind.split(".")[0]) is not None

    return unsupported_ops(program, converts, "coremltools has no converter for it")


def _convert(traced: TracedModel, compute_precision: str, deployment_target: str):
    import coremltools as ct
    import torch

    kwargs = {"convert_to": "mlprogram", "minimum_deployment_target": getattr(ct.target, deployment_target),
              "compute_precision": getattr(ct.precision, compute_precision),
              "outputs": [ct.TensorType(name=s.name) for s in traced.outputs]}
    failures = []
    if traced.program is not None:
        try:
            program = decomposed(traced.program)
            with _quiet():
                return ct.convert(program, **kwargs), TORCH_EXPORT_PATH, "traced program converted", failures
        except Exception as exc:  # coremltools' torch.export frontend lacks some ops: try tracing
            failures.append(exc)
    try:
        with _quiet():
            scripted = torch.jit.trace(traced.loaded.module, traced.example_inputs, check_trace=False) \
                if traced.loaded.kind != "torchscript" else traced.loaded.module
            inputs = [ct.TensorType(name=s.name, shape=tuple(t.shape))
                      for s, t in zip(traced.inputs, traced.example_inputs, strict=True)]
            model = ct.convert(scripted, inputs=inputs, **kwargs)
        reason = (f"torch.export path failed ({first_line(failures[0], 200)}); converted from TorchScript tracing"
                  if failures else "source is TorchScript")
        return model, TRACE_PATH, reason, failures
    except Exception as exc:
        failures.append(exc)
    raise _conversion_error(traced, failures)


def _conversion_error(traced: TracedModel, failures: list[Exception]) -> ConversionError:
    """Name the op and the module it came from when coremltools says which op it could not take."""
    for exc in failures:
        match = _UNSUPPORTED.search(str(exc))
        if match and traced.program is not None:
            op_name = match.group(1).split("::")[-1]
            for node in traced.program.graph.nodes:
                if node.op == "call_function" and op_name.split(".")[0] in _kind(node.target):
                    path, cls = module_of(node)
                    op = UnsupportedOp(_kind(node.target), path, cls, "coremltools converts it on neither path")
                    return UnsupportedOpsError({FORMAT: ([op], PREFLIGHT_HINT)})
    reasons = "; ".join(first_line(exc, 200) for exc in failures)
    return ConversionError(f"coremltools could not convert the model on either path: {reasons}")


def _compress(model, precision: str, only: list[str] | None = None, keep_float: list[str] = ()):
    """The variant's weight compression, on every weight over WEIGHT_THRESHOLD elements; or on
    the `only` weights (a layer alone); and with the `keep_float` weights left uncompressed."""
    import coremltools.optimize.coreml as cto

    if precision == "w8":
        config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                             weight_threshold=WEIGHT_THRESHOLD)
        apply = cto.linear_quantize_weights
    else:
        config = cto.OpPalettizerConfig(mode="kmeans", nbits={"palette6": 6, "palette4": 4}[precision],
                                        weight_threshold=WEIGHT_THRESHOLD)
        apply = cto.palettize_weights
    if only is not None:
        plan = cto.OptimizationConfig(op_name_configs={name: config for name in only})
    else:
        skipped = set(keep_float) | set(_nonfinite_constants(model))
        plan = cto.OptimizationConfig(global_config=config, op_name_configs={name: None for name in sorted(skipped)})
    return apply(model, plan), config


def _nonfinite_constants(model) -> list[str]:
    """Constants holding -inf/inf (an attention mask's fill value in fp16): not weights, and k-means
    or a linear scale cannot represent them; they stay as they are."""
    import numpy as np

    program = getattr(model, "_mil_program", None)
    if program is None:
        return []
    return [op.name for op in program.functions["main"].operations
            if op.op_type == "const" and isinstance(op.val.val, np.ndarray) and op.val.val.dtype.kind == "f"
            and not np.all(np.isfinite(op.val.val))]


def _make_reproducible(package: Path, provenance: dict[str, str]) -> None:
    """coremltools writes random item identifiers, the conversion date and protobuf maps in hash order;
    replace them so the same export gives the same bytes, and stamp where the model came from."""
    from coremltools.proto import Model_pb2

    manifest_path = package / "Manifest.json"
    manifest = json.loads(manifest_path.read_text())
    renamed = {old: str(uuid.uuid5(uuid.NAMESPACE_URL, f"edgeport:{entry['path']}"))
               for old, entry in manifest["itemInfoEntries"].items()}
    manifest["itemInfoEntries"] = {renamed[k]: v for k, v in sorted(manifest["itemInfoEntries"].items(),
                                                                     key=lambda kv: renamed[kv[0]])}
    manifest["rootModelIdentifier"] = renamed[manifest["rootModelIdentifier"]]
    manifest_path.write_text(json.dumps(manifest, indent=4, sort_keys=True) + "\n")
    spec_path = package / "Data" / manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]["path"]
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    metadata = spec.description.metadata.userDefined
    metadata.pop("com.github.apple.coremltools.conversion_date", None)
    metadata.update(provenance)
    spec_path.write_bytes(spec.SerializeToString(deterministic=True))


def _save(model, out: Path, provenance: dict[str, str]) -> None:
    if out.exists():
        shutil.rmtree(out)
    with _quiet():
        model.save(str(out))
    _make_reproducible(out, provenance)


def _diagnose(traced: TracedModel, target: Target, variant: Variant, bases: dict, out: Path, reference,
              provenance: dict[str, str], scratch: Path, progress: Callable[[str], None]) -> tuple[dict, dict]:
    """Per-layer blame for a weight-compressed variant, then layers left uncompressed if it misses
    its budget. The fp32 and fp16 programs are saved to `scratch` once for all compressed variants."""
    from exporter.formats.blame import CandidateCheck, diagnose
    from exporter.formats.coreml_blame import blame_layers, keep_float

    deployment = target.coreml.minimum_deployment_target
    packages = {"FLOAT32": scratch / "fp32.mlpackage", "FLOAT16": scratch / "fp16.mlpackage"}
    for precision, package in packages.items():
        if precision not in bases:
            progress(f"coreml: converting ({precision.lower()} compute, {deployment}) for the per-layer blame")
            bases[precision] = _convert(traced, precision, deployment)
        if not package.exists():
            _save(bases[precision][0], package, provenance)
    base_model = bases["FLOAT16"][0]

    def compress(path: Path, only: list[str] | None = None, keep_float: list[str] = ()) -> None:
        with _quiet():
            model, _ = _compress(base_model, variant.precision, only, keep_float)
        _save(model, path, provenance)

    progress(f"coreml: {variant.precision}: per-layer blame with the MIL interpreter")
    rows = blame_layers(packages["FLOAT32"], packages["FLOAT16"], out, traced, compress, reference.inputs,
                        traced.batch, scratch)
    check = CandidateCheck(FORMAT, variant, reference, traced, target.runtime) if target.auto_precision else None
    return diagnose(rows, len(rows), out, keep_float(compress, out), check, progress,
                    f"coreml: {variant.precision} misses its budget: leaving the most harmful layers uncompressed")


def convert(traced: TracedModel, target: Target, calibration: dict | None, workdir: Path,
            progress: Callable[[str], None], reference=None) -> list[ArtifactRecord]:
    variants: list[Variant] = [v for v in target.variants if v.format == FORMAT]
    deployment = target.coreml.minimum_deployment_target
    bases: dict[str, tuple] = {}
    records = []
    with tempfile.TemporaryDirectory(prefix="edgeport-coreml-") as scratch:
        for variant in variants:
            start = time.perf_counter()
            precision = "FLOAT32" if variant.precision == "fp32" else "FLOAT16"
            if precision not in bases:
                progress(f"coreml: converting ({precision.lower()} compute, {deployment})")
                bases[precision] = _convert(traced, precision, deployment)
            model, path_used, reason, _ = bases[precision]
            quantization = None
            compressed = variant.precision in ("w8", "palette6", "palette4")
            if compressed:
                progress(f"coreml: {variant.precision}")
                with _quiet():
                    model, config = _compress(model, variant.precision)
                quantization = {"scheme": variant.precision, "weight_threshold": WEIGHT_THRESHOLD,
                                **{k: str(v) for k, v in vars(config).items() if not k.startswith("_")}}
            out = workdir / variant.filename
            provenance = {"edgeport.version": __version__, "edgeport.model": traced.loaded.name,
                          "edgeport.model_sha256": traced.loaded.sha256, "edgeport.target": target.name,
                          "edgeport.precision": variant.precision}
            _save(model, out, provenance)
            extra, diagnosis_seconds, measured = {}, 0.0, {}
            if compressed and blame.wanted(target, variant, reference, traced, FORMAT, out):
                diagnosis_start = time.perf_counter()
                extra["diagnosis"], measured = _diagnose(traced, target, variant, bases, out, reference, provenance,
                                                         Path(scratch), progress)
                if extra["diagnosis"].get("auto_precision"):
                    quantization["kept_uncompressed"] = extra["diagnosis"]["auto_precision"]["kept_float"]
                diagnosis_seconds = round(time.perf_counter() - diagnosis_start, 3)
            records.append(ArtifactRecord(
                format=FORMAT, precision=variant.precision, path=variant.filename,
                conversion={"exporter": f"coremltools ({path_used})", "reason": reason, "passes": [],
                            "minimum_deployment_target": deployment, "compute_precision": precision.lower()},
                quantization=quantization,
                inputs=[s.to_json() for s in traced.inputs], outputs=[s.to_json() for s in traced.outputs],
                reproducible="byte-identical for the same model and library versions (package identifiers derived "
                             "from item paths, metadata serialized in key order, no conversion date)",
                seconds=round(time.perf_counter() - start, 3), extra=extra, diagnosis_seconds=diagnosis_seconds,
                measured=measured,
            ))
    return records
