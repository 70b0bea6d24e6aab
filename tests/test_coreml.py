"""Core ML: .mlpackage variants validated on Linux by the reference interpreter for ML Programs."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from common.artifact_dir import Reference
from exporter.demo import load_digits_cnn
from tests.conftest import ZOO, fast_target, read_json, run_cli, save_family_data
from tests.independent import coreml_accumulated_sqnr
from validators.mlprogram.reader import read_mlpackage

pytestmark = pytest.mark.slow


def _coreml_target(tmp_path, precisions, deployment="iOS17"):
    path = tmp_path / f"coreml-{deployment}.toml"
    path.write_text(f'name = "cm"\n[coreml]\nminimum_deployment_target = "{deployment}"\n'
                    '[runtime]\nwarmup_runs = 1\nmin_runs = 5\nmin_seconds = 0.01\n'
                    + "".join(f'[[variants]]\nformat = "coreml"\nprecision = "{p}"\n' for p in precisions))
    return path


def test_ios_demo_variants_pass_on_linux(tmp_path):
    result = run_cli("export", "--target", fast_target(tmp_path, "ios"), "--out", tmp_path)
    assert result.code == 0, result.stderr
    directory = tmp_path / "digits" / "ios"
    report = read_json(directory / "report.json")
    by = {a["precision"]: a for a in report["artifacts"]}
    assert list(by) == ["fp16", "fp32", "w8", "palette6", "palette4"]
    for artifact in by.values():
        assert artifact["parity_runtime"].startswith("edgeport MIL reference interpreter")
        assert artifact["accuracy"]["drop"] <= 0.01 and artifact["accuracy"]["samples"] == 450
    assert by["fp32"]["parity"]["max_abs"] <= 1e-4
    assert 35 <= by["fp16"]["parity"]["sqnr_db"] < 100  # fp16 storage really rounds
    assert by["w8"]["parity"]["sqnr_db"] >= 25 and by["w8"]["bytes"] < 0.6 * by["fp16"]["bytes"]
    assert by["palette4"]["bytes"] < by["palette6"]["bytes"] < by["w8"]["bytes"]
    assert by["palette6"]["parity"]["sqnr_db"] > by["palette4"]["parity"]["sqnr_db"]
    program = read_mlpackage(directory / "model.palette4.mlpackage")
    # every weighted layer but the first conv, whose 144 weights are under the 256-element threshold
    assert sum(op.type == "constexpr_lut_to_dense" for op in program.main.operations) == 4
    manifest = read_json(directory / "manifest.json")
    assert manifest["artifacts"][0]["conversion"]["exporter"] == "coremltools (torch.export)"
    assert manifest["artifacts"][0]["conversion"]["minimum_deployment_target"] == "iOS17"
    _check_blame_tables(directory, by)


def _check_blame_tables(directory, by: dict) -> None:
    """Each compressed variant has a blame table over its compressed layers, in PyTorch module names,
    and its accumulated SQNR per layer agrees with PyTorch run on coremltools' own decompression of
    the artifact's weights (within 0.1 dB: the artifact computes in fp16, PyTorch in fp32)."""
    modules = ["features.3", "features.7", "classifier.1", "classifier.3"]  # in program order
    model = load_digits_cnn()
    inputs = Reference.load(directory / "reference.npz").inputs["image"][:64]
    for precision in ("w8", "palette6", "palette4"):
        rows = by[precision]["layers"]
        assert sorted(r["module"] for r in rows) == sorted(modules) and rows[0]["samples"] == 64
        assert [r["sqnr_db_alone_at_output"] for r in rows] == sorted(r["sqnr_db_alone_at_output"] for r in rows)
        independent = coreml_accumulated_sqnr(directory / f"model.{precision}.mlpackage", model, inputs, modules)
        for row in rows:
            assert row["sqnr_db_accumulated"] == pytest.approx(independent[row["module"]], abs=0.1)
    # fewer palette bits, more error, layer by layer
    alone = {p: {r["module"]: r["sqnr_db_alone_at_layer"] for r in by[p]["layers"]} for p in ("w8", "palette4")}
    assert all(alone["palette4"][m] < alone["w8"][m] for m in modules)


def test_auto_precision_leaves_the_most_harmful_layers_uncompressed(tmp_path):
    target = tmp_path / "p4.toml"
    target.write_text('name = "p4"\nauto_precision = true\n[runtime]\nmin_runs = 5\nmin_seconds = 0.01\n'
                      '[[variants]]\nformat = "coreml"\nprecision = "palette4"\nbudget = { min_sqnr_db = 25.0 }\n')
    result = run_cli("export", "--target", target, "--out", tmp_path)
    assert result.code == 0, result.stdout + result.stderr
    (artifact,) = read_json(tmp_path / "digits" / "p4" / "report.json")["artifacts"]
    decision = artifact["auto_precision"]
    assert decision["violations_before"] and decision["met"] and artifact["parity"]["sqnr_db"] >= 25
    worst_first = [r["module"] for r in artifact["layers"]]
    assert decision["kept_float"] == worst_first[: len(decision["kept_float"])]  # most harmful first
    assert 0 < decision["int8_layers"] < decision["weighted_layers"] == 4
    assert decision["bytes_after"] > decision["bytes_before"]
    program = read_mlpackage(tmp_path / "digits" / "p4" / "model.palette4.mlpackage")
    palettized = sum(op.type == "constexpr_lut_to_dense" for op in program.main.operations)
    assert palettized == decision["int8_layers"]


