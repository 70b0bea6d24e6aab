"""Audio and sequence models (issue 14): recurrent encoders validated for iOS by the MIL interpreter,
recurrent layers quantized so the int8 LiteRT model holds up, full-integer models without float
islands, and the TFLite passes that get a CREPE-shaped conv net onto an Ethos-U NPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from exporter.formats.tflite.quantize import FUSED_LSTM_REASON
from exporter.pipeline import ExportOptions, run_export
from tests import zoo
from tests.conftest import REPO, fast_target, save_family_data

ZOO = REPO / "tests" / "zoo.py"


def _export(tmp_path, family: str, target, samples: int = 48, **options) -> dict:
    eval_path, calib_path = save_family_data(tmp_path, family, samples)
    _, report = run_export(ExportOptions(model=f"{ZOO}:{family}", target=str(target), out=tmp_path / "out",
                                         eval=eval_path, calib=calib_path, name=family, **options), lambda _: None)
    return report


def _target(tmp_path, base: str, variants: list[tuple[str, str]], header: str = "") -> object:
    """A built-in target cut down to some variants (fast latency settings)."""
    path = fast_target(tmp_path, base)
    text = path.read_text().split("[[variants]]")[0].replace(f'name = "{base}"', f'name = "{base}"{header}')
    path.write_text(text + "".join(f'[[variants]]\nformat = "{f}"\nprecision = "{p}"\n' for f, p in variants))
    return path


@pytest.mark.slow
def test_full_integer_has_no_float_island_and_runs_on_the_npu(tmp_path):
    report = _export(tmp_path, "pitch_cnn", fast_target(tmp_path, "iot-npu"))
    (artifact,) = report["artifacts"]
    assert artifact["float_ops"] == []
    assert artifact["npu"]["npu_op_coverage"] >= 0.95 and artifact["npu"]["cpu_fallback"] == []
    assert artifact["parity"]["sqnr_db"] >= 30
    passes = {p["pass"]: p["rewrites"] for p in artifact["conversion"]["passes"]}
    assert passes == {"affine_as_depthwise": 2, "single_channel_conv": 1}


@pytest.mark.slow
def test_a_float_island_fails_full_integer_naming_its_modules(tmp_path):
    target = fast_target(tmp_path, "iot-npu", **{'tflite = ["affine_as_depthwise", "single_channel_conv"]': ""})
    target.write_text(target.read_text().replace("[passes]", ""))
    report = _export(tmp_path, "pitch_cnn", target)
    (artifact,) = report["artifacts"]
    assert {op["module"] for op in artifact["float_ops"]} == {"front_bn", "conv_bn"}
    assert [op["op"] for op in artifact["float_ops"] if op["module"] == "front_bn"] == [
        "DEQUANTIZE", "SUB", "MUL", "MUL", "ADD", "QUANTIZE"]
    (island,) = [v for v in artifact["budget"]["violations"] if v.startswith("not full-integer")]
    assert "front_bn: DEQUANTIZE -> SUB -> MUL -> MUL -> ADD -> QUANTIZE" in island and not report["passed"]
    assert artifact["npu"]["npu_op_coverage"] < 0.95


@pytest.mark.slow
@pytest.mark.parametrize("family", ["lstm_encoder", "gru_encoder"])
def test_recurrent_encoder_validates_on_ios(tmp_path, family):
    target = _target(tmp_path, "ios", [("coreml", "fp32"), ("coreml", "fp16")], '\ndiagnose = "off"')
    report = _export(tmp_path, family, target)
    fp32, fp16 = report["artifacts"]
    assert "reference interpreter" in fp32["parity_runtime"]
    assert fp32["parity"]["max_abs"] <= 1e-4 and fp16["parity"]["cosine"] >= 0.999
    assert report["outputs"] == [{"name": "output", "kind": "embedding", "kind_basis": "rows have unit L2 norm"}]
    assert all(a["parity"]["top1_agreement"] is None for a in report["artifacts"])


@pytest.mark.slow
def test_lstm_encoder_on_android_is_fused_and_stays_float_at_int8(tmp_path):
    target = _target(tmp_path, "android", [("tflite", "fp32"), ("tflite", "int8"), ("tflite", "int8_dynamic")])
    report = _export(tmp_path, "lstm_encoder", target)
    by = {a["precision"]: a for a in report["artifacts"]}
    assert by["fp32"]["conversion"]["fused_lstm"] == 1 and by["fp32"]["parity"]["max_abs"] <= 1e-4
    for precision in ("int8", "int8_dynamic"):
        assert by[precision]["quantization"]["recurrent_layers"] == {
            "fused_operators": 2, "recipe": "float", "reason": FUSED_LSTM_REASON}
        assert by[precision]["parity"]["cosine"] >= 0.999
    manifest = json.loads((tmp_path / "out" / "lstm_encoder" / "android" / "manifest.json").read_text())
    assert all(a["state"]["variable_tensors"] == 4 for a in manifest["artifacts"])  # h and c of 2 layers
    assert "ResetVariableTensors()" in (tmp_path / "out" / "lstm_encoder" / "android" / "report.md").read_text()


@pytest.mark.slow
def test_gru_encoder_int8_on_android_keeps_the_recurrence_in_float(tmp_path):
    """The converter unrolls a GRU (no fused op for it): int8 weights, computed in float."""
    target = _target(tmp_path, "android", [("tflite", "fp32"), ("tflite", "int8"), ("tflite", "int8_dynamic")])
    report = _export(tmp_path, "gru_encoder", target)
    by = {a["precision"]: a for a in report["artifacts"]}
    for precision in ("int8", "int8_dynamic"):
        artifact = by[precision]
        recurrent = artifact["quantization"]["recurrent_layers"]
        assert recurrent["recipe"] == "int8 weights (per channel), computed in float" and recurrent["operators"] > 0
        assert artifact["parity"]["cosine"] >= 0.99 or (artifact["layers"] and artifact["budget"]["violations"])
        assert artifact["bytes"] < by["fp32"]["bytes"]  # int8 weights (the unrolled graph itself weighs much here)
    assert by["int8"]["layers"] and any(row["module"] == "rnn" for row in by["int8"]["layers"])
    assert all(a["parity"]["top1_agreement"] is None and "top1_agreement" not in a["parity"]["judged_by"]
               for a in report["artifacts"])


@pytest.mark.slow
def test_onnx_int8_keeps_what_computes_recurrent_weights_in_float(tmp_path):
    """Without the fold_constants pass, the exporter's transposes and concatenations of the LSTM's gate
    weights are nodes; quantized as activations they would wreck the recurrence."""
    target = _target(tmp_path, "android", [("onnx", "fp32"), ("onnx", "int8")])
    target.write_text(target.read_text().replace("[passes]\nonnx =", "# onnx ="))
    report = _export(tmp_path, "lstm_encoder", target)
    fp32, int8 = report["artifacts"]
    assert fp32["conversion"]["passes"] == []
    assert int8["quantization"]["recurrent_weight_nodes"] > 0 and int8["parity"]["cosine"] >= 0.99


@pytest.mark.slow
def test_declared_output_kind_decides_the_metrics(tmp_path):
    target = _target(tmp_path, "android", [("onnx", "fp32"), ("onnx", "int8")])
    report = _export(tmp_path, "mlp", target, output_kinds={"output": "regression"})
    assert report["outputs"] == [{"name": "output", "kind": "regression", "kind_basis": "declared"}]
    for artifact in report["artifacts"]:
        assert artifact["parity"]["top1_agreement"] is None and artifact["parity"]["cosine"] is None
        assert artifact["parity"]["judged_by"] == ["max_abs", "sqnr_db"]
        assert artifact["parity_per_output"]["output"]["cosine"] is not None  # measured, not judged
    assert "judged as regression (declared) by sqnr_db, max_abs" in \
        (tmp_path / "out" / "mlp" / "android" / "report.md").read_text()
    model, examples = zoo.mlp()  # a model can say it too
    model.edgeport_output_kinds = {"output": "embedding"}
    eval_path, _ = save_family_data(tmp_path, "mlp")
    _, report = run_export(ExportOptions(model=model, example_inputs=examples, target=str(target),
                                         out=tmp_path / "python", eval=eval_path, calib=eval_path), lambda _: None)
    assert report["outputs"] == [{"name": "output", "kind": "embedding", "kind_basis": "declared"}]


def test_output_kind_errors_name_the_fix(tmp_path):
    from tests.conftest import run_cli

    bad_kind = run_cli("export", "--model", "demo:digits", "--target", "android", "--out", tmp_path,
                       "--output-kind", "logits:vector")
    assert bad_kind.code == 2 and "KIND one of classification, embedding, regression, tensor" in bad_kind.stderr
    unknown = run_cli("export", "--model", "demo:digits", "--target", "android", "--out", tmp_path,
                      "--output-kind", "probs:embedding")
    assert unknown.code == 2 and "names output 'probs', but the model's outputs are" in unknown.stderr
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_zoo_audio_models_are_alive():
    for family, factory in zoo.AUDIO_FAMILIES.items():
        model, examples = factory()
        with torch.no_grad():
            outputs = model(torch.randn(32, *examples[0].shape[1:])).numpy()
        assert np.std(outputs, axis=0).mean() > 0.02, family
