"""Model sources beyond factories: .pt2, TorchScript, factory + --weights. Parity proves the right
weights were loaded."""

from __future__ import annotations

import pytest
import torch

from tests import zoo
from tests.conftest import ZOO, fast_target, onnx_target, read_json, run_cli

pytestmark = pytest.mark.slow


def _export(tmp_path, *args, target=None):
    target = target or fast_target(tmp_path, "android")
    # these tests are about the sources; synthetic eval inputs are accepted for them, not judged real
    result = run_cli("export", "--target", target, "--out", tmp_path / "out", "--allow-synthetic-eval", *args)
    assert result.code == 0, result.stderr
    return result


def test_pt2_program(tmp_path):
    model, examples = zoo.cnn()
    path = tmp_path / "cnn.pt2"
    torch.export.save(torch.export.export(model, examples), path)
    _export(tmp_path, "--model", path)
    directory = tmp_path / "out" / "cnn" / "android"
    manifest = read_json(directory / "manifest.json")
    assert manifest["model"]["kind"] == "exported_program" and manifest["inputs"][0]["shape"] == [1, 3, 32, 32]
    assert read_json(directory / "report.json")["artifacts"][0]["parity"]["max_abs"] <= 1e-4


def test_torchscript_file(tmp_path):
    model, examples = zoo.gru()
    path = tmp_path / "gru.ts"
    torch.jit.save(torch.jit.trace(model, examples), path)
    _export(tmp_path, "--model", path, "--input", "sequence:1x15x10", target=onnx_target(tmp_path))
    manifest = read_json(tmp_path / "out" / "gru" / "android" / "manifest.json")
    assert manifest["trace"]["method"] == "torchscript"
    assert manifest["artifacts"][0]["conversion"]["exporter"] == "torchscript"
    report = read_json(tmp_path / "out" / "gru" / "android" / "report.json")
    assert report["artifacts"][0]["parity"]["max_abs"] <= 1e-4


def test_factory_with_weights(tmp_path):
    trained, _ = zoo.mlp()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.25)
    path = tmp_path / "mlp.pt"
    torch.save({"state_dict": trained.state_dict()}, path)
    _export(tmp_path, "--model", f"{ZOO}:mlp", "--weights", path, "--name", "tuned")
    from exporter.sources import state_dict_sha256

    manifest = read_json(tmp_path / "out" / "tuned" / "android" / "manifest.json")
    assert manifest["model"]["sha256"] == state_dict_sha256(trained)
    assert manifest["model"]["sha256"] != state_dict_sha256(zoo.mlp()[0])
