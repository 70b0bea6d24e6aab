"""The artifact-directory contract: what `edgeport export` writes and `edgeport validate DIR` reads.

- manifest.json: what the directory holds and how it was made (the resolved target and budgets included);
- reference.npz: the eval inputs, the PyTorch original's outputs on them, and labels, so validation
  needs neither the model's source nor torch (keys: input/<name>, output/<name>, labels);
- export.json: what the export measured on this host (timings, auto precision's latencies): not
  reproducible, so kept out of the manifest; the report shows it when present.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.batching import sample_count
from common.errors import ArtifactError
from common.files import load_npz, save_npz

MANIFEST = "manifest.json"
# what the manifest promises about an artifact's bytes, for formats whose converters are deterministic
REPRODUCIBLE = "byte-identical for the same model, data and library versions"
SCHEMA = 2  # 2: the resolved target and each artifact's budget are stored, not re-derived
REFERENCE = "reference.npz"
EXPORT_LOG = "export.json"


def cache_io_names(layers: int, io: dict) -> tuple[list[str], list[str]]:
    """A language model artifact's input and output names from its cache io (the manifest's cache["io"]):
    ([tokens, positions, past caches], [logits, present caches])."""
    kvs = io.get("kv", ("key", "value"))
    past = [io["past"].format(layer=i, kv=kv) for i in range(layers) for kv in kvs]
    present = [io["present"].format(layer=i, kv=kv) for i in range(layers) for kv in kvs]
    return [io.get("tokens", "input_ids"), io["position"], *past], ["logits", *present]


# The signature name every .tflite is written with and run by.
LITERT_SIGNATURE = "serving_default"



@dataclass
class Reference:
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    # a pruned export's reference is the pruned model; the unpruned model's outputs judge what pruning cost
    unpruned: dict[str, np.ndarray] | None = None

    def of_unpruned(self) -> Reference:
        return Reference(self.inputs, self.unpruned or {}, self.labels)

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
        return sample_count(self.inputs)

    def save(self, directory: Path) -> Path:
        arrays = {f"input/{k}": v for k, v in self.inputs.items()}
        arrays |= {f"output/{k}": v for k, v in self.outputs.items()}
        arrays |= {f"unpruned/{k}": v for k, v in (self.unpruned or {}).items()}
        if self.labels is not None:
            arrays["labels"] = self.labels
        path = directory / REFERENCE
        save_npz(path, arrays)
        return path

    @classmethod
    def load(cls, path: Path) -> Reference:
        arrays = load_npz(path)
        inputs = {k.removeprefix("input/"): v for k, v in arrays.items() if k.startswith("input/")}
        outputs = {k.removeprefix("output/"): v for k, v in arrays.items() if k.startswith("output/")}
        unpruned = {k.removeprefix("unpruned/"): v for k, v in arrays.items() if k.startswith("unpruned/")}
        return cls(inputs, outputs, arrays.get("labels"), unpruned or None)


def reference_file(directory: Path, manifest: dict) -> tuple[Path, list[str]]:
    """The stored reference the manifest names, and a violation when its bytes are not the ones exported."""
    from common.files import sha256_file

    entry = manifest["reference"]
    path = directory / entry["path"]
    if not path.is_file():
        raise ArtifactError(f"{path} is missing; validation needs the stored reference outputs, re-export")
    altered = sha256_file(path) != entry["sha256"]
    return path, [f"{entry['path']} differs from the manifest's sha256: reference data was altered"] if altered else []


def require_keys(manifest: dict, keys: tuple[str, ...], path: Path) -> None:
    """Every manifest's keys here; each model kind's judge names its own."""
    missing = [k for k in keys if k not in manifest]
    if missing:
        raise ArtifactError(f"{path} lacks {', '.join(missing)}; it was not written by this edgeport, re-export")


def read_manifest(directory: Path) -> dict:
    if not directory.is_dir():
        raise ArtifactError(f"{directory} is not a directory; pass an artifact directory such as "
                            "artifacts/digits/android")
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{directory} has no {MANIFEST}; pass a directory written by edgeport export")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); re-export the model") from None
    require_keys(manifest, ("schema", "model", "target", "artifacts", "reference"), path)
    if manifest["schema"] != SCHEMA:
        raise ArtifactError(f"{path} has manifest schema {manifest['schema']}, this edgeport reads {SCHEMA}; "
                            "re-export with this version")
    return manifest


def read_export_log(directory: Path) -> dict | None:
    """What the export measured on its host (export.json), shown beside this run's figures."""
    path = directory / EXPORT_LOG
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # informational only: a damaged log changes no verdict
