"""Language models on ExecuTorch, LiteRT and Core ML: the same decode step, verdict, blame and report as ONNX,
each artifact run by its own runtime (the Core ML program by edgeport's MIL interpreter, states included), on
both test families; a Core ML program whose KV cache is never written fails."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.lm_models import FAMILIES, MORE_FAMILIES, causal_lm_folder, check_provenance, lm_target
from tests.test_lm import _restamp

pytestmark = [pytest.mark.hf, pytest.mark.slow]

VARIANTS = ("executorch/fp32", "executorch/a8w4", "tflite/fp32", "tflite/a8w8", "coreml/fp16", "coreml/w4")
FLOAT = {"model.pte", "model.tflite", "model.fp16.mlpackage"}
RUNTIMES = {"executorch": "executorch", "tflite": "ai-edge-litert", "coreml": "MIL reference interpreter"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[int, Path, dict]]:
    """Each family exported once to every format with the real CLI."""
    root = tmp_path_factory.mktemp("lm-formats")
    target = lm_target(root / "formats-llm.toml", VARIANTS)
    results = {}
    for family in FAMILIES:
        folder = causal_lm_folder(family, root / "models" / family)
        done = run_cli("export", "--model", folder, "--target", target, "--out", root / "out", "--name", family)
        directory = root / "out" / family / "test-llm"
        assert done.code in (0, 1), done.stderr[-2000:]
        results[family] = (done.code, directory, json.loads((directory / "report.json").read_text()))
    return results


@pytest.mark.parametrize("family", FAMILIES)
def test_float_variants_generate_what_pytorch_generates(exported, family):
    code, directory, report = exported[family]
    by = {a["path"]: a for a in report["artifacts"]}
    assert set(by) == {"model.pte", "model.a8w4.pte", "model.tflite", "model.a8w8.tflite",
                       "model.fp16.mlpackage", "model.w4.mlpackage"}
    assert not report["provisional"]
    for path in FLOAT:
        artifact = by[path]
        for run in artifact["lm"]["free_running"]:
            assert run["matching_tokens"] == run["tokens"] == 12, (path, run)
        forced = artifact["lm"]["teacher_forced"]
        if path.endswith(".mlpackage"):  # float16 storage: the fp16 budget, and still every greedy token
            assert forced["kl_mean"] < 1e-3 and forced["top1_agreement"] >= 0.99, forced
        else:
            assert artifact["metrics"]["max_abs"] < 1e-3 and forced["ppl_ratio"] == pytest.approx(1.0, abs=1e-4)
        assert artifact["budget"]["passed"], (path, artifact["budget"]["violations"])
    for artifact in report["artifacts"]:  # every figure names the runtime that produced it
        assert RUNTIMES[artifact["format"]] in artifact["runtime"]
        assert RUNTIMES[artifact["format"]] in artifact["lm"]["speed"]["runtime"]
        assert artifact["lm"]["speed"]["decode_tokens_per_s"] > 0
        assert artifact["lm"]["long_context"]["tokens"] == 96  # every format read to the end of its cache
    # each .pte as an app runs it: ExecuTorch's own LLM runner (TextLLMRunner, its `forward` method and metadata,
    # the bundled tokenizer by the recipe) generates the verdict's greedy text; its tokenizer round-trips
    assert all(by[p]["bundle"] == {"runtime": "ExecuTorch LLM runner", "greedy_equal": True}
               for p in ("model.pte", "model.a8w4.pte"))
    assert not [v for v in report["violations"] if "runner" in v], report["violations"]
    # each .tflite inside a .litertlm, as LiteRT-LM's engine (litert-lm-api) opens it: its session generates the
    # verdict's greedy text from the recipe's prompt text; its tokenizer round-trips
    assert all(by[p]["bundle"] == {"runtime": "LiteRT-LM", "greedy_equal": True}
               for p in ("model.tflite", "model.a8w8.tflite"))
    assert {"model.litertlm", "model.a8w8.litertlm"} <= {p.name for p in directory.iterdir()}
    assert not [p for p in directory.iterdir() if "xnnpack_cache" in p.name]  # the engine's cache went elsewhere
    assert not [v for v in report["violations"] if "LiteRT-LM" in v], report["violations"]
    assert code == (0 if report["passed"] else 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_quantized_variants_shrink_are_blamed_and_judged(exported, family):
    code, directory, report = exported[family]
    by = {a["path"]: a for a in report["artifacts"]}
    for quantized, float_path, ratio in (("model.a8w4.pte", "model.pte", 0.5),
                                         ("model.a8w8.tflite", "model.tflite", 0.65),
                                         ("model.w4.mlpackage", "model.fp16.mlpackage", 0.6)):
        artifact = by[quantized]
        assert artifact["bytes"] < ratio * by[float_path]["bytes"], (quantized, artifact["bytes"])
        forced = artifact["lm"]["teacher_forced"]
        assert 0 < forced["kl_mean"] < 0.12 and forced["ppl_ratio"] < 1.15, (quantized, forced)
        blame = artifact["diagnosis"]["blame"]
        assert blame and blame[0]["kl_mean"] >= blame[-1]["kl_mean"]
        assert all(row["module"].startswith("model.layers.") or row["module"] == "lm_head" for row in blame)
        # passed, or failed with the reasons the verdict names
        assert artifact["budget"]["passed"] == (not artifact["budget"]["violations"])
    manifest = json.loads((directory / "manifest.json").read_text())
    entries = {e["path"]: e for e in manifest["artifacts"]}
    assert entries["model.a8w4.pte"]["quantization"]["group_size"] == 32
    assert entries["model.a8w4.pte"]["quantization"]["embedding"]["bits"] == 4  # the target's embedding_bits
    delegation = entries["model.a8w4.pte"]["quantization"]["delegation"]
    assert delegation["delegated_op_coverage"] > 0.8, delegation  # static shapes: every view and slice delegated
    assert delegation["portable_ops"]["custom_sdpa"] == 2  # ExecuTorch's attention kernel, one per layer
    assert delegation["portable_ops"]["update_cache"] == 4  # its cache write, keys and values of each layer
    assert delegation["portable_ops"]["embedding_4bit"] == 1  # its quantized lookup
    assert "mean" not in delegation["portable_ops"]  # asymmetric blocks' offsets: block means on XNNPACK too
    assert entries["model.a8w4.pte"]["quantization"]["block_offsets"]  # lm_target's blocks have zero points
    assert entries["model.a8w4.pte"]["cache"]["io"]["methods"] == {"prefill": "prefill_length", "forward": 1}
    assert entries["model.w4.mlpackage"]["cache"]["io"]["states"] == ["key_cache", "value_cache"]
    assert entries["model.a8w8.tflite"]["cache"]["io"]["signatures"] == {"prefill": "prefill_length", "decode": 1}
    for library in ("executorch", "torchao", "coremltools", "litert-torch", "ai-edge-quantizer"):
        assert library in manifest["libraries"]


@pytest.mark.parametrize("scheme", [(4, 32, True, False), (4, 32, False, True), (4, 32, False, False),
                                    (8, 96, True, False)], ids=["int4-symmetric", "int4-minimums", "int4-zero-points",
                                                                 "int8"])
def test_executorch_quantized_embedding_looks_up_the_plans_table(tmp_path, scheme):
    """The plan's codes, float16 scales (and float16 zero points of asymmetric blocks), looked up by ExecuTorch's
    own quantized kernel in its runtime, give the plan's dequantized table within float16's rounding: the kernel
    dequantizes in the scales' float16, (code - zero point) and its product with the scale each rounded (2^-11),
    far below the plan's own half step."""
    import torch
    from executorch.runtime import Runtime

    from exporter.formats.executorch.backend import lower_methods
    from exporter.formats.executorch.embedding import QuantizedEmbedding
    from exporter.quant.plan import Scheme, round_to_nearest

    bits, block, symmetric, float_zero_points = scheme
    table = torch.randn(300, 96, generator=torch.Generator().manual_seed(0)) + 0.3  # off-centre rows
    plan = round_to_nearest(table, Scheme(bits, block, symmetric, float_zero_points))
    lookup = QuantizedEmbedding(plan)
    assert lookup.weight.dtype == (torch.uint8 if bits == 4 else torch.int8)
    assert lookup.weight.numel() == table.numel() * bits // 8
    assert (lookup.zero_points is None) == symmetric
    indices = torch.tensor([[0, 7, 299, 150, 7]])
    expected = plan.dequantize()[indices[0]]
    rounding = (plan.zero_points.abs() + 2 ** bits) * plan.scales * 2 ** -10  # the zero point, code - zero point
    bound = rounding[indices[0]].repeat_interleave(block, -1) + expected.abs() * 2 ** -11 + 1e-6  # the product
    with torch.no_grad():
        eager = lookup(indices)[0]
    assert torch.all((eager - expected).abs() <= bound)
    lower_methods({"forward": torch.export.export(lookup.eval(), (indices,), strict=False)}, tmp_path / "e.pte")
    import executorch.kernels.quantized  # noqa: F401  the runtime's quantized lookups
    got = Runtime.get().load_program(str(tmp_path / "e.pte")).load_method("forward").execute([indices])[0][0]
    assert torch.all((got - expected).abs() <= bound), float((got - expected).abs().max())
    # the plan's error is the scheme's: half a step of every block at most
    assert torch.all((expected - table[indices[0]]).abs() <= plan.scales[indices[0]].repeat_interleave(block, -1)
                     * 0.5 + bound)


