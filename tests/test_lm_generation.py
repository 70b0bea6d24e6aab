"""The decode step every format lowers, checked in PyTorch before any format is involved: driven token by token
with its KV cache, it writes what transformers' own generate() writes, for every attention kind it takes (full,
sliding window, mixed local/global layers) in six decoder families; the embedding rewrites keep the model's
embedding scale; formats whose attention cannot compute a window or a score cap refuse the model by name."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli
from tests.lm_models import (
    GENERATION_FAMILIES,
    GENERATION_WINDOW,
    SCALED_EMBEDDING,
    SLIDING_WINDOW,
    causal_lm_folder,
    generation_config,
    lm_target,
)

pytestmark = pytest.mark.hf

PROMPT, NEW_TOKENS, CACHE = 10, 16, 64


def _model(family: str, **overrides):
    import torch
    from transformers import AutoModelForCausalLM

    config = generation_config(family)
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def _generate_and_step(model) -> tuple[list[int], list[int]]:
    """(transformers' greedy tokens, the traced decode step's greedy tokens) from one random prompt."""
    import torch

    from exporter.lm.decode_step import trace_decode_step

    prompt = torch.randint(2, model.config.vocab_size, (1, PROMPT), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model.generate(prompt, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                  do_sample=False)[0, PROMPT:].tolist()
        program, cache = trace_decode_step(model, CACHE, 16)
        step = program.module()
        past = tuple(torch.zeros(1, cache["kv_heads"], CACHE, cache["head_dim"]) for _ in range(2 * cache["layers"]))
        logits, *past = step(prompt, torch.arange(PROMPT), past)
        tokens = []
        for position in range(PROMPT, PROMPT + NEW_TOKENS):
            tokens.append(int(logits[0, -1].argmax()))
            logits, *past = step(torch.tensor([[tokens[-1]]]), torch.tensor([position]), tuple(past))
    return expected, tokens


@pytest.mark.parametrize("family", GENERATION_FAMILIES)
def test_the_decode_step_writes_what_transformers_generates(family):
    from exporter.lm.attention import sliding_window

    model = _model(family)
    if family != "llama":  # the window is shorter than what is generated, so it decides what each token sees
        assert sliding_window(model.config) == GENERATION_WINDOW < PROMPT + NEW_TOKENS
    expected, tokens = _generate_and_step(model)
    assert tokens == expected


@pytest.mark.parametrize("family", ["qwen2", "gemma3", "mistral"])
def test_a_sliding_layer_whose_fill_level_the_trace_freezes_fails(family, monkeypatch):
    """transformers' own sliding-window cache layer keeps its fill level in a Python int the trace freezes: with
    it (and a window longer than the cache, so the step still traces) the step decodes against the wrong rows."""
    from transformers import StaticCache

    from exporter.lm import decode_step

    def transformers_layers(config, cache_length):
        return StaticCache(config=config, max_cache_len=cache_length).layers

    model = _model(family, sliding_window=100)
    expected, tokens = _generate_and_step(model)
    assert tokens == expected  # the window is longer than everything generated: full attention, and right
    monkeypatch.setattr(decode_step, "cache_layers", transformers_layers)
    expected, tokens = _generate_and_step(model)
    assert tokens[0] == expected[0] and tokens != expected  # prefill is right, decoding is not


@pytest.mark.parametrize(("fmt", "family", "reason"), [
    ("executorch", "mistral", "sliding window"), ("coreml", "gemma3", "sliding window"),
    ("executorch", "gemma2", "sliding window")])
def test_formats_without_windows_refuse_a_window_shorter_than_the_cache(fmt, family, reason):
    from exporter.errors import ConversionError
    from exporter.formats import backend
    from exporter.lm.attention import refuse_unsupported_attention

    model = _model(family)
    lowering = backend(fmt, "causal-lm")
    with pytest.raises(ConversionError, match=reason):
        refuse_unsupported_attention(model, fmt, CACHE, windows=lowering.computes_windows,
                                     softcap=lowering.computes_softcap)
    refuse_unsupported_attention(model, fmt, GENERATION_WINDOW, windows=False, softcap=True)  # the window holds all
    for computes in ("onnx", "tflite"):  # these take the model as it is
        refuse_unsupported_attention(model, computes, CACHE, windows=backend(computes, "causal-lm").computes_windows,
                                     softcap=backend(computes, "causal-lm").computes_softcap)


def test_executorch_refuses_soft_capped_attention_and_litert_computes_it():
    """custom_sdpa has no score cap; the LiteRT attention applies Gemma 2's as transformers' eager attention does."""
    import torch
    from transformers import Gemma2Config

    from exporter.errors import ConversionError
    from exporter.formats import backend
    from exporter.lm.attention import grouped_query_attention, refuse_unsupported_attention

    model = _model("gemma2", sliding_window=CACHE)
    executorch = backend("executorch", "causal-lm")
    with pytest.raises(ConversionError, match="soft-caps its attention scores"):
        refuse_unsupported_attention(model, "executorch", CACHE, windows=executorch.computes_windows,
                                     softcap=executorch.computes_softcap)
    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

    attention = model.model.layers[0].self_attn
    assert isinstance(model.config, Gemma2Config) and attention.attn_logit_softcapping == 50.0
    generator = torch.Generator().manual_seed(0)
    query = 20 * torch.randn(1, 4, 5, 16, generator=generator)  # scores well past the cap's linear range
    keys, values = (20 * torch.randn(1, 2, 5, 16, generator=generator) for _ in range(2))
    mask = torch.triu(torch.full((5, 5), float("-inf")), 1)[None, None]
    expected, _ = eager_attention_forward(attention, query, keys, values, mask, scaling=attention.scaling,
                                          softcap=attention.attn_logit_softcapping)
    regrouped, _ = grouped_query_attention(attention, query, keys, values, mask, scaling=attention.scaling,
                                           softcap=attention.attn_logit_softcapping)
    uncapped, _ = grouped_query_attention(attention, query, keys, values, mask, scaling=attention.scaling)
    assert torch.allclose(regrouped, expected, atol=1e-5)
    assert not torch.allclose(uncapped, expected, atol=1e-2)


def test_executorch_quantized_embedding_keeps_the_embedding_scale():
    """Gemma multiplies its lookup by sqrt(hidden); the quantized lookup must too (it once dropped it)."""
    import torch

    from exporter.errors import ConversionError
    from exporter.formats.executorch.embedding import quantize_embedding
    from exporter.quant.plan import Scheme, round_to_nearest

    model = _model("gemma3")
    original = model.get_input_embeddings()
    ids = torch.arange(model.config.vocab_size)
    with torch.no_grad():
        expected = original(ids)
        record = quantize_embedding(model, round_to_nearest(original.weight.detach(), Scheme(8, 64, True)))
        looked_up = model.get_input_embeddings()(ids)
    assert record["output_scale"] == pytest.approx(64 ** 0.5)
    # half a step of each row, plus float16's rounding (2^-11) of the scale and of the dequantized value, each
    # times the largest code; all times the embedding scale
    step = (original.weight.abs().amax(-1, keepdim=True) / 127) * record["output_scale"]
    assert ((looked_up - expected).abs() <= (0.5 + 2 * 128 / 2048) * step + 1e-6).all()
    assert (looked_up - expected).abs().max() < 0.1 * expected.abs().max()  # unscaled, the rows were 8x too small

    class Shifted(torch.nn.Embedding):
        def forward(self, indices):
            return super().forward(indices) + 1.0

    plain = _model("llama")
    plain.set_input_embeddings(Shifted(plain.config.vocab_size, plain.config.hidden_size))
    with pytest.raises(ConversionError, match="more than a scaled table lookup"):
        quantize_embedding(plain, round_to_nearest(plain.get_input_embeddings().weight.detach(), Scheme(8, 32, True)))


SCALED_EMBEDDING_VARIANTS = ("onnx/fp32", "onnx/w8", "executorch/fp32", "executorch/a8w8", "tflite/fp32",
                             "tflite/a8w8", "coreml/fp16", "coreml/w8")


@pytest.mark.slow
def test_a_scaled_embedding_model_through_every_format(tmp_path):
    """A trained tiny Gemma 3 (embedding scaled by sqrt(hidden) after the lookup): fp32 / fp16 and 8-bit variants
    of every format agree with PyTorch as the unscaled test families do."""
    folder = causal_lm_folder(SCALED_EMBEDDING, tmp_path / "gemma3")
    variants = SCALED_EMBEDDING_VARIANTS
    target = lm_target(tmp_path / "scaled-llm.toml", variants)
    done = run_cli("export", "--model", folder, "--target", target, "--out", tmp_path / "out", "--name", "gemma3")
    assert done.code == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gemma3" / "test-llm" / "report.json").read_text())
    assert not report["provisional"]
    by = {a["path"]: a for a in report["artifacts"]}
    assert len(by) == len(variants)
    for path, artifact in by.items():
        forced = artifact["lm"]["teacher_forced"]
        assert artifact["budget"]["passed"], (path, artifact["budget"]["violations"])
        if path in ("model.onnx", "model.pte", "model.tflite"):
            assert artifact["metrics"]["max_abs"] < 1e-3 and forced["ppl_ratio"] == pytest.approx(1.0, abs=1e-4)
        else:  # float16 and 8-bit weights: within the budgets the unscaled families meet
            assert forced["kl_mean"] < 0.02 and abs(forced["ppl_ratio"] - 1) < 0.03, (path, forced)
        assert all(r["decode_top1_agreement"] >= 0.85 for r in artifact["lm"]["free_running"]), path
    manifest = json.loads((tmp_path / "out" / "gemma3" / "test-llm" / "manifest.json").read_text())
    embedding = next(e for e in manifest["artifacts"] if e["path"] == "model.a8w8.pte")["quantization"]["embedding"]
    assert embedding["output_scale"] == pytest.approx(8.0)  # sqrt(64), kept after the quantized lookup


@pytest.mark.parametrize("adds_bos", [True, False])
def test_every_eval_window_starts_as_the_tokenizer_starts_a_text(adds_bos):
    """A tokenizer that starts every text with BOS (Llama, Gemma) gets BOS at the head of every window, not only of
    the first; one that adds none gets none; the manifest's eval record says which rule held."""
    from types import SimpleNamespace

    from tokenizers import processors

    from exporter.kinds.causal_lm.export import _eval_windows
    from exporter.lm.tinylm import byte_tokenizer
    from targets.lm import LmSettings

    tokenizer = byte_tokenizer()
    bos = tokenizer.bos_token_id
    if adds_bos:
        tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", bos)])
        assert tokenizer("a")["input_ids"][0] == bos
    lm = SimpleNamespace(tokenizer=tokenizer, eval_text="The quick brown fox jumps over the lazy dog. " * 20)
    target = SimpleNamespace(lm=LmSettings(eval_windows=4, window_length=32))
    windows, _, described, _ = _eval_windows(lm, target, None)
    assert windows.shape == (4, 32)
    assert (windows[:, 0] == bos).all() == adds_bos and not (windows[:, 1:] == bos).any()
    text = tokenizer(lm.eval_text, add_special_tokens=False)["input_ids"]
    body = 31 if adds_bos else 32
    assert windows[1, 1 if adds_bos else 0:].tolist() == text[body:2 * body]  # consecutive text, nothing skipped
    assert ("starts with BOS" in described["bos"]) == adds_bos


