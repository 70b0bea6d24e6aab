"""The README's Python API example runs as written (in a scratch folder), and says what it promises."""

from __future__ import annotations

import json
import os
import re

import pytest

from tests.conftest import REPO, fast_target, run_cli

pytestmark = pytest.mark.slow


@pytest.mark.hf
def test_the_readme_python_api_example_runs_as_written(tmp_path, capsys):
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        namespace: dict = {}
        exec(compile(code, "README.md", "exec"), namespace)
    finally:
        os.chdir(here)
    report = namespace["report"]
    assert (tmp_path / report.directory / "report.json").is_file()  # under the folder it ran in
    assert report.json["outputs"][0]["kind"] == "embedding"  # output_kinds= reached the verdict
    cosine = report.artifact("onnx", "fp16").parity.cosine
    assert cosine > 0.999
    printed = capsys.readouterr().out.split()
    assert printed[0] in ("True", "False") and float(printed[-1]) == pytest.approx(cosine)


def test_the_readme_demo_table_matches_a_fresh_demo_export(demo_android):
    """The android table in the README is this export's output: sizes, SQNR and cosine of the quantized
    variants, top-1 and accuracy (latency and fp32's float noise vary by machine and are not compared)."""
    result, directory = demo_android
    assert result.code == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in (REPO / "README.md").read_text().splitlines()
            if line.startswith("model.") and " KiB " in line}
    report = {a["path"]: a for a in json.loads((directory / "report.json").read_text())["artifacts"]}
    assert set(rows) == set(report)
    for path, cells in rows.items():
        artifact = report[path]
        assert float(cells[2]) == pytest.approx(artifact["bytes"] / 1024, abs=0.05), path
        assert cells[9] == f"{100 * artifact['accuracy']['artifact']:.2f}%", path
        if artifact["precision"] != "fp32":
            assert float(cells[5]) == pytest.approx(artifact["parity"]["sqnr_db"], abs=0.05), path
            assert float(cells[6]) == pytest.approx(artifact["parity"]["cosine"], abs=1e-6), path


def test_the_readme_ios_and_iot_npu_figures_match_fresh_exports(tmp_path):
    """The Core ML figures and vela's estimates the README quotes are what the demo's exports report."""
    readme = (REPO / "README.md").read_text()
    for target in ("ios", "iot-npu"):
        done = run_cli("export", "--target", fast_target(tmp_path, target), "--out", tmp_path)
        assert done.code == 0, done.stderr[-2000:]
    ios = {a["precision"]: a for a in json.loads((tmp_path / "digits" / "ios" / "report.json").read_text())
           ["artifacts"]}
    line = re.search(r"fp32 max_abs ([\d.e-]+); fp16 SQNR ([\d.]+) dB; w8 ([\d.]+) dB; palette6 ([\d.]+) dB; "
                     r"palette4 ([\d.]+) dB", readme).groups()
    assert 0.5 < float(line[0]) / ios["fp32"]["parity"]["max_abs"] < 2  # float noise: its order of magnitude
    for precision, quoted in zip(("fp16", "w8", "palette6", "palette4"), line[1:], strict=True):
        assert float(quoted) == pytest.approx(ios[precision]["parity"]["sqnr_db"], abs=0.05), precision
    npu_line = next(ln for ln in (tmp_path / "digits" / "iot-npu" / "report.md").read_text().splitlines()
                    if "operators on the NPU" in ln)
    quoted = re.search(r"`(8 operators on the NPU[^`]+)`", readme).group(1)
    assert quoted in npu_line
