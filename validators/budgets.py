"""Check an artifact's measured figures against its budget; every violation is collected."""

from __future__ import annotations

from targets import Budget


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def check(budget: Budget, parity: dict, accuracy: dict | None, latency: dict | None, size_bytes: int,
          npu: dict | None = None) -> list[str]:
    violations = []

    def at_most(name: str, value: float | None, limit: float | None, unit: str = "") -> None:
        if limit is not None and value is not None and value > limit:
            violations.append(f"{name} {_fmt(value)}{unit} exceeds the budget of {_fmt(limit)}{unit}")

    def at_least(name: str, value: float | None, limit: float | None) -> None:
        if limit is not None and value is not None and value < limit:
            violations.append(f"{name} {_fmt(value)} is below the budget of {_fmt(limit)}")

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
    return violations
