"""One folder per artifact format, each behind the Backend contract (exporter/formats/base.py).

The registry is a name -> module map, imported only when a format is used, so `edgeport --help` and
`edgeport targets` import no converter. A new format is one folder whose package exposes BACKEND,
plus one line here."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from exporter.formats.base import Backend

BACKENDS = {"onnx": "exporter.formats.onnx.backend", "tflite": "exporter.formats.tflite.backend",
            "coreml": "exporter.formats.coreml.backend", "executorch": "exporter.formats.executorch.backend"}


def backend(fmt: str) -> Backend:
    return importlib.import_module(BACKENDS[fmt]).BACKEND
