"""Language models as LiteRT (.tflite): the decode step of exporter/lm/decode_step.py (static KV cache as
named inputs and outputs) converted by litert-torch with two signatures over shared weights:

    prefill  input_ids [1, prefill_length], cache_position [prefill_length]  (a shorter chunk is padded;
             the padding's cache rows lie past the last real position, masked by causality until a later
             token overwrites them)
    decode   input_ids [1, 1], cache_position [1]
    both     past_<i>_key / past_<i>_value [1, kv_heads, cache_length, head_dim] in, logits and
             present_<i>_key / present_<i>_value out (names Python keywords can carry)

Attention regroups the query heads per key/value head instead of repeating the cache (exporter/lm/attention.py:
LiteRT's BROADCAST_TO made SmolLM2-135M decode 6x slower). Weights are quantized by ai-edge-quantizer's dynamic
recipes (int8 channel-wise or int4 block-wise weights; activations quantized per call): a8w8 and a8w4, as
ExecuTorch names the same schemes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from exporter.errors import ConversionError
from exporter.lm.backend import Kept, LmEmitted, Progress
from exporter.lm.source import CausalLM
from exporter.quant.plan import Planner
from targets.lm import LmSettings, LmVariant

# litert-torch names an op after its output tensors, not reliably after its module (an MLP's up_proj carries
# gate_proj's name), so a decoder linear cannot yet be picked out of the program by scope
NO_AUTO_PRECISION = ("not offered for LiteRT language-model variants: their ops cannot yet be mapped to decoder "
                     "linears; the variant is judged as quantized")
ATTENTION = "edgeport_grouped_query_attention"  # exporter/lm/attention.py: no BROADCAST_TO of the cache
IO = {"position": "cache_position", "past": "past_{layer}_{kv}", "present": "present_{layer}_{kv}",
      "signatures": {"prefill": "prefill_length", "decode": 1}}


class TfliteLmLowered:
    def __init__(self, fp32: Path, cache: dict) -> None:
        self.fp32, self.cache = fp32, cache


class TfliteLmBackend:
    format: ClassVar[str] = "tflite"
    cannot_keep_layers: ClassVar[str] = NO_AUTO_PRECISION
    computes_windows: ClassVar[bool] = True  # the model's masks; grouped_query_attention applies the soft cap
    computes_softcap: ClassVar[bool] = True

    def lower(self, lm: CausalLM, settings: LmSettings, scratch: Path, progress: Progress) -> TfliteLmLowered:
        import torch

        from exporter.formats.tflite.quantize import quiet
        from exporter.lm.attention import grouped_query_attention, with_attention
        from exporter.lm.decode_step import decode_step, io_names

        progress(f"tflite: converting {lm.name}'s decode step with litert-torch (signatures prefill "
                 f"[{settings.prefill_length} tokens] and decode [1 token], {settings.cache_length}-token KV cache)")
        model = with_attention(lm.model, ATTENTION, grouped_query_attention, causal_mask="eager")
        step, layers, kv_heads, head_dim = decode_step(model, settings.cache_length)
        inputs, outputs = io_names(layers, IO)
        named = _named(step, inputs[2:], outputs).eval()
        past = {name: torch.zeros(1, kv_heads, settings.cache_length, head_dim) for name in inputs[2:]}

        def sample(length: int) -> dict:
            return {"input_ids": torch.zeros((1, length), dtype=torch.long), "cache_position": torch.arange(length),
                    **past}

        fp32 = scratch / "model.fp32.tflite"
        try:
            import litert_torch

            with torch.no_grad(), quiet():
                converted = litert_torch.signature("prefill", named, (), sample(settings.prefill_length)) \
                    .signature("decode", named, (), sample(1)).convert()
                converted.export(str(fp32))
        except Exception as exc:  # litert-torch on a model it cannot take
            from common.errors import first_line

            raise ConversionError(f"{type(lm.model).__name__} does not convert to LiteRT with a static KV cache "
                                  f"({type(exc).__name__}: {first_line(exc, 200)}); rerun with --debug") from exc
        return TfliteLmLowered(fp32, {"io": IO, "layers": layers, "kv_heads": kv_heads, "head_dim": head_dim,
                                      "cache_length": settings.cache_length,
                                      "prefill_length": settings.prefill_length})

    def emit(self, lowered: TfliteLmLowered, variant: LmVariant, settings: LmSettings, out: Path, kept: Kept | None,
             plan: Planner, progress: Progress) -> LmEmitted:
        import shutil

        record: dict[str, Any] = {"scheme": "fp32"}
        if not variant.row.quantized:
            shutil.copyfile(lowered.fp32, out)
        else:
            progress(f"tflite {variant.precision}: ai-edge-quantizer, dynamic int{variant.row.bits} weights")
            record = _quantize(lowered.fp32, out, variant.row.bits, settings.block_size)
        why = ("the converted program itself" if not variant.row.quantized else
               "ai-edge-quantizer's dynamic recipe on the converted program")
        return LmEmitted(lowered.cache, record, "edgeport export (torch.export -> litert-torch, two signatures, "
                         "static KV cache)", why)


def _named(step: Any, past_names: list[str], output_names: list[str]) -> Any:
    """The decode step with named inputs and outputs (litert-torch names a signature's tensors after them)."""
    import torch

    class Named(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.step = step

        def forward(self, input_ids, cache_position, **past):
            results = self.step(input_ids, cache_position, tuple(past[name] for name in past_names))
            return dict(zip(output_names, results, strict=True))

    return Named()


def _quantize(fp32: Path, out: Path, bits: int, block_size: int) -> dict:
    from ai_edge_quantizer import qtyping, quantizer, recipe_manager

    from exporter.formats.tflite.quantize import quiet

    def granularity(layer_bits: int) -> Any:
        if layer_bits == 8:
            return qtyping.QuantGranularity.CHANNELWISE
        found = getattr(qtyping.QuantGranularity, f"BLOCKWISE_{block_size}", None)
        if found is None:
            raise ConversionError(f"ai-edge-quantizer has no {block_size}-weight blocks; set block_size to 32, 64, "
                                  "128 or 256 in the target's [lm] table")
        return found

    manager = recipe_manager.RecipeManager()
    every = qtyping.TFLOperationName.ALL_SUPPORTED
    manager.add_dynamic_config(regex=".*", operation_name=every, num_bits=bits, granularity=granularity(bits))
    with quiet():
        q = quantizer.Quantizer(str(fp32))
        q.load_quantization_recipe(manager.get_quantization_recipe())
        q.quantize().export_model(str(out), overwrite=True)
    return {"scheme": f"ai-edge-quantizer dynamic int{bits} weights, int8 activations per call (XNNPACK)",
            "weight_bits": bits, "granularity": f"blockwise {block_size}" if bits == 4 else "channelwise",
            "symmetric": True, "weights": "every supported op's weights (decoder linears, embedding, head)"}


BACKEND = TfliteLmBackend()
