"""onnxruntime-genai's model builder as the shipping path for 4-bit weights of the architectures it knows:
fused GroupQueryAttention and MatMulNBits (measured here on SmolLM2-135M, one thread: 123 decode tokens/s
against 77 for edgeport's own 4-bit export and 16-19 for eager PyTorch).

Where it is not used, and why (each measured with onnxruntime-genai 0.18 / onnxruntime 1.32 on SmolLM2-135M):
int8 (w8 comes from edgeport's own opset-23 export, which decodes at 3x eager; the builder's int8 graph agrees
with float32 on 94.6% of next tokens, max |delta logit| 2.4, and could become a second w8 path); an 8-bit
head beside a 4-bit body, and an asymmetric int4 build, write invalid models. Its symmetric 4-bit build shares
one 4-bit table between the embedding and a tied head.
The artifact it writes is validated exactly like edgeport's own export.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from exporter.errors import ConversionError
from exporter.lm.decode_step import cache_shape

# how a runtime feeds the builder's graph (the manifest's cache.io, read by validators/lm): a shared buffer
GQA_BUFFER_IO = {"position": "attention_mask", "past": "past_key_values.{layer}.{kv}",
                 "present": "present.{layer}.{kv}"}

# transformers model_type -> what the builder calls it (the architectures its builders/ folder covers)
KNOWN = {"llama", "mistral", "qwen2", "qwen3", "phi3", "phi", "gemma", "gemma2", "gemma3_text", "granite", "olmo",
         "smollm3", "nemotron", "chatglm", "ernie4_5"}


def builder_choice(model_type: str, precision: str, embedding_bits: int, builder: str,
                   symmetric: bool, method: str = "rtn", recovery: int = 0) -> tuple[bool, str]:
    """(use the builder, the reason the manifest records)."""
    if builder == "export":
        return False, "the target asks for edgeport's own export (builder = \"export\")"
    if method == "gptq" or recovery:
        return False, (f"{'recovered' if recovery else 'gptq'} codes and scales are computed in PyTorch and written by "
                       "edgeport's own export")
    if precision != "w4":
        return False, ("onnxruntime-genai's builder is used for w4 only: w8, fp32 and fp16 come from the traced "
                       "program (edgeport's opset-23 export)")
    if not symmetric:
        return False, ("asymmetric 4-bit blocks (symmetric = false): onnxruntime-genai 0.18's asymmetric int4 build "
                       "writes an invalid model, so edgeport's own export quantizes this variant")
    if model_type not in KNOWN:
        return False, f"onnxruntime-genai's builder does not know model_type {model_type!r}"
    if embedding_bits != 4:
        return False, ("the builder's 8-bit output head beside a 4-bit body writes an invalid model "
                       "(onnxruntime-genai 0.18); embedding_bits = 4 lets it build this variant")
    return True, (f"onnxruntime-genai's model builder knows {model_type}: fused GroupQueryAttention and MatMulNBits, "
                  "the fastest decode here")


def build(folder: Path, out: Path, block_size: int, method: str, cache_length: int, prefill_length: int,
          config, scratch: Path) -> tuple[dict, dict]:
    """Build out (+ out.data) from the Hugging Face folder; returns (cache description, quantization record)."""
    work = scratch / "genai"
    shutil.rmtree(work, ignore_errors=True)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    options = [f"filename={out.name}", f"block_size={block_size}", f"shared_embeddings={str(tied).lower()}",
               f"algo_config={'k_quant' if method == 'k_quant' else 'rtn'}", "hf_token=false", "hf_remote=false"]
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(folder), "-o", str(work),
               "-p", "int4", "-e", "cpu", "-c", str(scratch / "genai-cache"), "--extra_options", *options]
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    built = work / out.name
    if done.returncode != 0 or not built.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConversionError(f"onnxruntime-genai's builder failed ({last[:200]}); set builder = \"export\" in "
                              "the target's [lm] table to use edgeport's own export")
    shutil.move(str(built), out)
    shutil.move(str(work / f"{out.name}.data"), out.with_name(out.name + ".data"))
    layers, kv_heads, head_dim = cache_shape(config)
    cache = {"io": GQA_BUFFER_IO, "layers": layers, "kv_heads": kv_heads, "head_dim": head_dim,
             "cache_length": cache_length, "prefill_length": prefill_length}
    record = {"scheme": "w4", "block_size": block_size, "method": "k_quant" if method == "k_quant" else "rtn",
              "head_bits": 4, "embedding_bits": 4 if tied else 32, "embedding_shares_head": tied, "kept": {},
              "activations": _activation_compute(out), "builder_options": options}
    return cache, record


def _activation_compute(path: Path) -> str:
    """What the builder's MatMulNBits nodes compute their activations in, read from the graph it wrote."""
    import onnx

    from exporter.formats.onnx.weights import ACCURACY_LEVELS

    graph = onnx.load(str(path), load_external_data=False).graph
    levels = sorted({next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "accuracy_level"),
                          0) for node in graph.node if node.op_type == "MatMulNBits"})
    names = {level: name for name, level in ACCURACY_LEVELS.items()}
    return ", ".join(f"{names.get(level, 'level ' + str(level))} (MatMulNBits accuracy_level {level})"
                     for level in levels)
