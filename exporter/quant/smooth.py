"""Activation smoothing (SmoothQuant, Xiao et al. 2023) for variants whose matmuls quantize their inputs to int8
per token at run time (ExecuTorch's 8da schemes, LiteRT's dynamic range). A few input channels of a decoder
linear carry values far larger than the rest, and one int8 scale per token then spends its steps on them. Each
input channel j is divided by s_j = max|x_j|^alpha / max|w_j|^(1 - alpha) (maxima over calibration text) and
the weight's column j multiplied by it; the division is folded into what produces the input (the preceding
RMSNorm's weight; for down_proj, the up projection's rows), so the float model computes the same function and the
graph does not grow. Per-token int8 on SmolLM2-135M's decoder linears alone: KL 0.024 -> 0.005 (alpha 0.7).
The attention output (o_proj) is left alone: its input's channels are the value heads', shared by grouped query
heads, and it was the least harmed linear measured.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np

# (linears reading one normalized input, the norms that may produce it: first present wins). Gemma 2/3 put a
# norm after attention (post_attention_layernorm) and another before the MLP (pre_feedforward_layernorm).
GROUPS = ((("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("input_layernorm",)),
          (("mlp.gate_proj", "mlp.up_proj"), ("pre_feedforward_layernorm", "post_attention_layernorm")))
GATED_MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")  # down_proj reads act(gate(x)) * up(x)
FOLD_TOLERANCE = 1e-3  # largest logit change the fold may make, relative to the largest logit


def smoothed_copy(model: Any, batches: list[Any], alpha: float,
                  progress: Callable[[str], None]) -> tuple[Any, dict]:
    """A copy of `model` with its decoder linears' inputs smoothed, and what was done. Where the model's layers
    are not laid out as GROUPS says (or a norm is neither w * x nor (1 + w) * x), those linears stay as they are
    and the record says so; a fold that would change the float model's logits is refused the same way."""
    import torch

    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or not batches:
        return model, {"alpha": alpha, "smoothed_linears": 0,
                       "not_smoothed": "no decoder layers at model.layers" if batches else "no calibration text"}
    progress(f"smoothing: activation maxima of the decoder linears on {len(batches)} calibration windows")
    smoothed = copy.deepcopy(model)
    maxima = _input_maxima(smoothed, batches)
    count, skipped = 0, []
    with torch.no_grad():
        for index, layer in enumerate(smoothed.model.layers):
            modules = dict(layer.named_modules())
            for names, norms in GROUPS:
                norm = next((modules[n] for n in norms if n in modules), None)
                offset = _norm_offset(norm) if norm is not None else None
                if offset is None or not all(n in modules for n in names):
                    skipped.append(f"layers.{index}: {', '.join(names)}")
                    continue
                scales = _scales(maxima[id(modules[names[0]])], [modules[n].weight for n in names], alpha)
                norm.weight.copy_((norm.weight + offset) / scales - offset)
                for name in names:
                    modules[name].weight.mul_(scales)
                count += len(names)
            if all(n in modules for n in GATED_MLP):
                down, up = modules["mlp.down_proj"], modules["mlp.up_proj"]
                scales = _scales(maxima[id(down)], [down.weight], alpha)
                up.weight.div_(scales[:, None])
                if up.bias is not None:
                    up.bias.div_(scales)
                down.weight.mul_(scales)
                count += 1
        change = logit_change(model, smoothed, batches[0][:1])
    if change > FOLD_TOLERANCE:
        return model, {"alpha": alpha, "smoothed_linears": 0,
                       "not_smoothed": f"the fold changed the float model's logits by {change:.2g} of their "
                                       "largest (a norm edgeport does not know); the variant is quantized unsmoothed"}
    record = {"alpha": alpha, "smoothed_linears": count, "calibration_windows": len(batches),
              "float_logit_change": float(f"{change:.2g}"),
              "how": "SmoothQuant: input channel j divided by max|x_j|^alpha / max|w_j|^(1-alpha), folded into the "
                     "preceding RMSNorm (q, k, v, gate, up) and the up projection's rows (down); o_proj as it is"}
    if skipped:
        record["not_smoothed"] = skipped
    return smoothed, record


def _input_maxima(model: Any, batches: list[Any]) -> dict[int, Any]:
    """id(linear) -> the largest |input| of each of its input channels over the batches."""
    import torch

    maxima: dict[int, Any] = {}

    def record(module: Any, inputs: tuple) -> None:
        seen = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(0).float()
        key = id(module)
        maxima[key] = seen if key not in maxima else torch.maximum(maxima[key], seen)

    hooks = [m.register_forward_pre_hook(record) for m in model.model.layers.modules()
             if isinstance(m, torch.nn.Linear)]
    try:
        with torch.no_grad():
            for batch in batches:
                model(input_ids=batch)
    finally:
        for hook in hooks:
            hook.remove()
    return maxima


def divisors(activation_max: Any, weight_max: Any, alpha: float) -> Any:
    """SmoothQuant's s_j = max|x_j|^alpha / max|w_j|^(1 - alpha), for numpy arrays or torch tensors (the static
    int8 encoder recipes smooth in the ONNX and LiteRT graphs: exporter/formats/*/smoothing.py)."""
    return activation_max.clip(min=1e-5) ** alpha / weight_max.clip(min=1e-5) ** (1 - alpha)


def matmul_divisors(activation_max: np.ndarray, weights: list[np.ndarray], alpha: float) -> np.ndarray:
    """The float32 divisors of one activation's channels for the [out, in] weights that read it."""
    weight_max = np.max([np.abs(w).max(axis=0) for w in weights], axis=0)  # per input channel
    return divisors(activation_max, weight_max, alpha).astype(np.float32)


def _scales(activation_max: Any, weights: list[Any], alpha: float) -> Any:
    import torch

    weight_max = torch.stack([w.abs().amax(0) for w in weights]).amax(0).float()
    return divisors(activation_max, weight_max, alpha).clamp(min=1e-5).to(weights[0].dtype)


def _norm_offset(norm: Any) -> float | None:
    """0 for an RMSNorm scaling by w (Llama, Qwen, Mistral), 1 for one scaling by 1 + w (Gemma), else None:
    read from what the norm makes of a vector of ones (RMS 1, so the output is its scale), with its own weight
    and with another (one weight alone cannot tell 2 * w from 1 + w where w = 1)."""
    import torch

    weight = getattr(norm, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1:
        return None
    original = weight.detach().clone()
    ones = torch.ones(1, weight.shape[0], dtype=weight.dtype)
    found = set()
    with torch.no_grad():
        try:
            for probe in (original, 0.5 * original + 0.25):
                weight.copy_(probe)
                scale = norm(ones).reshape(-1)
                found.add(next((o for o in (0.0, 1.0) if torch.allclose(scale, probe + o, rtol=1e-4, atol=1e-4)),
                               None))
        finally:
            weight.copy_(original)
    return found.pop() if len(found) == 1 else None


def logit_change(model: Any, changed: Any, batch: Any) -> float:
    """The largest change a transform exact in float made to `model`'s logits on `batch`, relative to the largest."""
    before, after = model(input_ids=batch).logits, changed(input_ids=batch).logits
    return float((after - before).abs().max() / before.abs().max().clamp(min=1e-9))
