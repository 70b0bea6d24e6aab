"""Structured pruning before lowering ([prune]): the pruned model is traced for every format, its artifacts judged
against the pruned model by their own budgets and against the unpruned one by [prune.budget]; a limit no pruning
level reaches fails with the closest candidate's figures."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import REPO, read_json, run_cli

pytestmark = pytest.mark.slow

VARIANTS = """
[[variants]]
format = "onnx"
precision = "fp32"

[[variants]]
format = "onnx"
precision = "int8"
calibration_method = "minmax"
budget = { max_accuracy_drop = 0.005, min_top1_agreement = 0.97, min_sqnr_db = 18.0 }
"""


def _target(tmp_path, prune: str) -> str:
    path = tmp_path / "pruned.toml"
    path.write_text('name = "pruned"\ndescription = "android with pruning"\n'
                    "[runtime]\nthreads = 1\nwarmup_runs = 3\nmin_runs = 20\nmin_seconds = 0.05\n"
                    f"[prune]\n{prune}\n{VARIANTS}")
    return str(path)


def _unlabelled_train_images(tmp_path) -> str:
    """The digits' whole train split as calibration images, without its labels: distillation needs none."""
    from exporter.demo import digits_splits

    path = tmp_path / "calib.npz"
    np.savez(path, image=digits_splits()[0])
    return str(path)


def test_digits_pruned_to_half_its_macs_keeps_its_accuracy(tmp_path):
    import onnxruntime as ort
    import torch

    done = run_cli("export", "--target", _target(tmp_path, "max_macs_ratio = 0.5"), "--calib",
                   _unlabelled_train_images(tmp_path), "--out", tmp_path / "out")
    assert done.code == 0, done.stderr[-2000:]
    directory = tmp_path / "out" / "digits" / "pruned"
    pruning = read_json(directory / "manifest.json")["pruning"]
    assert pruning["met"] and pruning["after_recovery"]["macs_ratio"] <= 0.5
    assert pruning["steps"][-1]["macs_ratio"] <= 0.5 < pruning["steps"][-2]["macs_ratio"]  # no step further than needed
    # every prunable layer gave up units, the classifier's 10 outputs stayed
    assert {"features.0", "features.3", "features.7", "classifier.1"} == set(pruning["modules"])
    assert all(m["units_after"] < m["units_before"] for m in pruning["modules"].values())
    # distillation recovered what pruning cost (labels read only by the verdict)
    assert pruning["after_pruning"]["quality"]["accuracy_drop"] > 0.02
    assert pruning["after_recovery"]["quality"]["accuracy_drop"] <= 0.005
    recovery = pruning["recovery"]  # judged on held-out calibration rows, not only the ones it trained on
    assert min(held for _, _, held in recovery["curve"]) < recovery["held_out_before"] / 10
    report = read_json(directory / "report.json")
    for artifact in report["artifacts"]:
        assert artifact["budget"]["passed"], artifact["budget"]["violations"]
        assert artifact["against_unpruned"]["metrics"]["accuracy_drop"] <= 0.005
    fp32 = next(a for a in report["artifacts"] if a["precision"] == "fp32")
    assert fp32["metrics"]["max_abs"] < 1e-4  # the artifact computes the pruned model
    assert fp32["against_unpruned"]["metrics"]["cosine"] < 0.9999  # which is not the unpruned one
    # the pruned model as a PyTorch program computes what the ONNX artifact computes
    program = torch.export.load(directory / pruning["pruned_model"]["path"])
    image = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
    session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: image})[0]
    np.testing.assert_allclose(program.module()(torch.from_numpy(image)).detach().numpy(), onnx_out, atol=1e-4)
    text = (directory / "report.md").read_text()
    assert "## Pruning" in text and "after 1000 distillation steps" in text


