"""PyTorch -> ONNX: from the traced torch.export program, falling back to the TorchScript exporter
only where the first fails (the reason is recorded). The raw graph is left unoptimized; the
target's passes (onnx_passes.py) do that, so their effect shows in the report."""

from __future__ import annotations

import contextlib
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from exporter.errors import ConversionError, UnsupportedOp, UnsupportedOpsError
from exporter.trace import TORCH_EXPORT, TracedModel, unsupported_ops

OPSET = 20
_TWO_GB = 2 * 1024**3


@dataclass
class OnnxExportRecord:
    exporter: str  # "torch.export" (dynamo) or "torchscript"
    reason: str  # why this exporter was used
    seconds: float
    opset: int


def _quiet_torch_onnx():
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    return contextlib.redirect_stdout(io.StringIO())


def preflight(traced: TracedModel) -> list[UnsupportedOp]:
    """Every operator of the decomposed program that the ONNX exporter has no translation for."""
    if traced.program is None:
        return []
    with _quiet_torch_onnx():
        try:
            from torch.onnx._internal.exporter import _core, _registration
        except ImportError:  # private API moved: skip the preflight, conversion still reports failures
            return []
        registry = _registration.ONNXRegistry.from_torchlib()
        # The exporter's own preparation (decomposition, type promotion, removal of the assertion nodes
        # torch.export inserts for every .to(dtype)), so the preflight judges the graph it translates.
        program = _core._prepare_exported_program_for_export(traced.program, registry=registry)
    return unsupported_ops(program, registry.is_registered, "no ONNX translation registered")


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    for line in lines:  # torch.onnx puts the real cause after a long preamble
        if "No ONNX function found" in line or "Unsupported" in line or "not supported" in line:
            return line.strip()[:400]
    return (lines[0] if lines else type(exc).__name__)[:400]


def _export_dynamo(traced: TracedModel, path: Path) -> None:
    import torch

    with _quiet_torch_onnx():
        program = torch.onnx.export(
            traced.program, traced.example_inputs, dynamo=True, optimize=False, opset_version=OPSET,
            input_names=[s.name for s in traced.inputs], output_names=[s.name for s in traced.outputs],
        )
        program.save(str(path), external_data=False)


def _export_torchscript(traced: TracedModel, path: Path) -> None:
    import torch

    names = [s.name for s in traced.inputs] + [s.name for s in traced.outputs]
    dynamic_axes = {n: {0: "batch"} for n in names} if traced.dynamic_batch else None
    with _quiet_torch_onnx():
        torch.onnx.export(
            traced.loaded.module, traced.example_inputs, str(path), dynamo=False, opset_version=OPSET,
            input_names=[s.name for s in traced.inputs], output_names=[s.name for s in traced.outputs],
            dynamic_axes=dynamic_axes, do_constant_folding=False,
        )


def export_onnx(traced: TracedModel, path: Path) -> OnnxExportRecord:
    """Write the fp32 ONNX graph to path. Raises ConversionError naming what failed."""
    start = time.perf_counter()
    if traced.method == TORCH_EXPORT:
        try:
            _export_dynamo(traced, path)
            return OnnxExportRecord(TORCH_EXPORT, "traced program exported", time.perf_counter() - start, OPSET)
        except Exception as exc:  # a converter bug or gap: try the older exporter before giving up
            reason = f"torch.export-based exporter failed: {_first_line(exc)}"
    else:
        reason = "; ".join(traced.notes) or "model was not captured by torch.export"
    try:
        _export_torchscript(traced, path)
    except Exception as exc:
        ops = preflight(traced)
        if ops:
            raise UnsupportedOpsError({"onnx": (ops, "Replace those layers, or register an ONNX translation")}) from exc
        raise ConversionError(f"ONNX export failed: {reason}; TorchScript exporter: {_first_line(exc)}") from exc
    if path.stat().st_size >= _TWO_GB:
        raise ConversionError("the model is over 2 GB, beyond a single-file ONNX; edgeport targets small models")
    return OnnxExportRecord("torchscript", reason, time.perf_counter() - start, OPSET)
