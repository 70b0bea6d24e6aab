"""Random-weight decoders shaped like Qwen2.5-0.5B, -1.5B and -3B (their public config.json figures; no download),
saved as bfloat16 Hugging Face folders as the models are published: the scaling benchmark's sources. Random weights
judge nothing about quality (the verdict says so); they cost the time and memory the real models cost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# hidden, intermediate, layers, attention heads (Qwen2.5's config.json files; every size: 2 KV heads, tied
# embeddings, a 151,936-token vocabulary, rope_theta 1e6)
QWEN25_SHAPES = {"0.5B": (896, 4864, 24, 14), "1.5B": (1536, 8960, 28, 12), "3B": (2048, 11008, 36, 16)}
QWEN25_VOCABULARY = 151936


def qwen25_shaped_folder(size: str, folder: Path) -> Path:
    """A Qwen2.5-`size`-shaped Qwen2ForCausalLM with seeded random weights, saved once (bfloat16 safetensors) with a
    byte tokenizer whose ids are the first of the vocabulary."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from exporter.lm.tinylm import byte_tokenizer

    hidden, intermediate, layers, heads = QWEN25_SHAPES[size]
    tokenizer = byte_tokenizer()
    config = Qwen2Config(vocab_size=QWEN25_VOCABULARY, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=2,
                         max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, torch_dtype="bfloat16")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def export_figures(size: str, target: str, out: Path) -> dict:
    """One `edgeport export` of the size-shaped model to `target` in a child process: wall seconds, the child's
    peak RSS as the kernel counts it, the export's own per-step peaks and seconds, and the preflight's estimate."""
    folder = qwen25_shaped_folder(size, out / f"qwen2.5-{size}-shaped")
    begun = time.perf_counter()
    with (out / f"{size}.log").open("w") as log:
        child = subprocess.Popen([sys.executable, "-m", "exporter.cli", "export", "--model", str(folder), "--target",
                                  target, "--out", str(out / "artifacts")], cwd=REPO, stdout=log, stderr=log)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak RSS, not the largest of all children
    seconds, code = time.perf_counter() - begun, os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        return {"exit_code": code, "error": (out / f"{size}.log").read_text().strip().splitlines()[-1:]}
    from targets import load_target

    directory = out / "artifacts" / folder.name / load_target(target).name
    report = json.loads((directory / "report.json").read_text())
    export = report["export"]
    return {"exit_code": code, "target": target, "wall_seconds": round(seconds, 1),
            # the kernel's figure for the child misses peaks before a reset of the high-water mark (each export
            # step resets it): the export's own per-step peaks ("memory") are the ones to read
            "ru_maxrss_gb": round(usage.ru_maxrss * 1024 / 1e9, 2),
            "peak_rss_gb": round(report["export"]["memory"]["peak_rss_mb"] / 1000, 2),
            "export_seconds": export["export_seconds"], "artifact_seconds": export["artifact_seconds"],
            "weight_plan_seconds": export.get("weight_plan_seconds"),
            "memory": export["memory"],
            "artifacts": {a["path"]: {"bytes": a["bytes"], "passed": a["budget"]["passed"]}
                          for a in report["artifacts"]},
            "verdict_note": "random weights: the verdict judges nothing about quality here (time and memory only)"}


def bench_lm_scale(out: Path) -> dict:
    """Qwen2.5-shaped random decoders exported with the real CLI: seconds and peak memory per size (LM_SCALE_SIZES,
    default 0.5B,1.5B; LM_SCALE_TARGET, default android-llm). Each size in its own process, one after another."""
    sizes = os.environ.get("LM_SCALE_SIZES", "0.5B,1.5B").split(",")
    target = os.environ.get("LM_SCALE_TARGET", "android-llm")
    rows = {size: export_figures(size, target, out) for size in sizes}
    return {"target": target, "sizes": rows, "threads_note": "exports run at the machine's threads; the target's "
            "runtime threads time the artifacts"}
