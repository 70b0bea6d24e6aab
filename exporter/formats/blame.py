"""What per-layer blame and automatic mixed precision share across formats: the row each layer
gets, the ranking, the keep-in-float loop and the budget check a candidate model must pass.

A format supplies the graph-specific parts: which layers are weighted, the values of named tensors
in a model, how to quantize one layer alone, and how to re-quantize with some layers kept in float."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from validators.files import size_bytes
from validators.parity import output_parity

BLAME_SAMPLES = 64  # eval samples the diagnosis runs on (the first ones, so it is deterministic)


def blame_feeds(inputs: dict[str, np.ndarray], batch: int | None) -> dict[str, np.ndarray]:
    """The first BLAME_SAMPLES eval samples, in whole batches: an intermediate tensor need not have
    the batch as its first dimension, so a zero-padded batch could not be cut back to the real rows."""
    total = min(BLAME_SAMPLES, len(next(iter(inputs.values()))))
    if batch:
        total = max(batch, total // batch * batch)
    return {k: v[:total] for k, v in inputs.items()}


def weight_matrices(module) -> dict[str, list[np.ndarray]]:
    """Module path -> the weight matrices and kernels (parameters of 2 or more dims) it owns: the
    modules a weighted graph op can belong to (a BatchNorm folded into a conv owns only vectors)."""
    return {path: [p.detach().numpy() for p in child.parameters(recurse=False) if p.ndim >= 2]
            for path, child in module.named_modules() if any(p.ndim >= 2 for p in child.parameters(recurse=False))}


def sqnr_db(reference: np.ndarray, value: np.ndarray) -> float:
    return round(output_parity(reference, value)["sqnr_db"], 3)


def blame_row(layer: dict, *, reference_layer: np.ndarray, accumulated_layer: np.ndarray,
              alone_layer: np.ndarray, reference_outputs: list[np.ndarray], alone_outputs: list[np.ndarray],
              samples: int, reference_alone_layer: np.ndarray | None = None) -> dict:
    """One layer's line of the table: its own error (only it quantized) at itself and at the model's
    output, and the error accumulated up to it with everything quantized. reference_alone_layer is
    the fp32 value the alone-quantized layer is compared with, where it is read at another tensor."""
    return {
        "module": layer["module"], "node": layer["node"], "op": layer["op"],
        "sqnr_db_alone_at_output": min(sqnr_db(r, a) for r, a in zip(reference_outputs, alone_outputs, strict=True)),
        "sqnr_db_alone_at_layer": sqnr_db(reference_layer if reference_alone_layer is None else reference_alone_layer,
                                          alone_layer),
        "sqnr_db_accumulated": sqnr_db(reference_layer, accumulated_layer),
        "tensor": layer["tensor"], "quantized_tensor": layer.get("quantized_tensor", layer["tensor"]),
        "samples": samples,
    }


def most_harmful_first(rows: list[dict]) -> list[dict]:
    # ties keep graph order (sorted is stable), so the table is deterministic
    return sorted(rows, key=lambda r: r["sqnr_db_alone_at_output"])


def diagnose(rows: list[dict], n_layers: int, out: Path, keep_float: Callable[[list[dict]], list[str]],
             check: CandidateCheck | None, progress: Callable[[str], None], announcement: str) -> tuple[dict, dict]:
    """The blame table; and when a check is given (the target allows auto precision) and `out` misses
    its budget, the announcement, then auto precision. Returns (diagnosis for the manifest, what was
    measured on the host for the report)."""
    diagnosis: dict = {"layers": rows}
    measured: dict = {}
    if check is None or not rows:
        return diagnosis, measured
    before = check.violations(out)
    if before:
        progress(announcement)
        diagnosis["auto_precision"], measured["auto_precision"] = auto_precision(rows, n_layers, out, keep_float,
                                                                                 check, before)
    return diagnosis, measured


def auto_precision(rows: list[dict], n_layers: int, out: Path, keep_float: Callable[[list[dict]], list[str]],
                   check: CandidateCheck, before: list[str]) -> tuple[dict, dict]:
    """Keep layers in float, most harmful first, re-quantizing until the budget is met (or every
    weighted layer is float and it still is not). keep_float(rows) rewrites `out` with those
    layers in float and returns the graph nodes it kept out of int8; `out` ends as the last model tried.
    `before` is what the fully quantized `out` violates. Returns the decision (reproducible: it goes
    into the manifest) and the host latency before and after, both measured in this run (for the
    report only: a timing is not reproducible)."""
    bytes_before, latency_before = size_bytes(out), check.latency_ms(out)
    kept: list[dict] = []
    excluded: list[str] = []
    remaining = before
    for row in rows:
        if not remaining:
            break
        kept.append(row)
        excluded = keep_float(kept)
        remaining = check.violations(out)
    decision = {
        "met": not remaining,
        "kept_float": [r["module"] or r["node"] for r in kept],
        "excluded_nodes": excluded,
        "int8_layers": n_layers - len(kept), "weighted_layers": n_layers,
        "int8_layer_share": round((n_layers - len(kept)) / n_layers, 4) if n_layers else 0.0,
        "bytes_before": bytes_before, "bytes_after": size_bytes(out),
        "violations_before": before, "violations_after": remaining,
        "note": "" if not remaining else "the budget is not met even with every weighted layer in float",
    }
    return decision, {"latency_ms_before": latency_before, "latency_ms_after": check.latency_ms(out)}


class CandidateCheck:
    """The validator's own parity, budget and latency code, on the same eval data and runtime
    settings, for one candidate model."""

    def __init__(self, fmt: str, variant, reference, traced, settings) -> None:
        self.fmt, self.variant, self.reference, self.traced, self.settings = fmt, variant, reference, traced, settings

    def violations(self, path: Path) -> list[str]:
        from validators.budgets import check
        from validators.runtimes import open_session
        from validators.validate import parity_against_reference

        _, overall, accuracy = parity_against_reference(
            open_session(self.fmt, path, 1).run, self.reference, [s.name for s in self.traced.inputs],
            [s.name for s in self.traced.outputs], self.traced.batch)
        return check(self.variant.budget, overall, accuracy, None, 0)

    def latency_ms(self, path: Path) -> float:
        """Median host latency on the first eval batch, as the validator measures it."""
        from validators.latency import measure_first_batch
        from validators.runtimes import open_session

        session = open_session(self.fmt, path, self.settings.threads)
        timing = measure_first_batch(session, self.reference.inputs, self.traced.batch, self.settings)
        return round(timing["median"], 4)
