"""`edgeport generate DIR --prompt TEXT`: stream tokens from a shipped language-model artifact with its
own runtime and KV cache, so a person can try what was exported (greedy, stops at end-of-sequence)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from common.artifact_dir import read_manifest
from common.errors import ArtifactError, EdgeportError
from validators.lm.prompt_recipe import encode_prompt
from validators.lm.validate import TOKENIZER_DIR


def _pick(manifest: dict, artifact: str | None) -> dict:
    entries = manifest["artifacts"]
    if artifact is None:
        return entries[0]
    for entry in entries:
        if artifact in (entry["path"], entry["precision"]):
            return entry
    raise EdgeportError(f"no artifact {artifact!r} here; choose one of: {', '.join(e['path'] for e in entries)}")


def stream(directory: Path, prompt: str, max_tokens: int, artifact: str | None = None,
           threads: int = 1) -> Iterator[str]:
    """Yield the text of each new token as the artifact generates it."""
    manifest = read_manifest(directory)  # a wrong directory fails before the heavy imports
    if "lm" not in manifest:  # the prompts, tokenizer and cache geometry a language-model export records
        raise ArtifactError(f"{directory} holds no language model; generate runs artifacts of android-llm-like targets")
    entry = _pick(manifest, artifact)
    from transformers import AutoTokenizer

    from validators.lm.runtime import open_lm

    tokenizer = AutoTokenizer.from_pretrained(directory / TOKENIZER_DIR, local_files_only=True)
    ids = encode_prompt(tokenizer, prompt, bool(manifest["lm"].get("chat_template")))
    lm = open_lm(directory, entry, threads)
    room = lm.cache_length - len(ids)
    if room < 1:
        raise EdgeportError(f"the prompt is {len(ids)} tokens; the artifact's KV cache holds {lm.cache_length}: "
                            "shorten the prompt (or export with a larger cache_length)")
    logits = lm.prefill([int(i) for i in ids])[-1]
    generated: list[int] = []
    shown = ""
    for _ in range(min(max_tokens, room)):
        token = int(np.argmax(logits))
        if token == tokenizer.eos_token_id:
            break
        generated.append(token)
        text = tokenizer.decode(generated, skip_special_tokens=True)
        if text.startswith(shown):  # a token that completes a multi-byte character shows it whole
            yield text[len(shown):]
            shown = text
        if len(generated) < min(max_tokens, room):
            logits = lm.forward([token])[-1]
    if len(generated) == room < max_tokens:  # the cache is full: no sliding window, the answer ends here
        print(f"\n[edgeport] stopped after {room} new tokens: the prompt's {len(ids)} and these fill the artifact's "
              f"{lm.cache_length}-token KV cache (export with a larger cache_length for longer answers)",
              file=sys.stderr)


def generate(directory: Path, prompt: str, max_tokens: int, artifact: str | None, write: Callable[[str], None]) -> None:
    for piece in stream(directory, prompt, max_tokens, artifact):
        write(piece)
