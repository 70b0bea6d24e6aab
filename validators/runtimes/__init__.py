"""Real runtimes that execute artifacts, one module per runtime, imported only when needed."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

import numpy as np

RUNTIMES = {"onnx": "validators.runtimes.onnxruntime_runtime"}


class Session(Protocol):
    runtime: str  # e.g. "onnxruntime 1.32.0 (CPUExecutionProvider)"
    input_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def open_session(fmt: str, path: Path, threads: int) -> Session:
    if fmt not in RUNTIMES:
        raise KeyError(f"no runtime registered for format {fmt!r}")
    return importlib.import_module(RUNTIMES[fmt]).open_session(path, threads)
