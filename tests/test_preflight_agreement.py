"""The preflight never refuses what the converter takes: for every model of the test zoos and every
format, "preflight names an unsupported op" holds exactly when the fp32 conversion fails."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from exporter.errors import ConversionError
from exporter.formats import backend
from exporter.sources import _finish
from exporter.trace import trace
from targets.catalog import FORMATS
from targets.profile import target_from_dict
from tests import hf_zoo, zoo

pytestmark = pytest.mark.slow

MODELS = {**{name: factory for name, factory in zoo.FAMILIES_WITH_DATA.items()}, "custom_op": zoo.custom_op,
          **{f"hf_{name}": factory for name, factory in hf_zoo.FAMILIES.items()}}
_TRACED: dict = {}


def _traced(name: str):
    if name not in _TRACED:
        module, examples = MODELS[name]()
        _TRACED[name] = trace(_finish(module, examples, [], name, "module", name), False)
    return _TRACED[name]


def _convert_fp32(fmt: str, traced, scratch: Path) -> None:
    """The pipeline's own lower and emit of the fp32 variant, no passes."""
    target = target_from_dict({"name": "fp32", "variants": [{"format": fmt, "precision": "fp32"}]}, "test")
    lowered = backend(fmt).lower(traced, target, scratch, lambda _: None)
    backend(fmt).emit(lowered, target.variants[0], None, scratch / target.variants[0].filename, lambda _: None)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("name", list(MODELS))
def test_preflight_agrees_with_conversion(name, fmt):
    traced = _traced(name)
    refused = backend(fmt).preflight(traced)
    with tempfile.TemporaryDirectory() as scratch:
        try:
            _convert_fp32(fmt, traced, Path(scratch))
            failure = None
        except ConversionError as exc:
            failure = exc
    assert bool(refused) == (failure is not None), (
        f"preflight refused {[op.describe() for op in refused]}" if refused else f"conversion failed: {failure}")
    if name == "custom_op":  # the one model no format takes, named with its module path
        assert [(op.op, op.module_path) for op in refused] == [("edgeport_test.mystery.default", "block")]
