"""The TFLite (LiteRT) backend: litert-torch converts the traced program (no TensorFlow);
tflite_quantize makes the quantized variants; static int8 variants get per-layer blame and, when
the target allows it, mixed precision (tflite_blame)."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from exporter.artifacts import ArtifactRecord
from exporter.errors import ConversionError, UnsupportedOp
from exporter.formats import blame
from exporter.formats.tflite_quantize import AeqQuantizer, quantize_full_int8
from exporter.trace import TracedModel, unsupported_ops
from targets import Target, Variant
from targets.errors import first_line
from validators.batching import whole_batches
from validators.quiet import silenced
from validators.runtimes.litert_runtime import SIGNATURE

FORMAT = "tflite"
PREFLIGHT_HINT = ("Replace those layers with ones LiteRT supports (or keep them out of the exported "
                  "module and run them on the CPU in app code), or choose a target without TFLite")


def _quiet():
    """litert-torch and the quantizer print progress bars and absl logs; keep edgeport's output readable."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("absl").setLevel(logging.ERROR)
    return silenced()


def preflight(traced: TracedModel) -> list[UnsupportedOp]:
    """Operators of the decomposed program that litert-torch has no lowering for."""
    if traced.program is None:
        return [UnsupportedOp("<whole model>", "", type(traced.loaded.module).__name__,
                              "litert-torch converts torch.export programs only; this model was not captured "
                              f"by torch.export ({'; '.join(traced.notes)})")]
    import torch

    with _quiet():
        from litert_torch import fx_infra
        from litert_torch.backend import lowerings

        program = fx_infra.safe_run_decompositions(traced.program, fx_infra.decomp.pre_convert_decomp(),
                                                   can_skip=False)
        program = fx_infra.safe_run_decompositions(program, fx_infra.decomp.pre_lower_decomp(), can_skip=False)
    # Only aten/custom op overloads go through the lowering table (getitem and friends are handled inline).
    return unsupported_ops(
        program, lambda target: not isinstance(target, torch._ops.OpOverload) or lowerings.lookup(target) is not None,
        "litert-torch has no lowering for it")


def _convert_fp32(traced: TracedModel, path: Path) -> None:
    import litert_torch

    try:
        with _quiet():
            litert_torch.convert(traced.loaded.module, traced.example_inputs).export(str(path))
    except Exception as exc:
        raise ConversionError(f"litert-torch could not convert the model: {first_line(exc)}") from exc


def _signature_inputs(path: Path) -> dict[str, np.dtype]:
    """The signature's input names and dtypes (litert-torch stores int64 token ids as int32)."""
    from ai_edge_litert.interpreter import Interpreter

    with _quiet():
        details = Interpreter(str(path)).get_signature_runner(SIGNATURE).get_input_details()
    return {name: np.dtype(d["dtype"]) for name, d in details.items()}


def _diagnose(traced: TracedModel, target: Target, variant: Variant, aeq: AeqQuantizer, fp32: Path, out: Path,
              reference, scratch: Path, progress: Callable[[str], None]) -> tuple[dict, dict]:
    """Per-layer blame for a static variant, then mixed precision if it misses its budget."""
    from exporter.formats.blame import CandidateCheck, diagnose, weight_matrices
    from exporter.formats.tflite_blame import blame_layers, keep_float
    from exporter.formats.tflite_layers import hierarchy_paths, read_operators, weighted_layers

    matrices = weight_matrices(traced.loaded.module)
    operators = read_operators(fp32)
    layers = weighted_layers(operators, hierarchy_paths(traced.program, set(matrices)), matrices)
    progress(f"tflite: {variant.precision}: per-layer blame over {len(layers)} weighted layers")
    with _quiet():
        rows = blame_layers(fp32, out, operators, layers, aeq, reference.inputs, traced.batch, scratch, traced)
    check = CandidateCheck(FORMAT, variant, reference, traced, target.runtime) if target.auto_precision else None
    diagnosis, measured = diagnose(
        rows, len(layers), out, keep_float(operators, layers, aeq, out), check, progress,
        f"tflite: {variant.precision} misses its budget: keeping the most harmful layers in float")
    if not rows:
        diagnosis["note"] = "no per-layer blame: the quantized model's layers could not be paired with the fp32 model's"
    return diagnosis, measured