def test_executorch_prefill_pads_short_chunks_and_decodes_past_the_last_full_chunk(exported):
    """The .pte's two static methods share one cache: a short chunk padded to prefill_length, and tokens too
    close to the cache's end fed one at a time, give the logits of the same tokens fed in full chunks."""
    import numpy as np

    from validators.lm.runtime import open_lm

    directory = exported["llama_gqa_tied"][1]
    manifest = json.loads((directory / "manifest.json").read_text())
    entry = next(e for e in manifest["artifacts"] if e["path"] == "model.pte")
    lm = open_lm(directory, entry)
    assert (lm.cache_length, lm.prefill_length) == (96, 32)
    tokens = [int(t) for t in np.random.default_rng(0).integers(0, 200, 90)]
    whole = lm.prefill(tokens)  # chunks of 32, 32 and a padded 26
    lm.reset()
    parts = np.concatenate([lm.prefill(tokens[:70]), lm.prefill(tokens[70:])])  # 70 + 32 > 96: decode steps
    assert lm.length == 90 and whole.shape == parts.shape == (90, whole.shape[1])
    assert np.abs(whole - parts).max() < 1e-4
    with pytest.raises(ValueError, match="do not fit"):
        lm.forward(tokens[:7])


def test_every_artifact_carries_its_provenance(exported):
    check_provenance(exported["qwen2_untied"][1])


