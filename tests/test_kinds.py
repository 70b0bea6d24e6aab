"""The model-kind plug-in claim: a third kind written in the tests only (tests/seq2seq_kind.py, a two-method
encoder-decoder on ONNX and ExecuTorch) exports, validates and reports through the product's one run_export,
validate_directory, report and CLI, registered from outside; no product file names it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests import seq2seq_kind
from tests.conftest import REPO
from tests.harness import provenance_in

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path, object]:
    from exporter.cli import app

    seq2seq_kind.install()
    root = tmp_path_factory.mktemp("seq2seq")
    target = seq2seq_kind.target_file(root / "seq2seq.toml")
    result = CliRunner().invoke(app, ["export", "--target", str(target), "--out", str(root / "out")])
    return root / "out" / "seq2seq" / "seq2seq-test", target, result


def test_a_kind_from_outside_exports_validates_and_reports_through_the_one_pipeline(exported):
    directory, _, result = exported
    assert result.exit_code == 0, result.output
    assert "max Δlogit" in result.output and "PASSED" in result.output  # the CLI's summary is the judge's
    report = json.loads((directory / "report.json").read_text())
    assert report["kind"] == "seq2seq" and report["passed"]
    by = {a["format"]: a for a in report["artifacts"]}
    assert set(by) == {"onnx", "executorch"}
    for artifact in by.values():
        assert artifact["metrics"]["max_abs"] < 1e-4 and artifact["metrics"]["top1_agreement"] == 1.0
        assert artifact["seq2seq"]["tokens"] == 3 * seq2seq_kind.STEPS
    assert by["onnx"]["methods"] == {"encode": "model.fp32.encode.onnx", "decode_step": "model.fp32.decode_step.onnx"}
    assert "| model.pte | encode, decode_step |" in (directory / "report.md").read_text()
    assert (directory / "report.html").read_text().startswith("<!doctype html>")
    manifest = json.loads((directory / "manifest.json").read_text())
    for entry in manifest["artifacts"]:  # the product's stamps, each format's own way
        for name in dict.fromkeys(entry["methods"].values()):
            assert provenance_in(entry["format"], directory / name)["edgeport.target"] == "seq2seq-test"


def test_validate_and_the_api_judge_it_and_a_wrong_reference_fails(exported, tmp_path):
    import shutil

    from edgeport import api
    from exporter.cli import app

    directory, _, _ = exported
    again = api.validate(directory, progress=None)
    assert again.passed and {a.format for a in again.artifacts} == {"onnx", "executorch"}
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    seq2seq_kind.replaced_reference(copy, seed=1)
    result = CliRunner().invoke(app, ["validate", str(copy)])
    assert result.exit_code == 1, result.output
    report = json.loads((copy / "report.json").read_text())
    assert not report["passed"]
    for artifact in report["artifacts"]:
        assert artifact["metrics"]["max_abs"] > 0.05
        assert any("max |Δlogit|" in v for v in artifact["budget"]["violations"])


def test_no_product_file_names_the_third_kind():
    listed = subprocess.run(["git", "ls-files", "exporter", "validators", "common", "targets", "edgeport"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    naming = [p for p in listed if p.endswith(".py") and "seq2seq" in (REPO / p).read_text()]
    assert naming == []
