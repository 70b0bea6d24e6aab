"""Host latency: warm-up runs, then timed runs until enough for stable percentiles."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np

from common.batching import iter_batches
from targets import RuntimeSettings

CONCURRENT_JOBS_ENV = "EDGEPORT_CONCURRENT_JOBS"  # set by `edgeport build --jobs N` (N > 1) for its exports


def contention_note() -> str:
    """Why this run's latencies are not comparable with a quiet machine's ('' when they are)."""
    jobs = os.environ.get(CONCURRENT_JOBS_ENV, "")
    if not jobs.isdigit() or int(jobs) <= 1:
        return ""
    return (f"latency was measured while up to {int(jobs) - 1} other export(s) of `edgeport build --jobs {jobs}` "
            "ran on this machine: not comparable with a quiet machine's figures (build with --jobs 1, or run "
            "`edgeport validate DIR` alone, for latency)")


def measure(run_once: Callable[[], object], settings: RuntimeSettings, runtime: str) -> dict:
    for _ in range(settings.warmup_runs):
        run_once()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < settings.max_runs and (
        len(times) < settings.min_runs or time.perf_counter() - started < settings.min_seconds
    ):
        t0 = time.perf_counter()
        run_once()
        times.append((time.perf_counter() - t0) * 1000.0)
    samples = np.asarray(times)
    return {
        "median": float(np.median(samples)),
        "p90": float(np.percentile(samples, 90)),
        "p99": float(np.percentile(samples, 99)),
        "runs": int(len(samples)),
        "threads": settings.threads,
        "runtime": runtime,
        "measured_on": "host",  # a host figure, not a device measurement
    }


def measure_first_batch(session, inputs: dict[str, np.ndarray], batch: int | None, settings: RuntimeSettings) -> dict:
    """A session's latency on the first batch of the inputs (one sample where the batch is free). A
    session that judges with other kernels than a device runs (see onnxruntime_runtime) is timed
    with its `timed` twin."""
    feeds, _ = next(iter_batches(inputs, batch or 1))
    timed = getattr(session, "timed", session)
    return measure(lambda: timed.run(feeds), settings, timed.runtime)
