"""Recovery by self-distillation (exporter/quant/recover.py): learned block scales lower the KL of a 4-bit plan
against the float model, the codes and zero points stay, a source's own grid is left alone, and every format
writes the same recovered plan."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import run_cli
from tests.lm_models import lm_target


def test_learned_scales_lower_the_kl_of_a_4bit_plan_and_keep_its_codes():
    from exporter.kinds.causal_lm.export import _calibration_batches
    from exporter.lm.backend import linear_modules
    from exporter.lm.corpus import stdlib_text
    from exporter.lm.source import load_causal_lm
    from exporter.quant.plan import Planner, Scheme, round_to_nearest
    from exporter.quant.recover import recover
    from targets.lm import LmSettings

    lm = load_causal_lm("demo:tinylm")
    paths = linear_modules(lm.model)
    scheme = Scheme(4, 32, False, True)
    on_grid = dict(lm.model.named_modules())[paths[0]]
    with torch.no_grad():  # a quantized source's weight: on the grid already, its plan exact
        on_grid.weight.copy_(round_to_nearest(on_grid.weight, scheme).dequantize())
    settings = LmSettings(window_length=32, calibration_windows=24)
    batches = _calibration_batches(lm, stdlib_text("train"), settings)
    planner = Planner(lm.model, lambda: batches, lambda _: None)
    plans = {path: planner.weight(path, scheme, "rtn") for path in paths}
    recovered, record = recover(lm.model, plans, batches, 40, lambda _: None)
    # demo:tinylm (192 wide): KL 0.0160 -> 0.0129 in 40 steps (the 128-wide model it replaced: below 0.6x)
    assert record["kl_after"] < 0.9 * record["kl_before"], record
    assert record["linears"] == len(paths) - 1 and recovered[paths[0]] is plans[paths[0]]  # method "source"
    for path in paths[1:]:
        before, after = plans[path], recovered[path]
        assert after.method == "rtn+recovery"
        assert torch.equal(after.codes, before.codes) and torch.equal(after.zero_points, before.zero_points)
        assert not torch.equal(after.scales, before.scales)
    assert all(p.requires_grad for p in lm.model.parameters())  # the float model is left as it was


def _export(tmp_path, name: str, recovery: int, variants: tuple[str, ...]):
    # an 8-bit table and head: the decoder linears' error, which recovery lowers, is most of the artifact's KL
    target = lm_target(tmp_path / f"{name}.toml", variants, builder="export", diagnose="off", recovery=recovery,
                       embedding_bits=8)
    result = run_cli("export", "--target", target, "--out", tmp_path / name)
    assert result.code == 0, result.stderr[-2000:]
    return tmp_path / name / "tinylm" / "test-llm"


@pytest.mark.slow
def test_every_format_writes_the_recovered_plan_and_its_artifact_kl_drops(tmp_path):
    import onnx

    from exporter.formats.coreml.blocks import read_codes as read_core_ml_codes
    from exporter.formats.onnx.nbits import read_codes
    from exporter.formats.tflite.planned import read_codes as read_litert_codes

    plain = _export(tmp_path, "plain", 0, ("w4",))
    folder = _export(tmp_path, "recovered", 50, ("w4", "coreml/w4", "tflite/a8w4"))
    reports = {name: json.loads((f / "report.json").read_text()) for name, f in (("plain", plain),
                                                                                 ("recovered", folder))}
    kl = {name: r["artifacts"][0]["metrics"]["kl_mean"] for name, r in reports.items()}
    assert kl["recovered"] < 0.95 * kl["plain"], kl  # measured 0.0229 -> 0.0208
    manifest = json.loads((folder / "manifest.json").read_text())
    records = [a["quantization"]["recovery"] for a in manifest["artifacts"]]
    assert all(r == records[0] for r in records) and records[0]["steps"] == 50  # one recovery, three formats
    assert records[0]["kl_after"] < records[0]["kl_before"]
    assert "recovery: 50 steps of self-distillation" in (folder / "report.md").read_text()
    assert json.loads((folder / "export.json").read_text())["weight_plan_seconds"]["recovery"] > 0
    # the three artifacts hold one plan: ONNX's codes and scales are the Core ML program's, and LiteRT's int4
    # tensors (found by their codes) carry the same scales at float16
    stored = read_codes(onnx.load(str(folder / "model.w4.onnx")))
    in_core_ml = [arrays for arrays in read_core_ml_codes(folder / "model.w4.mlpackage").values()
                  if arrays["codes"].max() < 16]
    in_litert = list(read_litert_codes(folder / "model.a8w4.tflite").values())
    recovered = 0
    for arrays in stored.values():
        if arrays["codes"].max() > 15:  # the 8-bit head
            continue
        same = [found for found in in_core_ml if np.array_equal(found["codes"], arrays["codes"])]
        assert same and np.array_equal(same[0]["scales"], arrays["scales"])
        same = [found for found in in_litert if np.array_equal(found["codes"], arrays["codes"])]
        assert same, "codes in no int4 tensor of the .tflite"
        np.testing.assert_allclose(same[0]["scales"], arrays["scales"], rtol=2 ** -8)
        recovered += 1
    assert recovered == records[0]["linears"]