def test_a_latency_no_pruning_reaches_fails_with_the_closest_candidate(tmp_path):
    done = run_cli("export", "--target", _target(tmp_path, "max_latency_ms = 0.0001\nstep = 0.15\nmax_pruned = 0.3\n"
                                                            "recovery_steps = 20"),
                   "--out", tmp_path / "out")
    assert done.code == 1, done.stderr[-2000:]
    directory = tmp_path / "out" / "digits" / "pruned"
    pruning = read_json(directory / "manifest.json")["pruning"]
    assert not pruning["met"] and len(pruning["steps"]) == 2
    assert all(row["latency_ms"] > 0.0001 for row in [pruning["before"], *pruning["steps"]])
    assert pruning["latency_measured_on"] == "onnx/fp32 (1 thread(s))"
    assert "pruning stopped at 30% of each layer's units (max_pruned 0.3)" in pruning["not_met"], pruning["not_met"]
    report = read_json(directory / "report.json")
    assert [v for v in report["violations"] if v.startswith("pruning: ") and "latency_ms" in v], report["violations"]
    again = run_cli("validate", directory)  # the verdict comes from the directory, not from the export's memory
    assert again.code == 1 and "pruning stopped at 30%" in again.stdout + again.stderr


@pytest.mark.hf
def test_a_transformer_gives_up_feed_forward_width_and_whole_heads(tmp_path):
    """Through the Python API, on a target without [prune]: export(prune={...}) as --prune KEY=VALUE."""
    from edgeport import api
    from tests import hf_zoo

    data = {role: hf_zoo.eval_arrays("bert", 48, seed) for role, seed in (("eval", 0), ("calib", 1))}
    target = tmp_path / "fp32.toml"
    target.write_text('name = "fp32"\n[runtime]\nthreads = 1\nmin_runs = 20\nmin_seconds = 0.05\n'
                      '[[variants]]\nformat = "onnx"\nprecision = "fp32"\n')
    report = api.export(f"{REPO}/tests/hf_zoo.py:bert", target=str(target), eval=data["eval"], calib=data["calib"],
                        out=tmp_path / "out", progress=None,
                        prune={"max_params_ratio": 0.8, "recovery_steps": 30,  # random weights: a loose budget
                               "budget": {"min_cosine": 0.5, "min_top1_agreement": 0.5}})
    assert report.passed, report.json["violations"]
    directory = tmp_path / "out" / "hf_zoo-bert" / "fp32"
    pruning = read_json(directory / "manifest.json")["pruning"]
    assert pruning["after_recovery"]["params_ratio"] <= 0.8
    assert pruning["settings"]["budget"] == {"min_cosine": 0.5, "min_top1_agreement": 0.5, "max_accuracy_drop": 0.005}
    assert pruning["settings"]["recovery_steps"] == 30
    pruned = pruning["modules"]
    assert any(name.endswith("intermediate.dense") for name in pruned)  # feed-forward width
    assert "whole attention heads" in pruning["units"]
    heads = {name: m for name, m in pruned.items() if "heads_after" in m}
    assert heads and all(m["heads_after"] < m["heads_before"] == 4 for m in heads.values())
    assert all(m["units_after"] == 8 * m["heads_after"] for m in heads.values())  # whole heads of 8 went
    for name in heads:  # the key and value projections lost the same heads as the query
        assert {pruned[name.replace("query", other)]["units_after"] for other in ("key", "value")} == \
            {heads[name]["units_after"]}
    fp32 = report.json["artifacts"][0]
    assert fp32["metrics"]["max_abs"] < 1e-4 and fp32["against_unpruned"]["metrics"]["cosine"] >= 0.5


@pytest.mark.hf
def test_heads_one_position_bias_couples_across_layers_stay_whole():
    """MPNet adds one relative position bias, computed for all its heads, to every layer's attention scores: no
    layer can lose a head alone, so every head stays and the feed-forward width goes."""
    import copy

    import torch
    from transformers import MPNetConfig, MPNetModel

    from exporter.prune import _ChannelSteps, _outputs
    from targets.prune import PruneSettings
    from tests.minilm import SentenceEncoder

    torch.manual_seed(0)
    model = SentenceEncoder(MPNetModel(MPNetConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                   num_attention_heads=4, intermediate_size=64))).eval()
    example = (torch.randint(3, 100, (2, 16)), torch.ones(2, 16, dtype=torch.long))
    shapes = [tuple(t.shape) for t in _outputs(model, example)]
    student = copy.deepcopy(model)
    batches = iter([(example, _outputs(model, example))])
    steps = _ChannelSteps(student, example, shapes, False, batches, PruneSettings(max_params_ratio=0.5, step=0.25))
    steps.step()
    assert [tuple(t.shape) for t in _outputs(student, example)] == shapes
    assert "keep their heads" in steps.units and "activation" in steps.importance
    widths = {name: m.out_features for name, m in student.named_modules() if isinstance(m, torch.nn.Linear)}
    layer = "bert.encoder.layer.0"
    assert widths[f"{layer}.attention.attn.q"] == 32 and widths[f"{layer}.intermediate.dense"] < 64


