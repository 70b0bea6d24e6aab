"""The TFLite (LiteRT) backend: litert-torch converts the traced program (no TensorFlow);
tflite/quantize.py makes the quantized variants; static int8 variants offer their layers to the
diagnosis stage (tflite/blame.py); full-integer variants are compiled for the target's NPU with vela."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from common.artifact_dir import LITERT_SIGNATURE as SIGNATURE
from common.errors import first_line
from exporter.errors import ConversionError, UnsupportedOp
from exporter.formats.base import REPRODUCIBLE, Conversion, Emitted, Finished, Lowered, Progress, calibration_batches
from exporter.formats.tflite.quantize import RECIPES, AiEdgeQuantizer, quantize_full_int8, quiet
from exporter.trace import TracedModel, not_exported, unsupported_ops
from targets import Target, Variant


class TfliteBackend:
    format = "tflite"
    precisions = ("fp32", *RECIPES)
    preflight_hint = ("Replace those layers with ones LiteRT supports (or keep them out of the exported "
                      "module and run them on the CPU in app code), or choose a target without TFLite")
    reproducible = REPRODUCIBLE

    def preflight(self, traced: TracedModel) -> list[UnsupportedOp]:
        return preflight(traced)

    def lower(self, traced: TracedModel, target: Target, scratch: Path, progress: Progress) -> Lowered:
        if traced.dynamic_batch:
            progress("tflite: litert-torch converts at a fixed batch; the .tflite keeps the example batch")
        from exporter.formats.tflite.passes import run_passes

        fp32 = scratch / "model.tflite"
        module = traced.program.module()  # the program preflight checked
        records = run_passes(module, target.passes.get(self.format, ()), target.pass_configs.get(self.format))
        if records:
            progress("tflite: passes " + ", ".join(f"{r.id} rewrote {r.rewrites}" for r in records))
        from exporter.formats.tflite.recurrent import fused_lstm_module

        converted, lstms = fused_lstm_module(module)  # `module` stays unrolled for the full-integer path
        progress("tflite: converting with litert-torch" + (f" ({lstms} LSTM(s) as UNIDIRECTIONAL_SEQUENCE_LSTM)"
                                                           if lstms else ""))
        _convert_fp32(converted, traced.example_inputs, fp32)
        conversion = Conversion("litert-torch", "traced program converted", tuple(r.to_json() for r in records),
                                {"fused_lstm": lstms} if lstms else {})
        return Lowered(traced, target, scratch, conversion, state=_TfliteState(fp32, _signature_inputs(fp32), module))

    def emit(self, lowered: Lowered, variant: Variant, calibration: dict | None, out: Path,
             progress: Progress) -> Emitted:
        state: _TfliteState = lowered.state
        if variant.precision == "fp32":
            out.write_bytes(state.fp32.read_bytes())
            return Emitted(None)
        progress(f"tflite: {variant.precision}")
        batches = calibration_batches(variant, calibration, lowered.traced.batch)
        with quiet():
            quantizer = AiEdgeQuantizer(state.fp32, variant.precision, batches, state.signature_inputs)
            state.quantizers[variant.precision] = quantizer
            if variant.precision == "int8_full":
                return Emitted(quantize_full_int8(state.module, lowered.traced, quantizer, out, variant, batches,
                                                  lowered.scratch))
            return Emitted(quantizer.build(out))

    def layer_quantizer(self, lowered: Lowered, variant: Variant, emitted: Emitted, progress: Progress):
        from exporter.formats.tflite.blame import TfliteLayerQuantizer

        state: _TfliteState = lowered.state
        return TfliteLayerQuantizer(state.fp32, state.quantizers[variant.precision], lowered.traced, lowered.scratch)

    def finish(self, lowered: Lowered, variant: Variant, out: Path, workdir: Path, progress: Progress) -> Finished:
        from exporter.formats.tflite.layers import float_operators
        from validators.runtimes.litert_runtime import variable_tensors

        inputs, outputs = _io_specs(out, lowered.traced)
        finished = Finished(inputs, outputs)
        state = variable_tensors(out)
        if state:
            finished.companions["state"] = {
                "variable_tensors": len(state),
                "reset_before_each_call": "LiteRT carries these tensors (a fused LSTM's state) from one call to "
                                          "the next: call Interpreter::ResetVariableTensors() (Python: "
                                          "reset_all_variables()) before each invoke, as validation does"}
        if variant.row.integer_only:  # checked by validation: a float op fails the variant
            finished.companions["float_ops"] = float_operators(out, lowered.state.module)
        npu = lowered.target.npu
        if npu is not None and variant.precision == "int8_full":
            progress(f"tflite: compiling {variant.filename} for {npu.accelerator} with vela")
            finished.companions["npu_compiled"] = _compile_for_npu(out, workdir, lowered.target)
        return finished

    def stamp(self, path: Path, provenance: dict[str, str]) -> list[Path]:
        """Provenance as a flatbuffer metadata entry named "edgeport" (JSON), beside litert's own."""
        from ai_edge_litert import schema_py_generated as schema
        from ai_edge_litert.tools import flatbuffer_utils

        model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
        kept = [m for m in model.metadata or [] if m.name.decode() != "edgeport"]
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(json.dumps(provenance, sort_keys=True).encode(), np.uint8)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = "edgeport", len(model.buffers) - 1
        model.metadata = [*kept, entry]
        path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
        return []


