"""What an iOS or macOS app loads beside a .mlpackage: the source's tokenizer.json and tokenizer_config.json (chat
template inside) for swift-transformers' tokenizer, and generation_config.json (BOS, end-of-sequence ids, greedy,
the cache length as max_length) for the app's loop over the program's one-token call. swift-transformers runs only
on Apple platforms: the verdict checks the tokenizer file with the Hugging Face tokenizers library that reads the
same tokenizer.json, and says the generation loop was not run (validators/lm/bundle.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

GENERATION_CONFIG = "generation_config.json"


def write_bundle(work: Path, entries: list[dict], model_config: Any, tokenizer_dir: Path,
                 threads: int) -> dict | None:
    from exporter.lm.backend import bundle_tokenizer
    from exporter.lm.decode_step import eos_ids
    from validators.lm.bundle import TokenizerFile
    from validators.lm.prompt_recipe import prompt_recipe

    programs = [e for e in entries if e["format"] == "coreml"]
    if not programs or not (tokenizer_dir / "tokenizer.json").is_file():
        return None
    tokenizer, copied = bundle_tokenizer(tokenizer_dir, work)
    eos = eos_ids(model_config, tokenizer)
    (work / GENERATION_CONFIG).write_text(json.dumps(
        {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": eos, "pad_token_id": tokenizer.pad_token_id,
         "do_sample": False, "max_length": programs[0]["cache"]["cache_length"]}, indent=1) + "\n")
    runtime = TokenizerFile(work, {"tokenizer": "tokenizer.json"}, tokenizer)
    return {"runtime": "Core ML app (swift-transformers)", "tokenizer": "tokenizer.json",
            "prompt": prompt_recipe(tokenizer, runtime.encode, runtime.template,
                                    "tokenizer.encode(text:) (swift-transformers), then the program per token"),
            "eos_token_ids": eos, "opens": (f"MLModel(<artifact>) for {', '.join(e['path'] for e in programs)}; "
                                            f"AutoTokenizer.from(modelFolder:) reads tokenizer.json here"),
            "files": [GENERATION_CONFIG, *copied]}
