"""Per-layer blame for weight quantization: the KL (and perplexity) cost of quantizing each decoder linear
alone, worst first, by module path. Measured in PyTorch by fake-quantizing one nn.Linear's weight at a
time to the weight plan the artifact writes (its scheme and method, or the source's own grid), on the first
eval windows;
the artifact's own verdict still comes from its runtime. Auto precision keeps the worst layers at 8 bits
(4-bit variants) or float (8-bit variants) until the budget holds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from exporter.quant.plan import QuantizedWeight


def _kl_and_ppl(model: Any, windows: np.ndarray, reference_logprobs: np.ndarray) -> tuple[float, float]:
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(windows.astype(np.int64))).logits[:, :-1].double()
    q = torch.log_softmax(logits, dim=-1)
    p = torch.from_numpy(reference_logprobs.astype(np.float64))
    p = p - torch.logsumexp(p, dim=-1, keepdim=True)
    kl = (p.exp() * (p - q)).sum(-1).clamp_min(0)
    targets = torch.from_numpy(windows[:, 1:].astype(np.int64))
    nll = -q.gather(-1, targets[..., None]).mean()
    return float(kl.mean()), float(torch.exp(nll))


def blame_linears(model: Any, paths: list[str], plan_of: Callable[[str], QuantizedWeight], windows: np.ndarray,
                  reference_logprobs: np.ndarray, progress=lambda _: None) -> list[dict]:
    """One row per decoder linear: its weight replaced alone by its plan (plan_of(path)); worst (largest KL)
    first."""
    import torch

    modules = dict(model.named_modules())
    rows = []
    for index, path in enumerate(paths):
        linear = modules[path]
        planned = plan_of(path)  # before the swap: the plan reads the float weight
        # the float tensor itself, put back as it was: a lowering that traced the model may hold it too, and a
        # clone put back in its place would leave two copies of every linear alive
        original = linear.weight.data
        with torch.no_grad():
            linear.weight.data = planned.dequantize().to(original.dtype)
        try:
            kl, ppl = _kl_and_ppl(model, windows, reference_logprobs)
        finally:
            linear.weight.data = original
        rows.append({"module": path, "kl_mean": kl, "ppl": ppl, "weights": int(original.numel()),
                     "method": planned.method})
        if (index + 1) % 25 == 0:
            progress(f"blame: {index + 1}/{len(paths)} decoder linears")
    rows.sort(key=lambda r: -r["kl_mean"])
    return rows
