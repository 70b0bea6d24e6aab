"""Every (format, precision) of the catalog on tiny seeded model families, in process: lower once
per (family, format), emit each precision, run the artifact with its real runtime against PyTorch,
judge it by the precision's default budget. The matrix is a filtered product of the catalog,
narrowable with EDGEPORT_TEST_FAMILIES / EDGEPORT_TEST_FORMATS / EDGEPORT_TEST_PRECISIONS."""

from __future__ import annotations

import json

import pytest

from exporter.formats import backend
from targets.catalog import FLOAT, PRECISIONS, precision
from tests import zoo
from tests.harness import Staged, matrix, narrowed
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


def _provenance_in(fmt: str, path) -> dict:
    """Read the provenance back with each format's own library."""
    if fmt == "onnx":
        import onnx

        return {p.key: p.value for p in onnx.load(str(path)).metadata_props if p.key.startswith("edgeport.")}
    if fmt == "tflite":
        from ai_edge_litert.tools import flatbuffer_utils

        model = flatbuffer_utils.read_model(str(path))
        (entry,) = [m for m in model.metadata if m.name.decode() == "edgeport"]
        return json.loads(bytes(model.buffers[entry.buffer].data).decode())
    if fmt == "executorch":
        from exporter.formats.executorch.backend import provenance_path

        return json.loads(provenance_path(path).read_text())
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    spec.ParseFromString(next(path.glob("Data/com.apple.CoreML/model.mlmodel")).read_bytes())
    return {k: v for k, v in spec.description.metadata.userDefined.items() if k.startswith("edgeport.")}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", narrowed("EDGEPORT_TEST_FORMATS", list(PRECISIONS)))
def test_every_format_stamps_provenance_into_its_artifact(fmt):
    staged = _lowered("mlp", fmt).emit("fp32")
    provenance = {"edgeport.model": "mlp", "edgeport.precision": "fp32", "edgeport.target": "harness"}
    backend(fmt).stamp(staged.out, provenance)
    backend(fmt).stamp(staged.out, provenance)  # stamping again replaces, never duplicates
    assert _provenance_in(fmt, staged.out) == provenance
    assert not staged.compare().violations  # the stamped artifact still runs and matches
