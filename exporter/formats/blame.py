"""What per-layer blame and automatic mixed precision share across formats: the row each layer
gets, the ranking, the keep-in-float loop and the budget check a candidate model must pass.

A format supplies the graph-specific parts: which layers are weighted, the values of named tensors
in a model, what quantization did to each layer (for exporter.formats.alone, which measures each
layer alone in PyTorch), how to quantize one layer alone where that cannot place it, and how to
re-quantize with some layers kept in float."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from validators.files import size_bytes
from validators.parity import SQNR_CAP_DB, output_parity

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
    if value.shape != reference.shape and value.size == reference.size:
        value = value.reshape(reference.shape)  # another quantizer's graph holds it folded (N,H,W,C vs N,HW,C)
    sqnr = output_parity(reference, value)["sqnr_db"]
    return -SQNR_CAP_DB if sqnr is None else round(sqnr, 3)  # None: NaN/Inf in the value, the worst there is


ALONE_IN_PYTORCH = "pytorch, the layer's quantized weight and input substituted"
ALONE_IN_ARTIFACT = "the artifact's runtime, the model quantized at that layer only"


def alone_from_values(reference_layer: np.ndarray, alone_layer: np.ndarray, reference_outputs: list[np.ndarray],
                      alone_outputs: list[np.ndarray]):
    """A model quantized at one layer only, run by the artifact's runtime: an Alone."""
    from exporter.formats.alone import Alone

    return Alone(sqnr_db(reference_layer, alone_layer),
                 min(sqnr_db(r, a) for r, a in zip(reference_outputs, alone_outputs, strict=True)),
                 len(reference_outputs[0]))


def blame_row(layer: dict, *, reference_layer: np.ndarray, accumulated_layer: np.ndarray,
              alone, alone_by: str, samples: int) -> dict:
    """One layer's line of the table: its own error (only it quantized, an Alone) at itself and at the
    model's output, measured as `alone_by` says, and the error accumulated up to it with everything
    quantized. The module found by the weight's value, where it was, names the layer."""
    return {
        "module": alone.module or layer["module"], "node": layer["node"], "op": layer["op"],
        "sqnr_db_alone_at_output": alone.at_output,
        "sqnr_db_alone_at_layer": alone.at_layer,
        "sqnr_db_accumulated": sqnr_db(reference_layer, accumulated_layer),
        "tensor": layer["tensor"], "quantized_tensor": layer.get("quantized_tensor", layer["tensor"]),
        "alone_measured_by": alone_by,
        "alone_samples": alone.samples,
        "samples": samples,
    }


def alone_in_pytorch(traced, layers: list, feeds: dict[str, np.ndarray]) -> list:
    """exporter.formats.alone on the traced model's eager module, where there is one (not TorchScript);
    None for the layers it cannot place (the format measures those in its runtime)."""
    from exporter.formats.alone import alone_sqnr

    if traced is None or traced.loaded.kind != "module" or not any(layers):
        return [None] * len(layers)
    return alone_sqnr(traced.loaded.module, traced.loaded.input_names, layers, feeds, traced.batch)


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
    """Keep the fewest most-harmful layers in float that meet the budget (or every weighted layer,
    when even that does not). keep_float(rows) rewrites `out` with those layers in float and returns
    the graph nodes it kept out of int8; `out` ends as the model decided on. `before` is what the
    fully quantized `out` violates. Returns the decision (reproducible: it goes into the manifest)
    and the host latency before and after, both measured in this run (for the report only)."""
    bytes_before, latency_before = size_bytes(out), check.latency_ms(out)
    tried: dict[int, tuple[list[str], list[str]]] = {}  # layers kept float -> (nodes excluded, violations)

    def attempt(count: int) -> list[str]:
        excluded = keep_float(rows[:count])
        tried[count] = (excluded, check.violations(out))
        return tried[count][1]

    # Every weighted layer in float first: if that misses too, the miss is elsewhere (activations
    # between layers) and no choice of layers helps. Then a bisection on how many of the worst to
    # keep (more float layers never hurt): about log2(layers) re-quantizations, not one per layer.
    count = len(rows)
    if not attempt(count):
        low = 1
        while low < count:
            middle = (low + count) // 2
            if attempt(middle):
                low = middle + 1
            else:
                count = middle
    last = list(tried)[-1]
    if last != count:  # `out` holds the last model tried; rewrite it as decided
        attempt(count)
    excluded, remaining = tried[count]
    kept = rows[:count]
    decision = {
        "met": not remaining,
        "kept_float": [r["module"] or r["node"] for r in kept],
        "excluded_nodes": excluded,
        "int8_layers": n_layers - len(kept), "weighted_layers": n_layers,
        "int8_layer_share": round((n_layers - len(kept)) / n_layers, 4) if n_layers else 0.0,
        "bytes_before": bytes_before, "bytes_after": size_bytes(out),
        "violations_before": before, "violations_after": remaining,
        "candidates_tried": len(tried) + (last != count),
        "note": "" if not remaining else "the budget is not met even with every weighted layer in float",
    }
    return decision, {"latency_ms_before": latency_before, "latency_ms_after": check.latency_ms(out)}


def wanted(target, variant, reference, traced, fmt: str, out: Path) -> bool:
    """Whether a quantized variant gets per-layer blame: the target's `diagnose` says always, never,
    or only when the variant misses its budget (checked with the validator's own code)."""
    if reference is None or target.diagnose == "off":
        return False
    return target.diagnose == "always" or bool(CandidateCheck(fmt, variant, reference, traced,
                                                              target.runtime).violations(out))


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
            [s.name for s in self.traced.outputs], self.traced.batch, self.variant.budget.min_sqnr_db)
        return check(self.variant.budget, overall, accuracy, None, 0)

    def latency_ms(self, path: Path) -> float:
        """Median host latency on the first eval batch, as the validator measures it."""
        from validators.latency import measure_first_batch
        from validators.runtimes import open_session

        session = open_session(self.fmt, path, self.settings.threads)
        timing = measure_first_batch(session, self.reference.inputs, self.traced.batch, self.settings)
        return round(timing["median"], 4)
