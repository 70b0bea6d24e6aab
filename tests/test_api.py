"""The Python API: the same pipeline, artifacts and errors as the CLI, the report as typed objects."""

from __future__ import annotations

import numpy as np
import pytest

import edgeport
from tests import hf_zoo, zoo
from tests.conftest import fast_target

pytestmark = pytest.mark.slow


def test_export_a_module_in_python_with_array_data(tmp_path):
    module, examples = zoo.mlp()
    rng = np.random.default_rng(0)
    data = {"features": rng.standard_normal((40, 20)).astype(np.float32)}
    report = edgeport.export(module, examples, target=str(fast_target(tmp_path, "cockpit")), eval=data,
                             calib=data, out=tmp_path, name="mlp", progress=None)
    assert isinstance(report, edgeport.Report) and report.directory == tmp_path / "mlp" / "cockpit"
    assert [(a.format, a.precision) for a in report.artifacts] == [("onnx", "fp16"), ("onnx", "w8a16")]
    fp16 = report.artifact("onnx", "fp16")
    assert fp16.path.is_file() and fp16.parity.samples == 40 and fp16.parity.sqnr_db > 40
    assert report.json["artifacts"][0]["sha256"] == fp16.sha256
    again = edgeport.validate(report.directory, progress=None)  # the directory alone, as `edgeport validate`
    assert [a.sha256 for a in again.artifacts] == [a.sha256 for a in report.artifacts]
    assert again.artifact("onnx", "w8a16").parity.sqnr_db == report.artifact("onnx", "w8a16").parity.sqnr_db


def test_a_hugging_face_model_in_three_lines(tmp_path):
    model, examples = hf_zoo.bert()  # any transformers model wrapped to return a tensor
    report = edgeport.export(model, examples, target=str(fast_target(tmp_path, "cockpit")),
                             eval=hf_zoo.eval_arrays("bert", 24), out=tmp_path, progress=None)
    assert report.artifact("onnx", "fp16").parity.cosine > 0.999


def test_bad_input_raises_the_clis_error(tmp_path):
    module, examples = zoo.mlp()
    with pytest.raises(edgeport.EdgeportError, match="lacks array") as caught:
        edgeport.export(module, examples, target="cockpit", eval={"wrong_name": np.ones((4, 20), np.float32),
                                                                   "other": np.ones((4, 20), np.float32)},
                        out=tmp_path, progress=None)
    assert caught.value.exit_code == 2 and not (tmp_path / "mlp").exists()
    with pytest.raises(edgeport.EdgeportError, match="pass an nn.Module"):
        edgeport.export(object(), target="cockpit", out=tmp_path, progress=None)
