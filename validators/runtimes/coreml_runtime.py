"""Core ML artifacts: edgeport's NumPy reference interpreter for ML Programs on any OS, and on macOS
Core ML itself (MLModel.predict) as well. Each figure in the report names the runtime behind it."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from validators.lm.runtime import CachedLM
from validators.mlprogram.interpreter import Interpreter

REFERENCE = "edgeport MIL reference interpreter (NumPy; fp16 tensors stored as fp16; host, not Core ML)"


class ReferenceSession:
    runtime = REFERENCE

    def __init__(self, path: Path):
        self._interpreter = Interpreter.load(path)
        self.input_names = [name for name, _, _ in self._interpreter.program.inputs]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [o.astype(np.float32) if o.dtype == np.float16 else o for o in self._interpreter.run(feeds)]


class CoreMLSession:
    """Core ML's own prediction; only where the Core ML framework exists (macOS)."""

    def __init__(self, path: Path):
        import coremltools as ct

        self._model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.ALL)
        spec = self._model.get_spec()
        self.input_names = [i.name for i in spec.description.input]
        self._outputs = [o.name for o in spec.description.output]
        self.runtime = f"Core ML via coremltools {ct.__version__} (MLModel.predict, compute units ALL)"

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self._model.predict(feeds)
        return [np.asarray(result[name], np.float32) for name in self._outputs]


def coreml_available() -> bool:
    if platform.system() != "Darwin":
        return False
    try:
        import coremltools.libcoremlpython  # noqa: F401  the native bridge exists only on macOS
    except ImportError:
        return False
    return True


def extra_sessions(path: Path, threads: int) -> list[CoreMLSession]:
    """Core ML itself, beside the reference interpreter, where it can run."""
    return [CoreMLSession(path)] if coreml_available() else []


def open_session(path: Path, threads: int) -> ReferenceSession:
    # threads: the interpreter is NumPy; its BLAS threads follow the environment.
    return ReferenceSession(path)


class CoremlLM(CachedLM):
    """A stateful Core ML language model (exporter/formats/coreml/lm.py) in the MIL interpreter: the KV cache
    stays in the interpreter's states between calls; each call passes the new tokens and a causal mask whose
    width says how many tokens the cache holds."""

    runtime = REFERENCE

    def __init__(self, path: Path, cache: dict, threads: int = 1) -> None:
        self._interpreter = Interpreter.load(path)
        self.io = cache["io"]
        self.cache_length, self.prefill_length = cache["cache_length"], cache["prefill_length"]
        self.reset()

    def reset(self) -> None:
        self._interpreter.reset_states()
        self.length = 0

    def forward(self, tokens: list[int]) -> np.ndarray:
        count = len(tokens)
        self.check_room(count)
        end = self.length + count
        queries = self.length + np.arange(count)[:, None]
        mask = np.where(np.arange(end)[None, :] > queries, -np.inf, 0).astype(np.float16)[None, None]
        (logits,) = self._interpreter.run({self.io["input_ids"]: np.asarray([tokens], np.int32),
                                           self.io["mask"]: mask})
        self.length = end
        return logits[0].astype(np.float32)


def open_lm(path: Path, cache: dict, threads: int) -> CoremlLM:
    return CoremlLM(path, cache, threads)
