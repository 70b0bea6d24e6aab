"""ONNX artifacts run by onnxruntime on the CPU, with the thread count the target profile sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from targets.errors import first_line
from validators.errors import ArtifactError


class OnnxRuntimeSession:
    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for corrupt or unsupported files
            raise ArtifactError(f"{path} cannot be loaded by onnxruntime ({first_line(exc)}); re-export it") from None
        self.runtime = f"onnxruntime {ort.__version__} (CPUExecutionProvider, host)"
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._session.run(self.output_names, feeds)


def open_session(path: Path, threads: int) -> OnnxRuntimeSession:
    return OnnxRuntimeSession(path, threads)
