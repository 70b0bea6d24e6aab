"""reference.npz: the eval inputs, the PyTorch original's outputs on them, and labels.

Stored beside the artifacts so `edgeport validate DIR` needs neither the model's source nor torch.
Keys: input/<name>, output/<name>, labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from validators.files import load_npz, save_npz

FILENAME = "reference.npz"


@dataclass
class Reference:
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    labels: np.ndarray | None

    def degenerate(self) -> str:
        """Why the reference outputs prove nothing ('' when they are usable): NaN or Inf, all zero, or the
        same on every eval sample. Any artifact would match such a reference, however wrong it is."""
        for name, value in self.outputs.items():
            if value.dtype.kind not in "fc":
                continue
            bad = int(value.size - np.count_nonzero(np.isfinite(value)))
            if bad:
                what = f"holds {bad} NaN/Inf value(s)"
            elif not np.any(value):
                what = "is zero on every eval sample"
            elif len(value) > 1 and np.all(value == value[:1]):
                what = f"is the same on all {len(value)} eval samples"
            else:
                continue
            return (f"the PyTorch model's output {name!r} {what}, so parity against it would prove nothing; "
                    "check the weights are trained and loaded (--weights) and that --eval holds real inputs")
        return ""

    @property
    def samples(self) -> int:
        return len(next(iter(self.inputs.values())))

    def save(self, directory: Path) -> Path:
        arrays = {f"input/{k}": v for k, v in self.inputs.items()}
        arrays |= {f"output/{k}": v for k, v in self.outputs.items()}
        if self.labels is not None:
            arrays["labels"] = self.labels
        path = directory / FILENAME
        save_npz(path, arrays)
        return path

    @classmethod
    def load(cls, path: Path) -> Reference:
        arrays = load_npz(path)
        inputs = {k.removeprefix("input/"): v for k, v in arrays.items() if k.startswith("input/")}
        outputs = {k.removeprefix("output/"): v for k, v in arrays.items() if k.startswith("output/")}
        return cls(inputs, outputs, arrays.get("labels"))