@pytest.mark.parametrize("family", ["mlp", "cnn", "transformer", "gru"])
def test_families_fp32_interpreter_matches_pytorch(tmp_path, family):
    eval_path, _ = save_family_data(tmp_path, family, samples=16)
    result = run_cli("export", "--model", f"{ZOO}:{family}", "--target", _coreml_target(tmp_path, ["fp32", "fp16"]),
                     "--eval", eval_path, "--out", tmp_path)
    assert result.code == 0, result.stderr
    report = read_json(tmp_path / f"zoo-{family}" / "cm" / "report.json")
    fp32, fp16 = report["artifacts"]
    assert fp32["parity"]["max_abs"] <= 1e-4 and fp32["parity"]["samples"] == 16
    assert fp16["parity"]["sqnr_db"] >= 35
    conversion = read_json(tmp_path / f"zoo-{family}" / "cm" / "manifest.json")["artifacts"][0]["conversion"]
    if family == "gru":  # coremltools converts nn.GRU only from TorchScript, into a while_loop
        assert conversion["exporter"] == "coremltools (torch.jit.trace)"
        assert "torch.export path failed" in conversion["reason"] and "gru" in conversion["reason"]
        ops = {op.type for op in read_mlpackage(tmp_path / "zoo-gru" / "cm" / "model.mlpackage").main.operations}
        assert "while_loop" in ops
    else:
        assert conversion["exporter"] == "coremltools (torch.export)"


def test_ios18_compression_ops(tmp_path):
    result = run_cli("export", "--target", _coreml_target(tmp_path, ["w8", "palette4"], "iOS18"), "--out", tmp_path)
    assert result.code == 0, result.stderr
    directory = tmp_path / "digits" / "cm"
    w8, palette4 = read_json(directory / "report.json")["artifacts"]
    assert w8["parity"]["sqnr_db"] >= 25 and palette4["accuracy"]["drop"] <= 0.01
    ops = {op.type for op in read_mlpackage(directory / "model.w8.mlpackage").main.operations}
    assert "constexpr_blockwise_shift_scale" in ops


def test_altered_weight_in_mlpackage_fails_validate(tmp_path):
    result = run_cli("export", "--target", _coreml_target(tmp_path, ["fp32"]), "--out", tmp_path)
    assert result.code == 0, result.stderr
    directory = tmp_path / "digits" / "cm"
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    weights = next(copy.glob("model.mlpackage/Data/com.apple.CoreML/weights/weight.bin"))
    data = bytearray(weights.read_bytes())
    blob = np.frombuffer(bytes(data[128:128 + 4096]), np.float32) * -1.0  # first weight blob, sign flipped
    data[128:128 + 4096] = blob.tobytes()
    weights.write_bytes(bytes(data))
    result = run_cli("validate", copy)
    assert result.code == 1
    artifact = read_json(copy / "report.json")["artifacts"][0]
    violations = " | ".join(artifact["budget"]["violations"])
    assert "differs from the manifest" in violations and "max_abs" in violations


def test_nan_in_an_fp16_weight_fails_validate_with_the_reason(tmp_path):
    """Flipped bytes that make an fp16 weight NaN: a budget failure that says so, not a crash on JSON."""
    result = run_cli("export", "--target", _coreml_target(tmp_path, ["fp16"]), "--out", tmp_path)
    assert result.code == 0, result.stderr
    weights = next((tmp_path / "digits" / "cm").glob("model.fp16.mlpackage/Data/com.apple.CoreML/weights/weight.bin"))
    data = bytearray(weights.read_bytes())
    data[128:128 + 64] = np.full(32, np.nan, np.float16).tobytes()  # the first blob's first 32 weights
    weights.write_bytes(bytes(data))
    result = run_cli("validate", tmp_path / "digits" / "cm")
    assert result.code == 1, result.stderr
    artifact = read_json(tmp_path / "digits" / "cm" / "report.json")["artifacts"][0]
    assert artifact["parity"]["sqnr_db"] is None and artifact["parity"]["nonfinite_values"] > 0
    assert any("NaN/Inf value(s)" in v for v in artifact["budget"]["violations"])


def test_coreml_preflight_names_the_module(tmp_path):
    out = tmp_path / "out"
    result = run_cli("export", "--model", f"{ZOO}:custom_op", "--target", "ios", "--out", out)
    assert result.code == 2
    assert ("coreml cannot take 1 operator(s): edgeport_test.mystery.default in block (MysteryBlock): "
            "coremltools has no converter for it") in result.error_lines[0]
    assert not out.exists()


def test_same_export_gives_byte_identical_mlpackages(tmp_path):
    target = _coreml_target(tmp_path, ["fp32", "palette6"])
    for out in ("first", "second"):
        result = run_cli("export", "--model", f"{ZOO}:mlp", "--target", target, "--out", tmp_path / out,
                         "--allow-synthetic-eval")
        assert result.code == 0, result.stderr
    first, second = (tmp_path / out / "zoo-mlp" / "cm" for out in ("first", "second"))
    # every file but the reports and export.json (this run's host timings, not reproducible by design)
    files = sorted(p.relative_to(first) for p in first.rglob("*")
                   if p.is_file() and not p.name.startswith("report") and p.name != "export.json")
    assert len(files) >= 9  # manifest, reference, and each package's Manifest.json, spec and weights
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()  # the spec carries edgeport's provenance, and no conversion date
    spec.ParseFromString(next(first.glob("model.mlpackage/Data/com.apple.CoreML/model.mlmodel")).read_bytes())
    user = dict(spec.description.metadata.userDefined)
    assert user["edgeport.precision"] == "fp32" and "com.github.apple.coremltools.conversion_date" not in user
