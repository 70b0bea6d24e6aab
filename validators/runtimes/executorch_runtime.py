"""ExecuTorch artifacts (.pte), run by the ExecuTorch runtime's Python bindings: the XNNPACK delegate
and the portable kernels, as on a device's CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common.errors import ArtifactError, first_line
from common.quiet import silenced
from validators.lm.runtime import CachedLM


def _load(path: Path, threads: int) -> tuple[object, str]:
    """The program's forward method, and the runtime's label."""
    with silenced():  # the runtime logs its CPU probing and thread pool to the console
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime
        from executorch.version import __version__

        portable_lib._unsafe_reset_threadpool(threads)  # XNNPACK's threads; one pool per process
        try:
            method = Runtime.get().load_program(path).load_method("forward")
        except Exception as exc:  # the runtime raises RuntimeError for a corrupt or foreign file
            raise ArtifactError(f"{path} cannot be loaded by the ExecuTorch runtime ({first_line(exc)}); "
                                "re-export it") from None
    return method, (f"executorch {__version__} runtime (XNNPACK delegate + portable kernels, "
                    f"{portable_lib._threadpool_get_thread_count()} thread(s), host)")


class ExecutorchSession:
    def __init__(self, path: Path, threads: int):
        self._method, self.runtime = _load(path, threads)
        self.input_names = [f"input_{i}" for i in range(self._method.metadata.num_inputs())]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        inputs = [torch.from_numpy(np.ascontiguousarray(value)) for value in feeds.values()]
        return [output.detach().numpy() if hasattr(output, "numpy") else np.asarray(output)
                for output in self._method.execute(inputs)]


def open_session(path: Path, threads: int) -> ExecutorchSession:
    return ExecutorchSession(path, threads)


class ExecutorchLM(CachedLM):
    """A language model's decode step (exporter/lm/decode_step.py: static KV cache as inputs and outputs),
    the cache tensors handed from one call's outputs to the next call's inputs."""

    def __init__(self, path: Path, cache: dict, threads: int = 1) -> None:
        self._method, self.runtime = _load(path, threads)
        self.layers, self.kv_heads, self.head_dim = cache["layers"], cache["kv_heads"], cache["head_dim"]
        self.cache_length, self.prefill_length = cache["cache_length"], cache["prefill_length"]
        self.reset()

    def reset(self) -> None:
        shape = (1, self.kv_heads, self.cache_length, self.head_dim)
        self.past = [torch.zeros(shape) for _ in range(2 * self.layers)]
        self.length = 0

    def forward(self, tokens: list[int]) -> np.ndarray:
        count = len(tokens)
        self.check_room(count)
        outputs = self._method.execute([torch.tensor([tokens], dtype=torch.long),
                                        torch.arange(self.length, self.length + count), *self.past])
        self.past = list(outputs[1:])
        self.length += count
        return outputs[0][0].numpy()


def open_lm(path: Path, cache: dict, threads: int) -> ExecutorchLM:
    return ExecutorchLM(path, cache, threads)
