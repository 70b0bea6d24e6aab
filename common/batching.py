"""Feeding N samples to a model whose batch dimension may be fixed (often to 1)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

DYNAMIC_BATCH_CHUNK = 64


def sample_count(arrays: dict[str, np.ndarray]) -> int:
    """Samples in a dict of arrays keyed by input name (they agree on the first axis)."""
    return len(next(iter(arrays.values())))


def iter_batches(arrays: dict[str, np.ndarray], batch: int | None) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """Yield (feeds, valid) chunks of `batch` samples; the last chunk is zero-padded to the fixed
    batch and `valid` says how many of its rows are real. batch=None means any batch size."""
    total = sample_count(arrays)
    step = batch or DYNAMIC_BATCH_CHUNK
    for start in range(0, total, step):
        chunk = {k: v[start:start + step] for k, v in arrays.items()}
        valid = sample_count(chunk)
        if batch is not None and valid < batch:
            chunk = {k: np.concatenate([v, np.zeros((batch - valid, *v.shape[1:]), v.dtype)]) for k, v in chunk.items()}
        yield chunk, valid


def whole_batches(arrays: dict[str, np.ndarray], batch: int | None, max_samples: int) -> list[dict[str, np.ndarray]]:
    """Up to max_samples samples in batches of the model's size, dropping a last partial batch:
    calibration must not see zero padding, which would distort activation ranges."""
    arrays = {k: v[:max_samples] for k, v in arrays.items()}
    return [feeds for feeds, valid in iter_batches(arrays, batch) if batch is None or valid == batch]


def run_batched(run, arrays: dict[str, np.ndarray], batch: int | None) -> list[np.ndarray]:
    """Call run(feeds) -> list of outputs chunk by chunk and concatenate the valid rows. Only a
    zero-padded last chunk is cut, so tensors whose first dimension is not the batch (an
    intermediate reshaped to tokens x features) come back whole when no chunk is padded."""
    pieces: list[list[np.ndarray]] = []
    for feeds, valid in iter_batches(arrays, batch):
        padded = batch is not None and valid < batch
        pieces.append([np.asarray(o)[:valid] if padded else np.asarray(o) for o in run(feeds)])
    return [np.concatenate(parts) for parts in zip(*pieces, strict=True)]
