"""How a user's message becomes the ids the model reads: edgeport's own encoding (encode_prompt: the reference, the
verdict and `edgeport generate` use it), and how an app reaches the same ids with a runtime's own tokenizer: the
chat template where the model has one, BOS's text put first where edgeport's ids start with BOS and that tokenizer
adds none, then that tokenizer's encode. Measured on the runtime's tokenizer, not assumed: onnxruntime-genai's reads
neither a tokenizer.json post-processor nor add_bos_token (Gemma's BOS, added by its post-processor, is missing
there), ExecuTorch's HFTokenizer ignores the BOS count its encode takes. Each bundle records its recipe; the verdict
applies it and checks every prompt."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def encode_prompt(tokenizer, prompt: str, chat: bool) -> list[int]:
    """A user's message as the model reads it: through its chat template when it has one, else after BOS."""
    if chat and getattr(tokenizer, "chat_template", None):
        encoded = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                tokenize=True)
        return [int(i) for i in (encoded["input_ids"] if hasattr(encoded, "keys") else encoded)]
    ids = [int(i) for i in tokenizer(prompt)["input_ids"]]
    bos = tokenizer.bos_token_id
    return ([bos] if bos is not None and (not ids or ids[0] != bos) else []) + ids


def prompt_recipe(tokenizer: Any, encode: Callable[[str], list[int]], template: Callable[[str], str],
                  how: str) -> dict:
    """tokenizer: the source's (transformers); encode: the runtime tokenizer's text -> ids; template: the chat
    template applied as the app applies it (used only when the model has one); how: the runtime's calls, named.
    BOS goes in as its text (a special token in the text is matched by both runtimes' tokenizers), not as an
    option: ExecuTorch's HFTokenizer ignores encode's BOS count, genai's encode has none."""
    chat = bool(getattr(tokenizer, "chat_template", None))
    bos = tokenizer.bos_token_id
    got = encode(template("a") if chat else "a")
    prepend = bos is not None and encode_prompt(tokenizer, "a", chat)[:1] == [bos] and got[:1] != [bos]
    steps = ("the chat template applied to the message, " if chat else "") + (
        f"BOS's text {tokenizer.bos_token!r} put first, " if prepend else "") + how
    return {"chat_template": chat, "prepend_text": tokenizer.bos_token if prepend else "", "steps": steps}


def apply_recipe(recipe: dict, message: str, encode: Callable[[str], list[int]],
                 template: Callable[[str], str]) -> list[int]:
    """The ids an app following the recipe feeds the model."""
    return encode(recipe_text(recipe, message, template))


def recipe_text(recipe: dict, message: str, template: Callable[[str], str]) -> str:
    """The text an app following the recipe hands its runtime's tokenizer."""
    return recipe["prepend_text"] + (template(message) if recipe["chat_template"] else message)
