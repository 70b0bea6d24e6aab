"""The causal-LM kind: decoder-only language models with a KV cache (Hugging Face folders, GGUF files,
demo:tinylm, factories returning (model, tokenizer)), exported by export.py and judged token by token
(validators/judges/causal_lm.py). This module stays light: `edgeport targets` imports it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from targets.lm import LmTarget

# What an export holds at its heaviest step, measured here with exporter/memory.py's per-step peaks: the formats'
# libraries (a tiny model's whole export peaks at 1.07 GB); resident bytes per parameter at each format's heaviest
# step (ONNX: a Qwen2.5-0.5B-shaped model, 10.9 GB, and SmolLM2-135M; ExecuTorch and LiteRT: SmolLM2-135M's a8w4
# variants, 5.4 and 6.2 GB, each step after the formats before it; Core ML not measured at this size, taken as
# LiteRT's); and the reference's and the verdict's distributions, bytes per vocabulary entry per judged position
LIBRARIES_BYTES = 1.1e9
BYTES_PER_PARAMETER = {"onnx": 18.0, "executorch": 30.0, "tflite": 36.0, "coreml": 36.0}
BYTES_PER_LOGIT = 8.0

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

    def memory_need(self, spec: Any, target: LmTarget) -> tuple[int, str] | None:
        from exporter.lm.source import source_size

        size = isinstance(spec, str) and source_size(spec)
        if not size:
            return None
        parameters, vocabulary = size
        lm = target.lm
        positions = lm.eval_windows * lm.window_length + lm.cache_length
        heaviest = max(target.formats, key=BYTES_PER_PARAMETER.__getitem__)
        per_parameter = BYTES_PER_PARAMETER[heaviest]
        need = LIBRARIES_BYTES + per_parameter * parameters + BYTES_PER_LOGIT * vocabulary * positions
        return int(need), (f"{parameters / 1e9:.2f}B parameters x {per_parameter:g} bytes at the {heaviest} step, a "
                           f"{vocabulary}-token vocabulary at {positions} judged positions, and the formats' libraries")

    def prepare(self, options: Any, target: LmTarget, progress: Callable[[str], None]) -> Any:
        from exporter.kinds.causal_lm.export import LmExport

        return LmExport(options, target, progress)


KIND = CausalLmKind()
