"""The tensor kind: a model of tensors in, tensors out (image, audio and text encoders, classifiers), traced
once by export.py and judged by output parity and task accuracy (validators/judges/tensor.py). This module
stays light: `edgeport targets` imports it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class TensorKind:
    name = "tensor"
    default_model = "demo:digits"
    sources = "an image, audio or text model"
    targets = "an image, audio or text target"
    data_files = "an .npz or a folder of .npy files"  # what --calib and --eval read

    def claims(self, spec: Any) -> bool:
        return False  # every source no other kind claims

    def describe(self, target: Any) -> list[str]:
        lines = [f"  runtime: {target.runtime.threads} thread(s); passes: "
                 + "; ".join(f"{f}: {', '.join(p)}" for f, p in target.passes.items())]
        for v in target.variants:
            limits = ", ".join(f"{k}={val:g}" for k, val in vars(v.budget).items() if val is not None)
            lines.append(f"  {v.format:5} {v.precision:13} {v.filename:22} {limits}")
        return lines

    def prepare(self, options: Any, target: Any, progress: Callable[[str], None]) -> Any:
        from exporter.kinds.tensor.export import TensorExport

        return TensorExport(options, target, progress)


KIND = TensorKind()
