"""Per-layer quantization blame and automatic mixed precision (ONNX QDQ, TFLite and ExecuTorch static int8)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.artifact_dir import Reference
from tests import zoo
from tests.conftest import ZOO, read_json, run_cli
from tests.independent import onnx_accumulated_sqnr, tflite_accumulated_sqnr

pytestmark = pytest.mark.slow

HEADER = """name = "{name}"
[runtime]
min_runs = 20
min_seconds = 0.05
[passes]
onnx = ["fold_constants", "fold_batchnorm", "eliminate_dead_nodes", "simplify"]
"""
TARGET = HEADER.format(name="amp") + """[[variants]]
format = "{format}"
precision = "{precision}"
budget = {{ max_accuracy_drop = 0.02, min_top1_agreement = 0.95 }}
"""
# (format, precision) -> the operator a fully connected layer becomes
VARIANTS = {("onnx", "int8"): "Gemm", ("tflite", "int8"): "FULLY_CONNECTED", ("tflite", "int8_full"): "FULLY_CONNECTED",
            ("executorch", "int8"): "Linear"}


@pytest.fixture(params=list(VARIANTS), ids=lambda v: "-".join(v))
def outlier_data(tmp_path, request):
    """Eval inputs labelled by the fp32 model (reference top-1 = 100%) and separate calibration data."""
    model, _ = zoo.outlier_channels()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 16)).astype(np.float32)
    with torch.no_grad():
        labels = model(torch.from_numpy(x)).argmax(1).numpy()
    np.savez(tmp_path / "eval.npz", x=x, labels=labels)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((128, 16)).astype(np.float32))
    target = tmp_path / "amp.toml"
    fmt, precision = request.param
    target.write_text(TARGET.format(format=fmt, precision=precision))
    return target, tmp_path / "eval.npz", tmp_path / "calib.npz", VARIANTS[request.param]


def _export(tmp_path, outlier_data, out: str, *flags):
    target, eval_path, calib_path, _ = outlier_data
    return run_cli("export", "--model", f"{ZOO}:outlier_channels", "--target", target, "--eval", eval_path,
                   "--calib", calib_path, "--out", tmp_path / out, *flags)


def test_sensitive_layer_is_blamed_first_and_auto_precision_fixes_it(tmp_path, outlier_data):
    plain = _export(tmp_path, outlier_data, "plain", "--no-auto-precision")
    assert plain.code == 1  # plain static int8 misses the accuracy budget
    artifact = read_json(tmp_path / "plain" / "zoo-outlier_channels" / "amp" / "report.json")["artifacts"][0]
    assert artifact["accuracy"]["drop"] > 0.02
    layers = artifact["layers"]
    assert layers[0]["module"] == "head.2"  # named by its PyTorch module path
    assert layers[0]["sqnr_db_alone_at_output"] < 10 < min(r["sqnr_db_alone_at_output"] for r in layers[1:])
    assert [r["module"] for r in layers[1:]].count("head.2") == 0 and len(layers) == 5

    if outlier_data[0].read_text().count('"int8_full"'):  # a float layer would break full-integer: not tried
        kept = _export(tmp_path, outlier_data, "auto", "--auto-precision")
        report = read_json(tmp_path / "auto" / "zoo-outlier_channels" / "amp" / "report.json")["artifacts"][0]
        assert kept.code == 1 and "auto_precision" not in report and report["float_ops"] == []
        assert "does not apply to a full-integer variant" in report["diagnosis_note"]
        return
    for out in ("auto", "again"):  # the same export twice: the same decisions, byte for byte
        fixed = _export(tmp_path, outlier_data, out, "--auto-precision")
        assert fixed.code == 0, fixed.stdout + fixed.stderr
    report = read_json(tmp_path / "auto" / "zoo-outlier_channels" / "amp" / "report.json")["artifacts"][0]
    decision = report["auto_precision"]
    assert decision["met"] is True and decision["kept_float"] == ["head.2"]
    assert decision["int8_layer_share"] >= 0.8 and decision["int8_layers"] == 4
    assert decision["bytes_after"] > decision["bytes_before"]  # what keeping a layer in float cost
    assert decision["latency_ms_before"] > 0 and decision["latency_ms_after"] > 0  # measured in the same run
    assert report["accuracy"]["drop"] <= 0.02 and report["budget"]["passed"]
    first, second = (read_json(tmp_path / out / "zoo-outlier_channels" / "amp" / "manifest.json")
                     for out in ("auto", "again"))
    assert first["artifacts"][0]["diagnosis"] == second["artifacts"][0]["diagnosis"]
    md = (tmp_path / "auto" / "zoo-outlier_channels" / "amp" / "report.md").read_text()
    assert f"| head.2 | {outlier_data[3]} | 3." in md and "kept head.2 in float" in md
    assert "<svg" in (tmp_path / "auto" / "zoo-outlier_channels" / "amp" / "report.html").read_text()


def test_demo_blame_matches_an_independent_computation(demo_android):
    result, directory = demo_android
    assert result.code == 0, result.stderr
    artifacts = {a["path"]: a for a in read_json(directory / "report.json")["artifacts"]}
    modules = ["classifier.1", "classifier.3", "features.0", "features.3", "features.7"]
    onnx_rows, tflite_rows = artifacts["model.int8.onnx"]["layers"], artifacts["model.int8.tflite"]["layers"]
    assert sorted(r["module"] for r in onnx_rows) == sorted(r["module"] for r in tflite_rows) == modules
    inputs = Reference.load(directory / "reference.npz").inputs["image"][: onnx_rows[0]["samples"]]
    for row in onnx_rows:
        independent = onnx_accumulated_sqnr(directory / "model.onnx", directory / "model.int8.onnx", row, inputs)
        assert independent == pytest.approx(row["sqnr_db_accumulated"], abs=0.01)
    independent = tflite_accumulated_sqnr(directory / "model.tflite", directory / "model.int8.tflite", inputs)
    for row in tflite_rows:
        assert independent[row["tensor"]] == pytest.approx(row["sqnr_db_accumulated"], abs=0.01)


@pytest.mark.parametrize("most,needed", [(12, 5), (12, 1), (12, 12), (1, 1), (7, 0)])
def test_the_one_kept_set_search_finds_the_fewest_layers_and_leaves_them_on_disk(most, needed):
    """Both kinds' auto precision: keeping more of the worst layers never hurts, so a bisection after the most
    finds the fewest that meet the budget, and the variant on disk is that one, not the last one tried."""
    from exporter.diagnosis.search import fewest_kept

    on_disk = []

    def attempt(count: int) -> list[str]:
        on_disk.append(count)
        return [] if count >= needed else [f"{count} kept: misses"]

    kept = fewest_kept(most, attempt)
    assert kept.count == max(1, needed) and kept.violations == [] and on_disk[-1] == kept.count
    assert kept.candidates_tried == len(on_disk) <= 2 + int(np.ceil(np.log2(most)))


def test_the_kept_set_search_keeps_the_most_when_even_that_misses():
    from exporter.diagnosis.search import fewest_kept

    tried = []
    kept = fewest_kept(9, lambda count: tried.append(count) or ["the miss is elsewhere"])
    assert kept.count == 9 and kept.violations == ["the miss is elsewhere"] and tried == [9]


@pytest.mark.parametrize("needed", [{0, 2}, {1}, {0, 3, 4}, {0, 1, 2, 3, 4, 5}])
def test_the_kept_set_is_minimal_not_only_the_shortest_prefix(needed):
    """The budget holds when these layers (positions in the blame order) are float, whatever else is: the search
    ends with exactly them, each other layer of the meeting prefix put back, and the variant on disk is that one."""
    from exporter.diagnosis.search import fewest_kept_set

    on_disk = []

    def attempt(indices: list[int]) -> list[str]:
        on_disk.append(sorted(indices))
        return [] if needed <= set(indices) else [f"{sorted(needed - set(indices))} quantized: misses"]

    kept = fewest_kept_set(6, attempt)
    assert set(kept.indices) == needed and kept.violations == [] and on_disk[-1] == sorted(needed)
    assert kept.put_back == max(needed) + 1 - len(needed) and kept.candidates_tried == len(on_disk)
    for index in kept.indices:  # minimal: no kept layer can be quantized on its own
        assert attempt([k for k in kept.indices if k != index])


def test_an_int8_variant_with_every_layer_float_is_not_called_int8():
    from exporter.diagnosis.stage import NONE_QUANTIZED, AutoPrecisionDecision
    from validators.validate import _nothing_quantized

    decision = AutoPrecisionDecision(met=True, kept_float=["a", "b", "c", "d"], excluded_nodes=[], weighted_layers=4,
                                     bytes_before=10, bytes_after=40, violations_before=["sqnr"], violations_after=[],
                                     candidates_tried=3).to_json()
    assert decision["met"] is False and decision["note"] == NONE_QUANTIZED and decision["int8_layers"] == 0
    entry = {"precision": "int8", "diagnosis": {"auto_precision": decision}}
    assert "no layer could be quantized within the budget" in _nothing_quantized(entry)[0]
    decision["int8_layers"] = 1
    assert _nothing_quantized(entry) == []


OUTLIER_CNN_TARGET = HEADER.format(name="outlier") + """[budgets]
max_accuracy_drop = 0.005
min_sqnr_db = 18.0
""" + "".join(f'[[variants]]\nformat = "{fmt}"\nprecision = "{precision}"\n'
              for fmt in ("onnx", "tflite", "executorch") for precision in ("int8", "int8_dynamic"))


def test_every_int8_variant_of_a_cnn_with_an_outlier_channel_keeps_one_layer_float(tmp_path):
    """A CNN whose pointwise conv reads one activation channel 1000x the others: every int8 variant, static and
    dynamic, in every format, gets a blame table naming that conv first and passes with it alone float."""
    import torch

    rng = np.random.default_rng(1)
    images = zoo.offset_images(rng, 200)
    np.savez(tmp_path / "eval.npz", image=images, labels=zoo.offset_classes(torch.from_numpy(images)).numpy())
    np.savez(tmp_path / "calib.npz", image=zoo.offset_images(rng, 128))
    (tmp_path / "outlier.toml").write_text(OUTLIER_CNN_TARGET)

    def export(out: str, *flags):
        return run_cli("export", "--model", f"{ZOO}:outlier_cnn", "--target", tmp_path / "outlier.toml",
                       "--eval", tmp_path / "eval.npz", "--calib", tmp_path / "calib.npz", "--out", tmp_path / out,
                       *flags)

    plain = export("plain", "--no-auto-precision")
    assert plain.code == 1
    plain_report = read_json(tmp_path / "plain" / "zoo-outlier_cnn" / "outlier" / "report.json")["artifacts"]
    assert len(plain_report) == 6 and all(a["parity"]["sqnr_db"] < 1.0 for a in plain_report), \
        [(a["path"], a["parity"]["sqnr_db"]) for a in plain_report]

    result = export("auto", "--auto-precision")
    assert result.code == 0, result.stdout + result.stderr
    for artifact in read_json(tmp_path / "auto" / "zoo-outlier_cnn" / "outlier" / "report.json")["artifacts"]:
        assert artifact["layers"][0]["module"] == "features.6", artifact["path"]
        first = next(row for row in artifact["layers"] if row["module"] == "features.0")
        if artifact["precision"] == "int8_dynamic":  # no output quantization: the first layer's error is its own,
            # so its alone figure (in PyTorch: the input quantized per sample) is what the runtime measured
            assert first["sqnr_db_alone_at_layer"] == pytest.approx(first["sqnr_db_accumulated"], abs=1.0)
        decision = artifact["auto_precision"]
        assert decision["kept_float"] == ["features.6"] and decision["int8_layers"] == 3, artifact["path"]
        assert artifact["budget"]["passed"] and artifact["parity"]["sqnr_db"] > 35, artifact["path"]


def test_a_layer_kept_float_does_not_take_the_embedding_table_with_it():
    """The chain kept float with a layer runs back through a transformer's residual stream to the embedding
    lookup; the lookup holds a weight table and ends it (all-mpnet-base-v2's int8 grew 195 -> 274 MB before)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from exporter.formats.onnx.layers import float_island

    table = numpy_helper.from_array(np.ones((10, 4), np.float32), "table")
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "weight")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["embedded"], name="embedding"),
         helper.make_node("Add", ["embedded", "embedded"], ["residual"], name="add"),
         helper.make_node("Relu", ["residual"], ["hidden"], name="relu"),
         helper.make_node("MatMul", ["hidden", "weight"], ["out"], name="linear")],
        "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [3, 4])], [table, weight])
    assert sorted(float_island(onnx.helper.make_model(graph), "linear")) == ["add", "linear", "relu"]
