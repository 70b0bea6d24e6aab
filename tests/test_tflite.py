"""TFLite (LiteRT) variants and the iot-npu target with its Ethos-U (vela) report."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import ZOO, fast_target, read_json, run_cli, save_family_data
from validators.runtimes.litert_runtime import dequantize, quantize


def test_int8_io_quantize_dequantize_round_trip():
    values = np.array([-1.0, 0.0, 0.5, 3.0], np.float32)
    q = quantize(values, 0.01, -5, np.dtype(np.int8))
    assert q.dtype == np.int8 and q.tolist() == [-105, -5, 45, 127]  # 3.0 saturates at 127
    np.testing.assert_allclose(dequantize(q, 0.01, -5), [-1.0, 0.0, 0.5, 1.32], atol=1e-6)


@pytest.mark.slow
def test_every_tflite_precision_on_an_mlp(tmp_path):
    target = tmp_path / "tfl.toml"
    target.write_text('name = "tfl"\n[runtime]\nmin_runs = 20\nmin_seconds = 0.05\n' + "".join(
        f'[[variants]]\nformat = "tflite"\nprecision = "{p}"\n'
        for p in ("fp32", "fp16", "int8_dynamic", "int8", "int8_full")))
    eval_path, calib_path = save_family_data(tmp_path, "mlp", samples=64)
    result = run_cli("export", "--model", f"{ZOO}:mlp", "--target", target, "--eval", eval_path,
                     "--calib", calib_path, "--out", tmp_path)
    assert result.code == 0, result.stderr
    report = read_json(tmp_path / "zoo-mlp" / "tfl" / "report.json")
    fp32, fp16, dynamic, int8, full = report["artifacts"]
    assert fp32["parity"]["max_abs"] <= 1e-4
    assert fp16["parity"]["sqnr_db"] >= 40 and fp16["bytes"] < 0.7 * fp32["bytes"]
    assert dynamic["parity"]["sqnr_db"] >= 30 and dynamic["bytes"] < 0.6 * fp32["bytes"]
    assert int8["parity"]["sqnr_db"] >= 25 and int8["parity"]["samples"] == 64
    assert full["parity"]["sqnr_db"] >= 25
    for static in (int8, full):  # blame for both static variants, whichever quantizer made int8_full
        assert sorted(r["module"] for r in static["layers"]) == ["net.0", "net.2", "net.4"]
    manifest = read_json(tmp_path / "zoo-mlp" / "tfl" / "manifest.json")
    int8_entry, full_entry = manifest["artifacts"][3:]
    assert int8_entry["inputs"][0]["dtype"] == "float32" and "global min/max" in int8_entry["quantization"]["recipe"]
    assert full_entry["inputs"][0]["dtype"] == "int8" and full_entry["outputs"][0]["dtype"] == "int8"
    assert full_entry["inputs"][0]["quantization"]["scale"] > 0
    candidates = full_entry["quantization"]["candidates"]
    assert set(candidates) == {"ai-edge-quantizer", "pt2e"}  # both built, the better kept
    best = max(candidates, key=lambda name: candidates[name]["sqnr_db"])
    assert full_entry["quantization"]["recipe"].startswith("ai-edge" if best == "ai-edge-quantizer" else "litert")


@pytest.mark.slow
def test_iot_npu_demo_is_full_int8_and_all_on_the_npu(tmp_path):
    result = run_cli("export", "--model", "demo:digits", "--target", fast_target(tmp_path, "iot-npu"),
                     "--out", tmp_path)
    assert result.code == 0, result.stderr
    directory = tmp_path / "digits" / "iot-npu"
    report = read_json(directory / "report.json")
    (artifact,) = report["artifacts"]
    assert artifact["path"] == "model.int8_full.tflite"
    assert artifact["accuracy"]["drop"] <= 0.01  # within 1 point of fp32 on the eval split
    io = artifact["io_quantization"]
    assert io["image"]["dtype"] == "int8" and io["output"]["dtype"] == "int8"
    npu = artifact["npu"]
    assert npu["npu_op_coverage"] == 1.0 and npu["cpu_operators"] == 0 and npu["npu_operators"] >= 5
    assert npu["cpu_fallback"] == [] and npu["accelerator"] == "Ethos_U55_128"
    assert npu["macs"] > 100_000 and npu["cycles"] > 0 and 0 < npu["sram_kib"] < 384
    assert 30 < npu["flash_kib"] < 100  # ~50 KiB of int8 weights, vela-encoded
    assert (directory / "model.int8_full.vela.tflite").is_file()
    manifest = read_json(directory / "manifest.json")
    assert manifest["artifacts"][0]["npu_compiled"]["path"] == "model.int8_full.vela.tflite"
    assert "vela estimates" in (directory / "report.md").read_text()
    assert sorted(r["module"] for r in artifact["layers"]) == ["classifier.1", "classifier.3", "features.0",
                                                               "features.3", "features.7"]
    assert all(r["sqnr_db_accumulated"] > 20 for r in artifact["layers"])


@pytest.mark.slow
def test_ethos_u_cpu_fallback_fails_the_coverage_budget(tmp_path):
    eval_path, calib_path = save_family_data(tmp_path, "npu_unfriendly", samples=64)
    result = run_cli("export", "--model", f"{ZOO}:npu_unfriendly", "--target", fast_target(tmp_path, "iot-npu"),
                     "--eval", eval_path, "--calib", calib_path, "--out", tmp_path)
    assert result.code == 1, result.stderr
    (artifact,) = read_json(tmp_path / "zoo-npu_unfriendly" / "iot-npu" / "report.json")["artifacts"]
    assert "SIN" in [op["op"] for op in artifact["npu"]["cpu_fallback"]]
    assert artifact["npu"]["npu_op_coverage"] < 1.0
    violation = next(v for v in artifact["budget"]["violations"] if v.startswith("NPU operator coverage"))
    assert "below the budget of 1" in violation and "SIN" in violation
    assert artifact["parity"]["sqnr_db"] >= 20  # the CPU fallback still computes the right thing


@pytest.mark.slow
def test_litert_preflight_names_the_module_before_converting(tmp_path):
    out = tmp_path / "out"
    result = run_cli("export", "--model", f"{ZOO}:custom_op", "--target", "iot-npu", "--out", out)
    assert result.code == 2
    assert len(result.error_lines) == 1
    assert ("tflite cannot take 1 operator(s): edgeport_test.mystery.default in block (MysteryBlock): "
            "litert-torch has no lowering for it") in result.error_lines[0]
    assert "[4/5]" not in result.stderr  # stopped before any conversion
    assert not out.exists()
