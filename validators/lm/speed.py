"""Speed of one language-model artifact, measured in a process of its own so peak memory is its own:
reads {directory, entry, prompt, new_tokens, threads} as JSON on stdin, prints the figures as JSON.

Time to first token covers the whole prompt's prefill; decode tokens/s covers the tokens after the first.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the parent at fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main() -> None:
    request = json.loads(sys.stdin.read())
    from validators.lm.runtime import open_lm

    started = time.perf_counter()
    lm = open_lm(Path(request["directory"]), request["entry"], request["threads"])
    load_seconds = time.perf_counter() - started
    prompt, new_tokens = request["prompt"], request["new_tokens"]
    lm.greedy(prompt[:4], 2)  # warm-up: the first run allocates and prepacks
    lm.reset()
    start = time.perf_counter()
    logits = lm.prefill(prompt)[-1]
    first = time.perf_counter()
    for _ in range(new_tokens - 1):
        logits = lm.forward([int(np.argmax(logits))])[-1]
    end = time.perf_counter()
    print(json.dumps({
        "threads": request["threads"], "prompt_tokens": len(prompt), "decode_tokens": new_tokens - 1,
        "load_s": round(load_seconds, 3), "ttft_ms": round(1000 * (first - start), 2),
        "prefill_tokens_per_s": round(len(prompt) / (first - start), 1),
        "decode_tokens_per_s": round((new_tokens - 1) / (end - first), 1),
        "peak_rss_mb": peak_rss_mb(), "runtime": lm.runtime,
    }))


if __name__ == "__main__":
    main()
