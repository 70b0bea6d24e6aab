"""Language models as ExecuTorch programs: the same decode step as ONNX (static KV cache as inputs and
outputs, exporter/lm/decode_step.py), its linears quantized by torchao, lowered to XNNPACK.

Precisions (each XNNPACK runs natively):
  fp32  the traced program;
  a8w8  int8 per-channel weights, activations quantized to int8 per token at run time (qd8-f32-qc8w);
  a8w4  int4 weights in groups of the target's block_size, int8 dynamic activations (ExecuTorch's 8da4w).
Not offered: int8 weight-only (torchao's IntxWeightOnlyConfig): with executorch 1.5.1 and torchao 0.18 its
.pte stored float weights (the same bytes as fp32) and computed logits 5.5 away from the quantized eager
model on demo:tinylm, while both a8 schemes matched their eager model within 0.03.
"""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

from exporter.lm.backend import Kept, LmEmitted, Progress, linear_modules
from exporter.lm.source import CausalLM
from targets.lm import LmSettings, LmVariant

HEAD = "lm_head"


class ExecutorchLmBackend:
    format: ClassVar[str] = "executorch"
    libraries: ClassVar[tuple[str, ...]] = ("executorch", "torchao")
    keeps_layers: ClassVar[str] = ""

    def lower(self, lm: CausalLM, settings: LmSettings, scratch: Path, progress: Progress) -> CausalLM:
        return lm  # each variant quantizes a copy of the model before torch.export: nothing to share

    def emit(self, lowered: CausalLM, variant: LmVariant, settings: LmSettings, out: Path, kept: Kept | None,
             progress: Progress) -> LmEmitted:
        from exporter.formats.executorch.backend import _lowering, lower_program
        from exporter.lm.decode_step import trace_decode_step

        model, record = lowered.model, {"scheme": "fp32"}
        with _lowering(variant.precision):
            if variant.row.quantized:
                model, record = _quantized(lowered.model, variant, settings, kept or {})
            progress(f"executorch {variant.precision}: torch.export of the decode step, lowering to XNNPACK")
            program, cache = trace_decode_step(model, settings.cache_length, settings.prefill_length)
            delegation = lower_program(program, out)
        portable = Counter(row["op"] for row in delegation["portable_fallback"])
        record["delegation"] = {key: delegation[key] for key in ("delegate", "delegated_operators",
                                                                 "portable_operators", "delegated_op_coverage")}
        record["delegation"]["portable_ops"] = dict(portable.most_common())
        why = ("the traced program itself" if not variant.row.quantized else
               "torchao quantize_ on the decoder linears, then the traced program lowered to XNNPACK")
        return LmEmitted(cache, record, "edgeport export (torchao -> torch.export -> ExecuTorch XNNPACK, static KV "
                         "cache)", why)


def _config(bits: int, block_size: int | None) -> Any:
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    return Int8DynamicActivationIntxWeightConfig(
        weight_dtype=torch.int4 if bits == 4 else torch.int8,
        weight_granularity=PerGroup(block_size) if bits == 4 else PerAxis(0))


def _quantized(model: Any, variant: LmVariant, settings: LmSettings, kept: Kept) -> tuple[Any, dict]:
    """A copy of the model with its decoder linears (and the head at embedding_bits) quantized; kept layers
    at 8 bits or float. The embedding table stays float (XNNPACK has no quantized lookup)."""
    from torchao.quantization import quantize_

    bits, block = variant.row.bits, settings.block_size
    quantized = copy.deepcopy(model)
    plan = {path: kept.get(path, bits) for path in linear_modules(model)}
    head_bits = settings.embedding_bits if bits == 4 else 8
    if head_bits != 32 and HEAD not in kept:
        plan[HEAD] = head_bits
    for layer_bits in (4, 8):
        chosen = {path for path, b in plan.items() if b == layer_bits}
        if chosen:
            quantize_(quantized, _config(layer_bits, block), filter_fn=lambda _m, fqn, c=chosen: fqn in c)
    record = {"scheme": f"torchao {variant.precision}: int8 dynamic activations (per token), "
                        f"{'int4 weights in groups of ' + str(block) if bits == 4 else 'int8 per-channel weights'}",
              "weight_bits": bits, "group_size": block if bits == 4 else None, "symmetric": True,
              "head_bits": plan.get(HEAD, 32), "embedding": "float",
              "kept": {path: (b or "float") for path, b in kept.items()}}
    return quantized, record


LM_BACKEND = ExecutorchLmBackend()