def test_report_puts_every_format_side_by_side(exported):
    directory = exported["qwen2_untied"][1]
    report = json.loads((directory / "report.json").read_text())
    assert set(report["texts"][0]["artifacts"]) == {a["path"] for a in report["artifacts"]}
    text = (directory / "report.md").read_text()
    assert "model.w4.mlpackage" in text and "model.a8w4.pte" in text and "model.a8w8.tflite" in text


def _drop_state_writes(package: Path) -> int:
    """A broken Core ML program: every write_state removed, so the KV cache is never written (each layer's
    read of the cache after its update then sees the old state)."""
    from coremltools.proto import Model_pb2

    from exporter.formats.coreml.backend import _spec_path

    spec_path = _spec_path(package)
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    function = spec.mlProgram.functions["main"]
    block = function.block_specializations[function.opset]
    kept = [op for op in block.operations if op.type != "write_state"]
    dropped = len(block.operations) - len(kept)
    del block.operations[:]
    block.operations.extend(kept)
    spec_path.write_bytes(spec.SerializeToString())
    return dropped


def test_a_core_ml_program_that_never_writes_its_cache_fails(exported, tmp_path):
    directory = tmp_path / "broken"
    shutil.copytree(exported["llama_gqa_tied"][1], directory)
    assert _drop_state_writes(directory / "model.fp16.mlpackage") == 2 * 2  # key and value, per layer
    _restamp(directory)
    done = run_cli("validate", directory)
    assert done.code == 1, done.stderr[-1500:]
    report = json.loads((directory / "report.json").read_text())
    fp16 = next(a for a in report["artifacts"] if a["path"] == "model.fp16.mlpackage")
    violations = fp16["budget"]["violations"]
    assert any("greedy tokens differ" in v for v in violations) or any("perplexity ratio" in v for v in violations)
    assert fp16["lm"]["teacher_forced"]["top1_agreement"] < 0.9, fp16["lm"]["teacher_forced"]
    untouched = next(a for a in report["artifacts"] if a["path"] == "model.pte")
    assert untouched["budget"]["passed"]


