"""Calibration and evaluation data: .npz files or folders of .npy, keyed by input name.

An optional `labels` array gives task accuracy. Arrays are loaded with allow_pickle=False. Every
dataset carries a content hash and its sample count for the manifest.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.batching import sample_count
from exporter.errors import UserInputError
from exporter.specs import TensorSpec

LABELS = "labels"
SYNTHETIC_SAMPLES = 64


def arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


@dataclass
class Dataset:
    inputs: dict[str, np.ndarray]  # input name -> N x sample shape
    labels: np.ndarray | None
    source: str
    synthetic: bool = False
    notes: list[str] = field(default_factory=list)  # conversions made to fit the model's inputs

    @property
    def samples(self) -> int:
        return sample_count(self.inputs)

    @property
    def sha256(self) -> str:
        arrays = dict(self.inputs)
        if self.labels is not None:
            arrays[LABELS] = self.labels
        return arrays_sha256(arrays)

    def head(self, n: int) -> Dataset:
        labels = None if self.labels is None else self.labels[:n]
        return Dataset({k: v[:n] for k, v in self.inputs.items()}, labels, self.source, self.synthetic)

    def describe(self) -> dict:
        return {"source": self.source, "synthetic": self.synthetic, "samples": self.samples,
                "sha256": self.sha256, "labelled": self.labels is not None}


def _read_arrays(path: Path, role: str) -> dict[str, np.ndarray]:
    if not path.exists():
        raise UserInputError(f"--{role} {path} does not exist; pass an .npz or a folder of .npy files")
    try:
        if path.is_dir():
            files = sorted(path.glob("*.npy"))
            if not files:
                raise UserInputError(f"--{role} folder {path} holds no .npy files; save one array per input name")
            return {f.stem: np.load(f, allow_pickle=False) for f in files}
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise UserInputError(f"--{role} {path} is a single .npy array; put it in an .npz keyed by "
                                     "input name, or in a folder of .npy files")
            return {k: archive[k] for k in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:  # empty, truncated or not numpy at all
        raise UserInputError(f"--{role} {path} cannot be read as .npz/.npy ({type(exc).__name__}: {exc}); "
                             "save it with numpy.savez(path, name=array, labels=...)") from None


def _conform(array: np.ndarray, spec: TensorSpec, key: str, role: str, notes: list[str]) -> np.ndarray:
    want = tuple(spec.sample_shape)
    if array.ndim != len(spec.shape) or tuple(array.shape[1:]) != want:
        raise UserInputError(
            f"--{role} array {key!r} has shape {tuple(array.shape)} but input {spec.name!r} takes N x "
            f"{'x'.join(str(d) for d in want) or 'scalar'} (samples along the first axis)"
        )
    target = np.dtype(spec.dtype)
    if array.dtype != target:
        same_kind = (array.dtype.kind == "f") == (target.kind == "f")
        if not same_kind:
            raise UserInputError(f"--{role} array {key!r} is {array.dtype} but input {spec.name!r} is "
                                 f"{spec.dtype}; convert it before saving")
        if not np.can_cast(array.dtype, target, "safe"):
            notes.append(_narrowing(array, target, key, role, spec.name))
        array = array.astype(target)
    return array


def _narrowing(array: np.ndarray, target: np.dtype, key: str, role: str, name: str) -> str:
    """A lossy cast said out loud; integers that do not fit are an error, not a wrap-around."""
    if target.kind in "iu" and array.size:
        info = np.iinfo(target)
        low, high = int(array.min()), int(array.max())
        if low < info.min or high > info.max:
            raise UserInputError(f"--{role} array {key!r} holds values {low}..{high}, beyond input {name!r}'s "
                                 f"{target} ({info.min}..{info.max}); pass values the model accepts")
        return f"{role} array {key!r} converted from {array.dtype} to {target} for input {name!r} (all values fit)"
    return (f"{role} array {key!r} converted from {array.dtype} to {target} for input {name!r} "
            "(precision reduced to what the model takes)")


def load_dataset(path: Path, inputs: list[TensorSpec], role: str) -> Dataset:
    return dataset_from_arrays(_read_arrays(path, role), inputs, role, str(path))


def dataset_from_arrays(arrays: dict[str, np.ndarray], inputs: list[TensorSpec], role: str, source: str) -> Dataset:
    """Arrays keyed by input name (plus optional labels), checked against the model's inputs."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    labels = arrays.pop(LABELS, None)
    notes: list[str] = []
    if len(arrays) == 1 and len(inputs) == 1:  # a lone array feeds a single-input model, whatever its key
        (key, array), = arrays.items()
        mapped = {inputs[0].name: _conform(array, inputs[0], key, role, notes)}
    else:
        missing = [s.name for s in inputs if s.name not in arrays]
        if missing:
            raise UserInputError(f"--{role} {source} lacks array(s) for input(s) {', '.join(missing)}; "
                                 f"it has {', '.join(sorted(arrays)) or 'none'}; key arrays by input name")
        mapped = {s.name: _conform(arrays[s.name], s, s.name, role, notes) for s in inputs}
    counts = {len(a) for a in mapped.values()} | ({len(labels)} if labels is not None else set())
    if len(counts) != 1:
        raise UserInputError(f"--{role} {source}: arrays disagree on the number of samples ({sorted(counts)})")
    if counts == {0}:
        raise UserInputError(f"--{role} {source} holds no samples (its arrays are empty along the first axis); "
                             "pass at least one sample")
    if labels is not None and (labels.ndim != 1 or labels.dtype.kind not in "iuf"
                               or (labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)))):
        raise UserInputError(f"--{role} {source}: labels must be a 1-D array of whole-number class indices")
    for name, array in mapped.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            sample = int(np.argmin(np.isfinite(array).reshape(len(array), -1).all(axis=1)))
            raise UserInputError(f"--{role} {source}: array {name!r} holds NaN or Inf at sample {sample}; pass "
                                 "finite inputs")
    return Dataset(mapped, labels, source, notes=notes)


def synthetic_dataset(inputs: list[TensorSpec], examples: dict[str, np.ndarray], seed: int = 0,
                      samples: int = SYNTHETIC_SAMPLES) -> Dataset:
    """Inputs shaped like the example inputs, from a fixed seed: a smoke check, not a parity proof."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for spec in inputs:
        shape = (samples, *spec.sample_shape)
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            arrays[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            arrays[spec.name] = rng.integers(0, 2, shape).astype(dtype)
        else:  # token ids and the like: stay inside the range the example used
            high = int(examples[spec.name].max()) + 1 if examples[spec.name].size else 2
            arrays[spec.name] = rng.integers(0, max(high, 2), shape).astype(dtype)
    return Dataset(arrays, None, f"synthetic (standard normal, seed {seed})", synthetic=True)
