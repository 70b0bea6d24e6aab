"""ExecuTorch (.pte) as a format (issue 11): lowered with the XNNPACK partitioner, validated by the
ExecuTorch runtime, with the operators left to the portable kernels named by module path and judged by
a `min_delegated_op_coverage` budget."""

from __future__ import annotations

import subprocess
import sys

import pytest

from exporter.pipeline import ExportOptions, run_export
from tests.conftest import REPO, ZOO, fast_target, read_json, run_cli, save_family_data

pytestmark = pytest.mark.slow


def test_demo_on_android_executorch(tmp_path):
    result = run_cli("export", "--model", "demo:digits", "--target", fast_target(tmp_path, "android-executorch"),
                     "--out", tmp_path)
    assert result.code == 0, result.stdout + result.stderr
    directory = tmp_path / "digits" / "android-executorch"
    report = read_json(directory / "report.json")
    by = {a["precision"]: a for a in report["artifacts"]}
    assert by["fp32"]["parity"]["max_abs"] <= 1e-4
    assert abs(by["int8"]["accuracy"]["drop"]) <= 0.005 and by["int8"]["accuracy"]["samples"] == 450
    for artifact in report["artifacts"]:
        assert artifact["parity_runtime"].startswith("executorch ") and "XNNPACK" in artifact["parity_runtime"]
        delegation = artifact["delegation"]
        assert delegation["delegated_op_coverage"] == 1.0 and delegation["portable_fallback"] == []
    manifest = read_json(directory / "manifest.json")
    for entry in manifest["artifacts"]:  # provenance beside the artifact, listed with its hash
        sidecar = read_json(directory / entry["provenance"]["path"])
        assert sidecar["edgeport.target"] == "android-executorch"
        assert sidecar["edgeport.precision"] == entry["precision"]
    again = run_cli("validate", directory)  # the directory alone is enough to judge again
    assert again.code == 0, again.stderr
    second = run_cli("export", "--model", "demo:digits", "--target", fast_target(tmp_path, "android-executorch"),
                     "--out", tmp_path / "second")
    assert second.code == 0, second.stderr
    again_manifest = read_json(tmp_path / "second" / "digits" / "android-executorch" / "manifest.json")
    assert [e["sha256"] for e in again_manifest["artifacts"]] == [e["sha256"] for e in manifest["artifacts"]]
    assert "100.0% delegated" in (directory / "report.md").read_text()


def test_an_operator_xnnpack_does_not_take_is_named_and_fails_full_coverage(tmp_path):
    eval_path, calib_path = save_family_data(tmp_path, "portable_in_the_middle")
    target = fast_target(tmp_path, "android-executorch", **{"min_delegated_op_coverage = 0.9":
                                                            "min_delegated_op_coverage = 1.0"})
    result = run_cli("export", "--model", f"{ZOO}:portable_in_the_middle", "--target", target, "--eval", eval_path,
                     "--calib", calib_path, "--out", tmp_path / "out")
    assert result.code == 1, result.stderr
    report = read_json(tmp_path / "out" / "zoo-portable_in_the_middle" / "android-executorch" / "report.json")
    for artifact in report["artifacts"]:
        fallback = artifact["delegation"]["portable_fallback"]
        assert [(op["op"], op["module"]) for op in fallback] == [("atan", "act")]
        assert artifact["delegation"]["delegated_op_coverage"] < 1.0
        (miss,) = [v for v in artifact["budget"]["violations"] if v.startswith("delegated operator coverage")]
        assert "on the portable kernels: atan (act: XNNPACK has no kernel for this operator)" in miss
        assert artifact["parity"]["sqnr_db"] > 15  # the fallback still computes the right thing
        if artifact["precision"] == "int8":  # missed, so diagnosed: a blame row per weighted layer
            assert sorted(row["module"] for row in artifact["layers"]) == ["fc1", "fc2"]


@pytest.mark.parametrize("family", ["gru", "lstm_encoder"])
def test_recurrent_families_lower_with_fp32_parity(tmp_path, family):
    eval_path, calib_path = save_family_data(tmp_path, family)
    target = fast_target(tmp_path, "android-executorch", **{"min_delegated_op_coverage = 0.9": ""})
    target.write_text(target.read_text().split("[[variants]]")[0] + '[[variants]]\nformat = "executorch"\n'
                      'precision = "fp32"\n')
    _, report = run_export(ExportOptions(model=f"{ZOO}:{family}", target=str(target), out=tmp_path / "out",
                                         eval=eval_path, calib=calib_path, name=family), lambda _: None)
    fp32 = next(a for a in report["artifacts"] if a["precision"] == "fp32")
    assert fp32["parity"]["max_abs"] <= 1e-4
    assert 0 < fp32["delegation"]["delegated_op_coverage"] < 1  # the recurrence's slicing stays portable
    assert {op["module"] for op in fp32["delegation"]["portable_fallback"]} >= {"gru" if family == "gru" else "rnn"}


def test_a_missing_executorch_names_the_package(tmp_path):
    code = ("import sys\nsys.modules['executorch'] = None\nsys.argv = ['edgeport', 'export', '--model', "
            f"'demo:digits', '--target', 'android-executorch', '--out', {str(tmp_path)!r}]\n"
            "import exporter.cli\nexporter.cli.main()\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "executorch is not installed" in result.stderr and "pip install executorch" in result.stderr
    assert not any(tmp_path.iterdir())  # refused before anything was written
