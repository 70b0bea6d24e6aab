"""The kind-neutral figures of report.json: each artifact's `metrics` is {name: number}, whatever the model
kind, so `edgeport diff`, `edgeport build`, the CLI and the API read one shape. The kind's own detail (a tensor
model's per-output parity, a language model's per-prompt runs) sits beside it under the kind's own key. Every
name a judge reports is listed here with its meaning, so the README's table and a report cannot drift apart."""

from __future__ import annotations

import math

METRICS = {
    # every kind
    "bytes": "the artifact's size on disk (every file it is)",
    "max_abs": "largest |output - reference| (a language model's logits before the greedy runs diverge)",
    "top1_agreement": "share of samples (eval positions, for a language model) with the reference's top-1",
    # tensor models: outputs against PyTorch's on the eval data, worst output
    "mean_abs": "mean |output - reference|",
    "cosine": "cosine similarity to the reference outputs",
    "sqnr_db": "signal-to-quantization-noise ratio against the reference, dB",
    "accuracy": "task accuracy on the labelled eval samples",
    "accuracy_drop": "the reference's task accuracy minus the artifact's",
    "latency_ms": "median host latency of one inference, ms",
    "npu_op_coverage": "share of operators the NPU compiler placed on the NPU",
    "npu_sram_kib": "the NPU compiler's SRAM estimate, KiB",
    "npu_flash_kib": "the NPU compiler's flash estimate, KiB",
    "delegated_op_coverage": "ExecuTorch: share of operators inside the XNNPACK delegate",
    # causal language models: teacher-forced on the eval text, greedy on the prompts, speed in its own process
    "bytes_ratio": "the artifact's bytes / the source's float32 weights' bytes (each tensor once)",
    "ppl_ratio": "artifact perplexity / reference perplexity on the eval text",
    "kl_mean": "mean KL(reference || artifact) of the next-token distributions",
    "kl_p99": "99th percentile of that KL",
    "greedy_tokens": "fewest greedy tokens equal to the reference's before a divergence, over the prompts",
    "decode_top1_agreement": "worst prompt's share of the reference's greedy tokens the artifact predicts, fed them",
    "repetition_increase": "worst prompt's repeated 3-gram rate minus the reference's",
    "kv_cache_bytes": "the K and V the runtime holds at the artifact's cache length (float32; Core ML float16)",
    "long_ppl_ratio": "perplexity ratio on the cache-long window (chunked prefill, then decoded to the end)",
    "long_kl_mean": "mean KL on that window",
    "long_top1_agreement": "same top-1 on that window",
    "decode_tokens_per_s": "host decode speed, tokens/s",
    "prefill_tokens_per_s": "host prefill speed, tokens/s",
    "ttft_ms": "host time to first token, ms",
    "peak_rss_mb": "peak resident memory of the process running the artifact, MB",
    # estimates on the target's devices (validators/estimate.py), never measurements
    "est_decode_tokens_per_s": "ESTIMATE: decode tokens/s at a full cache on the slowest of the target's devices",
    "est_peak_memory_mb": "ESTIMATE: peak memory floor on the device, weights + KV cache, MB",
}


def metrics_block(**figures: float | None) -> dict[str, float]:
    """The named figures that were measured (None: not measured for this artifact), as plain floats."""
    unknown = sorted(set(figures) - set(METRICS))
    if unknown:
        raise ValueError(f"metric(s) {', '.join(unknown)} are not in validators.metrics.METRICS; name them there")
    return {name: float(value) for name, value in figures.items()
            if value is not None and not math.isnan(float(value))}
