"""Language models as ExecuTorch programs, built the way ExecuTorch's own LLM export builds them: the KV cache
is the program's state (mutable buffers), written in place by ExecuTorch's `llama::update_cache` kernel and
read by its `llama::custom_sdpa` (causal from the start position, grouped-query heads as they are), so a call
passes only the new tokens and their start position.

    methods  prefill: input_ids [1, prefill_length], input_pos [1] -> logits [1, prefill_length, vocab]
             forward: input_ids [1, 1],              input_pos [1] -> logits [1, 1, vocab]
    state    k_cache_<i> / v_cache_<i> [1, cache_length, kv_heads, head_dim] float32, shared by both methods
    metadata get_max_seq_len, get_max_context_len, get_vocab_size, get_bos_id, get_eos_ids, use_kv_cache,
             enable_dynamic_shape: what ExecuTorch's LLM runner (TextLLMRunner) reads; it calls `forward`, one
             token per call, for the prompt and for each new token

Both methods have static shapes: XNNPACK then takes every view, slice and RoPE unsqueeze (with a dynamic
sequence length it rejected them, and every rejected operator split a delegate: lowering SmolLM2-135M took
25 min). A shorter prompt chunk is padded to prefill_length: the padding's cache rows lie past the last real
token, so nothing reads them before a later call overwrites them.

Precisions (each XNNPACK runs natively), by torchao on a copy of the model:
  fp32  the traced program;
  a8w8  int8 per-channel weights, activations quantized to int8 per token at run time (qd8-f32-qc8w);
  a8w4  int4 weights in groups of the target's block_size, int8 dynamic activations (ExecuTorch's 8da4w).
Both put the embedding and the head at embedding_bits (int8 for a8w8), the embedding as ExecuTorch's quantized
lookup (embedding.py).
Not offered: int8 weight-only (torchao's IntxWeightOnlyConfig): with executorch 1.5.1 and torchao 0.18 its
.pte stored float weights (the same bytes as fp32) and computed logits 5.5 away from the quantized eager
model on demo:tinylm, while both a8 schemes matched their eager model within 0.03.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

from exporter.errors import ConversionError
from exporter.lm.backend import HEAD, Kept, LmEmitted, Progress, linear_modules
from exporter.lm.source import CausalLM
from exporter.quant.plan import Planner, QuantizedWeight, Scheme, planned_by, source_grid_note, weight_scheme
from targets.lm import LmSettings, LmVariant

ATTENTION = "edgeport_executorch_sdpa"  # the transformers attention implementation registered below
METHODS = {"prefill": "prefill_length", "forward": 1}  # method -> tokens per call (recorded in the manifest)
IO = {"methods": METHODS, "inputs": ["input_ids", "input_pos"], "state": "k_cache_{layer}, v_cache_{layer}"}


class ExecutorchLmBackend:
    format: ClassVar[str] = "executorch"
    cannot_keep_in_float: ClassVar[str] = ""
    computes_windows: ClassVar[bool] = False  # custom_sdpa is causal over the whole cache, with no window
    computes_softcap: ClassVar[bool] = False  # and no score cap

    def lower(self, lm: CausalLM, settings: LmSettings, scratch: Path, progress: Progress) -> CausalLM:
        return lm  # each variant quantizes a copy of the model before torch.export: nothing to share

    def emit(self, lowered: CausalLM, variant: LmVariant, settings: LmSettings, out: Path, kept: Kept | None,
             plan: Planner, progress: Progress) -> LmEmitted:
        from exporter.formats.executorch.backend import _lowering, lower_methods
        from exporter.lm.attention import with_attention

        with _lowering(variant.precision):
            model, record = with_attention(lowered.model, ATTENTION, _attention, causal_mask=None), {"scheme": "fp32"}
            if variant.row.quantized:
                record = _quantize(model, variant, settings, kept or {}, plan)
            progress(f"executorch {variant.precision}: torch.export of the prefill and decode methods, lowering "
                     "to XNNPACK")
            programs, cache = _trace_methods(model, settings)
            delegation = lower_methods(programs, out, shared_state=True,
                                       constant_methods=runner_metadata(lowered, settings))["forward"]
        record["delegation"] = {key: delegation[key] for key in ("delegate", "delegated_operators",
                                                                 "portable_operators", "delegated_op_coverage")}
        record["delegation"]["portable_ops"] = dict(Counter(row["op"] for row in delegation["portable_fallback"])
                                                    .most_common())
        why = ("the traced program itself" if not variant.row.quantized else
               "torchao quantize_ on the decoder linears, the embedding as ExecuTorch's quantized lookup, then "
               "the traced program lowered to XNNPACK")
        return LmEmitted(cache, record, "edgeport export (torchao -> torch.export -> ExecuTorch XNNPACK, KV cache "
                         "as mutable buffers with ExecuTorch's update_cache and custom_sdpa kernels)", why)

    def bundle(self, work: Path, entries: list[dict], model_config: Any, tokenizer_dir: Path,
               threads: int) -> dict | None:
        """What ExecuTorch's LLM runner opens beside the .pte files (runner_bundle.py)."""
        from exporter.formats.executorch.runner_bundle import write_bundle

        return write_bundle(work, entries, model_config, tokenizer_dir, threads)


