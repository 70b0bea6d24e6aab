"""`edgeport build`, its cache, --jobs, JUnit, the CI workflow, and `edgeport diff`, on the example build file
(demo:digits to android, iot-npu and ios): real exports, real runtimes, compared by sha256 and exit codes."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
import yaml

from common.files import load_npz, save_npz
from exporter.demo import CALIBRATION_SAMPLES, digits_splits
from tests.conftest import REPO, run_cli

EXAMPLE = REPO / "examples" / "edgeport.toml"
WORKFLOW = REPO / ".github" / "workflows" / "artifacts.yml"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _artifact_hashes(root: Path) -> dict[str, str]:
    from tests.conftest import read_json

    return {f"{m.parent.relative_to(root)}/{a['path']}": a["sha256"]
            for m in sorted(root.glob("*/*/manifest.json")) for a in read_json(m)["artifacts"]}


def _rebuilt(result) -> list[str]:
    """The pairs a build exported (not reused), from its summary table."""
    return [line.split()[1] for line in result.stdout.splitlines() if line.endswith(" built")]


# -- the build file: one-line errors, exit 2 ----------------------------------------------------------------

BAD_BUILD_FILES = {
    "unknown key": ('[[models]]\nmodel = "demo:digits"\ntargets = ["android"]\ncalibration = "x.npz"\n',
                    "unknown key(s) calibration"),
    "unknown top-level key": ('output = "a"\n[[models]]\nmodel = "demo:digits"\ntargets = ["android"]\n',
                              "unknown key(s) output"),
    "no model key": ('[[models]]\ntargets = ["android"]\n', "has no model"),
    "missing model file": ('[[models]]\nmodel = "models/net.pt2"\ntargets = ["android"]\n',
                           "model file models/net.pt2 does not exist"),
    "missing factory file": ('[[models]]\nmodel = "nets/cnn.py:build"\ntargets = ["android"]\n',
                             "model file nets/cnn.py does not exist"),
    "missing data": ('[[models]]\nmodel = "demo:digits"\ncalib = "c.npz"\ntargets = ["android"]\n',
                     "calib file c.npz does not exist"),
    "duplicate pair": ('[[models]]\nmodel = "demo:digits"\ntargets = ["android", "ios"]\n'
                       '[[models]]\nmodel = "demo:digits"\ntargets = ["ios"]\n', "duplicate pair digits -> ios"),
    "unknown target": ('[[models]]\nmodel = "demo:digits"\ntargets = ["andriod"]\n', "andriod"),
    "no targets": ('[[models]]\nmodel = "demo:digits"\ntargets = []\n', "targets must be a non-empty list"),
    "no models": ('out = "a"\n', "no models"),
    "not toml": ('[[models]\nmodel = "demo:digits"\n', "not valid TOML"),
}


@pytest.mark.parametrize("case", sorted(BAD_BUILD_FILES))
def test_a_bad_build_file_is_one_line_and_exit_2(tmp_path, case):
    text, expected = BAD_BUILD_FILES[case]
    result = run_cli("build", "--file", _write(tmp_path / "edgeport.toml", text), "--out", tmp_path / "out")
    assert result.code == 2, result.stderr
    assert len(result.error_lines) == 1 and expected in result.error_lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_missing_build_file_and_an_unknown_filter_are_exit_2(tmp_path):
    missing = run_cli("build", "--file", tmp_path / "nowhere.toml")
    assert missing.code == 2 and "does not exist" in missing.error_lines[0]
    unknown = run_cli("build", "--file", EXAMPLE, "--target", "cockpit", "--out", tmp_path / "out")
    assert unknown.code == 2 and "no target cockpit in the build file" in unknown.error_lines[0]


# -- the CI matrix and the workflow -----------------------------------------------------------------------

def test_list_matrix_reads_the_build_file():
    result = run_cli("build", "--file", EXAMPLE, "--list-matrix")
    assert result.code == 0, result.stderr
    import json

    assert json.loads(result.stdout) == {"target": ["android", "iot-npu", "ios"]}


def _lint(path: Path) -> subprocess.CompletedProcess:
    linter = Path(sys.executable).parent / "check-jsonschema"
    return subprocess.run([str(linter), "--builtin-schema", "vendor.github-workflows", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_the_workflow_passes_the_linter_and_takes_its_matrix_from_the_build_file(tmp_path):
    lint = _lint(WORKFLOW)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert workflow["env"]["BUILD_FILE"] == str(EXAMPLE.relative_to(REPO))
    listing = [s for s in workflow["jobs"]["matrix"]["steps"] if s.get("id") == "list"][0]["run"]
    assert "--list-matrix" in listing and "$GITHUB_OUTPUT" in listing
    build = workflow["jobs"]["build"]
    assert build["strategy"]["matrix"] == "${{ fromJSON(needs.matrix.outputs.matrix) }}"
    commands = " ".join(s.get("run", "") for s in build["steps"])
    assert '--target "${{ matrix.target }}"' in commands and "--junit" in commands
    assert any(s.get("uses", "").startswith("actions/upload-artifact@") for s in build["steps"])
    # the linter is not a rubber stamp: a matrix job without runs-on fails it
    broken = WORKFLOW.read_text().replace("    runs-on: ubuntu-24.04\n    timeout-minutes", "    timeout-minutes")
    assert _lint(_write(tmp_path / "broken.yml", broken)).returncode != 0


# -- a failing budget and a failing export: exit codes and JUnit -------------------------------------------

FACTORY = """
import torch
from exporter.demo import digits_splits, load_digits_cnn

