"""Every (format, precision) of the catalog on tiny seeded model families, in process: lower once
per (family, format), emit each precision, run the artifact with its real runtime against PyTorch,
judge it by the precision's default budget. The matrix is a filtered product of the catalog,
narrowable with EDGEPORT_TEST_FAMILIES / EDGEPORT_TEST_FORMATS / EDGEPORT_TEST_PRECISIONS."""

from __future__ import annotations

import pytest

from exporter.formats import backend
from targets.catalog import FLOAT, PRECISIONS, precision
from tests import zoo
from tests.harness import Staged, matrix, narrowed, provenance_in
from validators.runtimes.onnxruntime_runtime import saturating_host

# the transformer's attention goes through every format; keep its matrix to the float and static rows
CASES = matrix(["mlp", "cnn", "transformer"],
               keep=lambda family, fmt, p: family != "transformer" or p in ("fp32", "fp16", "int8"))
_LOWERED: dict[tuple[str, str], Staged] = {}


def _lowered(family: str, fmt: str) -> Staged:
    if (family, fmt) not in _LOWERED:
        _LOWERED[(family, fmt)] = Staged(zoo.FAMILIES[family], family).trace().lower(fmt)
    return _LOWERED[(family, fmt)]


@pytest.mark.slow
@pytest.mark.parametrize(("family", "fmt", "precision_id"), CASES, ids=["-".join(c) for c in CASES])
def test_variant_meets_its_default_budget(family, fmt, precision_id):
    if (fmt, precision_id) == ("onnx", "int8_dynamic") and family == "mlp" and saturating_host():
        pytest.xfail("this host's AVX2 uint8 x int8 kernels saturate (no VNNI): 14.6 dB measured here, where "
                     "dynamic quantization has no QDQ graph to judge instead; ARM and VNNI CPUs do not saturate")
    staged = _lowered(family, fmt)
    result = staged.emit(precision_id).compare()
    row = precision(fmt, precision_id)
    assert not result.violations, result.violations
    assert result.overall["sqnr_db"] >= row.budget.min_sqnr_db
    if precision_id == "fp32":
        assert result.overall["max_abs"] <= 1e-4
    if row.kind != FLOAT:  # the manifest will say how it was quantized
        assert staged.emitted.quantization


def test_onnx_passes_fold_batchnorm_in_the_lowered_program():
    staged = Staged(zoo.cnn, "cnn").trace()
    staged.lower("onnx", passes=[]).check_count({"BatchNormalization": 3, "Conv": 3})
    Staged(zoo.cnn, "cnn").trace().lower("onnx").check_count({"BatchNormalization": 0, "Conv": 3})


@pytest.mark.slow
@pytest.mark.parametrize("fmt", narrowed("EDGEPORT_TEST_FORMATS", list(PRECISIONS)))
def test_every_format_stamps_provenance_into_its_artifact(fmt):
    staged = _lowered("mlp", fmt).emit("fp32")
    provenance = {"edgeport.model": "mlp", "edgeport.precision": "fp32", "edgeport.target": "harness"}
    backend(fmt).stamp(staged.out, provenance)
    backend(fmt).stamp(staged.out, provenance)  # stamping again replaces, never duplicates
    assert provenance_in(fmt, staged.out) == provenance
    assert not staged.compare().violations  # the stamped artifact still runs and matches