def runner_metadata(lm: CausalLM, settings: LmSettings) -> dict[str, Any]:
    """The constant methods ExecuTorch's LLM runner reads from a .pte (extension/llm/runner/constants.h)."""
    from exporter.lm.decode_step import eos_ids, text_config

    bos = lm.tokenizer.bos_token_id
    return {"get_max_seq_len": settings.cache_length, "get_max_context_len": settings.cache_length,
            "get_vocab_size": text_config(lm.model.config).vocab_size, "get_bos_id": bos if bos is not None else -1,
            "get_eos_ids": eos_ids(lm.model.config, lm.tokenizer), "use_kv_cache": True,
            "use_sdpa_with_kv_cache": True, "enable_dynamic_shape": False}


def _trace_methods(model: Any, settings: LmSettings) -> tuple[dict, dict]:
    """{method: exported program} at each method's static length, and the cache description the manifest
    records."""
    import torch

    from exporter.lm.decode_step import cache_shape, not_exported

    layers, kv_heads, head_dim = cache_shape(model.config)
    step = _custom_op_step(model, settings.cache_length, layers, kv_heads, head_dim)
    lengths = {"prefill": settings.prefill_length, "forward": 1}
    programs = {}
    for method, length in lengths.items():
        example = (torch.zeros((1, length), dtype=torch.long), torch.zeros(1, dtype=torch.long))
        try:
            with torch.no_grad():
                program = torch.export.export(step, example, strict=False)
        except Exception as exc:  # torch.export on a model it cannot take
            raise not_exported(model, exc) from exc
        programs[method] = program.run_decompositions(_xnnpack_shapes())
    return programs, {"io": IO, "layers": layers, "kv_heads": kv_heads, "head_dim": head_dim,
                      "cache_length": settings.cache_length, "prefill_length": settings.prefill_length}


