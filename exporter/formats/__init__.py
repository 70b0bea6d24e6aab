"""One module per artifact format. Each backend module exposes `preflight(traced)` and
`convert(traced, target, calibration, workdir, progress)`; BACKENDS maps a format id to it."""

from __future__ import annotations

import importlib
from types import ModuleType

BACKENDS = {"onnx": "exporter.formats.onnx_backend", "tflite": "exporter.formats.tflite_backend",
            "coreml": "exporter.formats.coreml_backend"}


def backend(fmt: str) -> ModuleType:
    return importlib.import_module(BACKENDS[fmt])