def _io_specs(path: Path, traced: TracedModel) -> tuple[list[dict], list[dict]]:
    """The artifact's own I/O: dtype and, for integer tensors, scale and zero point."""
    from ai_edge_litert.interpreter import Interpreter

    with _quiet():
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
    from validators.files import sha256_file
    from validators.npu import compile_with_vela

    npu = target.npu
    name = tflite.name.replace(".tflite", ".vela.tflite")
    with tempfile.TemporaryDirectory(prefix="edgeport-vela-") as scratch:
        result = compile_with_vela(tflite, Path(scratch), npu.accelerator, npu.system_config, npu.memory_mode, name)
        result.compiled.replace(workdir / name)
    return {"path": name, "bytes": (workdir / name).stat().st_size, "sha256": sha256_file(workdir / name),
            "accelerator": npu.accelerator, "system_config": npu.system_config, "memory_mode": npu.memory_mode}


def convert(traced: TracedModel, target: Target, calibration: dict | None, workdir: Path,
            progress: Callable[[str], None], reference=None) -> list[ArtifactRecord]:
    variants: list[Variant] = [v for v in target.variants if v.format == FORMAT]
    if traced.dynamic_batch:
        progress("tflite: litert-torch converts at a fixed batch; the .tflite keeps the example batch")
    records = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgeport-tflite-") as scratch:
        fp32 = Path(scratch) / "model.tflite"
        progress("tflite: converting with litert-torch")
        _convert_fp32(traced, fp32)
        shared = time.perf_counter() - start
        signature_inputs = _signature_inputs(fp32)
        for variant in variants:
            t0 = time.perf_counter()
            out = workdir / variant.filename
            if variant.precision == "fp32":
                out.write_bytes(fp32.read_bytes())
                quantization = None
            else:
                progress(f"tflite: {variant.precision}")
                batches = [] if not variant.is_static_quantized or calibration is None else \
                    whole_batches(calibration, traced.batch, variant.calibration_samples)
                with _quiet():
                    aeq = AeqQuantizer(fp32, variant.precision, batches, signature_inputs)
                    if variant.precision == "int8_full":
                        quantization = quantize_full_int8(traced, aeq, out, variant, batches, Path(scratch))
                    else:
                        quantization = aeq.build(out)
            extra, diagnosis_seconds, measured = {}, 0.0, {}
            if variant.is_static_quantized and blame.wanted(target, variant, reference, traced, FORMAT, out):
                diagnosis_start = time.perf_counter()
                extra["diagnosis"], measured = _diagnose(traced, target, variant, aeq, fp32, out, reference,
                                                         Path(scratch), progress)
                if extra["diagnosis"].get("auto_precision"):  # the artifact is now ai-edge-quantizer's, mixed
                    quantization = {**aeq.config, "kept_float": extra["diagnosis"]["auto_precision"]["kept_float"]}
                diagnosis_seconds = round(time.perf_counter() - diagnosis_start, 3)
            ins, outs = _io_specs(out, traced)
            if target.npu is not None and variant.precision == "int8_full":
                progress(f"tflite: compiling {variant.filename} for {target.npu.accelerator} with vela")
                extra["npu_compiled"] = _compile_for_npu(out, workdir, target)
            records.append(ArtifactRecord(
                format=FORMAT, precision=variant.precision, path=variant.filename,
                conversion={"exporter": "litert-torch", "reason": "traced program converted", "passes": []},
                quantization=quantization, inputs=ins, outputs=outs,
                reproducible="byte-identical for the same model, data and library versions",
                seconds=round(time.perf_counter() - t0 + shared, 3), extra=extra,
                diagnosis_seconds=diagnosis_seconds, measured=measured,
            ))
    return records
