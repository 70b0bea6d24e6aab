"""A language model's [prune] step: whole decoder layers removed by exporter/prune.py's layer steps (the next-token
distributions are the outputs they must keep), the pruned model distilled from the unpruned one on the calibration
text; what it removed and cost, and the unpruned model's exact log-probabilities of the eval windows' next tokens,
against which every artifact's perplexity is judged."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from exporter.lm.source import CausalLM
from exporter.options import Progress
from targets.prune import PruneSettings, said_limits
from validators.lm.validate import UNPRUNED_TARGET_LOGPROBS


def _decoder_parameters(model: Any) -> int:
    from exporter.prune import block_stack

    return sum(p.numel() for p in block_stack(model)[1].parameters())


def pruned_lm(lm: CausalLM, settings: PruneSettings, windows: np.ndarray, calibration: list[Any],
              progress: Progress) -> tuple[CausalLM, dict, dict[str, np.ndarray]]:
    """(the pruned and distilled model, the manifest's "pruning" section, the reference's unpruned arrays). Its
    quality after each step is the perplexity ratio, KL and top-1 agreement against the unpruned model on the eval
    windows (a report figure; the layers are chosen on calibration windows)."""
    import torch

    from exporter.kinds.causal_lm.export import logprobs_at
    from exporter.prune import NEXT_TOKEN, prune
    from validators.lm.metrics import teacher_forced

    positions = np.arange(windows.shape[1] - 1)
    with torch.no_grad():
        rows = [logprobs_at(lm.model, window, positions) for window in windows]
    distributions, exact = np.concatenate([r[0] for r in rows]), np.stack([r[1] for r in rows])
    targets = windows[:, 1:].reshape(-1)

    def quality(model: Any) -> dict:
        with torch.no_grad():
            logits = np.concatenate([model(torch.from_numpy(w[None])).logits[0, :-1].float().numpy() for w in windows])
        figures = teacher_forced(distributions, logits, targets, exact.reshape(-1))
        return {key: round(figures[key], 4) for key in ("ppl_ratio", "kl_mean", "top1_agreement")}

    ids = torch.cat(calibration).numpy()
    progress(f"pruning {lm.name} towards {said_limits(settings.limits())}: whole decoder layers, distilled on "
             f"{len(ids)} calibration windows")
    decoder_before = _decoder_parameters(lm.model)
    config = lm.model.config
    use_cache, config.use_cache = config.use_cache, False  # the model returns its logits only: what pruning reads
    try:
        pruned = prune(lm.model, (torch.from_numpy(ids[:1]),), ["input_ids"], [NEXT_TOKEN], {"input_ids": ids},
                       settings, quality, None, progress)
    finally:
        config.use_cache = use_cache
    model = pruned.module
    model.config.use_cache = use_cache
    decoder_after = _decoder_parameters(model)
    section = pruned.section | {
        "decoder_params": {"before": decoder_before, "after": decoder_after,
                           "ratio": round(decoder_after / decoder_before, 4)},
        "unpruned_ppl": float(np.exp(-exact.mean())),
        "quality_measured_on": f"the {len(windows)} eval windows, against the unpruned model"}
    # folder=None: the source's folder holds the unpruned weights; a builder reading a folder gets the pruned one
    return dataclasses.replace(lm, model=model, folder=None), section, {UNPRUNED_TARGET_LOGPROBS: exact}
