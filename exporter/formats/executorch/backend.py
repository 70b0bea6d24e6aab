"""The ExecuTorch backend: the traced program (quantized first with PT2E and the XNNPACK quantizer for
int8 variants, quantize.py) lowered by to_edge_transform_and_lower with the XNNPACK partitioner, then
to_executorch. What the delegate does not take runs on ExecuTorch's portable CPU kernels; delegation.py
says which operators, from which module, and why; blame.py offers static int8's layers to the diagnosis
stage. A .pte has no metadata section, so provenance goes beside it."""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path

import torch

from common.errors import first_line
from common.quiet import silenced
from exporter.errors import ConversionError, UnsupportedOp
from exporter.formats.base import (
    REPRODUCIBLE,
    Conversion,
    Emitted,
    Finished,
    Lowered,
    Progress,
    calibration_batches,
    model_io,
)
from exporter.formats.executorch.delegation import RUNTIME_ASSERTIONS, coverage, partitioner_reasons
from exporter.formats.executorch.quantize import RECIPES, quantized_module
from exporter.trace import TracedModel, not_exported, unsupported_ops
from targets import Target, Variant

PROVENANCE_SUFFIX = ".edgeport.json"  # model.pte -> model.pte.edgeport.json


class ExecutorchBackend:
    format = "executorch"
    precisions = ("fp32", "fp16", "int8", "int8_dynamic")
    preflight_hint = ("Replace those layers with ones in ExecuTorch's core ATen operator set (or keep them out of "
                      "the exported module), or choose a target without ExecuTorch")
    reproducible = REPRODUCIBLE

    def preflight(self, traced: TracedModel) -> list[UnsupportedOp]:
        return preflight(traced)

    def lower(self, traced: TracedModel, target: Target, scratch: Path, progress: Progress) -> Lowered:
        conversion = Conversion("executorch", "traced program lowered by to_edge_transform_and_lower with the "
                                "XNNPACK partitioner")
        return Lowered(traced, target, scratch, conversion, state=_ExecutorchState())

    def emit(self, lowered: Lowered, variant: Variant, calibration: dict | None, out: Path,
             progress: Progress) -> Emitted:
        traced, state = lowered.traced, lowered.state
        progress(f"executorch: {variant.precision}")
        state.batches[variant.precision] = calibration_batches(variant, calibration, traced.batch)
        with _lowering(variant.precision):
            program, quantization = _program(traced, variant.precision, state.batches[variant.precision])
            state.delegation[variant.precision] = lower_program(program, out)
        return Emitted(quantization)

    def layer_quantizer(self, lowered: Lowered, variant: Variant, emitted: Emitted, progress: Progress):
        """Static or dynamic int8 (the catalog's diagnosable rows): PT2E quantizes and keeps float by module name."""
        from exporter.formats.executorch.blame import ExecutorchLayerQuantizer

        state: _ExecutorchState = lowered.state

        def relower(program, out: Path) -> None:
            with _lowering(variant.precision):
                state.delegation[variant.precision] = lower_program(program, out)

        return ExecutorchLayerQuantizer(lowered.traced, state.batches[variant.precision], relower,
                                        dynamic=variant.precision == "int8_dynamic")

    def finish(self, lowered: Lowered, variant: Variant, out: Path, workdir: Path, progress: Progress) -> Finished:
        from common.files import sha256_file

        finished = model_io(lowered.traced)
        finished.companions["delegation"] = lowered.state.delegation[variant.precision]
        sidecar = provenance_path(out)
        if sidecar.exists():
            finished.companions["provenance"] = {"path": sidecar.name, "sha256": sha256_file(sidecar)}
        return finished

    def stamp(self, path: Path, provenance: dict[str, str]) -> list[Path]:
        """Beside the artifact: the .pte flatbuffer has no field for free metadata."""
        sidecar = provenance_path(path)
        sidecar.write_text(json.dumps(provenance, sort_keys=True, indent=1) + "\n", encoding="utf-8")
        return [sidecar]


