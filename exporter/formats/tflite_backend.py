"""The TFLite (LiteRT) backend: litert-torch converts the traced program (no TensorFlow), and
ai-edge-quantizer makes the fp16, dynamic-int8 and full-integer int8 variants.

Full-integer int8 calibrates with a global min/max per tensor. ai-edge-quantizer's default
(a moving average of per-sample min/max) clips rare large activations: on demo:digits fed sample by
sample it clipped the logits (max diff 7.56 against fp32, SQNR 18 dB); the global range gives
max diff 1.07, SQNR 40 dB, and the same top-1 accuracy. See issue 3's closing note."""

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
from exporter.trace import TracedModel, module_of
from targets import Target, Variant
from targets.errors import first_line
from validators.batching import iter_batches
from validators.quiet import silenced

FORMAT = "tflite"
SIGNATURE = "serving_default"
PREFLIGHT_HINT = ("Replace those layers with ones LiteRT supports (or keep them out of the exported "
                  "module and run them on the CPU in app code), or choose a target without TFLite")
RECIPES = {"fp16": "ai-edge-quantizer float_casting fp16 weights",
           "int8_dynamic": "ai-edge-quantizer dynamic_wi8_afp32",
           "int8": "ai-edge-quantizer static_wi8_ai8, global min/max calibration"}


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
    unsupported: dict[tuple[str, str], UnsupportedOp] = {}
    for node in program.graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        if lowerings.lookup(node.target) is None:
            path, cls = module_of(node)
            unsupported.setdefault((str(node.target), path), UnsupportedOp(
                str(node.target), path, cls, "litert-torch has no lowering for it"))
    return list(unsupported.values())


def _convert_fp32(traced: TracedModel, path: Path) -> None:
    import litert_torch

    try:
        with _quiet():
            litert_torch.convert(traced.loaded.module, traced.example_inputs).export(str(path))
    except Exception as exc:
        raise ConversionError(f"litert-torch could not convert the model: {first_line(exc)}") from exc


def _signature_input_names(path: Path) -> list[str]:
    from ai_edge_litert.interpreter import Interpreter

    with _quiet():
        return list(Interpreter(str(path)).get_signature_list()[SIGNATURE]["inputs"])


def _quantize(fp32: Path, out: Path, precision: str, calibration: dict | None, batch: int | None,
              input_names: list[str], max_samples: int) -> dict:
    from ai_edge_quantizer import calibrator, qtyping, quantizer, recipe, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.utils import qsv_utils

    q = quantizer.Quantizer(str(fp32))
    config: dict = {"recipe": RECIPES[precision]}
    if precision == "fp16":
        manager = recipe_manager.RecipeManager()
        manager.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                       num_bits=16, algorithm_key=AlgorithmName.FLOAT_CASTING)
        q.load_quantization_recipe(manager.get_quantization_recipe())
        qsvs = None
    elif precision == "int8_dynamic":
        q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        qsvs = None
    else:
        if calibration is None:
            raise ValueError("full-integer int8 needs calibration data")
        q.load_quantization_recipe(recipe.static_wi8_ai8())
        arrays = {k: v[:max_samples] for k, v in calibration.items()}
        samples = [{sig_name: feeds[name] for sig_name, name in zip(input_names, feeds, strict=True)}
                   for feeds, valid in iter_batches(arrays, batch) if batch is None or valid == batch]
        # The Quantizer's calibrate() offers only the moving-average update; its Calibrator takes the
        # global min/max update (these are the library's own pieces, used as its calibrate() uses them).
        with _quiet():
            calib = calibrator.Calibrator(q._float_model_buffer, num_threads=1,
                                          qsv_update_func=qsv_utils.min_max_update)
            calib.calibrate({SIGNATURE: samples}, q._recipe_manager)
            qsvs = calib.get_model_qsvs()
        config |= {"calibration": "global min/max", "calibration_samples": len(samples) * (batch or 1)}
    with _quiet():
        q.quantize(qsvs, enable_progress_report=False).export_model(str(out), overwrite=True)
    return config


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
            progress: Callable[[str], None]) -> list[ArtifactRecord]:
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
        input_names = _signature_input_names(fp32)
        for variant in variants:
            t0 = time.perf_counter()
            out = workdir / variant.filename
            if variant.precision == "fp32":
                out.write_bytes(fp32.read_bytes())
                quantization = None
            else:
                progress(f"tflite: {variant.precision}")
                with _quiet():
                    quantization = _quantize(fp32, out, variant.precision, calibration, traced.batch, input_names,
                                             variant.calibration_samples)
            ins, outs = _io_specs(out, traced)
            extra = {}
            if target.npu is not None and variant.precision == "int8":
                progress(f"tflite: compiling {variant.filename} for {target.npu.accelerator} with vela")
                extra["npu_compiled"] = _compile_for_npu(out, workdir, target)
            records.append(ArtifactRecord(
                format=FORMAT, precision=variant.precision, path=variant.filename,
                conversion={"exporter": "litert-torch", "reason": "traced program converted", "passes": []},
                quantization=quantization, inputs=ins, outputs=outs,
                reproducible="byte-identical for the same model, data and library versions",
                seconds=round(time.perf_counter() - t0 + shared, 3), extra=extra,
            ))
    return records
