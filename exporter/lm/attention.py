"""Attention written the way a format's runtime runs it fastest, plugged into a transformers decoder through
its attention interface (every family that dispatches on `config._attn_implementation` takes it unchanged).
The implementation is set on a copy of the model: the reference and the other formats keep theirs."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any


def with_attention(model: Any, name: str, function: Callable, causal_mask: str | None) -> Any:
    """A copy of model whose attention layers call function. causal_mask: the transformers mask function
    whose mask it receives ("eager": additive float [batch, 1, queries, keys]); None: it gets no mask and
    applies causality itself."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(name, function)
    if causal_mask is not None:
        AttentionMaskInterface.register(name, AttentionMaskInterface._global_mapping[causal_mask])
    replica = copy.deepcopy(model)
    replica.config._attn_implementation = name
    return replica


def grouped_query_attention(module: Any, query: Any, keys: Any, values: Any, attention_mask: Any,
                            scaling: float | None = None, dropout: float = 0.0, softcap: float | None = None,
                            **kwargs: Any) -> tuple[Any, None]:
    """Each key/value head attended by its group of query heads as one batched matmul: the query heads are
    regrouped ([1, heads, S, d] -> [1, kv_heads, group * S, d]) instead of the cache being repeated per query
    head. transformers' repeat_kv becomes a BROADCAST_TO of the whole cache in LiteRT, whose kernel is a
    generic loop: SmolLM2-135M a8w8 decoded at 6.4 tokens/s with it, 40.7 without (1 thread). With a
    single key/value head it also avoids litert-torch 0.10's wrong attention over an expanded head. softcap:
    the scores soft-capped before the mask (Gemma 2), as transformers' eager attention does; a sliding window
    arrives in the mask."""
    import torch

    batch, heads, length, head_dim = query.shape
    kv_heads, keys_length = keys.shape[1], keys.shape[2]
    group = heads // kv_heads
    scores = torch.matmul(query.reshape(batch, kv_heads, group * length, head_dim), keys.transpose(-1, -2))
    scores = scores * (head_dim ** -0.5 if scaling is None else scaling)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        mask = attention_mask[:, :, None, :, :keys_length]  # [batch, 1, 1, S, keys]: the same for every head
        scores = (scores.reshape(batch, kv_heads, group, length, keys_length) + mask).reshape(
            batch, kv_heads, group * length, keys_length)
    out = torch.matmul(torch.softmax(scores, dim=-1), values)
    return out.reshape(batch, heads, length, head_dim).transpose(1, 2), None


def sliding_window(config: Any) -> int | None:
    """The window of the model's sliding-window layers; None where every layer attends to the whole past."""
    from exporter.lm.decode_step import text_config

    text = text_config(config)
    window = getattr(text, "sliding_window", None)
    types = getattr(text, "layer_types", None)
    if not window or (types is not None and "sliding_attention" not in types):
        return None
    return int(window)


def refuse_unsupported_attention(model: Any, fmt: str, cache_length: int, *, windows: bool, softcap: bool) -> None:
    """A ConversionError naming what the format's attention cannot compute: a sliding window shorter than the
    cache (the format would attend to the whole cache), or soft-capped attention scores."""
    from exporter.errors import ConversionError
    from exporter.lm.decode_step import text_config

    window = sliding_window(model.config)
    if not windows and window is not None and window < cache_length:
        raise ConversionError(f"{type(model).__name__} attends through a {window}-token sliding window on some "
                              f"layers, which the {fmt} language-model export does not compute (it would attend to "
                              f"the whole {cache_length}-token cache): set cache_length <= {window} in the target's "
                              "[lm] table, or export to onnx or tflite")
    cap = getattr(text_config(model.config), "attn_logit_softcapping", None)
    if not softcap and cap:
        raise ConversionError(f"{type(model).__name__} soft-caps its attention scores (attn_logit_softcapping = "
                              f"{cap:g}), which the {fmt} language-model attention kernel does not do: export to onnx "
                              "or tflite")
