"""`edgeport validate DIR` from the directory alone: passes untouched, fails tampering."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.conftest import read_json, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def demo_copy(demo_android, tmp_path):
    result, directory = demo_android
    assert result.code == 0, result.stderr
    copy = tmp_path / "android"
    shutil.copytree(directory, copy)
    return copy


def test_validate_untouched_directory_passes(demo_copy):
    before = read_json(demo_copy / "report.json")
    result = run_cli("validate", demo_copy)
    assert result.code == 0, result.stderr
    after = read_json(demo_copy / "report.json")
    for old, new in zip(before["artifacts"], after["artifacts"], strict=True):
        assert new["sha256"] == old["sha256"]
        assert new["parity"]["max_abs"] == pytest.approx(old["parity"]["max_abs"], rel=1e-6)
        assert new["accuracy"]["artifact"] == old["accuracy"]["artifact"]


def test_altered_weight_fails_validate(demo_copy):
    path = demo_copy / "model.onnx"
    model = onnx.load(str(path))
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    weight_init = next(i for i in model.graph.initializer if i.name == gemm.input[1])
    weight = numpy_helper.to_array(weight_init).copy()
    weight *= -1.0  # a plausible-looking file that computes something else
    weight_init.CopyFrom(numpy_helper.from_array(weight, weight_init.name))
    onnx.save(model, str(path))
    result = run_cli("validate", demo_copy)
    assert result.code == 1
    fp32 = read_json(demo_copy / "report.json")["artifacts"][0]
    violations = " | ".join(fp32["budget"]["violations"])
    assert "differs from the manifest" in violations and "max_abs" in violations and "accuracy drop" in violations
    assert fp32["accuracy"]["drop"] > 0.1


def test_altered_reference_fails_validate(demo_copy):
    from common.artifact_dir import Reference

    ref = Reference.load(demo_copy / "reference.npz")
    ref.outputs["output"] = ref.outputs["output"] + np.float32(0.5)
    ref.save(demo_copy)
    result = run_cli("validate", demo_copy)
    assert result.code == 1
    report = read_json(demo_copy / "report.json")
    assert any("reference data was altered" in v for v in report["violations"])


def test_corrupt_artifact_is_exit_2_with_one_line(demo_copy):
    path = demo_copy / "model.int8.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    result = run_cli("validate", demo_copy)
    assert result.code == 2
    assert len(result.error_lines) == 1 and "cannot be loaded by onnxruntime" in result.error_lines[0]
    assert "Traceback" not in result.stderr


def test_missing_manifest_and_missing_directory(demo_copy, tmp_path):
    (demo_copy / "manifest.json").unlink()
    result = run_cli("validate", demo_copy)
    assert result.code == 2 and "has no manifest.json" in result.error_lines[0]
    result = run_cli("validate", tmp_path / "nowhere")
    assert result.code == 2 and "is not a directory" in result.error_lines[0]


def test_report_regenerates_markdown_and_html(demo_copy):
    (demo_copy / "report.md").unlink()
    (demo_copy / "report.html").unlink()
    result = run_cli("report", demo_copy)
    assert result.code == 0, result.stderr
    html = (demo_copy / "report.html").read_text()
    assert "model.int8.onnx" in html and "PASS" in html
    assert "| model.onnx | fp32 |" in (demo_copy / "report.md").read_text()
