"""llama.cpp beside edgeport, through llama-cpp-python (an optional dependency: the README says how to build it):
a float32 GGUF of a model's own weights as llama.cpp's reference, llama.cpp's own quantizations of it, the eval
windows edgeport judged on, llama.cpp's metric definitions (validators/lm/metrics.py), and decode tokens/s at one
thread. Figures, not tests."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

# llama.cpp's file types (llama.h's LLAMA_FTYPE_MOSTLY_*)
FILE_TYPES = {"Q4_0": 2, "Q8_0": 7, "Q4_K_M": 15}


def write_float_gguf(source: Path, out: Path) -> Path:
    """The source GGUF with every tensor dequantized to float32 and its metadata copied: llama.cpp's view of the
    very weights edgeport's reference computes with (a quantized source's reference is its dequantized float)."""
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, quants

    reader = GGUFReader(str(source))
    architecture = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(str(out), architecture)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if name == "general.file_type":
            writer.add_key_value(name, 0, GGUFValueType.UINT32)  # all float32
            continue
        sub_type = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), field.types[0], sub_type=sub_type)
    for tensor in reader.tensors:
        values = quants.dequantize(tensor.data, tensor.tensor_type) \
            if tensor.tensor_type != GGMLQuantizationType.F32 else np.asarray(tensor.data)
        writer.add_tensor(tensor.name, np.ascontiguousarray(values, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def quantize(float_gguf: Path, out: Path, file_type: str, threads: int = 1) -> Path:
    """llama.cpp's own quantizer (llama_model_quantize), as `llama-quantize FILE OUT TYPE` runs it."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FILE_TYPES[file_type]
    params.nthread = threads
    if llama_cpp.llama_model_quantize(str(float_gguf).encode(), str(out).encode(), params) != 0:
        raise RuntimeError(f"llama.cpp could not quantize {float_gguf} to {file_type}")
    return out


def _model(path: Path, context: int, threads: int):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), n_ctx=context, n_batch=context, n_threads=threads,
                           n_threads_batch=threads, logits_all=True, verbose=False)


def window_logits(path: Path, windows: np.ndarray, threads: int = 1) -> np.ndarray:
    """[windows * (length - 1), vocab]: llama.cpp's logits for every next token of each eval window, each
    window from an empty cache (as edgeport's teacher-forced verdict feeds its artifacts)."""
    model = _model(path, int(windows.shape[1]), threads)
    rows = []
    for window in windows:
        model.reset()
        model.eval([int(t) for t in window])
        rows.append(np.array(model.scores[:len(window) - 1], dtype=np.float32))
    return np.concatenate(rows)


def decode_speed(path: Path, prompt: list[int], new_tokens: int, threads: int = 1) -> dict:
    """Time to first token and decode tokens/s of greedy decoding, as validators/lm/speed.py measures an
    artifact: one warm-up, then the prompt's prefill and new_tokens - 1 decode calls."""
    model = _model(path, len(prompt) + new_tokens + 8, threads)
    model.eval(prompt[:4])  # warm-up
    model.reset()
    start = time.perf_counter()
    model.eval(prompt)
    first = time.perf_counter()
    token = int(np.argmax(model.scores[len(prompt) - 1]))
    for _ in range(new_tokens - 1):
        model.eval([token])
        token = int(np.argmax(model.scores[model.n_tokens - 1]))
    end = time.perf_counter()
    return {"threads": threads, "ttft_ms": round(1000 * (first - start), 2),
            "decode_tokens_per_s": round((new_tokens - 1) / (end - first), 1)}
