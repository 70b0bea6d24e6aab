"""A language-model artifact as a device runs it: its own runtime, a fixed-length KV cache carried from one
call to the next, prefill in chunks, then one token per call. One class per runtime (in
validators/runtimes/<runtime>.py, `open_lm`), chosen by the manifest entry's format; this module holds
what they share: chunked prefill and greedy decoding from an empty cache."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np


class CachedLM(ABC):
    """A runtime subclass sets cache_length, prefill_length and runtime, and implements reset and forward."""

    cache_length: int
    prefill_length: int
    runtime: str  # e.g. "onnxruntime 1.32.0 (CPUExecutionProvider)"
    length = 0  # tokens in the cache

    @abstractmethod
    def reset(self) -> None:
        """An empty cache."""

    @abstractmethod
    def forward(self, tokens: list[int]) -> np.ndarray:
        """Logits [len(tokens), vocab] (float32) for tokens written at the next positions of the cache."""

    def check_room(self, count: int) -> None:
        if self.length + count > self.cache_length:
            raise ValueError(f"{self.length + count} tokens do not fit the artifact's {self.cache_length}-token cache")

    def prefill(self, tokens: list[int]) -> np.ndarray:
        """Logits of every position of tokens, fed in chunks of at most prefill_length."""
        chunks = [self.forward(tokens[i:i + self.prefill_length]) for i in range(0, len(tokens), self.prefill_length)]
        return np.concatenate(chunks, axis=0)

    def greedy(self, prompt: list[int], new_tokens: int) -> tuple[list[int], np.ndarray]:
        """(the new tokens, the logits each was chosen from [new_tokens, vocab]), from an empty cache."""
        self.reset()
        logits = self.prefill(prompt)[-1]
        tokens, chosen_from = [], []
        for _ in range(new_tokens):
            token = int(np.argmax(logits))
            tokens.append(token)
            chosen_from.append(logits)
            if len(tokens) < new_tokens:
                logits = self.forward([token])[-1]
        return tokens, np.stack(chosen_from)


    def forced(self, prompt: list[int], tokens: list[int]) -> np.ndarray:
        """Logits [len(tokens), vocab] of the position before each of tokens, the prompt prefilled and then
        tokens fed one per decode call from an empty cache: another model's greedy text through this artifact's
        decode path."""
        self.reset()
        rows = [self.prefill(prompt)[-1]]
        rows += [self.forward([token])[-1] for token in tokens[:-1]]
        return np.stack(rows)


def open_lm(directory: Path, entry: dict, threads: int = 1) -> CachedLM:
    """The manifest entry's artifact, opened by its format's runtime."""
    from validators.runtimes import runtime_module

    return runtime_module(entry["format"]).open_lm(directory / entry["path"], entry["cache"], threads)
