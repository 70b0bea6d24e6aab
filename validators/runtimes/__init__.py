"""Real runtimes that execute artifacts, one module per runtime, imported only when needed."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

import numpy as np

RUNTIMES = {"onnx": "validators.runtimes.onnxruntime_runtime", "tflite": "validators.runtimes.litert_runtime",
            "coreml": "validators.runtimes.coreml_runtime", "executorch": "validators.runtimes.executorch_runtime"}


class Session(Protocol):
    runtime: str  # e.g. "onnxruntime 1.32.0 (CPUExecutionProvider)"
    input_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def open_session(fmt: str, path: Path, threads: int, delegate: str | None = None) -> Session:
    """delegate: for formats with a choice of kernels (tflite: "xnnpack" or "none")."""
    if fmt not in RUNTIMES:
        raise KeyError(f"no runtime registered for format {fmt!r}")
    module = importlib.import_module(RUNTIMES[fmt])
    return module.open_session(path, threads) if delegate is None else module.open_session(path, threads, delegate)


def extra_sessions(fmt: str, path: Path, threads: int) -> list[Session]:
    """Further runtimes for the same artifact (Core ML's own on macOS), each reported on its own."""
    module = importlib.import_module(RUNTIMES[fmt])
    return module.extra_sessions(path, threads) if hasattr(module, "extra_sessions") else []