def _custom_op_step(model: Any, cache_length: int, layers: int, kv_heads: int, head_dim: int) -> Any:
    """The model (its attention set to _attention) behind the KV cache buffers."""
    import torch
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401  registers the llama:: operators

    class CustomOpStep(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            for i in range(layers):
                for kv in "kv":
                    self.register_buffer(f"{kv}_cache_{i}", torch.zeros(1, cache_length, kv_heads, head_dim),
                                         persistent=False)

        def forward(self, input_ids, input_pos):
            start, count = input_pos[0].item(), input_ids.shape[1]
            torch._check_is_size(start)
            torch._check(start + count <= cache_length)
            positions = (input_pos[0] + torch.arange(count)).unsqueeze(0)
            cache = _BufferCache(self, start)
            return self.model(input_ids=input_ids, position_ids=positions, past_key_values=cache, use_cache=True,
                              start_pos=start).logits

    return CustomOpStep().eval()


class _BufferCache:
    """What a transformers attention layer calls to store its keys and values: writes them into the step's
    buffers at start_pos and hands the attention the whole buffers (custom_sdpa reads only what is causal)."""

    is_compileable = True

    def __init__(self, step: Any, start: Any) -> None:
        self.step, self.start = step, start

    def update(self, keys: Any, values: Any, layer_idx: int, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        import torch

        key_cache = getattr(self.step, f"k_cache_{layer_idx}")
        value_cache = getattr(self.step, f"v_cache_{layer_idx}")
        torch.ops.llama.update_cache(keys.transpose(1, 2), key_cache, self.start)
        torch.ops.llama.update_cache(values.transpose(1, 2), value_cache, self.start)
        return key_cache, value_cache

    def get_seq_length(self, layer_idx: int = 0) -> Any:
        return self.start


def _attention(module: Any, query: Any, key_cache: Any, value_cache: Any, attention_mask: Any,
               scaling: float | None = None, dropout: float = 0.0, start_pos: Any = 0, **kwargs: Any):
    """transformers' attention interface: query [1, heads, S, head_dim], the caches as _BufferCache returns
    them; output [1, S, heads, head_dim] as transformers expects."""
    import torch

    return torch.ops.llama.custom_sdpa(query.transpose(1, 2), key_cache, value_cache, start_pos, None, 0.0, True,
                                       scaling), None


def _xnnpack_shapes() -> dict:
    """Rewrites with the same values that XNNPACK delegates (it rejected each of these, splitting a delegate
    every time): a mean over the last dimension of a 3-D tensor (RMSNorm) as a 4-D mean over the last two, an
    unsqueeze before the last dimension (RoPE's cos and sin) as a view."""
    import torch

    aten = torch.ops.aten

    def mean(x, dims, keepdim=False, dtype=None):
        if x.dim() != 3 or [d % 3 for d in dims] != [2] or dtype is not None:
            return NotImplemented
        reduced = aten.mean.dim(aten.view.default(x, [*x.shape, 1]), [-2, -1], True)
        return aten.view.default(reduced, [*x.shape[:2], 1] if keepdim else list(x.shape[:2]))

    def unsqueeze(x, dim):
        shape = list(x.shape)
        shape.insert(dim % (len(shape) + 1), 1)
        return aten.view.default(x, shape)

    return {aten.mean.dim: mean, aten.unsqueeze.default: unsqueeze}


def _config(bits: int, block_size: int | None) -> Any:
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    return Int8DynamicActivationIntxWeightConfig(
        weight_dtype=torch.int4 if bits == 4 else torch.int8,
        weight_granularity=PerGroup(block_size) if bits == 4 else PerAxis(0))


def _quantize(model: Any, variant: LmVariant, settings: LmSettings, kept: Kept, plan: Planner) -> dict:
    """Quantize the model's decoder linears in place, and its embedding and head at embedding_bits (8 for
    a8w8); kept layers at 8 bits or float. torchao lays the linears out (int8 codes, scales) and the weight
    plan's codes and scales replace its own; asymmetric 4-bit blocks add their offsets beside (blocks.py); the
    embedding becomes ExecuTorch's quantized lookup (embedding.py)."""
    from torchao.quantization import quantize_

    from exporter.formats.executorch.embedding import lookup_scheme, quantize_embedding

    bits, block = variant.row.bits, settings.block_size
    scheme = weight_scheme(4, block, settings.symmetric, settings.zero_points)
    bits_of = {path: kept.get(path, bits) for path in linear_modules(model)}
    head_bits = settings.embedding_bits if bits == 4 else 8
    embedding = "float"
    if head_bits != 32:  # no calibration Hessian for a lookup: its plan is round to nearest (or the source's grid)
        table = model.get_input_embeddings()
        path = next(name for name, module in model.named_modules() if module is table)
        embedding = quantize_embedding(model, plan.weight(path, lookup_scheme(table.weight, head_bits, scheme), "rtn"))
        if HEAD not in kept:
            bits_of[HEAD] = head_bits
    for layer_bits in (4, 8):
        chosen = {path for path, b in bits_of.items() if b == layer_bits}
        if chosen:
            quantize_(model, _config(layer_bits, block), filter_fn=lambda _m, fqn, c=chosen: fqn in c)
    written = _write_plan(model, {p: b for p, b in bits_of.items() if b}, scheme, settings.method, plan)
    planned = planned_by(written.values())
    body = [path for path, b in bits_of.items() if path != HEAD and b == bits]
    offsets = sum(not weight.scheme.symmetric for weight in written.values())
    return {"scheme": f"torchao {variant.precision}: int8 dynamic activations (per token), "
                      f"{'int4 weights in groups of ' + str(block) if bits == 4 else 'int8 per-channel weights'}",
            "weight_bits": bits, "group_size": block if bits == 4 else None,
            "decoder_linears_scheme": scheme.describe() if bits == 4 else "8-bit per output channel (symmetric)",
            "block_offsets": f"{offsets} linears: symmetric int4 blocks plus a matmul of block means times each "
                             "block's offset, int8 per row (XNNPACK's int4 blocks have no zero points)"
                             if offsets else None,
            "method": settings.method, "computed_in": "PyTorch (exporter/quant/plan.py), codes written into torchao's "
                                                      "tensors as they are",
            "planned_by": planned,
            "source_grid": source_grid_note(plan, body, scheme if bits == 4 else None, planned,
                                            'symmetric = false and zero_points = "float"'),
            "head_bits": bits_of.get(HEAD, 32), "embedding": embedding,
            "kept": {path: (b or "float") for path, b in kept.items()}}


def _write_plan(model: Any, bits_of: dict[str, int], scheme: Scheme, method: str,
                plan: Planner) -> dict[str, QuantizedWeight]:
    """Each quantized linear's torchao codes and scales set to the plan's: 4-bit ones in `scheme` (an asymmetric
    one as its symmetric part plus a BlockOffsetLinear), 8-bit ones symmetric per output channel (one block of
    the whole row); torchao's codes are signed (code - 2**(bits - 1)). Returns {path: the plan written}."""
    import torch
    from torchao.quantization import quantize_

    from exporter.quant.blocks import BlockOffsetLinear

    modules = dict(model.named_modules())
    written = {}
    for path, bits in bits_of.items():
        linear = modules[path]
        weight = linear.weight
        columns = weight.shape[1]
        chosen = plan.weight(path, scheme if bits == 4 else Scheme.per_channel(columns), method)
        with torch.no_grad():
            weight.qdata.copy_(chosen.signed_codes())
            weight.scale.copy_(chosen.scales.reshape(weight.scale.shape).to(weight.scale.dtype))
            weight.zero_point.zero_()
        if not chosen.scheme.symmetric:
            if columns % scheme.block_size:
                raise ConversionError(f"{path}: {columns} input columns are not whole blocks of "
                                      f"{scheme.block_size}; asymmetric blocks on XNNPACK need them: set symmetric "
                                      "= true for this variant, or a block_size that divides them")
            parent, _, name = path.rpartition(".")
            wrapped = BlockOffsetLinear(linear, chosen.offsets(), scheme.block_size)
            # int8 per row, like an a8w8 linear: float32 offsets were 13 of SmolLM2-135M's 110 MB
            quantize_(wrapped.offsets, _config(8, None))
            setattr(modules[parent] if parent else model, name, wrapped)
        written[path] = chosen
    return written


BACKEND = ExecutorchLmBackend()
