"""Run a language-model ONNX artifact as a device does: onnxruntime, a fixed-length KV cache fed back
from one call to the next (I/O binding, no copies), prefill in chunks, then one token per call.

The manifest's `cache` entry says how the artifact is fed (exporter/lm/decode_step.py):
  position "cache_position": the positions of the tokens in this call (edgeport's own export);
  position "attention_mask": ones over every position so far (onnxruntime-genai's builder; its
  GroupQueryAttention writes into the past buffer in place when past and present share it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class OnnxLM:
    def __init__(self, path: Path, cache: dict, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.io = cache["io"]
        self.layers, self.kv_heads, self.head_dim = cache["layers"], cache["kv_heads"], cache["head_dim"]
        self.cache_length, self.prefill_length = cache["cache_length"], cache["prefill_length"]
        self.names = [self.io[side].format(layer=i, kv=kv) for side in ("past", "present")
                      for i in range(self.layers) for kv in ("key", "value")]
        self.shared_buffer = self.io["position"] == "attention_mask"
        self.reset()

    def reset(self) -> None:
        import onnxruntime as ort

        shape = (1, self.kv_heads, self.cache_length, self.head_dim)
        self.past = [ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32)) for _ in range(2 * self.layers)]
        self.length = 0

    def forward(self, tokens: list[int]) -> np.ndarray:
        """Logits [len(tokens), vocab] for tokens written at the next positions of the cache."""
        import onnxruntime as ort

        count = len(tokens)
        if self.length + count > self.cache_length:
            raise ValueError(f"{self.length + count} tokens do not fit the artifact's {self.cache_length}-token cache")
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", np.asarray([tokens], dtype=np.int64))
        if self.shared_buffer:
            binding.bind_cpu_input("attention_mask", np.ones((1, self.length + count), dtype=np.int64))
        else:
            binding.bind_cpu_input("cache_position", np.arange(self.length, self.length + count, dtype=np.int64))
        half = 2 * self.layers
        for name, value in zip(self.names[:half], self.past, strict=True):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name, value in zip(self.names[half:], self.past, strict=True):
            if self.shared_buffer:  # present is the past buffer, written in place
                binding.bind_ortvalue_output(name, value)
            else:
                binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        if not self.shared_buffer:
            self.past = [ort.OrtValue(v) if not isinstance(v, ort.OrtValue) else v for v in outputs[1:]]
        self.length += count
        return outputs[0].numpy()[0]

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


def open_lm(directory: Path, entry: dict, cache: dict, threads: int = 1) -> Any:
    return OnnxLM(directory / entry["path"], cache, threads)