class _TfliteState:
    def __init__(self, fp32: Path, signature_inputs: dict[str, np.dtype], module):
        self.fp32, self.signature_inputs = fp32, signature_inputs
        self.module = module  # the traced module after the target's passes: what every variant starts from
        self.quantizers: dict[str, AiEdgeQuantizer] = {}  # precision -> the quantizer its artifact came from


def preflight(traced: TracedModel) -> list[UnsupportedOp]:
    """Operators of the decomposed program that litert-torch has no lowering for."""
    if traced.program is None:
        return not_exported(traced, "litert-torch converts")
    import torch

    with quiet():
        from litert_torch import fx_infra
        from litert_torch.backend import lowerings

        from exporter.formats.tflite.recurrent import fused_lstm_module

        program = traced.program
        fused, lstms = fused_lstm_module(program.module())
        if lstms:  # what lower() converts (decomposing the unrolled LSTM alone took 38 s of a speaker encoder's)
            program = torch.export.export(fused, traced.example_inputs, strict=False)
        program = fx_infra.safe_run_decompositions(program, fx_infra.decomp.pre_convert_decomp(),
                                                   can_skip=False)
        program = fx_infra.safe_run_decompositions(program, fx_infra.decomp.pre_lower_decomp(), can_skip=False)
    # Only aten/custom op overloads go through the lowering table (getitem and friends are handled inline).
    return unsupported_ops(
        program, lambda target: not isinstance(target, torch._ops.OpOverload) or lowerings.lookup(target) is not None,
        "litert-torch has no lowering for it")


def _convert_fp32(module, example_inputs: tuple, path: Path) -> None:
    import litert_torch

    try:
        with quiet():
            litert_torch.convert(module, example_inputs).export(str(path))
    except Exception as exc:
        raise ConversionError(f"litert-torch could not convert the model: {first_line(exc)}") from exc


def _signature_inputs(path: Path) -> dict[str, np.dtype]:
    """The signature's input names and dtypes (litert-torch stores int64 token ids as int32)."""
    from ai_edge_litert.interpreter import Interpreter

    with quiet():
        details = Interpreter(str(path)).get_signature_runner(SIGNATURE).get_input_details()
    return {name: np.dtype(d["dtype"]) for name, d in details.items()}


def _io_specs(path: Path, traced: TracedModel) -> tuple[list[dict], list[dict]]:
    """The artifact's own I/O: dtype and, for integer tensors, scale and zero point."""
    from ai_edge_litert.interpreter import Interpreter

    with quiet():
        runner = Interpreter(str(path)).get_signature_runner(SIGNATURE)
    details_in, details_out = runner.get_input_details(), runner.get_output_details()

    def spec(model_spec, details):
        entry = {"name": model_spec.name, "shape": [int(d) for d in details["shape"]],
                 "dtype": np.dtype(details["dtype"]).name, "tensor": details.get("name", "")}
        scale, zero_point = details["quantization"]
        if np.dtype(details["dtype"]).kind in "iu" and scale:
            entry["quantization"] = {"scale": float(scale), "zero_point": int(zero_point)}
        return entry

    ins = [spec(s, d) | {"signature_name": k} for s, (k, d) in zip(traced.inputs, details_in.items(), strict=True)]
    outs = [spec(s, d) | {"signature_name": k} for s, (k, d) in zip(traced.outputs, details_out.items(), strict=True)]
    return ins, outs


def _compile_for_npu(tflite: Path, workdir: Path, target: Target) -> dict:
    """The vela-compiled .tflite is an artifact of the export; the report's figures come from the
    validator, which compiles again so `edgeport validate` needs nothing but the directory."""
    from common.files import sha256_file
    from common.vela import VelaError, compile_with_vela

    npu = target.npu
    name = tflite.name.replace(".tflite", ".vela.tflite")
    with tempfile.TemporaryDirectory(prefix="edgeport-vela-") as scratch:
        try:
            result = compile_with_vela(tflite, Path(scratch), npu.accelerator, npu.system_config, npu.memory_mode,
                                       name)
        except VelaError as exc:
            raise ConversionError(str(exc)) from exc
        result.compiled.replace(workdir / name)
    return {"path": name, "bytes": (workdir / name).stat().st_size, "sha256": sha256_file(workdir / name),
            "accelerator": npu.accelerator, "system_config": npu.system_config, "memory_mode": npu.memory_mode}


BACKEND = TfliteBackend()
