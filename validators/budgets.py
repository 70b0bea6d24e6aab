"""Check an artifact's measured figures against its budget; every violation is collected."""

from __future__ import annotations

import math

from targets import Budget


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def check(budget: Budget, parity: dict, accuracy: dict | None, latency: dict | None, size_bytes: int,
          npu: dict | None = None, delegation: dict | None = None) -> list[str]:
    violations = []

    def at_most(name: str, value: float | None, limit: float | None, unit: str = "") -> None:
        if limit is not None and value is not None and value > limit:
            violations.append(f"{name} {_fmt(value)}{unit} exceeds the budget of {_fmt(limit)}{unit}")

    def at_least(name: str, value: float | None, limit: float | None) -> None:
        if limit is not None and value is not None and value < limit:
            violations.append(f"{name} {_fmt(value)} is below the budget of {_fmt(limit)}")

    if parity.get("nonfinite_values"):
        violations.append(f"the outputs hold {parity['nonfinite_values']} NaN/Inf value(s): the artifact computes "
                          "garbage (a corrupt weight, or an overflow at this precision)")
    at_most("max_abs", parity["max_abs"], budget.max_abs)
    at_least("cosine", parity["cosine"], budget.min_cosine)
    at_least("sqnr_db", parity["sqnr_db"], budget.min_sqnr_db)
    at_least("top1_agreement", parity["top1_agreement"], budget.min_top1_agreement)
    if accuracy is not None:
        at_most("accuracy drop", accuracy["drop"], budget.max_accuracy_drop)
    if latency is not None:
        at_most("median latency", latency["median"], budget.max_latency_ms, " ms")
    at_most("size", size_bytes / 1e6, budget.max_size_mb, " MB")
    if npu is not None:
        coverage_before = len(violations)
        at_least("NPU operator coverage", npu["npu_op_coverage"], budget.min_npu_op_coverage)
        if len(violations) > coverage_before:
            fallback = ", ".join(f"{op['op']} ({op['output']})" for op in npu["cpu_fallback"])
            violations[-1] += f"; on the CPU: {fallback}"
        at_most("NPU SRAM", npu["sram_kib"], budget.max_sram_kib, " KiB")
        at_most("NPU flash", npu["flash_kib"], budget.max_flash_kib, " KiB")
    if delegation is not None:
        coverage_before = len(violations)
        at_least("delegated operator coverage", delegation["delegated_op_coverage"], budget.min_delegated_op_coverage)
        if len(violations) > coverage_before:
            fallback = "; ".join(f"{op['op']} ({op['module'] or 'no module'}: {op['reason']})"
                                 for op in delegation["portable_fallback"])
            violations[-1] += f"; on the portable kernels: {fallback}"
    return violations


def samples_needed(slack: float) -> int | float:
    """Samples a bound on a share of samples needs before one sample fits in its slack (1 - a minimum
    agreement, or a maximum drop): with fewer, a result could not have missed it by a single sample."""
    return math.inf if slack <= 0 else math.ceil(1.0 / slack - 1e-9)


def unjudged(budget: Budget, parity: dict, accuracy: dict | None) -> list[str]:
    """Bounds that were met but that the sample count cannot resolve: said, never counted as passed."""
    notes = []
    if budget.min_top1_agreement is not None and "top1_decisive_samples" in parity:
        decisive = parity["top1_decisive_samples"]
        needed = samples_needed(1.0 - budget.min_top1_agreement)
        agreement = parity["top1_agreement"]
        if decisive < needed and (agreement is None or agreement >= budget.min_top1_agreement):
            notes.append(f"top1_agreement not judged: {decisive} of {parity['samples']} samples have a reference "
                         f"top-2 margin above {_fmt(parity['top1_margin_threshold'])} (what the precision's noise "
                         f"can flip); {needed} are needed to resolve {_fmt(budget.min_top1_agreement)}; "
                         "pass more --eval data")
    if budget.max_accuracy_drop is not None and accuracy is not None and accuracy["drop"] <= budget.max_accuracy_drop:
        needed = samples_needed(budget.max_accuracy_drop)
        if accuracy["samples"] < needed:
            notes.append(f"accuracy drop not judged: {accuracy['samples']} labelled samples cannot resolve a drop of "
                         f"{_fmt(budget.max_accuracy_drop)} ({needed} needed); pass more labelled --eval data")
    return notes
