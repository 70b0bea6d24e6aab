"""Language models as LiteRT (.tflite): the decode step of exporter/lm/decode_step.py (static KV cache as
named inputs and outputs) converted by litert-torch with two signatures over shared weights:

    prefill  tokens [1, prefill_length], input_pos [prefill_length]  (int32; a shorter chunk is padded, and the
             cache rows follow the chunk's first position, so padding lands past the last real row, masked by
             causality until a later token overwrites it)
    decode   tokens [1, 1], input_pos [1]
    both     kv_cache_k_<i> / kv_cache_v_<i> [1, kv_heads, cache_length, head_dim] in and (with these tokens
             written) out, logits out

the names LiteRT-LM's executor binds (its CPU signature without a mask input), so the .tflite runs in its engine
(litertlm_bundle.py) as it runs in edgeport's verdict.

Attention regroups the query heads per key/value head instead of repeating the cache (exporter/lm/attention.py:
LiteRT's BROADCAST_TO made SmolLM2-135M decode 6x slower). Weights are the weight plan's codes (exporter/quant/
plan.py) in ai-edge-quantizer's dynamic layout (int8 channel-wise or int4 block-wise weights; activations quantized
per call, planned.py): a8w8 and a8w4, as ExecuTorch names the same schemes. LiteRT's blocks are symmetric: an
asymmetric 4-bit plan runs as its symmetric part plus a matmul of block means times the block offsets
(exporter/quant/blocks.py), a graph of its own, converted for that variant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from exporter.errors import ConversionError
from exporter.lm.backend import HEAD, Kept, LmEmitted, Progress, linear_modules
from exporter.lm.source import CausalLM
from exporter.quant.plan import Planner, Scheme, planned_by, source_grid_note, weight_scheme
from targets.lm import LmSettings, LmVariant

# a weight is found in the program by its bytes (planned.py), so a linear kept at 8 bits is its plan; a float one
# would need its operator left out of ai-edge-quantizer's recipe, which names operators after their output
# tensors, not reliably after their modules (an MLP's up_proj carries gate_proj's name)
NO_FLOAT_KEEP = ("not offered for LiteRT 8-bit language-model variants: a linear kept in float cannot be picked out "
                 "of the program by name; the variant is judged as quantized")
ATTENTION = "edgeport_grouped_query_attention"  # exporter/lm/attention.py: no BROADCAST_TO of the cache
IO = {"tokens": "tokens", "position": "input_pos", "past": "kv_cache_{kv}_{layer}", "present": "kv_cache_{kv}_{layer}",
      "kv": ("k", "v"), "signatures": {"prefill": "prefill_length", "decode": 1}}


class TfliteLmLowered:
    """A model to convert, converted to float32 when a variant first reads `fp32` (an a8w4 variant with
    asymmetric blocks converts a graph of its own and never needs it)."""

    def __init__(self, lm: CausalLM, settings: LmSettings, scratch: Path, progress: Progress) -> None:
        from exporter.lm.decode_step import cache_shape

        self.lm, self.settings, self.scratch, self.progress = lm, settings, scratch, progress
        layers, kv_heads, head_dim = cache_shape(lm.model.config)
        self.cache = {"io": IO, "layers": layers, "kv_heads": kv_heads, "head_dim": head_dim,
                      "cache_length": settings.cache_length, "prefill_length": settings.prefill_length}
        self._fp32: Path | None = None

    @property
    def model(self) -> Any:
        return self.lm.model

    @property
    def fp32(self) -> Path:
        if self._fp32 is None:
            self.progress(f"tflite: converting {self.lm.name}'s decode step with litert-torch (signatures prefill "
                          f"[{self.settings.prefill_length} tokens] and decode [1 token], "
                          f"{self.settings.cache_length}-token KV cache)")
            self._fp32 = self.scratch / "model.fp32.tflite"
            _convert(_replica(self.model), self.settings, self._fp32)
        return self._fp32


class TfliteLmBackend:
    format: ClassVar[str] = "tflite"
    cannot_keep_in_float: ClassVar[str] = NO_FLOAT_KEEP
    computes_windows: ClassVar[bool] = True  # the model's masks; grouped_query_attention applies the soft cap
    computes_softcap: ClassVar[bool] = True

    def lower(self, lm: CausalLM, settings: LmSettings, scratch: Path, progress: Progress) -> TfliteLmLowered:
        return TfliteLmLowered(lm, settings, scratch, progress)

    def emit(self, lowered: TfliteLmLowered, variant: LmVariant, settings: LmSettings, out: Path, kept: Kept | None,
             plan: Planner, progress: Progress) -> LmEmitted:
        import shutil

        record: dict[str, Any] = {"scheme": "fp32"}
        if not variant.row.quantized:
            shutil.copyfile(lowered.fp32, out)
        else:
            record = _quantize(lowered, variant, settings, out, kept or {}, plan, progress)
        why = ("the converted program itself" if not variant.row.quantized else
               "the weight plan's codes in ai-edge-quantizer's dynamic layout on the converted program")
        return LmEmitted(lowered.cache, record, "edgeport export (torch.export -> litert-torch, two signatures, "
                         "static KV cache)", why)

    def bundle(self, work: Path, entries: list[dict], model_config: Any, tokenizer_dir: Path,
               threads: int) -> dict | None:
        """A .litertlm per .tflite, what LiteRT-LM's engine opens (litertlm_bundle.py)."""
        from exporter.formats.tflite.litertlm_bundle import write_bundle

        return write_bundle(work, entries, model_config, tokenizer_dir, threads)


