"""Language models as ONNX: one decode step with a static KV cache (torch.export -> ONNX opset 23),
block-wise weights through MatMulNBits, or onnxruntime-genai's model builder where it builds the variant."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from exporter.lm.backend import Kept, LmEmitted, Progress
from exporter.lm.source import CausalLM
from exporter.quant.plan import Planner
from targets.lm import LmSettings, LmVariant

TRACED = "edgeport export (torch.export -> ONNX, static KV cache)"


class OnnxLmLowered:
    def __init__(self, lm: CausalLM, fp32: Path, cache: dict, scratch: Path) -> None:
        self.lm, self.fp32, self.cache, self.scratch = lm, fp32, cache, scratch


class OnnxLmBackend:
    format: ClassVar[str] = "onnx"
    cannot_keep_in_float: ClassVar[str] = ""
    computes_windows: ClassVar[bool] = True  # the model's own attention and masks, traced
    computes_softcap: ClassVar[bool] = True

    def lower(self, lm: CausalLM, settings: LmSettings, scratch: Path, progress: Progress) -> OnnxLmLowered:
        from exporter.formats.onnx.graph import export_decode_step

        progress(f"onnx: tracing {lm.name}: one decode step, {settings.cache_length}-token KV cache, "
                 "torch.export -> ONNX")
        fp32 = scratch / "model.onnx"
        cache = export_decode_step(lm.model, settings.cache_length, settings.prefill_length, fp32)
        return OnnxLmLowered(lm, fp32, cache, scratch)

    def emit(self, lowered: OnnxLmLowered, variant: LmVariant, settings: LmSettings, out: Path, kept: Kept | None,
             plan: Planner, progress: Progress) -> LmEmitted:
        from exporter.formats.onnx.genai_builder import build, builder_choice
        from exporter.formats.onnx.graph import save_onnx, share_tied_table, tied_table_note
        from exporter.formats.onnx.weights import WeightPlan, quantize_weights, to_fp16

        lm = lowered.lm
        model_type = getattr(lm.model.config, "model_type", "")
        use_builder, why = builder_choice(model_type, variant.precision, settings.embedding_bits, settings.builder,
                                          settings.symmetric, settings.method, settings.recovery)
        if kept:
            use_builder, why = False, ("layers kept at higher precision (auto precision, or the source's own mix): "
                                       "edgeport's own export")
        cache, built_by = lowered.cache, TRACED
        if variant.precision == "fp32":
            import onnx

            model = onnx.load(str(lowered.fp32))
            record, why = {"scheme": "fp32", **tied_table_note(share_tied_table(model))}, "the traced program itself"
            save_onnx(model, out)
        elif variant.precision == "fp16":
            record, why = to_fp16(lowered.fp32, out), "the traced program in float16"
        elif use_builder:
            folder = lm.save_folder(lowered.scratch / "hf")
            cache, record = build(folder, out, settings.block_size, settings.method, settings.cache_length,
                                  settings.prefill_length, lm.model.config, lowered.scratch)
            built_by = "onnxruntime-genai model builder"
        else:
            bits = variant.row.bits
            policy = WeightPlan(bits, settings.block_size, settings.method,
                                settings.embedding_bits if bits == 4 else 8, dict(kept or {}), settings.symmetric,
                                settings.zero_points == "float", variant.row.activations)
            record = quantize_weights(lowered.fp32, out, policy, plan)
        data = out.with_name(out.name + ".data")
        return LmEmitted(cache, record, built_by, why, [data] if data.is_file() else [])

    def bundle(self, work: Path, entries: list[dict], model_config: Any, tokenizer_dir: Path,
               threads: int) -> dict | None:
        """onnxruntime-genai's layout for the directory's ONNX artifacts (genai_bundle.py)."""
        from exporter.formats.onnx.genai_bundle import write_bundle

        return write_bundle(work, entries, model_config, tokenizer_dir, threads)


BACKEND = OnnxLmBackend()
