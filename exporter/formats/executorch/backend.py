"""The ExecuTorch backend: the traced program (quantized first with PT2E and the XNNPACK quantizer for
int8 variants) lowered by to_edge_transform_and_lower with the XNNPACK partitioner, then to_executorch.
What the delegate does not take runs on ExecuTorch's portable CPU kernels; delegation.py says which
operators, from which module, and why. A .pte has no metadata section, so provenance goes beside it."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from common.batching import whole_batches
from common.errors import first_line
from common.quiet import silenced
from exporter.errors import ConversionError, UnsupportedOp
from exporter.formats.base import REPRODUCIBLE, Conversion, Emitted, Finished, Lowered, Progress, model_io
from exporter.formats.executorch.delegation import coverage, partitioner_reasons
from exporter.trace import TracedModel, unsupported_ops
from targets import Target, Variant

PROVENANCE_SUFFIX = ".edgeport.json"  # model.pte -> model.pte.edgeport.json
RECIPES = {"int8": "PT2E static int8, XNNPACK quantizer: per-channel symmetric int8 weights, int8 activations "
                   "calibrated on --calib data",
           "int8_dynamic": "PT2E dynamic int8, XNNPACK quantizer: per-channel int8 weights, activations quantized "
                           "per run"}


class ExecutorchBackend:
    format = "executorch"
    precisions = ("fp32", "fp16", "int8", "int8_dynamic")
    libraries = ("executorch",)
    preflight_hint = ("Replace those layers with ones in ExecuTorch's core ATen operator set (or keep them out of "
                      "the exported module), or choose a target without ExecuTorch")
    reproducible = REPRODUCIBLE

    def preflight(self, traced: TracedModel) -> list[UnsupportedOp]:
        return preflight(traced)

    def lower(self, traced: TracedModel, target: Target, scratch: Path, progress: Progress) -> Lowered:
        conversion = Conversion("executorch", "traced program lowered by to_edge_transform_and_lower with the "
                                "XNNPACK partitioner")
        return Lowered(traced, target, scratch, conversion, state={})

    def emit(self, lowered: Lowered, variant: Variant, calibration: dict | None, out: Path,
             progress: Progress) -> Emitted:
        traced = lowered.traced
        progress(f"executorch: {variant.precision}")
        try:
            with silenced():  # torchao and the lowering print to the console
                from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
                from executorch.exir import to_edge_transform_and_lower

                program, quantization = _program(traced, variant, calibration)
                with partitioner_reasons() as reasons:
                    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
                lowered.state[variant.precision] = coverage(edge.exported_program(), reasons)
                out.write_bytes(edge.to_executorch().buffer)
        except ModuleNotFoundError:
            raise
        except Exception as exc:
            raise ConversionError(f"ExecuTorch could not lower the model ({variant.precision}): "
                                  f"{first_line(exc)}") from exc
        return Emitted(quantization)

    def layer_quantizer(self, lowered: Lowered, variant: Variant, emitted: Emitted, progress: Progress):
        return None  # per-layer blame is not built for ExecuTorch yet: the diagnosis stage says so

    def finish(self, lowered: Lowered, variant: Variant, out: Path, workdir: Path, progress: Progress) -> Finished:
        from common.files import sha256_file

        finished = model_io(lowered.traced)
        finished.companions["delegation"] = lowered.state[variant.precision]
        sidecar = provenance_path(out)
        if sidecar.exists():
            finished.companions["provenance"] = {"path": sidecar.name, "sha256": sha256_file(sidecar)}
        return finished

    def stamp(self, path: Path, provenance: dict[str, str]) -> None:
        """Beside the artifact: the .pte flatbuffer has no field for free metadata."""
        provenance_path(path).write_text(json.dumps(provenance, sort_keys=True, indent=1) + "\n", encoding="utf-8")


def provenance_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + PROVENANCE_SUFFIX)


# Runtime assertions torch.export inserts and to_edge strips: no kernel needed
_STRIPPED = {"_assert_tensor_metadata", "_assert_scalar", "_assert_async", "sym_constrain_range",
             "sym_constrain_range_for_size"}


def _lowerable(target) -> bool:
    """What to_edge's verifier accepts after ExecuTorch's decompositions: core ATen (and its view_copy
    forms); a custom operator has no ExecuTorch kernel."""
    if not isinstance(target, torch._ops.OpOverload):
        return True  # getitem and higher-order ops are handled by the lowering itself
    return target.namespace == "aten" and (torch.Tag.core in target.tags or torch.Tag.view_copy in target.tags
                                           or target.__name__.split(".")[0] in _STRIPPED)


def preflight(traced: TracedModel) -> list[UnsupportedOp]:
    """Operators ExecuTorch cannot take, judged on the program after ExecuTorch's own decomposition table."""
    if traced.program is None:
        return [UnsupportedOp("<whole model>", "", type(traced.loaded.module).__name__,
                              "ExecuTorch lowers torch.export programs only; this model was not captured by "
                              f"torch.export ({'; '.join(traced.notes)})")]
    with silenced():  # a missing executorch fails here, before any long conversion, naming the package
        from executorch.exir.tracer import _default_decomposition_table
    program = traced.program.run_decompositions(_default_decomposition_table())
    return unsupported_ops(program, _lowerable, "not in ExecuTorch's core ATen operator set (no kernel, no "
                                                "decomposition)")


def _program(traced: TracedModel, variant: Variant, calibration: dict | None):
    """The exported program a variant lowers: the traced one, in fp16, or PT2E-quantized."""
    if variant.precision == "fp32":
        return traced.program, None
    if variant.precision == "fp16":
        return torch.export.export(_Half(traced.program.module()), traced.example_inputs, strict=False), \
            {"scheme": "fp16", "io": "float32 (cast at the edges)"}
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    dynamic = variant.precision == "int8_dynamic"
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True,
                                                                                is_dynamic=dynamic))
    module = prepare_pt2e(copy.deepcopy(traced.program.module()), quantizer)
    batches = [] if dynamic or calibration is None else \
        whole_batches(calibration, traced.batch, variant.options.calibration_samples)
    with torch.no_grad():
        for feeds in batches or [dict(zip(traced.loaded.input_names, traced.example_inputs, strict=True))]:
            module(*(torch.as_tensor(v) for v in feeds.values()))
    converted = convert_pt2e(module)
    record = {"scheme": f"pt2e_{variant.precision}", "recipe": RECIPES[variant.precision]}
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
