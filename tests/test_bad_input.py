"""Bad input: a one-line error saying what to fix, exit 2, no traceback, nothing written."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests import zoo
from tests.conftest import ZOO, fast_target, run_cli

pytestmark = pytest.mark.slow


def _assert_clean_failure(result, out, *fragments):
    assert result.code == 2, (result.stdout, result.stderr)
    assert len(result.error_lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.error_lines[0]
    assert "Traceback" not in result.stderr
    assert not out.exists() or not any(out.rglob("*")), list(out.rglob("*"))


@pytest.mark.parametrize("model, fragments", [
    (f"{ZOO}:custom_op", ["onnx cannot take 1 operator(s): edgeport_test.mystery.default in block (MysteryBlock)",
                          "tflite cannot take 1 operator(s): edgeport_test.mystery.default in block (MysteryBlock): "
                          "litert-torch has no lowering"]),
    (f"{ZOO}:raises", ["the factory raised RuntimeError: weights not found"]),
    (f"{ZOO}:not_a_module", ["returned dict; return an nn.Module or (module, example_inputs)"]),
    (f"{ZOO}:no_examples", ["came without example inputs", "--input features:1x...:float32"]),
    (f"{ZOO}:nothing_here", ["has no callable 'nothing_here'"]),
    ("tests/absent.py:build", ["model file tests/absent.py does not exist"]),
    ("missing.pt2", ["model file missing.pt2 does not exist"]),
    ("README.md", ["is not a PyTorch archive"]),
    ("just-words", ["is not a model spec"]),
    ("demo:cats", ["the embedded demo is demo:digits"]),
])
def test_bad_model_specs(tmp_path, model, fragments):
    out = tmp_path / "out"
    _assert_clean_failure(run_cli("export", "--model", model, "--target", "android", "--out", out), out, *fragments)


def test_unknown_target_and_malformed_target_file(tmp_path):
    out = tmp_path / "out"
    _assert_clean_failure(run_cli("export", "--target", "pixel9", "--out", out), out,
                          "unknown target 'pixel9'; valid targets: android, android-executorch, android-llm, cockpit, "
                          "cockpit-llm, ios, ios-llm, iot-npu")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\nthreads = 4\n[[variants]]\nformat = "onnx"\nprecision = "fp32"\n')
    _assert_clean_failure(run_cli("export", "--target", bad, "--out", out), out, "unknown key(s) threads")


def test_wrong_input_spec_and_mismatched_data(tmp_path):
    out = tmp_path / "out"
    _assert_clean_failure(run_cli("export", "--model", f"{ZOO}:no_examples", "--input", "features=1x20",
                                  "--target", "android", "--out", out), out, "is not NAME:DIMS[:DTYPE]")
    data = tmp_path / "eval.npz"
    np.savez(data, image=np.zeros((10, 1, 7, 7), np.float32))
    _assert_clean_failure(run_cli("export", "--eval", data, "--target", "android", "--out", out), out,
                          "has shape (10, 1, 7, 7) but input 'image' takes N x 1x8x8")
    _assert_clean_failure(run_cli("export", "--calib", tmp_path / "none.npz", "--target", "android", "--out", out),
                          out, "--calib", "does not exist")


def test_pickled_module_needs_trust_flag(tmp_path):
    model, _ = zoo.mlp()
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    out = tmp_path / "out"
    _assert_clean_failure(run_cli("export", "--model", path, "--input", "features:1x20", "--target", "android",
                                  "--out", out), out, "unpickling it can run arbitrary code", "--trust-pickle")
    result = run_cli("export", "--model", path, "--input", "features:1x20", "--trust-pickle",
                     "--target", fast_target(tmp_path, "android"), "--out", out, "--allow-synthetic-eval")
    assert result.code == 0, result.stderr


def test_state_dict_file_asks_for_a_factory(tmp_path):
    model, _ = zoo.mlp()
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    out = tmp_path / "out"
    _assert_clean_failure(run_cli("export", "--model", path, "--target", "android", "--out", out), out,
                          "of weights, not a model", "--weights")


def test_failed_export_keeps_the_previous_good_directory(tmp_path, demo_android):
    """A failure after an earlier success leaves the earlier artifacts exactly as they were."""
    _, good = demo_android
    out = good.parent.parent
    before = {p.name: p.read_bytes() for p in good.iterdir()}
    result = run_cli("export", "--eval", tmp_path / "none.npz", "--target", "android", "--out", out)
    assert result.code == 2
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before
    assert not [p for p in good.parent.iterdir() if p.name.startswith(".")]


def test_torchscript_source_on_a_tflite_target_is_refused_before_converting(tmp_path):
    model, examples = zoo.gru()
    path = tmp_path / "gru.ts"
    torch.jit.save(torch.jit.trace(model, examples), path)
    out = tmp_path / "out"
    _assert_clean_failure(run_cli("export", "--model", path, "--input", "sequence:1x15x10", "--target", "iot-npu",
                                  "--out", out), out, "tflite cannot take", "litert-torch converts torch.export "
                          "programs only")


def test_diff_reads_what_is_on_disk(tmp_path, demo_android):
    """A release whose artifact changed after export, or lost one, is a regression even though its manifest and
    report are those of the good release."""
    import shutil

    _, good = demo_android
    old, tampered, gone = tmp_path / "old", tmp_path / "tampered", tmp_path / "gone"
    for copy in (old, tampered, gone):
        shutil.copytree(good, copy)
    same = run_cli("diff", old, tampered)
    assert same.code == 0 and "no regression" in same.stdout
    with open(tampered / "model.onnx", "ab") as f:
        f.write(b"\0")
    (gone / "model.int8.tflite").unlink()
    changed = run_cli("diff", old, tampered)
    assert changed.code == 1, changed.stdout
    assert "new release: model.onnx differs from its manifest's sha256 (changed after export)" in changed.stdout
    deleted = run_cli("diff", old, gone)
    assert deleted.code == 1 and "new release: model.int8.tflite is missing on disk" in deleted.stdout
    backwards = run_cli("diff", gone, old)  # the old side is checked too
    assert backwards.code == 1 and "old release: model.int8.tflite is missing on disk" in backwards.stdout


def test_two_language_model_exports_write_byte_identical_manifests(tmp_path):
    """Blame and export timings live in export.json: the manifest is the same bytes for the same inputs."""
    from tests.lm_models import lm_target

    target = lm_target(tmp_path / "t.toml", ("w8", "executorch/a8w8"))
    manifests = []
    for run in ("first", "second"):
        done = run_cli("export", "--model", "demo:tinylm", "--target", target, "--out", tmp_path / run)
        assert done.code in (0, 1), done.stderr[-2000:]
        manifests.append((tmp_path / run / "tinylm" / "test-llm" / "manifest.json").read_bytes())
    assert manifests[0] == manifests[1]
    assert b'"seconds"' not in manifests[0]


def test_generate_checks_the_directory_before_loading_libraries():
    import subprocess
    import sys

    code = ("import sys\nfrom pathlib import Path\nfrom validators.lm.generate import stream\n"
            "from common.errors import EdgeportError\ntry:\n    next(stream(Path('/no/such/dir'), 'hi', 4))\n"
            "except EdgeportError as exc:\n    print(exc)\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == ["/no/such/dir is not a directory; pass an artifact directory such as "
                                        "artifacts/digits/android", "[]"]


def test_missing_data_is_refused_before_the_model_is_loaded(tmp_path):
    """zoo:raises fails when loaded: the path error comes first, in the words of the target's kind."""
    out = tmp_path / "out"
    _assert_clean_failure(run_cli("export", "--model", f"{ZOO}:raises", "--eval", tmp_path / "absent.npz",
                                  "--target", "android", "--out", out), out, "--eval", "an .npz or a folder")
    _assert_clean_failure(run_cli("export", "--calib", tmp_path / "absent.txt", "--target", "android-llm",
                                  "--out", out), out, "--calib", "a UTF-8 text file")