def _replica(model: Any) -> Any:
    """A copy of `model` whose attention is the one LiteRT converts: what `_convert` takes."""
    from exporter.lm.attention import grouped_query_attention, with_attention

    return with_attention(model, ATTENTION, grouped_query_attention, causal_mask="eager")


def _convert(replica: Any, settings: LmSettings, path: Path) -> None:
    """`replica`'s decode step (a `_replica`) as a .tflite at `path`."""
    import torch

    from common.artifact_dir import cache_io_names
    from exporter.formats.tflite.quantize import quiet
    from exporter.lm.decode_step import decode_step

    step, layers, kv_heads, head_dim = decode_step(replica, settings.cache_length)
    inputs, outputs = cache_io_names(layers, IO)
    named = _named(step, inputs, outputs).eval()
    past = {name: torch.zeros(1, kv_heads, settings.cache_length, head_dim) for name in inputs[2:]}

    def sample(length: int) -> dict:
        return {inputs[0]: torch.zeros((1, length), dtype=torch.int32),
                inputs[1]: torch.arange(length, dtype=torch.int32), **past}

    try:
        import litert_torch

        with torch.no_grad(), quiet():
            converted = litert_torch.signature("prefill", named, (), sample(settings.prefill_length)) \
                .signature("decode", named, (), sample(1)).convert()
            converted.export(str(path))
    except Exception as exc:  # litert-torch on a model it cannot take
        from common.errors import first_line

        raise ConversionError(f"{type(replica).__name__} does not convert to LiteRT with a static KV cache "
                              f"({type(exc).__name__}: {first_line(exc, 200)}); rerun with --debug") from exc


