"""ExecuTorch artifacts (.pte), run by the ExecuTorch runtime's Python bindings: the XNNPACK delegate
and the portable kernels, as on a device's CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.errors import ArtifactError, first_line
from common.quiet import silenced
from validators.lm.runtime import CachedLM


def _load(path: Path, threads: int, methods: tuple[str, ...] = ("forward",)) -> tuple[list, str]:
    """The program's methods (loaded from one program: they share its mutable state), and the runtime's
    label."""
    with silenced():  # the runtime logs its CPU probing and thread pool to the console
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime
        from executorch.version import __version__

        portable_lib._unsafe_reset_threadpool(threads)  # XNNPACK's threads; one pool per process
        try:
            program = Runtime.get().load_program(path)
            loaded = [program.load_method(name) for name in methods]
        except Exception as exc:  # the runtime raises RuntimeError for a corrupt or foreign file
            raise ArtifactError(f"{path} cannot be loaded by the ExecuTorch runtime ({first_line(exc)}); "
                                "re-export it") from None
    return loaded, (f"executorch {__version__} runtime (XNNPACK delegate + portable kernels, "
                    f"{portable_lib._threadpool_get_thread_count()} thread(s), host)")


class ExecutorchSession:
    def __init__(self, path: Path, threads: int):
        (self._method,), self.runtime = _load(path, threads)
        self.input_names = [f"input_{i}" for i in range(self._method.metadata.num_inputs())]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        inputs = [torch.from_numpy(np.ascontiguousarray(value)) for value in feeds.values()]
        return [output.detach().numpy() if hasattr(output, "numpy") else np.asarray(output)
                for output in self._method.execute(inputs)]


def open_session(path: Path, threads: int) -> ExecutorchSession:
    return ExecutorchSession(path, threads)


def llm_runner() -> tuple[Any, Any]:
    """(TextLLMRunner, GenerationConfig) of ExecuTorch's LLM runner bindings, with the kernels an edgeport .pte
    calls registered."""
    with silenced():
        import executorch.kernels.quantized  # noqa: F401
        from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401
        from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner
    return TextLLMRunner, GenerationConfig


class ExecutorchLM(CachedLM):
    """A language model's .pte (exporter/formats/executorch/lm.py): the KV cache is the program's mutable
    state, shared by its prefill and decode methods; a call passes the new tokens and their start position.
    A chunk shorter than prefill_length is padded (the padding's cache rows are overwritten before anything
    reads them); one that would write past the cache goes through decode a token at a time."""

    def __init__(self, path: Path, cache: dict, threads: int = 1) -> None:
        with silenced():
            import executorch.kernels.quantized  # noqa: F401  the quantized embedding lookups
            from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401  update_cache, custom_sdpa
        # one-token method: "forward" (what ExecuTorch's LLM runner calls), "decode" in directories exported before
        decode = next((name for name, tokens in cache["io"]["methods"].items() if tokens == 1), "decode")
        (self._prefill, self._decode), self.runtime = _load(path, threads, ("prefill", decode))
        self.cache_length, self.prefill_length = cache["cache_length"], cache["prefill_length"]
        self.reset()

    def reset(self) -> None:
        self.length = 0  # each call writes its rows before custom_sdpa reads them: old rows are never seen

    def forward(self, tokens: list[int]) -> np.ndarray:
        count = len(tokens)
        self.check_room(count)
        if count == 1 or self.length + self.prefill_length > self.cache_length:
            return np.concatenate([self._run(self._decode, [token], 1) for token in tokens], axis=0)
        padded = tokens + [tokens[-1]] * (self.prefill_length - count)
        return self._run(self._prefill, padded, count)

    def _run(self, method: object, tokens: list[int], count: int) -> np.ndarray:
        """Logits of the first count tokens, which the cache now holds."""
        (logits,) = method.execute([torch.tensor([tokens], dtype=torch.long), torch.tensor([self.length])])
        self.length += count
        return logits[0, :count].numpy()


def open_lm(path: Path, cache: dict, threads: int) -> ExecutorchLM:
    return ExecutorchLM(path, cache, threads)
