"""What ExecuTorch's LLM runner opens: `TextLLMRunner("dir/model.a8w4.pte", "dir")` (its HFTokenizer reads
tokenizer.json, and BOS and EOS from tokenizer_config.json, when given the folder). The .pte carries
the runner's metadata as constant methods (lm.py runner_metadata) and its one-token method is `forward`, which
the runner calls for the prompt (one token per call: enable_dynamic_shape is false) and for each new token; the
source's tokenizer.json and tokenizer_config.json sit beside it. The recipe (validators/lm/prompt_recipe.py)
says what the app adds: the chat template, rendered by the app, and BOS through GenerationConfig.num_bos.
Validated by validators/lm/bundle.py: the runner must generate the text edgeport's run of the .pte generated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_bundle(work: Path, entries: list[dict], model_config: Any, tokenizer_dir: Path,
                 threads: int) -> dict | None:
    from exporter.lm.backend import bundle_tokenizer
    from exporter.lm.decode_step import eos_ids
    from validators.lm.bundle import runner_encoders
    from validators.lm.prompt_recipe import prompt_recipe

    programs = [e["path"] for e in entries if e["format"] == "executorch"]
    if not programs:
        return None
    tokenizer, copied = bundle_tokenizer(tokenizer_dir, work)
    encode, template, _ = runner_encoders(work, tokenizer)
    return {"runtime": "ExecuTorch LLM runner", "tokenizer": ".",
            "prompt": prompt_recipe(tokenizer, encode, template,
                                    "TextLLMRunner.generate(text, GenerationConfig(temperature=0))"),
            "eos_token_ids": eos_ids(model_config, tokenizer),
            "opens": f"TextLLMRunner(<artifact>, <this directory>) opens {', '.join(programs)}", "files": copied}
