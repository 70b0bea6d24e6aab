"""Real runtimes that execute artifacts, one module per runtime, imported only when needed."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

import numpy as np

from targets.catalog import FORMATS


def runtime_module(fmt: str):
    """The format's runtime module (targets.catalog.FORMATS names it), imported on first use."""
    if fmt not in FORMATS:
        raise KeyError(f"no runtime registered for format {fmt!r}")
    return importlib.import_module(FORMATS[fmt].runtime)


class Session(Protocol):
    runtime: str  # e.g. "onnxruntime 1.32.0 (CPUExecutionProvider)"
    input_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def open_session(fmt: str, path: Path, threads: int, delegate: str | None = None) -> Session:
    """delegate: for formats with a choice of kernels (tflite: "xnnpack" or "none")."""
    module = runtime_module(fmt)
    return module.open_session(path, threads) if delegate is None else module.open_session(path, threads, delegate)


def extra_sessions(fmt: str, path: Path, threads: int) -> list[Session]:
    """Further runtimes for the same artifact (Core ML's own on macOS), each reported on its own."""
    module = runtime_module(fmt)
    return module.extra_sessions(path, threads) if hasattr(module, "extra_sessions") else []