@pytest.mark.hf
def test_whole_layers_go_least_harmful_first(tmp_path):
    """units = "layers" on a two-layer encoder: the layer whose removal moved the outputs least is gone, the artifact
    computes the one-layer model, and the command line's word value reaches the setting."""
    from tests import hf_zoo

    for role, seed in (("eval", 0), ("calib", 1)):
        np.savez(tmp_path / f"{role}.npz", **hf_zoo.eval_arrays("bert", 48, seed))
    target = tmp_path / "fp32.toml"
    target.write_text('name = "fp32"\n[runtime]\nthreads = 1\nmin_runs = 20\nmin_seconds = 0.05\n'
                      '[[variants]]\nformat = "onnx"\nprecision = "fp32"\n')
    done = run_cli("export", "--model", f"{REPO}/tests/hf_zoo.py:bert", "--target", target, "--eval",
                   tmp_path / "eval.npz", "--calib", tmp_path / "calib.npz", "--out", tmp_path / "out",
                   "--prune", "units=layers", "--prune", "max_params_ratio=0.95", "--prune", "recovery_steps=20",
                   "--prune", "budget.min_top1_agreement=0", "--prune", "budget.min_cosine=0")
    assert done.code == 0, done.stderr[-2000:]
    directory = tmp_path / "out" / "hf_zoo-bert" / "fp32"
    pruning = read_json(directory / "manifest.json")["pruning"]
    (stack, kept), = pruning["modules"].items()
    assert stack.endswith("encoder.layer") and (kept["units_before"], kept["units_after"]) == (2, 1)
    step, = pruning["steps"]
    assert kept["removed"] == [step["removed_layer"]] and step["output_distance"] > 0
    assert pruning["after_pruning"]["params_ratio"] <= 0.95 and pruning["settings"]["units"] == "layers"
    fp32 = read_json(directory / "report.json")["artifacts"][0]
    assert fp32["metrics"]["max_abs"] < 1e-4 and fp32["budget"]["passed"], fp32["budget"]["violations"]


def _lm_target(tmp_path, variants: tuple[str, ...] = ("onnx/fp32", "onnx/w8")) -> str:
    from tests.lm_models import lm_target

    return str(lm_target(tmp_path / "lm.toml", variants))


