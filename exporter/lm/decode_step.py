"""One traced program for prefill and decode: a transformers decoder with a fixed-length KV cache as
explicit inputs and outputs, through torch.export; ONNX exports it (exporter/formats/onnx/graph.py) and LiteRT
converts it (with named inputs and outputs, the dots replaced).

    inputs   input_ids [1, S] int64, cache_position [S] int64 (positions of these tokens),
             past.<i>.key / past.<i>.value [1, kv_heads, cache_length, head_dim] float32
    outputs  logits [1, S, vocab], present.<i>.key / present.<i>.value (the cache with these tokens written)

S is dynamic (1 for decode, up to prefill_length for prefill). Positions past the last written one are
masked by causality, so the cache needs no separate mask or length input. Every layer keeps the whole
cache_length, sliding-window layers too: their window is applied by the model's own sliding-window mask over
absolute positions, so no layer has a rolling buffer whose fill level a traced program would have to carry.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any

from exporter.errors import ConversionError

# How a runtime feeds an LM artifact (recorded in the manifest, read by validators/lm)
STATIC_CACHE_IO = {"position": "cache_position", "past": "past.{layer}.{kv}", "present": "present.{layer}.{kv}"}


def text_config(config: Any) -> Any:
    """The decoder's own config (a multimodal config holds it inside)."""
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def eos_ids(model_config: Any, tokenizer: Any) -> list[int]:
    """The ids that end a generation: the model config's (one or several), else the tokenizer's."""
    eos = getattr(text_config(model_config), "eos_token_id", None)
    eos = tokenizer.eos_token_id if eos is None else eos
    return [int(e) for e in eos] if isinstance(eos, list | tuple) else [int(eos)]


def cache_shape(config: Any) -> tuple[int, int, int]:
    """(layers, kv heads, head dim) of a transformers decoder config."""
    text = text_config(config)
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return text.num_hidden_layers, getattr(text, "num_key_value_heads", None) or heads, head_dim


def decode_step(model: Any, cache_length: int):
    """(the model behind a cache_length-token KV cache passed in and out, layers, kv heads, head dim): the
    program ONNX and LiteRT convert."""
    import torch
    from transformers import StaticCache

    layers, kv_heads, head_dim = cache_shape(model.config)

    class DecodeStep(torch.nn.Module):
        """model + a StaticCache built from the past inputs; returns the logits and the updated cache."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, cache_position, past):
            cache = StaticCache(config=self.model.config, max_cache_len=cache_length)
            cache.layers = cache_layers(self.model.config, cache_length)
            cache.early_initialization(1, kv_heads, head_dim, torch.float32, torch.device("cpu"))
            for i, layer in enumerate(cache.layers):
                layer.keys, layer.values = past[2 * i], past[2 * i + 1]
                layer.cumulative_length = cache_position[0].clone()
                layer.update = functools.partial(_write_at, layer, cache_position)
            out = self.model(input_ids=input_ids, position_ids=cache_position.unsqueeze(0), past_key_values=cache,
                             use_cache=True)
            return (out.logits,) + tuple(t for layer in cache.layers for t in (layer.keys, layer.values))

    return DecodeStep().eval(), layers, kv_heads, head_dim


def cache_layers(config: Any, cache_length: int) -> list:
    """One full-length static layer per decoder layer. transformers' sliding-window layers keep their fill level in
    a Python integer (StaticSlidingWindowLayer.cumulative_length_int) that a traced step would freeze at its
    example's value: every decoded token then saw a wrong window. A full layer with the position-based sliding
    mask computes the same attention, from the positions the step is given."""
    from transformers.cache_utils import StaticLayer

    layers, _, _ = cache_shape(config)
    return [StaticLayer(max_cache_len=cache_length) for _ in range(layers)]


def _write_at(layer: Any, positions: Any, keys: Any, values: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """The cache update as one ScatterElements along the sequence axis. StaticLayer's index_copy_ exports as
    Transpose -> ScatterND -> Transpose of the whole cache per layer and step (12% of w8 decode time measured
    on SmolLM2-135M); scatter writes the new rows into a copy, and the outputs are new tensors, not the inputs."""
    import torch

    # rows at consecutive positions from the first: LiteRT-LM pads a short prefill chunk with position 0, which
    # would overwrite position 0's row; at the cache's end, padding rows fold onto its last row
    rows = (positions[:1].long() + torch.arange(keys.shape[2])).clamp(max=layer.keys.shape[2] - 1)
    index = rows.view(1, 1, -1, 1).expand_as(keys)
    layer.keys = layer.keys.scatter(2, index, keys)
    layer.values = layer.values.scatter(2, index, values)
    return layer.keys, layer.values


@contextlib.contextmanager
def grouped_query_attention():
    """Trace SDPA with enable_gqa: attention reads the key/value heads as they are instead of repeating them
    for every query head over the whole cache (an Expand per layer and step, 5% of w8 decode on SmolLM2)."""
    previous = os.environ.get(FORCE_GQA)
    os.environ[FORCE_GQA] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(FORCE_GQA, None)
        else:
            os.environ[FORCE_GQA] = previous


FORCE_GQA = "TRANSFORMERS_SDPA_FORCE_GQA"


def trace_decode_step(model: Any, cache_length: int, prefill_length: int) -> tuple[Any, dict]:
    """The decode step as a torch.export program (sequence length dynamic, 1..prefill_length), and the cache
    description the manifest records: how a runtime feeds it."""
    import torch

    step, layers, kv_heads, head_dim = decode_step(model, cache_length)
    example_length = min(4, prefill_length)
    ids = torch.zeros((1, example_length), dtype=torch.long)
    positions = torch.arange(example_length)
    past = tuple(torch.zeros(1, kv_heads, cache_length, head_dim) for _ in range(2 * layers))
    seq = torch.export.Dim("sequence", min=1, max=prefill_length)
    try:
        with torch.no_grad(), grouped_query_attention():
            program = torch.export.export(step, (ids, positions, past), strict=False,
                                          dynamic_shapes=({1: seq}, {0: seq}, tuple(None for _ in past)))
    except Exception as exc:  # torch.export on a model it cannot take
        raise not_exported(model, exc) from exc
    return program, {"io": STATIC_CACHE_IO, "layers": layers, "kv_heads": kv_heads, "head_dim": head_dim,
                     "cache_length": cache_length, "prefill_length": prefill_length}


def not_exported(model: Any, exc: Exception) -> ConversionError:
    from common.errors import first_line

    return ConversionError(f"{type(model).__name__} does not export with a static KV cache "
                           f"({type(exc).__name__}: {first_line(exc, 200)}); rerun with --debug for the trace")
