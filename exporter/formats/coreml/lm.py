"""Language models as stateful Core ML programs (iOS18): the KV cache lives in two Core ML states, written
in place by slice_update, so a device passes only the new tokens and a causal mask per call.

    inputs   input_ids [1, S] int32; causal_mask [1, 1, S, P+S] float16 (0 where a query may attend, -inf
             where not; P tokens are already in the cache, so the mask's shape tells the program where to write)
    states   key_cache, value_cache [layers, 1, kv_heads, cache_length, head_dim] float16
    outputs  logits [1, S, vocab] float32

transformers' StaticCache writes with index_copy_, which coremltools cannot convert; here each layer's update
is a slice assignment into the registered buffers (-> slice_update + coreml_update_state). The program is
traced with torch.jit.trace (coremltools converts states from TorchScript) and converted once in float16
(RMSNorm's statistics in float32); w8 and w4 replace that program's weights by the PyTorch weight plan's blocks
(exporter/formats/coreml/blocks.py: constexpr_blockwise_shift_scale with the plan's codes, scales and offsets, no
second quantization). Validated on any OS by edgeport's MIL interpreter, which keeps the states between calls
(validators/mlprogram).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, ClassVar

from exporter.errors import ConversionError
from exporter.lm.backend import Kept, LmEmitted, Progress
from exporter.lm.source import CausalLM
from exporter.quant.plan import Planner
from targets.lm import LmSettings, LmVariant

IO = {"input_ids": "input_ids", "mask": "causal_mask", "states": ["key_cache", "value_cache"], "logits": "logits"}
DEPLOYMENT = "iOS18"  # the first Core ML with states


def _stateful_step(model: Any, cache_length: int) -> Any:
    import torch
    from transformers import StaticCache

    from exporter.lm.decode_step import cache_shape

    layers, kv_heads, head_dim = cache_shape(model.config)

    class StatefulStep(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            shape = (layers, 1, kv_heads, cache_length, head_dim)
            self.register_buffer("key_cache", torch.zeros(shape))
            self.register_buffer("value_cache", torch.zeros(shape))

        def forward(self, input_ids, causal_mask):
            end = causal_mask.shape[-1]
            start = end - input_ids.shape[-1]
            cache = StaticCache(config=self.model.config, max_cache_len=cache_length)
            for i, layer in enumerate(cache.layers):
                layer.is_initialized = True
                layer.update = functools.partial(self.write, i, start, end)
            positions = torch.arange(input_ids.shape[-1]).unsqueeze(0) + start
            return self.model(input_ids=input_ids, attention_mask=causal_mask, position_ids=positions,
                              past_key_values=cache, use_cache=True).logits

        def write(self, layer: int, start, end, keys, values, *args, **kwargs):
            self.key_cache[layer, :, :, start:end] = keys
            self.value_cache[layer, :, :, start:end] = values
            return self.key_cache[layer, :, :, :end], self.value_cache[layer, :, :, :end]

    return StatefulStep().eval(), (layers, kv_heads, head_dim)


# RMSNorm's square, mean and rsqrt stay float32: a decoder's residual stream can carry activations far past
# what float16 squares (SmolLM2-135M: |x| up to 22,552 from layer 12 on; x*x overflows float16's 65,504, and the
# float16 program's perplexity ratio was 1350). Everything else computes in float16, as on the device.
FLOAT32_OPS = ("pow", "reduce_mean", "rsqrt")


def _in_float16(op: Any) -> bool:
    if op.op_type in FLOAT32_OPS:
        return False
    # the epsilon added to the mean square: the mean itself is past float16 (SmolLM2: 895,572)
    producers = {getattr(getattr(value, "op", None), "op_type", None) for value in op.inputs.values()}
    return not (op.op_type == "add" and "reduce_mean" in producers)


class CoremlLmLowered:
    def __init__(self, model: Any, cache: dict) -> None:
        self.model, self.cache = model, cache  # the float16 MLModel every variant compresses


class CoremlLmBackend:
    format: ClassVar[str] = "coreml"
    cannot_keep_in_float: ClassVar[str] = ""
    computes_windows: ClassVar[bool] = False  # the runtime passes one causal mask that every layer reads
    computes_softcap: ClassVar[bool] = True  # the model's own (eager) attention

    def lower(self, lm: CausalLM, settings: LmSettings, scratch: Path, progress: Progress) -> CoremlLmLowered:
        import coremltools as ct
        import numpy as np
        import torch

        from exporter.formats.coreml.backend import _quiet

        progress(f"coreml: tracing {lm.name} with its KV cache as Core ML states ({settings.cache_length} tokens), "
                 f"converting to a float16 ML Program ({DEPLOYMENT})")
        step, (layers, kv_heads, head_dim) = _stateful_step(lm.model, settings.cache_length)
        length = min(4, settings.prefill_length)
        example = (torch.zeros((1, length), dtype=torch.long), torch.zeros((1, 1, length, length + 1)))
        state_shape = (layers, 1, kv_heads, settings.cache_length, head_dim)
        query = ct.RangeDim(1, settings.prefill_length, default=length)
        keys = ct.RangeDim(1, settings.cache_length, default=length + 1)
        try:
            with torch.no_grad(), _quiet():
                traced = torch.jit.trace(step, example, check_trace=False)
                model = ct.convert(
                    traced, convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, DEPLOYMENT),
                    compute_precision=ct.transform.FP16ComputePrecision(op_selector=_in_float16),
                    skip_model_load=True,
                    inputs=[ct.TensorType(IO["input_ids"], shape=(1, query), dtype=np.int32),
                            ct.TensorType(IO["mask"], shape=(1, 1, query, keys), dtype=np.float16)],
                    outputs=[ct.TensorType(IO["logits"], dtype=np.float32)],
                    states=[ct.StateType(ct.TensorType(shape=state_shape, dtype=np.float16), name=name)
                            for name in IO["states"]])
        except Exception as exc:  # the tracer or coremltools on a model they cannot take
            from common.errors import first_line

            raise ConversionError(f"{type(lm.model).__name__} does not convert to a stateful Core ML program "
                                  f"({type(exc).__name__}: {first_line(exc, 200)}); rerun with --debug") from exc
        return CoremlLmLowered(model, {"io": IO, "layers": layers, "kv_heads": kv_heads, "head_dim": head_dim,
                                       "cache_length": settings.cache_length,
                                       "prefill_length": settings.prefill_length, "deployment_target": DEPLOYMENT,
                                       "dtype": "float16"})

    def emit(self, lowered: CoremlLmLowered, variant: LmVariant, settings: LmSettings, out: Path, kept: Kept | None,
             plan: Planner, progress: Progress) -> LmEmitted:
        from exporter.formats.coreml.backend import _quiet, _save

        model, record = lowered.model, {"scheme": "fp16"}
        if variant.row.quantized:
            progress(f"coreml {variant.precision}: compressing the float16 program's weights")
            with _quiet():
                model, record = _compressed(model, variant, settings, kept or {}, plan)
        _save(model, out)
        why = ("the traced program in float16" if not variant.row.quantized else
               "the PyTorch weight plan's blocks written into the float16 program")
        return LmEmitted(lowered.cache, record, "edgeport export (torch.jit.trace -> coremltools, Core ML states "
                         "for the KV cache)", why)

    def bundle(self, work: Path, entries: list[dict], model_config: Any, tokenizer_dir: Path,
               threads: int) -> dict | None:
        """The tokenizer and generation config an app loads beside the .mlpackage files (app_bundle.py)."""
        from exporter.formats.coreml.app_bundle import write_bundle

        return write_bundle(work, entries, model_config, tokenizer_dir, threads)


def weight_constant(module: str) -> str:
    """The float16 weight constant coremltools names after a traced module path."""
    return f"model_{module.replace('.', '_')}_weight_to_fp16"


def _compressed(model: Any, variant: LmVariant, settings: LmSettings, kept: Kept, plan: Planner) -> tuple[Any, dict]:
    """The float16 program with every linear's weight (and the embedding table) replaced by its PyTorch plan's
    blocks (exporter/formats/coreml/blocks.py): the decoder linears at the variant's bits, the table and head at
    embedding_bits (8 for w8) in symmetric blocks (GGUF Q8_0's grid), kept layers at 8 bits or float."""
    import torch

    from exporter.formats.coreml.blocks import write_plan
    from exporter.lm.backend import EMBEDDING, HEAD
    from exporter.quant.plan import Scheme, planned_by, source_grid_note, weight_scheme

    constants = {op.name for op in model._mil_program.functions["main"].operations if op.op_type == "const"}
    bits = variant.row.bits
    body_scheme = weight_scheme(4, settings.block_size, settings.symmetric, settings.zero_points) \
        if bits == 4 else None
    table_bits = settings.embedding_bits if bits == 4 else 8
    linears = [name for name, module in plan.modules.items() if isinstance(module, torch.nn.Linear)]
    weights, body = {}, []
    for path in [*linears, EMBEDDING]:
        name = weight_constant(path)
        if path == HEAD and name not in constants:  # tied: the head reads the table's constant, planned as the head
            name = weight_constant(EMBEDDING)
        if name in weights:
            continue  # the tied table, planned with the head
        if name not in constants:
            raise ConversionError(f"no weight constant {name} for {path} in the Core ML program")
        table = path in (HEAD, EMBEDDING)
        chosen = kept.get(path, table_bits if table else bits)
        if chosen in (None, 32):
            continue  # float
        if chosen == 4:
            layer_scheme = body_scheme or Scheme(4, settings.block_size, True)
        else:  # 8 bits: the table in symmetric blocks (Q8_0's grid), a linear per output channel
            layer_scheme = Scheme(8, settings.block_size if table else plan.modules[path].weight.shape[1], True)
        # an untied table is looked up, not multiplied: no calibration Hessian, round to nearest
        weights[name] = plan.weight(path, layer_scheme, "rtn" if path == EMBEDDING else settings.method)
        if not table and chosen == bits:
            body.append(path)
    planned = planned_by(weights.values())
    record = {"scheme": f"w{bits}: the weight plan's blocks (constexpr_blockwise_shift_scale)", "weight_bits": bits,
              "decoder_linears_scheme": body_scheme.describe() if body_scheme else "8-bit per output channel "
                                                                                     "(symmetric)",
              "method": settings.method, "computed_in": "PyTorch (exporter/quant/plan.py), codes written as they are",
              "decoder_linears": len(body), "table_bits": table_bits, "planned_by": planned,
              "source_grid": source_grid_note(plan, body, body_scheme, planned,
                                              'symmetric = false and zero_points = "float"'),
              "kept": {module: (b or "float") for module, b in kept.items()}}
    return write_plan(model, weights), record


BACKEND = CoremlLmBackend()
