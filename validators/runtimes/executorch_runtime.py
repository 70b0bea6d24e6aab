"""ExecuTorch artifacts (.pte), run by the ExecuTorch runtime's Python bindings: the XNNPACK delegate
and the portable kernels, as on a device's CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common.errors import ArtifactError, first_line
from common.quiet import silenced


class ExecutorchSession:
    def __init__(self, path: Path, threads: int):
        with silenced():  # the runtime logs its CPU probing and thread pool to the console
            from executorch.extension.pybindings import portable_lib
            from executorch.runtime import Runtime
            from executorch.version import __version__

            portable_lib._unsafe_reset_threadpool(threads)  # XNNPACK's threads; one pool per process
            try:
                self._method = Runtime.get().load_program(path).load_method("forward")
            except Exception as exc:  # the runtime raises RuntimeError for a corrupt or foreign file
                raise ArtifactError(f"{path} cannot be loaded by the ExecuTorch runtime ({first_line(exc)}); "
                                    "re-export it") from None
        meta = self._method.metadata
        self.input_names = [f"input_{i}" for i in range(meta.num_inputs())]
        self.runtime = (f"executorch {__version__} runtime (XNNPACK delegate + portable kernels, "
                        f"{portable_lib._threadpool_get_thread_count()} thread(s), host)")

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        inputs = [torch.from_numpy(np.ascontiguousarray(value)) for value in feeds.values()]
        return [output.detach().numpy() if hasattr(output, "numpy") else np.asarray(output)
                for output in self._method.execute(inputs)]


def open_session(path: Path, threads: int) -> ExecutorchSession:
    return ExecutorchSession(path, threads)
