"""The Core ML backend: an ML Program (.mlpackage) per variant, with coremltools.

The torch.export path (after run_decompositions) is tried first; models coremltools only converts
through TorchScript tracing (recurrent layers: nn.GRU becomes a while_loop) fall back to
torch.jit.trace, and the manifest records which path was used and why. Weight compression
(8-bit linear, 6- and 4-bit palettization) is applied to the fp16 program, as deployed on the
Neural Engine."""

from __future__ import annotations

import json
import re
import shutil
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.errors import first_line
from common.quiet import quiet
from exporter.errors import ConversionError, UnsupportedOp, UnsupportedOpsError
from exporter.formats.base import Conversion, Emitted, Finished, Lowered, Progress, model_io
from exporter.formats.coreml.rewrites import decomposed
from exporter.trace import TracedModel, module_of, unsupported_ops
from targets import Target, Variant

TORCH_EXPORT_PATH, TRACE_PATH = "torch.export", "torch.jit.trace"
# Compress every weight tensor of more than this many elements (coremltools' default is 2048,
# which would leave small models uncompressed and the variant meaningless).
WEIGHT_THRESHOLD = 256
_UNSUPPORTED = re.compile(r"(?:Unsupported fx node \S+, kind |convert function for op ')([\w.:]+)")


def _quiet():
    warnings.filterwarnings("ignore", module="coremltools")
    return quiet("coremltools")


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


def _convert(traced: TracedModel, compute_precision: str, deployment_target: str) -> _Converted:
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
                return _Converted(ct.convert(program, **kwargs), TORCH_EXPORT_PATH, "traced program converted")
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
        return _Converted(model, TRACE_PATH, reason)
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
                    return UnsupportedOpsError({"coreml": ([op], CoremlBackend.preflight_hint)})
    reasons = "; ".join(first_line(exc, 200) for exc in failures)
    return ConversionError(f"coremltools could not convert the model on either path: {reasons}")


# weight-only precision -> (coremltools.optimize.coreml) -> (its op config, the function applying it)
COMPRESSIONS = {
    "w8": lambda cto: (cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
                                                   granularity="per_channel", weight_threshold=WEIGHT_THRESHOLD),
                       cto.linear_quantize_weights),
    "palette6": lambda cto: (cto.OpPalettizerConfig(mode="kmeans", nbits=6, weight_threshold=WEIGHT_THRESHOLD),
                             cto.palettize_weights),
    "palette4": lambda cto: (cto.OpPalettizerConfig(mode="kmeans", nbits=4, weight_threshold=WEIGHT_THRESHOLD),
                             cto.palettize_weights),
}


def _compress(model, precision: str, only: list[str] | None = None, keep_float: list[str] = ()):
    """The variant's weight compression, on every weight over WEIGHT_THRESHOLD elements; or on
    the `only` weights (a layer alone); and with the `keep_float` weights left uncompressed."""
    import coremltools.optimize.coreml as cto

    config, apply = COMPRESSIONS[precision](cto)
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


def _spec_path(package: Path) -> Path:
    manifest = json.loads((package / "Manifest.json").read_text())
    return package / "Data" / manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]["path"]


def _edit_metadata(package: Path, edit: Callable) -> None:
    """Apply edit(userDefined metadata map) to the package's spec, serialized in key order."""
    from coremltools.proto import Model_pb2

    spec_path = _spec_path(package)
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    edit(spec.description.metadata.userDefined)
    spec_path.write_bytes(spec.SerializeToString(deterministic=True))


def _make_reproducible(package: Path) -> None:
    """coremltools writes random item identifiers, the conversion date and protobuf maps in hash order;
    replace them so the same export gives the same bytes."""
    manifest_path = package / "Manifest.json"
    manifest = json.loads(manifest_path.read_text())
    renamed = {old: str(uuid.uuid5(uuid.NAMESPACE_URL, f"edgeport:{entry['path']}"))
               for old, entry in manifest["itemInfoEntries"].items()}
    manifest["itemInfoEntries"] = {renamed[k]: v for k, v in sorted(manifest["itemInfoEntries"].items(),
                                                                     key=lambda kv: renamed[kv[0]])}
    manifest["rootModelIdentifier"] = renamed[manifest["rootModelIdentifier"]]
    manifest_path.write_text(json.dumps(manifest, indent=4, sort_keys=True) + "\n")
    _edit_metadata(package, lambda metadata: metadata.pop("com.github.apple.coremltools.conversion_date", None))


