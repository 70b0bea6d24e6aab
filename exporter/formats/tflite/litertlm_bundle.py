"""What LiteRT-LM opens: `litert_lm.Engine("dir/model.a8w4.litertlm")`, one .litertlm per .tflite, written by
LiteRT-LM's own builder (litert-lm-builder): the .tflite (its prefill and decode signatures bound by name,
lm.py), the source's tokenizer.json, and the LLM metadata: the cache length as max_num_tokens, the end-of-sequence
ids as stop tokens, the chat template as its Jinja prompt template. No start token: the recipe
(validators/lm/prompt_recipe.py) says what the app puts first, measured on the engine's own tokenizer.
Validated by validators/lm/bundle.py: the engine's session must generate the text edgeport's run of the .tflite
generated.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

SUFFIX = ".litertlm"


def write_bundle(work: Path, entries: list[dict], model_config: Any, tokenizer_dir: Path,
                 threads: int) -> dict | None:
    from litert_torch.generative.utilities.litertlm_builder import build_litertlm
    from transformers import AutoTokenizer

    from common.quiet import silenced
    from exporter.lm.decode_step import eos_ids
    from validators.lm.bundle import LiteRtLmRuntime
    from validators.lm.prompt_recipe import prompt_recipe

    models = [e for e in entries if e["format"] == "tflite"]
    if not models or not (tokenizer_dir / "tokenizer.json").is_file():
        return None
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    stop, bundles = eos_ids(model_config, tokenizer), {}
    for entry in models:
        with tempfile.TemporaryDirectory() as scratch, silenced():
            build_litertlm(str(work / entry["path"]), scratch, str(work), entry["cache"]["cache_length"],
                           hf_tokenizer_model_path=str(tokenizer_dir / "tokenizer.json"),
                           stop_token_ids=stop,
                           jinja_prompt_template=getattr(tokenizer, "chat_template", None))
        bundles[entry["path"]] = Path(entry["path"]).stem + SUFFIX
    runtime = LiteRtLmRuntime(work, {"models": bundles}, tokenizer)
    return {"runtime": "LiteRT-LM", "models": bundles,
            "prompt": prompt_recipe(tokenizer, runtime.encode, runtime.template,
                                    "Session.run_prefill([text]) (apply_prompt_template=False), then run_decode"),
            "eos_token_ids": stop,
            "opens": "litert_lm.Engine(<artifact>.litertlm) opens each, its tokenizer and metadata inside",
            "files": list(bundles.values())}
