"""report.json has one schema for every model kind (validators/judges REPORT_KEYS, ARTIFACT_KEYS, named
metrics): a classic and a language-model export are read by the API and `edgeport diff` with no kind check,
and neither dresses its figures up as the other's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.lm_models import lm_target

pytestmark = pytest.mark.slow

TENSOR_TARGET = """name = "schema-tensor"
[runtime]
threads = 1
warmup_runs = 2
min_runs = 10
min_seconds = 0.02
[[variants]]
format = "onnx"
precision = "fp32"
[[variants]]
format = "onnx"
precision = "int8"
"""


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("schema")
    tensor = root / "tensor.toml"
    tensor.write_text(TENSOR_TARGET)
    lm = lm_target(root / "lm.toml", ("onnx/fp32", "onnx/w8"))
    made = {}
    for kind, model, target in (("tensor", "demo:digits", tensor), ("causal-lm", "demo:tinylm", lm)):
        done = run_cli("export", "--model", model, "--target", target, "--out", root / kind)
        assert done.code in (0, 1), done.stderr[-2000:]
        made[kind] = next((root / kind).glob("*/*/report.json")).parent
    return made


def test_both_kinds_write_the_shared_keys_and_named_metrics_only(exports):
    from validators.judges import ARTIFACT_KEYS, BUDGET_KEYS, REPORT_KEYS
    from validators.metrics import METRICS

    expected = {"tensor": {"sqnr_db", "cosine", "accuracy", "latency_ms"},
                "causal-lm": {"ppl_ratio", "kl_mean", "kl_p99", "greedy_tokens", "decode_tokens_per_s", "ttft_ms"}}
    for kind, directory in exports.items():
        report = json.loads((directory / "report.json").read_text())
        assert report["kind"] == kind and set(REPORT_KEYS) <= set(report), kind
        assert len(report["artifacts"]) == 2
        for artifact in report["artifacts"]:
            assert set(ARTIFACT_KEYS) <= set(artifact) and set(BUDGET_KEYS) <= set(artifact["budget"]), kind
            metrics = artifact["metrics"]
            assert set(metrics) <= set(METRICS) and all(isinstance(v, float) for v in metrics.values())
            assert expected[kind] <= set(metrics), (kind, sorted(metrics))
            assert metrics["bytes"] == artifact["bytes"] > 0 and artifact["runtime"].startswith("onnxruntime")
        fp32 = next(a for a in report["artifacts"] if a["precision"] == "fp32")
        assert fp32["metrics"]["max_abs"] < 1e-3
    lm = json.loads((exports["causal-lm"] / "report.json").read_text())
    for artifact in lm["artifacts"]:  # no costume: tokens/s is not a latency, logits are not a tensor parity
        assert "latency_ms" not in artifact and "parity" not in artifact
        assert artifact["metrics"]["ppl_ratio"] == artifact["lm"]["teacher_forced"]["ppl_ratio"]
        assert artifact["metrics"]["decode_tokens_per_s"] == artifact["lm"]["speed"]["decode_tokens_per_s"]


def test_the_api_reads_both_kinds_the_same_way(exports):
    from edgeport import api

    for kind, directory in exports.items():
        report = api.validate(directory, progress=None)
        fp32 = report.artifact("onnx", "fp32")
        assert fp32.metrics["bytes"] == fp32.bytes and fp32.metrics["max_abs"] < 1e-3, kind
        assert fp32.runtime.startswith("onnxruntime") and fp32.passed, (kind, fp32.violations)
        assert (fp32.parity is None) == (kind == "causal-lm")  # a tensor model's detail, not a costume


def test_diff_compares_both_kinds_on_their_metrics(exports, tmp_path):
    from validators.diff import Thresholds, diff_releases

    for kind, directory in exports.items():
        old = tmp_path / kind
        shutil.copytree(directory, old)
        report = json.loads((old / "report.json").read_text())
        manifest = json.loads((old / "manifest.json").read_text())
        gone = next(a["path"] for a in report["artifacts"] if a["precision"] != "fp32")
        report["artifacts"] = [a for a in report["artifacts"] if a["path"] != gone]
        manifest["artifacts"] = [a for a in manifest["artifacts"] if a["path"] != gone]
        (old / "report.json").write_text(json.dumps(report))
        (old / "manifest.json").write_text(json.dumps(manifest))
        result = diff_releases(old, directory, Thresholds())
        assert result.identical == 1, kind
        (added,) = result.changes
        assert added.path == gone and added.status == "added"
        new_metrics = json.loads((directory / "report.json").read_text())["artifacts"]
        wanted = next(a["metrics"] for a in new_metrics if a["path"] == gone)
        compared = {name: after for name, (_, after) in added.figures.items()}
        assert compared and all(compared[name] == wanted[name] for name in compared), (kind, compared)
        assert ("ppl_ratio" in compared) == (kind == "causal-lm") and ("sqnr_db" in compared) == (kind == "tensor")


def test_diff_refuses_a_report_that_predates_the_metrics_block(exports, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(exports["tensor"], old)
    report = json.loads((old / "report.json").read_text())
    for artifact in report["artifacts"]:
        del artifact["metrics"]
    (old / "report.json").write_text(json.dumps(report))
    done = run_cli("diff", old, exports["tensor"])
    assert done.code == 2 and len(done.error_lines) == 1, done.stderr
    assert "predates the metrics block" in done.error_lines[0] and "edgeport validate" in done.error_lines[0]


def test_build_runs_both_kinds_and_reports_each_artifact(tmp_path):
    from xml.etree import ElementTree

    (tmp_path / "tensor.toml").write_text(TENSOR_TARGET)
    lm_target(tmp_path / "lm.toml", ("onnx/fp32",))
    (tmp_path / "edgeport.toml").write_text(
        '[[models]]\nmodel = "demo:digits"\nname = "digits"\ntargets = ["tensor.toml"]\n'
        '[[models]]\nmodel = "demo:tinylm"\nname = "tinylm"\ntargets = ["lm.toml"]\n')
    done = run_cli("build", "--file", tmp_path / "edgeport.toml", "--out", tmp_path / "out",
                   "--junit", tmp_path / "junit.xml")
    reports = {p.parent.parent.name: json.loads(p.read_text()) for p in (tmp_path / "out").glob("*/*/report.json")}
    assert set(reports) == {"digits", "tinylm"}, done.stderr[-2000:]
    assert done.code == (0 if all(r["passed"] for r in reports.values()) else 1), done.stderr[-2000:]
    cases = ElementTree.parse(tmp_path / "junit.xml").getroot().iter("testcase")
    named = sorted(case.get("name") for case in cases)
    assert len(named) == sum(len(r["artifacts"]) for r in reports.values()) == 3, named