def _save(model, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    with _quiet():
        model.save(str(out))
    _make_reproducible(out)


@dataclass
class _Converted:
    model: object
    path_used: str  # TORCH_EXPORT_PATH or TRACE_PATH
    reason: str


class _CoremlState:
    """The fp32- and fp16-compute programs, converted on first need and shared by the variants."""

    def __init__(self, traced: TracedModel, deployment: str, scratch: Path, progress: Progress):
        self.traced, self.deployment, self.scratch, self.progress = traced, deployment, scratch, progress
        self.converted: dict[str, _Converted] = {}

    def program(self, compute: str, why: str = "") -> _Converted:
        if compute not in self.converted:
            self.progress(f"coreml: converting ({compute.lower()} compute, {self.deployment}){why}")
            self.converted[compute] = _convert(self.traced, compute, self.deployment)
        return self.converted[compute]

    def package(self, compute: str) -> Path:
        """The program saved in scratch, for the MIL interpreter."""
        path = self.scratch / f"{compute.lower().replace('float', 'fp')}.mlpackage"
        if not path.exists():
            _save(self.program(compute, " for the per-layer blame").model, path)
        return path


class CoremlBackend:
    format = "coreml"
    precisions = ("fp32", "fp16", *COMPRESSIONS)
    preflight_hint = "Replace those layers, register a coremltools torch op (register_torch_op), or drop Core ML"
    reproducible = ("byte-identical for the same model and library versions (package identifiers derived "
                    "from item paths, metadata serialized in key order, no conversion date)")

    def preflight(self, traced: TracedModel) -> list[UnsupportedOp]:
        return preflight(traced)

    def lower(self, traced: TracedModel, target: Target, scratch: Path, progress: Progress) -> Lowered:
        # Conversion waits for the first variant: fp32 and fp16 compute are two conversions, and a
        # target rarely wants both.
        state = _CoremlState(traced, target.coreml.minimum_deployment_target, scratch, progress)
        return Lowered(traced, target, scratch, None, state)

    def emit(self, lowered: Lowered, variant: Variant, calibration: dict | None, out: Path,
             progress: Progress) -> Emitted:
        state: _CoremlState = lowered.state
        compute = "FLOAT32" if variant.precision == "fp32" else "FLOAT16"
        converted = state.program(compute)
        conversion = Conversion(f"coremltools ({converted.path_used})", converted.reason, settings={
            "minimum_deployment_target": state.deployment, "compute_precision": compute.lower()})
        model, quantization = converted.model, None
        if variant.precision in COMPRESSIONS:
            progress(f"coreml: {variant.precision}")
            with _quiet():
                model, config = _compress(model, variant.precision)
            quantization = {"scheme": variant.precision, "weight_threshold": WEIGHT_THRESHOLD,
                            **{k: str(v) for k, v in vars(config).items() if not k.startswith("_")}}
        _save(model, out)
        return Emitted(quantization, conversion)

    def layer_quantizer(self, lowered: Lowered, variant: Variant, emitted: Emitted, progress: Progress):
        from exporter.formats.coreml.blame import CoremlLayerQuantizer

        state: _CoremlState = lowered.state
        fp32, base = state.package("FLOAT32"), state.package("FLOAT16")
        base_model = state.program("FLOAT16").model

        def compress(path: Path, only: list[str] | None = None, keep_float: list[str] = ()) -> None:
            with _quiet():
                model, _ = _compress(base_model, variant.precision, only, keep_float)
            _save(model, path)

        return CoremlLayerQuantizer(fp32, base, lowered.traced, compress, lowered.scratch)

    def finish(self, lowered: Lowered, variant: Variant, out: Path, workdir: Path, progress: Progress) -> Finished:
        return model_io(lowered.traced)

    def stamp(self, path: Path, provenance: dict[str, str]) -> list[Path]:
        _edit_metadata(path, lambda metadata: metadata.update(provenance))
        return []


BACKEND = CoremlBackend()