def test_a_litertlm_with_a_wrong_tokenizer_fails_naming_the_first_differing_token(exported, tmp_path):
    """The .litertlm rebuilt around a tokenizer.json with two tokens' ids swapped (a bundle built from the wrong
    file): LiteRT-LM's own tokenizer, read from inside it, names the token, though the .tflite is as exported."""
    from litert_torch.generative.utilities.litertlm_builder import build_litertlm

    directory = tmp_path / "wrong-tokenizer"
    shutil.copytree(exported[FAMILIES[0]][1], directory)
    tokenizer = json.loads((directory / "tokenizer" / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    e, t = vocab["e"], vocab["t"]
    vocab["e"], vocab["t"] = t, e
    (tmp_path / "tokenizer.json").write_text(json.dumps(tokenizer))
    stop = json.loads((directory / "manifest.json").read_text())["lm"]["bundles"]["tflite"]["eos_token_ids"]
    build_litertlm(str(directory / "model.tflite"), str(tmp_path), str(directory), 96,
                   hf_tokenizer_model_path=str(tmp_path / "tokenizer.json"), stop_token_ids=stop)
    _restamp(directory)
    done = run_cli("validate", directory)
    assert done.code == 1, done.stderr[-1500:]
    violations = json.loads((directory / "report.json").read_text())["violations"]
    named = [v for v in violations if "LiteRT-LM's tokenizer encodes" in v]
    found = re.search(r"differently from token \d+: (\d+) where the source tokenizer has (\d+) '(\w)'", named[0])
    assert found and {int(found[1]), int(found[2])} == {e, t} and found[3] in "et", named


@pytest.mark.parametrize("family", MORE_FAMILIES)
def test_more_families_compute_in_every_format_or_are_refused_by_name(tmp_path, family):
    """Phi-3's fused q/k/v and gate/up linears, Qwen3's query/key norms and Gemma 2's soft-capping: the float
    variant of every format writes PyTorch's logits, or the format refuses the model before any work, naming why."""
    folder = causal_lm_folder(family, tmp_path / family)
    variants = ["onnx/fp32", "executorch/fp32", "tflite/fp32", "coreml/fp16"]
    if family == "gemma2_softcap":
        done = run_cli("export", "--model", folder, "--target", lm_target(tmp_path / "all.toml", tuple(variants)),
                       "--out", tmp_path / "refused")
        assert done.code == 2 and "soft-caps its attention scores" in done.stderr, done.stderr[-1500:]
        assert "executorch" in done.stderr and not (tmp_path / "refused").exists()
        variants.remove("executorch/fp32")
    done = run_cli("export", "--model", folder, "--target", lm_target(tmp_path / "float.toml", tuple(variants)),
                   "--out", tmp_path / "out")
    assert done.code == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "out" / family / "test-llm" / "report.json").read_text())
    assert len(report["artifacts"]) == len(variants)
    for artifact in report["artifacts"]:
        forced = artifact["lm"]["teacher_forced"]
        assert forced["top1_agreement"] == 1.0 and forced["kl_mean"] < 1e-5, (artifact["path"], forced)
        assert artifact["metrics"]["max_abs"] < (2e-2 if artifact["format"] == "coreml" else 1e-3), artifact["path"]
        assert all(run["matching_tokens"] == run["tokens"] for run in artifact["lm"]["free_running"])
    # the export's own memory, per step, with the estimate made before loading beside it
    memory = report["export"]["memory"]
    assert {a["path"] for a in report["artifacts"]} | {"load and reference", "validation"} <= set(memory["steps_mb"])
    assert memory["peak_rss_mb"] == max(memory["steps_mb"].values()) and memory["preflight"]["checked"]
    assert "export peak memory" in (tmp_path / "out" / family / "test-llm" / "report.md").read_text()


