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
