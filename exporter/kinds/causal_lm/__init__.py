"""The causal-LM kind: decoder-only language models with a KV cache (Hugging Face folders, GGUF files,
demo:tinylm, factories returning (model, tokenizer)), exported by export.py and judged token by token
(validators/judges/causal_lm.py). This module stays light: `edgeport targets` imports it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from targets.lm import LmTarget

# What an export holds, measured here with exporter/memory.py's per-step peaks: the formats' libraries (a tiny
# model's whole export peaks at 1.07 GB); resident bytes per parameter per variant (SmolLM2-135M cut to 8 layers,
# 57M parameters, to android-llm's 6 variants: 3.9 GB, 7.4 bytes; a Qwen2.5-0.5B-shaped model's ONNX fp32 + w4:
# 10.6 GB, 8.6 bytes with round-to-nearest w4, and 7.8 GB, 5.8 bytes with GPTQ w4 since the w4 step leaves the
# float graph on disk and gathers Hessians a group at a time); and the reference's and the verdict's
# distributions, bytes per vocabulary entry per judged position
LIBRARIES_BYTES = 1.1e9
BYTES_PER_PARAMETER_PER_VARIANT = 9.0
BYTES_PER_LOGIT = 8.0
# pruning, before any variant: the unpruned teacher and the student, the student's gradients and Adam's two moments,
# float32 (5 x 4 bytes), and per logit of a distillation batch both models' logits, their log-softmaxes and gradients
PRUNING_BYTES_PER_PARAMETER = 20.0
PRUNING_BYTES_PER_LOGIT = 24.0
MOST_FAVOURABLE = 0.65  # of the estimate beyond the libraries: below the least measured (0.68, the 0.5B ONNX pair)


class CausalLmKind:
    name = LmTarget.kind
    default_model = "demo:tinylm"
    sources = "a causal language model"
    targets = "a language-model target"
    data_files = "a UTF-8 text file"  # what --calib and --eval read

    def claims(self, spec: Any) -> bool:
        from exporter.lm.source import is_causal_lm_spec

        return isinstance(spec, str) and is_causal_lm_spec(spec)

    def describe(self, target: LmTarget) -> list[str]:
        lm = target.lm
        lines = [f"  language model: {lm.cache_length}-token KV cache, prefill {lm.prefill_length}, "
                 f"{lm.new_tokens} greedy tokens per prompt; {target.threads} thread(s)"]
        for v in target.variants:
            limits = ", ".join(f"{k}={val:g}" for k, val in v.budget.limits().items())
            settings = ", ".join(f"{k}={getattr(v.settings, k)}" for k in v.row.reads)
            lines.append(f"  {v.format:5} {v.precision:13} {v.filename:22} {limits}" + (f"; {settings}" if settings
                                                                                      else ""))
        return lines

    def memory_need(self, spec: Any, target: LmTarget) -> Any:
        from exporter.lm.source import source_size
        from exporter.memory import Need

        size = isinstance(spec, str) and source_size(spec)
        if not size:
            return None
        parameters, vocabulary = size
        lm = target.lm
        positions = lm.eval_windows * lm.window_length + lm.cache_length
        variants = len(target.variants)
        need = (LIBRARIES_BYTES + BYTES_PER_PARAMETER_PER_VARIANT * variants * parameters
                + BYTES_PER_LOGIT * vocabulary * positions)
        how = (f"{parameters / 1e9:.2f}B parameters x {BYTES_PER_PARAMETER_PER_VARIANT:g} bytes x {variants} variants, "
               f"a {vocabulary}-token vocabulary at {positions} judged positions, and the formats' libraries")
        if target.prune is not None:
            pruning = (LIBRARIES_BYTES + PRUNING_BYTES_PER_PARAMETER * parameters
                       + PRUNING_BYTES_PER_LOGIT * vocabulary * target.prune.batch * lm.window_length)
            if pruning > need:
                need, how = pruning, (f"pruning first: {parameters / 1e9:.2f}B parameters x "
                                      f"{PRUNING_BYTES_PER_PARAMETER:g} bytes (teacher, student, gradients, Adam), "
                                      f"{target.prune.batch} x {lm.window_length} distilled positions of a "
                                      f"{vocabulary}-token vocabulary")
        at_least = LIBRARIES_BYTES + MOST_FAVOURABLE * (need - LIBRARIES_BYTES)
        return Need(int(at_least), int(need), how)

    def prepare(self, options: Any, target: LmTarget, progress: Callable[[str], None]) -> Any:
        from exporter.kinds.causal_lm.export import LmExport

        return LmExport(options, target, progress)


KIND = CausalLmKind()