def test_auto_precision_keeps_layers_on_executorch_core_ml_and_litert(tmp_path):
    folder = causal_lm_folder("llama_gqa_tied", tmp_path / "model")
    target = lm_target(tmp_path / "auto.toml", ("executorch/a8w4", "coreml/w4", "tflite/a8w4"), auto_precision=True,
                       budgets="max_kl_mean = 0.001")
    done = run_cli("export", "--model", folder, "--target", target, "--out", tmp_path / "out")
    # a budget this tight: each variant keeps its worst linears at 8 bits, at most half of them, and may still miss
    # it there (measured here, all three met it; CI's clean run once did not)
    assert done.code in (0, 1), done.stderr[-1500:]
    manifest = json.loads((tmp_path / "out" / "model" / "test-llm" / "manifest.json").read_text())
    entries = {e["path"]: e for e in manifest["artifacts"]}
    paths = ("model.a8w4.pte", "model.w4.mlpackage", "model.a8w4.tflite")
    for path in paths:
        auto = entries[path]["diagnosis"]["auto_precision"]
        worst = [row["module"] for row in entries[path]["diagnosis"]["blame"]]
        assert list(auto["kept"]) == worst[:len(auto["kept"])] and set(auto["kept"].values()) == {8}, path
        assert entries[path]["quantization"]["kept"] == auto["kept"]
        assert auto["kl_mean_after"] < auto["kl_mean_before"] and auto["kl_mean_before"] > 0.001, path
        assert auto["kl_mean_after"] <= 0.001 or not auto["met_budget"], path  # met: the KL budget holds
        # LiteRT's 4-bit head with asymmetric blocks is untied from its symmetric lookup; kept at 8 bits it reads the
        # lookup's int8 tensor again, one table instead of two, so that file can shrink
        assert auto["bytes_after"] > auto["bytes_before"] or "lm_head" in auto["kept"], path
    assert done.code == (0 if all(entries[p]["diagnosis"]["auto_precision"]["met_budget"] for p in paths) else 1)


def test_demo_tinylm_on_ios_llm(tmp_path):
    """What `make export TARGET=ios-llm` runs: a stateful Core ML program, validated on Linux."""
    done = run_cli("export", "--target", "ios-llm", "--out", tmp_path)
    assert done.code == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "tinylm" / "ios-llm" / "report.json").read_text())
    by = {a["precision"]: a for a in report["artifacts"]}
    assert set(by) == {"fp16", "w4"}
    for run in by["fp16"]["lm"]["free_running"]:
        assert run["matching_tokens"] == run["tokens"] == 32
    assert by["w4"]["bytes"] < 0.45 * by["fp16"]["bytes"] and by["w4"]["budget"]["passed"]