@pytest.mark.slow
def test_a_sliding_window_model_through_onnx_and_litert_and_refused_by_executorch(tmp_path):
    """A trained tiny Mistral whose 8-token window is far shorter than the cache: ONNX and LiteRT write PyTorch's
    text token for token; ExecuTorch, whose attention has no window, refuses it by name and writes nothing."""
    folder = causal_lm_folder(SLIDING_WINDOW, tmp_path / "mistral")
    target = lm_target(tmp_path / "window-llm.toml", ("onnx/fp32", "tflite/fp32"))
    done = run_cli("export", "--model", folder, "--target", target, "--out", tmp_path / "out", "--name", "mistral")
    assert done.code == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "mistral" / "test-llm" / "report.json").read_text())
    assert not report["provisional"]
    for artifact in report["artifacts"]:
        runs = artifact["lm"]["free_running"]
        assert all(r["matching_tokens"] == r["tokens"] == 12 for r in runs), (artifact["path"], runs)
        assert artifact["metrics"]["max_abs"] < 1e-3
        assert len(runs) == 3
    refused = lm_target(tmp_path / "window-et.toml", ("onnx/fp32", "executorch/fp32"))
    done = run_cli("export", "--model", folder, "--target", refused, "--out", tmp_path / "et")
    assert done.code == 2 and "8-token sliding window" in done.error_lines[0]
    assert "executorch language-model export" in done.error_lines[0]
    assert "reference:" not in done.stderr and "onnx: tracing" not in done.stderr  # refused before any long step
    assert not (tmp_path / "et").exists()