def test_a_language_model_loses_a_layer_and_its_artifacts_are_judged_against_the_unpruned_model(tmp_path):
    """demo:tinylm with a quarter of its decoder pruned (one of four layers), distilled on the calibration text."""
    from transformers import AutoModelForCausalLM

    done = run_cli("export", "--model", "demo:tinylm", "--target", _lm_target(tmp_path), "--out", tmp_path / "out",
                   "--prune", "max_params_ratio=0.8", "--prune", "recovery_steps=60")
    assert done.code == 0, done.stderr[-2000:]
    directory = tmp_path / "out" / "tinylm" / "test-llm"
    pruning = read_json(directory / "manifest.json")["pruning"]
    (stack, kept), = pruning["modules"].items()
    assert (stack, kept["units_before"], kept["units_after"]) == ("model.layers", 4, 3)
    assert pruning["met"] and pruning["decoder_params"]["ratio"] == 0.75
    after_pruning, after_recovery = pruning["after_pruning"]["quality"], pruning["after_recovery"]["quality"]
    assert after_pruning["ppl_ratio"] > 1.05  # a trained model misses its layer
    assert 1.0 < after_recovery["ppl_ratio"] < after_pruning["ppl_ratio"]  # and distillation gives some of it back
    assert pruning["recovery"]["loss"] == "KL of the next-token distributions, per position"
    report = read_json(directory / "report.json")
    fp32, w8 = report["artifacts"]
    assert fp32["budget"]["passed"] and fp32["metrics"]["max_abs"] < 1e-3  # the artifact computes the pruned model
    # against the unpruned model: the fp32 artifact costs what the pruned model costs (two code paths, one figure)
    assert fp32["against_unpruned"]["metrics"]["ppl_ratio"] == pytest.approx(after_recovery["ppl_ratio"], abs=2e-3)
    assert w8["against_unpruned"]["metrics"]["ppl_ratio"] >= fp32["against_unpruned"]["metrics"]["ppl_ratio"] - 0.01
    # the pruned model as a Hugging Face folder: three layers, computing what the reference holds
    model = AutoModelForCausalLM.from_pretrained(directory / pruning["pruned_model"]["path"])
    assert model.config.num_hidden_layers == 3 and len(model.model.layers) == 3
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2]
    text = (directory / "report.md").read_text()
    assert "## Pruning" in text and "| PPL ratio | KL mean |" in text and "within [prune.budget]" in text
    # a prune budget the pruned model misses fails the verdict, naming the unpruned model
    again = run_cli("export", "--model", "demo:tinylm", "--target", _lm_target(tmp_path, ("onnx/fp32",)), "--out",
                    tmp_path / "tight", "--prune", "max_params_ratio=0.8", "--prune", "recovery_steps=10",
                    "--prune", "budget.max_ppl_ratio=1.01")
    assert again.code == 1, again.stderr[-2000:]
    violations = read_json(next((tmp_path / "tight").glob("*/*/report.json")))["artifacts"][0]["budget"]["violations"]
    assert [v for v in violations if v.startswith("against the unpruned model: perplexity ratio")], violations


def _layered_gemma3(folder):
    """A trained tiny Gemma 3 of four layers, sliding and full attention alternating through an 8-token window
    (shorter than the test's cache): removing a layer shifts the types of the ones after it."""
    import torch
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    from exporter.lm.tinylm import byte_tokenizer
    from tests.lm_models import train_briefly

    tokenizer = byte_tokenizer()
    vocab = len(tokenizer)
    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=vocab, hidden_size=64, intermediate_size=160, num_hidden_layers=4,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                              sliding_window=8, bos_token_id=vocab - 3, eos_token_id=vocab - 2,
                              pad_token_id=vocab - 1, tie_word_embeddings=True,
                              layer_types=["sliding_attention", "full_attention"] * 2)
    model = AutoModelForCausalLM.from_config(config)
    train_briefly(model, tokenizer, 60)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_removed_layer_takes_its_attention_kind_and_cache_slot_with_it(tmp_path):
    """The layers after a removed one keep their own sliding or full attention (the config's layer_types follows the
    stack) and read their own KV-cache slots (layer_idx renumbered): the fp32 artifact decodes as the pruned model
    does, through a window shorter than the cache."""
    source = _layered_gemma3(tmp_path / "gemma3")
    done = run_cli("export", "--model", source, "--target", _lm_target(tmp_path, ("onnx/fp32",)), "--out",
                   tmp_path / "out", "--prune", "max_params_ratio=0.9", "--prune", "recovery_steps=10",
                   "--prune", "budget.max_ppl_ratio=100")
    assert done.code == 0, done.stderr[-2000:]
    directory = next((tmp_path / "out").glob("*/test-llm"))
    pruning = read_json(directory / "manifest.json")["pruning"]
    removed = int(pruning["modules"]["model.layers"]["removed"][0].rsplit(".", 1)[1])
    kinds = ["sliding_attention", "full_attention"] * 2
    config = read_json(directory / "model.pruned" / "config.json")
    assert config["num_hidden_layers"] == 3 and config["layer_types"] == kinds[:removed] + kinds[removed + 1:]
    fp32 = read_json(directory / "report.json")["artifacts"][0]
    assert fp32["budget"]["passed"], fp32["budget"]["violations"]
    assert fp32["metrics"]["max_abs"] < 1e-3 and fp32["metrics"]["long_ppl_ratio"] == pytest.approx(1.0, abs=1e-3)