def perturbed():
    model = load_digits_cnn()
    with torch.no_grad():  # one weight tensor perturbed: the model a careless release might ship
        weight = model.features[0].weight
        weight.add_(0.6 * weight.std() * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
    return model, (torch.from_numpy(digits_splits()[2][:1]),)

def broken():
    raise RuntimeError("no such checkpoint")
"""


@pytest.mark.slow
def test_a_missed_budget_exits_1_a_failed_export_2_and_junit_says_which(tmp_path):
    _write(tmp_path / "nets.py", FACTORY)
    _write(tmp_path / "tiny.toml", 'name = "tiny"\n[runtime]\nthreads = 1\nmin_runs = 10\nmin_seconds = 0.01\n'
           '[[variants]]\nformat = "onnx"\nprecision = "fp32"\nbudget = { max_size_mb = 0.001 }\n')
    data = REPO / "examples" / "data"
    build = _write(tmp_path / "edgeport.toml",
                   f'[[models]]\nmodel = "demo:digits"\neval = "{data}/digits-eval.npz"\ntargets = ["tiny.toml"]\n'
                   '[[models]]\nmodel = "nets.py:broken"\nname = "broken"\ntargets = ["tiny.toml"]\n')
    result = run_cli("build", "--file", build, "--junit", tmp_path / "junit.xml")
    assert result.code == 2, result.stdout + result.stderr  # the worst pair: the factory that raised
    rows = {line.split()[0]: line.split()[2] for line in result.stdout.splitlines()[1:3]}
    assert rows == {"digits": "FAILED", "broken": "ERROR"}
    suites = {s.get("name"): s for s in ElementTree.parse(tmp_path / "junit.xml").getroot()}
    failures = suites["digits.tiny.toml"].findall("testcase/failure")
    assert len(failures) == 1 and "size" in failures[0].get("message")
    errors = suites["broken.tiny.toml"].findall("testcase/error")
    assert len(errors) == 1 and "no such checkpoint" in errors[0].get("message")
    again = run_cli("build", "--file", build)  # a failed verdict is cached like a pass; a failed export is not
    assert again.code == 2 and _rebuilt(again) == ["tiny.toml"]


# -- the example build: cache, --jobs, touched data, diff ----------------------------------------------------

@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    """A copy of examples/ (its data files can then be edited), built once with --jobs 2."""
    root = tmp_path_factory.mktemp("example")
    shutil.copytree(REPO / "examples", root / "examples", ignore=shutil.ignore_patterns("artifacts"))
    return root / "examples"


def test_the_example_data_are_the_demo_splits():
    x_train, _, x_eval, y_eval = digits_splits()
    calib, evaluation = (load_npz(REPO / "examples" / "data" / f"digits-{part}.npz") for part in ("calib", "eval"))
    np.testing.assert_array_equal(calib["image"], x_train[:CALIBRATION_SAMPLES])
    np.testing.assert_array_equal(evaluation["image"], x_eval)
    np.testing.assert_array_equal(evaluation["labels"], y_eval)


@pytest.mark.slow
def test_example_build_cache_jobs_and_diff(example, tmp_path):
    build_file = example / "edgeport.toml"
    started = time.perf_counter()
    first = run_cli("build", "--file", build_file, "--jobs", "2", "--junit", tmp_path / "junit.xml")
    first_seconds = time.perf_counter() - started
    assert first.code == 0, first.stdout + first.stderr
    assert _rebuilt(first) == ["android", "iot-npu", "ios"]
    out = example / "artifacts"
    junit = ElementTree.parse(tmp_path / "junit.xml").getroot()
    assert (junit.get("tests"), junit.get("failures"), junit.get("errors")) == ("12", "0", "0")
    assert "up to 1 other export" in " ".join((out / "digits" / "ios" / "report.md").read_text().splitlines())

    started = time.perf_counter()
    second = run_cli("build", "--file", build_file, "--jobs", "2")
    second_seconds = time.perf_counter() - started
    assert second.code == 0 and _rebuilt(second) == [], second.stdout
    assert second.stderr.count("reused (cache key") == 3
    print(f"first build {first_seconds:.1f} s, second {second_seconds:.2f} s")
    assert second_seconds < 0.1 * first_seconds

    serial = tmp_path / "serial"
    one_job = run_cli("build", "--file", build_file, "--jobs", "1", "--no-cache", "--out", serial)
    assert one_job.code == 0 and _rebuilt(one_job) == ["android", "iot-npu", "ios"]
    assert _artifact_hashes(serial) == _artifact_hashes(out) and len(_artifact_hashes(out)) == 12
    assert "other export" not in (serial / "digits" / "ios" / "report.md").read_text()

    # a release where one pair changed: the perturbed model exported to android only
    release = tmp_path / "release"
    shutil.copytree(serial, release)
    _write(tmp_path / "nets.py", FACTORY)
    perturbed = run_cli("export", "--model", tmp_path / "nets.py:perturbed", "--name", "digits", "--target",
                        "android", "--out", release, "--calib", example / "data" / "digits-calib.npz",
                        "--eval", example / "data" / "digits-eval.npz")
    assert perturbed.code in (0, 1), perturbed.stderr
    diff = run_cli("diff", serial, release, "--format", "md")
    assert diff.code == 1, diff.stdout + diff.stderr
    table = [line for line in diff.stdout.splitlines() if line.startswith("| digits/")]
    assert len(table) == 6 and all(line.startswith("| digits/android |") for line in table)
    assert "6 artifact(s) changed, 6 identical (left out)" in diff.stdout
    assert "accuracy" in diff.stdout and "**" in diff.stdout  # the drop is flagged as a regression
    same = run_cli("diff", serial, out)
    assert same.code == 0 and "0 artifact(s) changed, 12 identical" in same.stdout

    # data: a new mtime alone changes no key; new calibration content rebuilds the pairs that calibrate
    calib = example / "data" / "digits-calib.npz"
    calib.touch()
    assert _rebuilt(run_cli("build", "--file", build_file)) == []
    arrays = load_npz(calib)
    save_npz(calib, {"image": arrays["image"][: CALIBRATION_SAMPLES // 2]})
    touched = run_cli("build", "--file", build_file, "--jobs", "2")
    assert touched.code == 0 and _rebuilt(touched) == ["android", "iot-npu"], touched.stdout
