"""One budget check for every model kind: a budget is {limit: value} (targets' Budget / LmBudget .limits()), an
artifact's figures are {metric: value} (validators/metrics.py), and BOUNDS says which metric each limit bounds
and from which side. Every violation is collected; a kind's judge may add why (which prompt, which operator)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from targets import Budget


@dataclass(frozen=True)
class Bound:
    metric: str  # the validators.metrics name it bounds
    upper: bool  # True: the limit is a maximum
    label: str  # how a violation names the figure
    unit: str = ""
    scale: float = 1.0  # the metric in the limit's unit (bytes -> MB)


BOUNDS: dict[str, Bound] = {
    "max_abs": Bound("max_abs", True, "max_abs"),
    "min_cosine": Bound("cosine", False, "cosine"),
    "min_sqnr_db": Bound("sqnr_db", False, "sqnr_db"),
    "min_top1_agreement": Bound("top1_agreement", False, "top1_agreement"),
    "max_accuracy_drop": Bound("accuracy_drop", True, "accuracy drop"),
    "max_latency_ms": Bound("latency_ms", True, "median latency", " ms"),
    "max_size_mb": Bound("bytes", True, "size", " MB", 1e-6),
    "max_bytes_ratio": Bound("bytes_ratio", True, "size / float32 weights"),
    "min_npu_op_coverage": Bound("npu_op_coverage", False, "NPU operator coverage"),
    "max_sram_kib": Bound("npu_sram_kib", True, "NPU SRAM", " KiB"),
    "max_flash_kib": Bound("npu_flash_kib", True, "NPU flash", " KiB"),
    "min_delegated_op_coverage": Bound("delegated_op_coverage", False, "delegated operator coverage"),
    "min_greedy_tokens": Bound("greedy_tokens", False, "greedy tokens equal to the reference's"),
    "max_ppl_ratio": Bound("ppl_ratio", True, "perplexity ratio"),
    "max_kl_mean": Bound("kl_mean", True, "mean KL"),
    "max_kl_p99": Bound("kl_p99", True, "p99 KL"),
    "min_decode_top1_agreement": Bound("decode_top1_agreement", False, "decode top-1 agreement"),
    "max_repetition_increase": Bound("repetition_increase", True, "repetition increase"),
    # a language model's limits applied again to the window as long as its KV cache (validators/lm/validate.py)
    "max_long_ppl_ratio": Bound("long_ppl_ratio", True, "perplexity ratio at long context"),
    "max_long_kl_mean": Bound("long_kl_mean", True, "mean KL at long context"),
    "min_long_top1_agreement": Bound("long_top1_agreement", False, "top1_agreement at long context"),
    # estimates on the target's devices (validators/estimate.py), named as estimates
    "min_est_decode_tokens_per_s": Bound("est_decode_tokens_per_s", False,
                                         "estimated decode tokens/s (slowest target device)"),
    "max_est_peak_memory_mb": Bound("est_peak_memory_mb", True, "estimated peak memory (weights + KV cache)", " MB"),
}


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def check(limits: dict[str, float], metrics: dict[str, float], why: dict[str, str] | None = None) -> list[str]:
    """Every limit whose metric was measured and misses it; `why` adds a kind's detail per metric."""
    violations = []
    for name, limit in limits.items():
        bound = BOUNDS[name]
        if bound.metric not in metrics:
            continue  # not measured for this artifact (latency of a diagnosis candidate, accuracy without labels)
        value = metrics[bound.metric] * bound.scale
        if value > limit if bound.upper else value < limit:
            side = "exceeds" if bound.upper else "is below"
            message = f"{bound.label} {_fmt(value)}{bound.unit} {side} the budget of {_fmt(limit)}{bound.unit}"
            detail = (why or {}).get(bound.metric)
            violations.append(f"{message}; {detail}" if detail else message)
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
