"""Guard: every precision and pass the catalog offers has an implementation, a test, and every
built-in target is exercised by an end-to-end test."""

from __future__ import annotations

from pathlib import Path

from exporter.formats import BACKENDS, backend
from exporter.formats.onnx_passes import PASSES as ONNX_PASSES
from exporter.formats.onnx_quantize import IMPLEMENTED_PRECISIONS
from targets import builtin_target_names
from targets.catalog import PASSES, PRECISIONS
from validators.runtimes import RUNTIMES

TESTS = Path(__file__).resolve().parent


def test_every_format_has_backend_and_runtime():
    for fmt in PRECISIONS:
        assert fmt in BACKENDS and fmt in RUNTIMES
        module = backend(fmt)
        assert callable(module.preflight) and callable(module.convert)


def test_every_onnx_and_tflite_precision_and_pass_is_implemented():
    from exporter.formats.tflite_quantize import AEQ_RECIPES

    assert set(PRECISIONS["onnx"]) == set(IMPLEMENTED_PRECISIONS)
    assert set(PRECISIONS["tflite"]) == {"fp32", *AEQ_RECIPES}
    assert set(PRECISIONS["coreml"]) == {"fp16", "fp32", "w8", "palette6", "palette4"}
    assert set(PASSES["onnx"]) == set(ONNX_PASSES)


def test_every_pass_precision_and_target_is_tested():
    pass_tests = (TESTS / "test_onnx_passes.py").read_text()
    end_to_end = "".join((TESTS / name).read_text() for name in ("test_cli_export.py", "test_tflite.py",
                                                                 "test_coreml.py"))
    for pass_id in PASSES["onnx"]:
        assert f'"{pass_id}"' in pass_tests, f"no unit test runs pass {pass_id}"
    for fmt in PRECISIONS:
        for precision in PRECISIONS[fmt]:
            assert f'"{precision}"' in end_to_end, f"no end-to-end test exports {fmt} precision {precision}"
    for target in builtin_target_names():
        assert f'fast_target(tmp_path, "{target}")' in end_to_end or f'"{target}"' in end_to_end, target
