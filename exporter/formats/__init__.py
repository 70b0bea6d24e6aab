"""One folder per artifact format, each behind its kinds' Backend contracts (exporter/formats/base.py for tensor
models, exporter/lm/backend.py for causal language models).

A format is registered once, in targets.catalog.FORMATS (its extension, its backend module per model kind, its
runtime and libraries); modules are imported only when a format is used, so `edgeport --help` and
`edgeport targets` import no converter."""

from __future__ import annotations

import importlib
from typing import Any

from targets.catalog import FORMATS


def backend(fmt: str, kind: str = "tensor") -> Any:
    """The format's backend for a model kind (each module exposes BACKEND)."""
    return importlib.import_module(FORMATS[fmt].backends[kind]).BACKEND
