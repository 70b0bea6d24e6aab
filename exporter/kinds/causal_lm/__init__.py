"""The causal-LM kind: decoder-only language models with a KV cache (Hugging Face folders, GGUF files,
demo:tinylm, factories returning (model, tokenizer)), exported by export.py and judged token by token
(validators/judges/causal_lm.py). This module stays light: `edgeport targets` imports it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from targets.lm import LmTarget


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

    def prepare(self, options: Any, target: LmTarget, progress: Callable[[str], None]) -> Any:
        from exporter.kinds.causal_lm.export import LmExport

        return LmExport(options, target, progress)


KIND = CausalLmKind()