class _ExecutorchState:
    def __init__(self) -> None:
        self.delegation: dict[str, dict] = {}  # precision -> what the delegate took, of the artifact as written
        self.batches: dict[str, list[dict]] = {}  # precision -> its calibration batches ([] unless static)


@contextlib.contextmanager
def _lowering(precision: str):
    """Silence the libraries; a lowering failure is the user's to act on (exit 2), naming the precision."""
    try:
        with silenced():  # torchao and the lowering print to the console
            yield
    except ModuleNotFoundError:
        raise
    except Exception as exc:
        raise ConversionError(f"ExecuTorch could not lower the model ({precision}): {first_line(exc)}") from exc


def lower_program(program, out: Path) -> dict:
    """to_edge_transform_and_lower with the XNNPACK partitioner, then to_executorch, written to `out`;
    the delegation coverage of what was written."""
    return lower_methods({"forward": program}, out)["forward"]


def lower_methods(programs: dict, out: Path, shared_state: bool = False,
                  constant_methods: dict | None = None) -> dict[str, dict]:
    """Several methods lowered into one .pte (method name -> exported program); shared_state: every method
    reads and writes one copy of the mutable buffers (a language model's KV cache between its prefill and
    decode methods); constant_methods: methods that return a value (a runner's metadata). The delegation
    coverage of each method."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass

    with partitioner_reasons() as reasons:
        edge = to_edge_transform_and_lower(programs, partitioner=[XnnpackPartitioner()],
                                           constant_methods=constant_methods)
    delegation = {name: coverage(edge.exported_program(name), reasons) for name in programs}
    config = ExecutorchBackendConfig(memory_planning_pass=MemoryPlanningPass(share_mutable_buffers=True),
                                     emit_mutable_buffer_names=True) if shared_state else None
    out.write_bytes(edge.to_executorch(config).buffer)
    return delegation


def provenance_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + PROVENANCE_SUFFIX)


def _lowerable(target) -> bool:
    """What to_edge's verifier accepts after ExecuTorch's decompositions: core ATen (and its view_copy
    forms); a custom operator has no ExecuTorch kernel."""
    if not isinstance(target, torch._ops.OpOverload):
        return True  # getitem and higher-order ops are handled by the lowering itself
    return target.namespace == "aten" and (torch.Tag.core in target.tags or torch.Tag.view_copy in target.tags
                                           or target.__name__.split(".")[0] in RUNTIME_ASSERTIONS)


def preflight(traced: TracedModel) -> list[UnsupportedOp]:
    """Operators ExecuTorch cannot take, judged on the program after ExecuTorch's own decomposition table."""
    if traced.program is None:
        return not_exported(traced, "ExecuTorch lowers")
    with silenced():  # a missing executorch fails here, before any long conversion, naming the package
        from executorch.exir.tracer import _default_decomposition_table
    program = traced.program.run_decompositions(_default_decomposition_table())
    return unsupported_ops(program, _lowerable, "not in ExecuTorch's core ATen operator set (no kernel, no "
                                                "decomposition)")


def _program(traced: TracedModel, precision: str, batches: list[dict]):
    """The exported program a variant lowers: the traced one, in fp16, or PT2E-quantized."""
    if precision == "fp32":
        return traced.program, None
    if precision == "fp16":
        return torch.export.export(_Half(traced.program.module()), traced.example_inputs, strict=False), \
            {"scheme": "fp16", "io": "float32 (cast at the edges)"}
    dynamic = precision == "int8_dynamic"
    converted = quantized_module(traced, batches, dynamic)
    record = {"scheme": f"pt2e_{precision}", "recipe": RECIPES[precision]}
    if not dynamic:
        record["calibration_batches"] = len(batches)
    return torch.export.export(converted, traced.example_inputs, strict=False), record


class _Half(torch.nn.Module):
    """The module in fp16 behind float32 inputs and outputs (XNNPACK runs fp16 kernels)."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.inner = copy.deepcopy(module).to(torch.float16)

    def forward(self, *args):
        outputs = self.inner(*(a.half() if a.is_floating_point() else a for a in args))
        return torch.utils._pytree.tree_map(
            lambda t: t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t, outputs)


BACKEND = ExecutorchBackend()
