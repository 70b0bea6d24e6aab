"""Guards driven by the registries: every format has a backend and a runtime, every (format, precision)
of the catalog has an implementation and a test case that exercises it, every pass a unit test, and
every built-in target an end-to-end test. Cases are collected by pytest itself, not found by
searching test files for strings."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from exporter.formats import backend
from exporter.formats.base import Backend
from exporter.lm.backend import LmBackend
from targets import builtin_target_names, load_target
from targets.catalog import FORMATS, PASSES, PRECISIONS
from targets.lm import LM_PRECISIONS
from validators.runtimes import runtime_module

TESTS = Path(__file__).resolve().parent
CONTRACTS = {"tensor": (Backend, "open_session"), "causal-lm": (LmBackend, "open_lm")}


def _methods(protocol: type) -> list[str]:
    return [m for m in vars(protocol) if not m.startswith("_") and callable(getattr(protocol, m))]


def test_every_format_is_registered_once_with_a_backend_per_kind_and_a_runtime():
    from importlib import metadata

    assert set(PRECISIONS) == set(FORMATS) and set(LM_PRECISIONS) <= set(FORMATS)
    for fmt, registered in FORMATS.items():
        kinds = {"tensor": PRECISIONS, "causal-lm": LM_PRECISIONS}
        assert set(registered.backends) == {kind for kind, rows in kinds.items() if fmt in rows}, fmt
        for kind in registered.backends:
            protocol, opener = CONTRACTS[kind]
            implementation = backend(fmt, kind)
            assert implementation.format == fmt, (fmt, kind)
            for method in _methods(protocol):
                assert callable(getattr(implementation, method)), (fmt, kind, method)
            assert callable(getattr(runtime_module(fmt), opener)), (fmt, opener)
        for library in registered.libraries:  # pip names, as the manifest records them
            assert metadata.version(library), library


def test_every_language_model_precision_has_a_test_case():
    from tests.test_lm import FP16_AND_HQQ_VARIANTS
    from tests.test_lm_formats import VARIANTS
    from tests.test_lm_generation import SCALED_EMBEDDING_VARIANTS

    covered = {tuple(v.split("/")) for v in VARIANTS + SCALED_EMBEDDING_VARIANTS}
    covered |= {("onnx", p) for p in FP16_AND_HQQ_VARIANTS}
    for target in map(load_target, builtin_target_names()):  # each has an end-to-end test (below)
        covered |= {(v.format, v.precision) for v in target.variants if target.kind == "causal-lm"}
    missing = [(f, p) for f, rows in LM_PRECISIONS.items() for p in rows if (f, p) not in covered]
    assert not missing, f"no test exports the language-model precision(s) {missing}"


def _pass_implementations(fmt: str) -> dict:
    return importlib.import_module(f"exporter.formats.{fmt}.passes").PASSES if PASSES[fmt] else {}


def test_every_precision_and_pass_is_implemented():
    for fmt, rows in PRECISIONS.items():
        assert sorted(backend(fmt).precisions) == sorted(rows), fmt
    for fmt, catalog in PASSES.items():
        implementations = _pass_implementations(fmt)
        assert set(catalog) == set(implementations), fmt
        for pass_id, info in catalog.items():
            assert implementations[pass_id]().config == info.config()  # the catalog's config type is the pass's


@pytest.mark.parametrize("fmt", list(PRECISIONS))
def test_every_precision_has_a_test_case(fmt):
    from tests.test_formats import CASES

    tested = {(f, p) for _, f, p in CASES}
    missing = [p for p in PRECISIONS[fmt] if (fmt, p) not in tested]
    assert not missing, f"no test_formats case emits {fmt} precision(s) {missing}"


@pytest.mark.parametrize("fmt", [fmt for fmt, catalog in PASSES.items() if catalog])
def test_every_pass_has_a_unit_test(fmt):
    tests = [name for name in vars(importlib.import_module(f"tests.test_{fmt}_passes")) if name.startswith("test_")]
    for pass_id in PASSES[fmt]:
        assert any(name.startswith(f"test_{pass_id}") for name in tests), f"no test_{pass_id}_* unit test"


def test_every_builtin_target_has_an_end_to_end_test():
    from tests import test_cli_export

    assert sorted(test_cli_export.BUILTIN_TARGET_TESTS) == builtin_target_names()
    for target, (module, test) in test_cli_export.BUILTIN_TARGET_TESTS.items():
        assert callable(getattr(importlib.import_module(f"tests.{module}"), test, None)), (target, module, test)
