"""Recovery without labels: the block scales of a 4-bit weight plan learned by self-distillation.

The plan's codes and zero points stay as the method chose them (round-to-nearest or GPTQ); one multiplier per
block scale, exp(t) with t starting at 0, is learned by Adam on the KL divergence from the float model's own
next-token distributions to the quantized model's, on the calibration windows (no labels: the float model is
the teacher). Every decoder linear is quantized at once, so a block's scale is learned against the error of all
the others (OmniQuant's learnable weight clipping, on scales instead of clipping bounds). The result is a plan
like any other: every format writes its codes and learned scales as they are.

Activations are not simulated: the int8 activations of a8 variants are left to the runtime, as in the plan.
A plan on the source's own grid (a quantized GGUF's blocks, method "source") is exact and is left alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from exporter.quant.plan import Planner, QuantizedWeight, Scheme, as_blocks

# of the log multipliers (Adam). SmolLM2-135M, 60 steps, KL on 1024 held-out calibration tokens: round-to-nearest
# plan 0.317 -> 0.195 (1e-4), 0.152 (3e-4), 0.127 (1e-3); GPTQ plan 0.037 -> 0.032 (1e-4), 0.031 (3e-4), and
# 2e-3 over 100 steps overshoots (0.044 -> 0.18)
LEARNING_RATE = 3e-4
HELD_OUT = 2  # calibration batches kept out of the steps, for the KL before and after


def recover(model: Any, plans: dict[str, QuantizedWeight], batches: list[Any], steps: int,
            progress: Callable[[str], None], learning_rate: float = LEARNING_RATE,
            held_out_batches: int = HELD_OUT) -> tuple[dict[str, QuantizedWeight], dict]:
    """The plans with learned block scales, and what recovery did (steps, seconds, KL before and after on the
    last `held_out_batches` calibration batches, which the steps never see)."""
    import torch
    from torch.func import functional_call

    begun = time.perf_counter()
    learned = {path: plan for path, plan in plans.items() if plan.method != "source"}
    centred = {path: as_blocks(plan.codes.float(), plan.scheme.block_size) - plan.zero_points[..., None]
               for path, plan in learned.items()}
    logs = {path: torch.zeros_like(plan.scales, requires_grad=True) for path, plan in learned.items()}

    def weights() -> dict[str, Any]:
        out = {}
        for path, plan in learned.items():
            rows, columns = plan.codes.shape
            blocks = centred[path] * (plan.scales * torch.exp(logs[path]))[..., None]
            out[f"{path}.weight"] = blocks.reshape(rows, -1)[:, :columns]
        return out

    def kl(batch: Any) -> Any:
        with torch.no_grad():
            teacher = torch.log_softmax(model(input_ids=batch).logits.float(), dim=-1)
        student = torch.log_softmax(functional_call(model, weights(), (), {"input_ids": batch}).logits.float(), dim=-1)
        return (teacher.exp() * (teacher - student)).sum(-1).mean()

    held_out, train = batches[-held_out_batches:], batches[:-held_out_batches] or batches
    frozen = [p for p in model.parameters() if p.requires_grad]
    for parameter in frozen:
        parameter.requires_grad_(False)
    try:
        with torch.no_grad():
            before = float(sum(kl(b) for b in held_out) / len(held_out))
        optimizer = torch.optim.Adam(logs.values(), lr=learning_rate)
        for step in range(steps):
            loss = kl(train[step % len(train)])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if (step + 1) % max(1, steps // 4) == 0:
                progress(f"recovery: step {step + 1}/{steps}, KL {float(loss.detach()):.4f} on a calibration batch")
        with torch.no_grad():
            after = float(sum(kl(b) for b in held_out) / len(held_out))
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)
    recovered = dict(plans)
    for path, plan in learned.items():
        recovered[path] = QuantizedWeight(plan.codes, (plan.scales * torch.exp(logs[path])).detach(),
                                          plan.zero_points, plan.scheme, f"{plan.method}+recovery")
    record = {"steps": steps, "learning_rate": learning_rate, "linears": len(learned),
              "tokens_per_step": int(train[0].numel()), "held_out_tokens": int(sum(b.numel() for b in held_out)),
              "kl_before": round(before, 5), "kl_after": round(after, 5),
              "seconds": round(time.perf_counter() - begun, 1),
              "what": "block scales learned by self-distillation (KL to the float model on calibration text), "
                      "codes and zero points kept; activations not simulated"}
    return recovered, record


class RecoveredPlanner:
    """The planner a variant with recovery writes from: its 4-bit plans of the given linears have learned
    scales (recover, run once per scheme and method, over all of them at once); every other plan is the base
    planner's."""

    def __init__(self, base: Planner, paths: list[str], steps: int, progress: Callable[[str], None]) -> None:
        self.base, self.paths, self.steps, self.progress = base, set(paths), steps, progress
        self.modules = base.modules
        self.recovered: dict[tuple[Scheme, str], dict[str, QuantizedWeight]] = {}
        self.records: dict[tuple[Scheme, str], dict] = {}
        self.last: tuple[Scheme, str] | None = None  # the scheme and method last written: the emitting variant's

    def weight(self, path: str, scheme: Scheme, method: str) -> QuantizedWeight:
        if scheme.bits != 4 or path not in self.paths:
            return self.base.weight(path, scheme, method)
        key = (scheme, method)
        if key not in self.recovered:
            # in module order: the base planner gathers GPTQ's Hessians a group of consecutive linears at a time
            plans = {p: self.base.weight(p, scheme, method) for p in self.modules if p in self.paths}
            self.progress(f"recovery: learning the block scales of {len(plans)} linears ({scheme.describe()}, "
                          f"{method}) by self-distillation, {self.steps} steps")
            self.recovered[key], self.records[key] = recover(self.base.model, plans, self.base.calibration(),
                                                             self.steps, self.progress)
        self.last = key
        return self.recovered[key][path]

    def record(self) -> dict | None:
        """What recovery did for the variant being emitted (its 4-bit scheme), None where it wrote none."""
        return self.records.get(self.last) if self.last else None
