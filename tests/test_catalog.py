"""Guards driven by the registries: every format has a backend and a runtime, every (format, precision)
of the catalog has an implementation and a test case that exercises it, every pass a unit test, and
every built-in target an end-to-end test. Cases are collected by pytest itself, not found by
searching test files for strings."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from exporter.formats import BACKENDS, backend
from exporter.formats.base import Backend
from targets import builtin_target_names
from targets.catalog import PASSES, PRECISIONS
from validators.runtimes import RUNTIMES

TESTS = Path(__file__).resolve().parent


def test_every_format_has_a_backend_and_a_runtime():
    assert set(PRECISIONS) == set(BACKENDS) == set(RUNTIMES)
    for fmt in PRECISIONS:
        implementation = backend(fmt)
        assert implementation.format == fmt
        for method in [m for m in vars(Backend) if not m.startswith("_") and callable(getattr(Backend, m))]:
            assert callable(getattr(implementation, method)), (fmt, method)


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