def _named(step: Any, input_names: list[str], output_names: list[str]) -> Any:
    """The decode step with named inputs and outputs (litert-torch names a signature's tensors after them)."""
    import torch

    class Named(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.step = step

        def forward(self, **feeds):
            tokens, positions, *past = (feeds[name] for name in input_names)
            return dict(zip(output_names, self.step(tokens, positions, tuple(past)), strict=True))

    return Named()


def _quantize(lowered: TfliteLmLowered, variant: LmVariant, settings: LmSettings, out: Path, kept: Kept,
              plan: Planner, progress: Progress) -> dict:
    """The plan's codes for every decoder linear, the head and the lookup. 4-bit linears take the variant's scheme
    (an asymmetric one converted again with its offsets beside); 8-bit ones are symmetric per output channel.
    The lookup is symmetric, at embedding_bits: a tied head reads its tensor, except a 4-bit head with asymmetric
    blocks, which is untied to keep them. `kept` linears (auto precision of a 4-bit variant) are at 8 bits."""
    import torch
    from ai_edge_quantizer import qtyping

    from exporter.formats.tflite import planned
    from exporter.quant.blocks import BlockOffsetLinear
    from exporter.quant.plan import round_to_nearest
    from exporter.quant.rotate import Rotation

    bits, block = variant.row.bits, settings.block_size
    model = lowered.model
    table = model.get_input_embeddings()
    table_path = next(name for name, module in model.named_modules() if module is table)
    dim = table.weight.shape[1]
    scheme = weight_scheme(4, block, settings.symmetric, settings.zero_points)
    modules = dict(model.named_modules())
    head_bits = kept.get(HEAD) or settings.embedding_bits if bits == 4 else 8

    def blocks(path: str, layer_bits: int) -> Scheme:
        return scheme if layer_bits == 4 else Scheme.per_channel(modules[path].weight.shape[1])

    body = linear_modules(model)
    chosen = {path: plan.weight(path, blocks(path, kept.get(path) or bits), settings.method) for path in body}
    # a gathered row cannot add block offsets: the lookup's blocks are symmetric
    lookup = Scheme(4, block if dim % block == 0 else dim, True) if head_bits == 4 else Scheme.per_channel(dim)
    chosen[table_path] = plan.weight(table_path, lookup, "rtn")  # no calibration Hessian for a lookup
    tied = HEAD in modules and modules[HEAD].weight is table.weight
    shared = tied and (head_bits == 8 or scheme.symmetric)  # the head reads the lookup's tensor
    if HEAD in modules and not shared:
        chosen[HEAD] = plan.weight(HEAD, blocks(HEAD, head_bits), settings.method)
    plans: dict[bytes, Any] = {}
    offsets = [path for path, weight in chosen.items() if not weight.scheme.symmetric]
    if offsets:
        progress(f"tflite {variant.precision}: {len(offsets)} linears' asymmetric blocks as symmetric int4 plus "
                 "block offsets: converting that graph with litert-torch")
        model = _replica(model)  # the one copy: the offsets go into the model converted
        modules = dict(model.named_modules())
        for path in offsets:
            symmetric, linear = chosen[path].symmetric_part(), torch.nn.Linear(*modules[path].weight.shape[::-1],
                                                                              bias=False)
            with torch.no_grad():
                linear.weight.copy_(symmetric.dequantize())
            wrapped = BlockOffsetLinear(linear, chosen[path].offsets(), scheme.block_size)
            parent, _, name = path.rpartition(".")
            setattr(modules[parent] if parent else model, name, wrapped)
            plans[planned.fingerprint(linear.weight.detach())] = symmetric
            side = wrapped.offsets.weight.detach()  # int8 per row, as ExecuTorch's a8w8 offsets
            plans[planned.fingerprint(side)] = round_to_nearest(side, Scheme.per_channel(side.shape[1]))
        program = lowered.scratch / f"model.{variant.precision}.offsets.fp32.tflite"
        _convert(model, lowered.settings, program)
    else:
        program = lowered.fp32
    modules = dict(model.named_modules())
    for path, weight in chosen.items():
        if weight.scheme.symmetric:
            plans[planned.fingerprint(modules[path].weight.detach())] = weight
    progress(f"tflite {variant.precision}: the weight plan's int{bits} codes in ai-edge-quantizer's dynamic layout")
    # block_size is one of LiteRT's (BLOCKS_OF_32 in targets/lm.py refuses the others at load)
    granularity = getattr(qtyping.QuantGranularity, f"BLOCKWISE_{block}") if bits == 4 else \
        qtyping.QuantGranularity.CHANNELWISE
    rotations = [module.matrix.numpy() for module in model.modules() if isinstance(module, Rotation)]
    rounded = planned.quantize(program, out, bits, granularity, plans, floats=rotations)
    by_method = planned_by(chosen.values())
    return {"scheme": f"int{bits} {'blocks of ' + str(block) if bits == 4 else 'per output channel'}, int8 "
                      "activations per call (ai-edge-quantizer's dynamic layout, XNNPACK)",
            "weight_bits": bits, "granularity": f"blockwise {block}" if bits == 4 else "channelwise",
            "decoder_linears_scheme": scheme.describe() if bits == 4 else "8-bit per output channel (symmetric)",
            "lookup_scheme": lookup.describe(), "head_bits": head_bits,
            "head": "the lookup's tensor (tied)" if shared else "its own tensor",
            "block_offsets": f"{len(offsets)} linears: symmetric int4 blocks plus a matmul of block means times each "
                             "block's offset, int8 per row (LiteRT's blocks have no zero points)" if offsets else None,
            "method": settings.method, "computed_in": "PyTorch (exporter/quant/plan.py), codes written into "
                                                      "ai-edge-quantizer's tensors as they are",
            "kept": dict.fromkeys(kept, 8),
            "planned_by": by_method, "scales": "float16 rounded to bfloat16 precision (LiteRT's block-wise layout)"
                                               if bits == 4 else "float32",
            "weights": {"from_the_plan": len(plans), "rounded_by_ai_edge_quantizer": rounded,
                        "rotations_in_float": len(rotations)},
            "source_grid": source_grid_note(plan, body, scheme if bits == 4 else None, by_method,
                                            'symmetric = false and zero_points = "float"')}


BACKEND = TfliteLmBackend()
