"""End-to-end exports through the real CLI (subprocess) on models built in the tests."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.conftest import ZOO, fast_target, onnx_target, read_json, run_cli, save_family_data
from tests.independent import onnx_accumulated_sqnr, tflite_accumulated_sqnr

pytestmark = pytest.mark.slow

# built-in target -> (test module, the end-to-end test that exports the demo to it); tests/test_catalog.py
# checks every built-in target is here and every test exists
BUILTIN_TARGET_TESTS = {"android": ("test_cli_export", "test_demo_android_meets_the_int8_accuracy_bound"),
                        "android-executorch": ("test_executorch", "test_demo_on_android_executorch"),
                        "android-llm": ("test_lm", "test_demo_tinylm_on_android_llm"),
                        "cockpit-llm": ("test_lm", "test_cockpit_llm_on_a_trained_decoder"),
                        "cockpit": ("test_cli_export", "test_demo_cockpit_fp16_and_w8a16"),
                        "ios": ("test_coreml", "test_ios_demo_variants_pass_on_linux"),
                        "ios-llm": ("test_lm_formats", "test_demo_tinylm_on_ios_llm"),
                        "iot-npu": ("test_tflite", "test_iot_npu_demo_is_full_int8_and_all_on_the_npu")}

# Node counts the android passes must reach on each family: (BatchNorm nodes folded, final node count).
FAMILIES = ["mlp", "cnn", "transformer", "gru"]


@pytest.mark.parametrize("family", FAMILIES)
def test_family_exports_to_android_with_parity(tmp_path, family):
    eval_path, calib_path = save_family_data(tmp_path, family)
    result = run_cli("export", "--model", f"{ZOO}:{family}", "--target", fast_target(tmp_path, "android"),
                     "--eval", eval_path, "--calib", calib_path, "--out", tmp_path / "out")
    assert result.code == 0, result.stderr
    directory = tmp_path / "out" / f"zoo-{family}" / "android"
    report = read_json(directory / "report.json")
    assert report["passed"] is True
    by_variant = {(a["format"], a["precision"]): a for a in report["artifacts"]}
    assert list(by_variant) == [("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "fp16"),
                                ("tflite", "int8"), ("tflite", "int8_dynamic")]
    fp32, int8 = by_variant["onnx", "fp32"], by_variant["onnx", "int8"]
    assert fp32["parity"]["max_abs"] <= 1e-4
    assert by_variant["tflite", "fp32"]["parity"]["max_abs"] <= 1e-4  # LiteRT fp32 against PyTorch
    assert by_variant["tflite", "fp16"]["parity"]["sqnr_db"] >= 40
    assert by_variant["tflite", "int8"]["parity"]["sqnr_db"] >= 25
    assert set(by_variant["tflite", "fp32"]["latency_ms_by_delegate"]) == {"xnnpack", "none"}
    _check_blame_tables(directory, int8["layers"], by_variant["tflite", "int8"]["layers"], eval_path)
    assert fp32["parity"]["sqnr_db"] >= 80
    assert fp32["parity"]["samples"] == 48
    assert int8["parity"]["sqnr_db"] >= 25
    assert int8["parity"]["cosine"] >= 0.99
    assert fp32["latency_ms"]["runs"] >= 20 and fp32["latency_ms"]["median"] > 0
    manifest = read_json(directory / "manifest.json")
    assert manifest["data"]["eval"]["samples"] == 48 and not manifest["data"]["eval"]["synthetic"]
    assert manifest["artifacts"][1]["quantization"]["per_channel"] is True
    passes = {p["pass"]: p for p in manifest["artifacts"][0]["conversion"]["passes"]}
    assert list(passes) == ["fold_constants", "fold_batchnorm", "eliminate_dead_nodes", "simplify"]
    final = onnx.load(str(directory / "model.onnx"))
    assert passes["simplify"]["nodes_after"] == len(final.graph.node)
    assert "BatchNormalization" not in {n.op_type for n in final.graph.node}
    if family == "cnn":  # three BatchNorm2d layers, each folded into its conv
        assert passes["fold_batchnorm"]["nodes_before"] - passes["fold_batchnorm"]["nodes_after"] == 3
        assert [n.op_type for n in final.graph.node].count("Conv") == 3


def _check_blame_tables(directory, onnx_rows: list[dict], tflite_rows: list[dict], eval_path) -> None:
    """Both static int8 variants have a blame table, worst first, in PyTorch module names, and its
    accumulated SQNR per layer agrees with an independent computation."""
    inputs = np.load(eval_path)["data"][: onnx_rows[0]["samples"]]
    independent = tflite_accumulated_sqnr(directory / "model.tflite", directory / "model.int8.tflite", inputs)
    for rows in (onnx_rows, tflite_rows):
        assert rows and all(row["module"] for row in rows)
        assert [r["sqnr_db_alone_at_output"] for r in rows] == sorted(r["sqnr_db_alone_at_output"] for r in rows)
    for row in onnx_rows:
        assert onnx_accumulated_sqnr(directory / "model.onnx", directory / "model.int8.onnx", row, inputs) == \
            pytest.approx(row["sqnr_db_accumulated"], abs=0.01)
    for row in tflite_rows:
        assert independent[row["tensor"]] == pytest.approx(row["sqnr_db_accumulated"], abs=0.01)


def test_demo_android_meets_the_int8_accuracy_bound(demo_android):
    result, directory = demo_android
    assert result.code == 0, result.stderr
    report = read_json(directory / "report.json")
    fp32, int8 = report["artifacts"][:2]
    tflite_int8 = report["artifacts"][4]
    assert tflite_int8["path"] == "model.int8.tflite" and tflite_int8["accuracy"]["drop"] <= 0.005
    assert "io_quantization" not in tflite_int8  # android's static int8 keeps float32 I/O
    assert report["reference_accuracy"] >= 0.97
    assert fp32["accuracy"]["drop"] == pytest.approx(0.0, abs=1e-9)
    assert int8["accuracy"]["drop"] <= 0.005  # static int8 within 0.5 points of fp32 on the eval split
    assert int8["accuracy"]["samples"] == 450
    assert int8["bytes"] < 0.4 * fp32["bytes"]
    assert "PASSED" in result.stdout and "model.int8.onnx" in result.stdout
    for name in ("report.md", "report.html", "manifest.json", "reference.npz"):
        assert (directory / name).is_file()
    assert "| model.int8.onnx | int8 |" in (directory / "report.md").read_text()


def test_demo_cockpit_fp16_and_w8a16(tmp_path):
    result = run_cli("export", "--target", fast_target(tmp_path, "cockpit"), "--out", tmp_path)
    assert result.code == 0, result.stderr
    report = read_json(tmp_path / "digits" / "cockpit" / "report.json")
    fp16, w8a16 = report["artifacts"]
    assert (fp16["precision"], w8a16["precision"]) == ("fp16", "w8a16")
    assert fp16["parity"]["sqnr_db"] >= 40 and fp16["accuracy"]["drop"] <= 0.002
    assert w8a16["parity"]["sqnr_db"] >= 30 and w8a16["parity"]["top1_agreement"] >= 0.99
    model = onnx.load(str(tmp_path / "digits" / "cockpit" / "model.w8a16.onnx"))
    zero_points = [i for i in model.graph.initializer if i.name.endswith("zero_point")]
    assert any(z.data_type == onnx.TensorProto.INT16 for z in zero_points)  # 16-bit activations


def test_dynamic_batch_with_every_onnx_precision(tmp_path):
    target = tmp_path / "all.toml"
    variants = "".join(f'[[variants]]\nformat = "onnx"\nprecision = "{p}"\n'
                       for p in ("fp32", "fp16", "int8_dynamic", "int8", "w8a16"))
    target.write_text('name = "all"\n[runtime]\nmin_runs = 20\nmin_seconds = 0.05\n'
                      '[passes]\nonnx = ["fold_constants", "eliminate_dead_nodes"]\n' + variants)
    eval_path, calib_path = save_family_data(tmp_path, "mlp", samples=100)
    result = run_cli("export", "--model", f"{ZOO}:mlp", "--target", target, "--dynamic-batch",
                     "--eval", eval_path, "--calib", calib_path, "--out", tmp_path)
    assert result.code == 0, result.stderr
    directory = tmp_path / "zoo-mlp" / "all"
    manifest = read_json(directory / "manifest.json")
    assert manifest["inputs"][0]["shape"] == ["batch", 20] and manifest["trace"]["dynamic_batch"]
    report = read_json(directory / "report.json")
    assert [a["precision"] for a in report["artifacts"]] == ["fp32", "fp16", "int8_dynamic", "int8", "w8a16"]
    for artifact in report["artifacts"]:
        assert artifact["parity"]["samples"] == 100
        model = onnx.load(str(directory / artifact["path"]))
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    fp32 = report["artifacts"][0]
    assert fp32["parity"]["max_abs"] <= 1e-5


def test_missed_budget_exits_1_with_every_violation(tmp_path):
    target = fast_target(tmp_path, "android", **{"max_latency_ms = 20.0": "max_latency_ms = 0.000001",
                                                 "max_size_mb = 100.0": "max_size_mb = 0.001"})
    result = run_cli("export", "--target", target, "--out", tmp_path)
    assert result.code == 1, result.stderr
    report = read_json(tmp_path / "digits" / "android" / "report.json")
    assert report["passed"] is False
    for artifact in report["artifacts"]:
        violations = " | ".join(artifact["budget"]["violations"])
        assert "median latency" in violations and "size" in violations  # all collected, not the first only
    assert "FAILED" in result.stdout and result.stdout.count("violation:") == 2 * len(report["artifacts"]) == 12


def test_same_inputs_give_byte_identical_artifacts(tmp_path, demo_android):
    _, first = demo_android
    result = run_cli("export", "--target", fast_target(tmp_path, "android"), "--out", tmp_path)
    assert result.code == 0, result.stderr
    second = tmp_path / "digits" / "android"
    for name in ("model.onnx", "model.int8.onnx", "model.tflite", "model.fp16.tflite", "model.int8.tflite",
                 "model.int8_dynamic.tflite", "reference.npz", "manifest.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_torch_export_failure_falls_back_to_torchscript_and_says_why(tmp_path):
    result = run_cli("export", "--model", f"{ZOO}:data_dependent", "--target", onnx_target(tmp_path),
                     "--out", tmp_path, "--allow-synthetic-eval")
    assert result.code == 0, result.stderr
    manifest = read_json(tmp_path / "zoo-data_dependent" / "android" / "manifest.json")
    conversion = manifest["artifacts"][0]["conversion"]
    assert manifest["trace"]["method"] == "torchscript" and conversion["exporter"] == "torchscript"
    assert "torch.export failed" in conversion["reason"]
    report = read_json(tmp_path / "zoo-data_dependent" / "android" / "report.json")
    assert report["data"]["eval"]["synthetic"] is True
    assert "SYNTHETIC" in (tmp_path / "zoo-data_dependent" / "android" / "report.md").read_text()
    assert report["artifacts"][0]["parity"]["max_abs"] <= 1e-5
    assert np.isfinite(report["artifacts"][1]["parity"]["sqnr_db"])
