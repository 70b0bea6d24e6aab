"""Hugging Face families (tiny models built from transformers configs, seeded, no download) through every
built-in target: each converts and is validated by its runtime; fp32 matches PyTorch within 1e-4; a
quantized variant passes or misses a budget on a real measurement (finite figures, a blame table).

EDGEPORT_TEST_FAMILIES=bert,vit narrows the families for local work; CI runs them all."""

from __future__ import annotations

import numpy as np
import pytest

from exporter.pipeline import ExportOptions, run_export
from tests import hf_zoo
from tests.conftest import REPO, fast_target, read_json
from tests.harness import narrowed

pytestmark = [pytest.mark.slow, pytest.mark.hf]

FAMILIES = narrowed("EDGEPORT_TEST_FAMILIES", list(hf_zoo.FAMILIES))
TARGETS = ["android", "ios", "cockpit", "iot-npu"]
HF_ZOO = REPO / "tests" / "hf_zoo.py"
FLOAT = {"fp32"}


@pytest.mark.parametrize("family", FAMILIES)
def test_family_is_alive(family):
    """A test model whose outputs do not move with its inputs would test nothing."""
    assert hf_zoo.healthy(family) > 0.05


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("family", FAMILIES)
def test_family_through_target(tmp_path, family, target):
    paths = {}
    for role, seed in (("eval", 0), ("calib", 1)):
        paths[role] = tmp_path / f"{role}.npz"
        np.savez(paths[role], **hf_zoo.eval_arrays(family, 48, seed))
    # in process: the pipeline the CLI runs, without a fresh interpreter per export (the CLI contract has
    # its own subprocess tests)
    options = ExportOptions(model=f"{HF_ZOO}:{family}", target=str(fast_target(tmp_path, target)),
                            out=tmp_path / "out", eval=paths["eval"], calib=paths["calib"], name=family)
    run_export(options, lambda _: None)
    report = read_json(tmp_path / "out" / family / target / "report.json")
    assert report["artifacts"]
    for artifact in report["artifacts"]:
        parity, violations = artifact["parity"], artifact["budget"]["violations"]
        assert parity["sqnr_db"] is not None and "nonfinite_values" not in parity, artifact["path"]
        if artifact["precision"] in FLOAT:
            assert parity["max_abs"] <= 1e-4, (artifact["path"], parity)
            assert not violations, (artifact["path"], violations)
        if artifact["precision"] in ("int8", "int8_full", "w8a16") and not violations:
            assert artifact["layers"], f"{artifact['path']}: a static variant gets a blame table"
        for violation in violations:  # a miss is a measurement, never a crash or a degenerate reference
            assert "below the budget" in violation or "exceeds the budget" in violation \
                or violation.startswith("not full-integer"), violation
    if target == "iot-npu":
        (npu_variant,) = report["artifacts"]
        assert npu_variant["npu"]["npu_operators"] + npu_variant["npu"]["cpu_operators"] > 0


@pytest.mark.parametrize("family", list(hf_zoo.ENCODER_CONFIGS))
def test_encoder_configurations_validate_on_ios(tmp_path, family):
    """RoBERTa's cumsum position ids, BERT's relative position scores and gelu_new, DistilBERT's sinusoidal
    positions and ReLU: every MIL op their conversions emit runs in the reference interpreter, and fp32 and w8
    match PyTorch (ios refused these with exit 2 while fill_like and cumsum were missing)."""
    paths = {}
    for role, seed in (("eval", 0), ("calib", 1)):
        paths[role] = tmp_path / f"{role}.npz"
        np.savez(paths[role], **hf_zoo.eval_arrays(family, 16, seed))
    target = tmp_path / "ios-encoders.toml"
    target.write_text(fast_target(tmp_path, "ios").read_text().split("[[variants]]")[0].replace(
        'name = "ios"', 'name = "ios"\ndiagnose = "off"') + "".join(
        f'[[variants]]\nformat = "coreml"\nprecision = "{p}"\n' for p in ("fp32", "w8")))
    options = ExportOptions(model=f"{HF_ZOO}:{family}", target=str(target), out=tmp_path / "out",
                            eval=paths["eval"], calib=paths["calib"], name=family)
    run_export(options, lambda _: None)
    fp32, w8 = read_json(tmp_path / "out" / family / "ios" / "report.json")["artifacts"]
    assert "reference interpreter" in fp32["parity_runtime"]
    assert fp32["parity"]["max_abs"] <= 1e-4 and not fp32["budget"]["violations"], fp32["budget"]
    assert w8["parity"]["sqnr_db"] > 25, w8["parity"]
