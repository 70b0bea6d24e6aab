"""Target profiles: built-ins load, bad files fail with the valid choices listed."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from targets import TargetError, builtin_target_names, load_target
from targets.catalog import FP32_BUDGET, PRECISIONS, FoldConstantsConfig, SimplifyConfig
from targets.lm import LmTarget, lm_target_from_dict
from targets.profile import target_from_dict
from targets.prune import pruned_with


def test_builtin_targets_load_with_expected_variants():
    assert builtin_target_names() == ["android", "android-executorch", "android-llm", "cockpit", "cockpit-llm", "ios",
                                      "ios-llm", "iot-npu"]
    assert load_target("ios").coreml.minimum_deployment_target == "iOS17"
    android = load_target("android")
    assert [(v.format, v.precision) for v in android.variants] == [
        ("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "fp16"), ("tflite", "int8"),
        ("tflite", "int8_dynamic")]
    assert android.runtime.tflite_delegates == ("xnnpack", "none")
    npu = load_target("iot-npu")
    assert npu.npu.accelerator == "ethos-u55-128" and npu.variants[0].budget.min_npu_op_coverage == 1.0
    cockpit = load_target("cockpit")
    assert [v.precision for v in cockpit.variants] == ["fp16", "w8a16"]
    assert cockpit.runtime.threads == 1


def test_budgets_merge_precision_defaults_then_common_then_variant():
    android = load_target("android")
    fp32, int8 = android.variants[:2]
    assert fp32.budget.max_abs == FP32_BUDGET.max_abs
    assert fp32.budget.max_latency_ms == 20.0  # from [budgets]
    assert int8.budget.max_accuracy_drop == 0.005  # the variant's own
    assert int8.budget.max_abs is None  # int8 is judged by SQNR / agreement, not max_abs


def _minimal(**extra):
    data = {"name": "t", "variants": [{"format": "onnx", "precision": "fp32"}]}
    data.update(extra)
    return data


@pytest.mark.parametrize("data, expected", [
    (_minimal(colour="red"), "unknown key(s) colour in the top level; valid keys: name, description"),
    ({"name": "t", "variants": [{"format": "onnx", "precision": "int3"}]},
     "precision 'int3' is not available for onnx; choose one of: fp32, fp16, int8_dynamic, int8, w8a16"),
    ({"name": "t", "variants": [{"format": "pdf", "precision": "fp32"}]},
     "format 'pdf' is not one of: onnx, tflite, coreml, executorch"),
    (_minimal(coreml={"minimum_deployment_target": "iOS9"}), "minimum_deployment_target 'iOS9'; choose one of"),
    (_minimal(npu={"accelerator": "ethos-u55-128"}), "[npu] compiles full-integer int8 TFLite; add a variant"),
    ({"name": "t", "npu": {"accelerator": "ethos-u99"},
      "variants": [{"format": "tflite", "precision": "int8_full"}]},
     "npu.accelerator 'ethos-u99'; choose one of: ethos-u55-32"),
    (_minimal(runtime={"tflite_delegates": ["gpu"]}), "tflite_delegates must be a list drawn from xnnpack, none"),
    ({"name": "t", "variants": [{"format": "tflite", "precision": "int8_full", "recipe": "magic"}]},
     "recipe 'magic'; choose one of: auto, ai-edge-quantizer, pt2e"),
    (_minimal(passes={"onnx": ["fold_constants", "magic"]}), "unknown onnx pass(es) magic; valid: fold_constants"),
    # a variant option its precision does not read is an error, not silently ignored
    ({"name": "t", "variants": [{"format": "tflite", "precision": "int8", "calibration_method": "entropy"}]},
     "variants[0].calibration_method is not used by tflite/int8 (it reads only: calibration_samples); remove it"),
    ({"name": "t", "variants": [{"format": "onnx", "precision": "int8", "recipe": "pt2e"}]},
     "variants[0].recipe is not used by onnx/int8 (it reads only: calibration_samples, calibration_method)"),
    ({"name": "t", "variants": [{"format": "onnx", "precision": "fp16", "calibration_samples": 64}]},
     "variants[0].calibration_samples is not used by onnx/fp16 (it reads no options)"),
    ({"name": "t", "variants": [{"format": "onnx", "precision": "int8", "calibration_samples": 0}]},
     "variants[0].calibration_samples must be a whole number >= 1, got 0"),
    (_minimal(passes={"onnx": ["simplify"]}, pass_options={"onnx": {"fold_constants": {}}}),
     "unknown key(s) fold_constants in pass_options.onnx (the passes this target runs)"),
    (_minimal(passes={"onnx": ["fold_constants"]}, pass_options={"onnx": {"fold_constants": {"max": 3}}}),
     "unknown key(s) max in pass_options.onnx.fold_constants; valid keys: max_output_elements"),
    (_minimal(passes={"onnx": ["fold_constants"]},
              pass_options={"onnx": {"fold_constants": {"max_output_elements": "many"}}}),
     "pass_options.onnx.fold_constants.max_output_elements must be like 4194304, got 'many'"),
    (_minimal(budgets={"max_latency": 3}), "unknown key(s) max_latency in [budgets]; valid keys: max_abs"),
    (_minimal(budgets={"max_latency_ms": "fast"}), "budgets].max_latency_ms must be a finite number"),
    (_minimal(runtime={"threads": 0}), "needs threads >= 1"),
    ({"name": "t"}, "needs at least one [[variants]]"),
    ({"variants": [{"format": "onnx", "precision": "fp32"}]}, "the target needs a name"),
    ({"name": "t", "variants": [{"format": "onnx", "precision": "fp32"}] * 2}, "onnx/fp32 is listed twice"),
    (_minimal(prune={"recovery_steps": 10}), "[prune] needs a limit to prune towards: max_macs_ratio"),
    (_minimal(prune={"max_macs_ratio": 1.5}), "prune.max_macs_ratio is a share of the source's, between 0 and 1"),
    (_minimal(prune={"max_macs_ratio": 0.5, "step": 0.95}), "[prune] needs 0 < step <= max_pruned < 1"),
    (_minimal(prune={"max_macs_ratio": 0.5, "recovery_steps": 2.5}), "prune.recovery_steps must be a whole number"),
    (_minimal(prune={"max_macs_ratio": 0.5, "budget": {"max_size_mb": 3}}),
     "unknown key(s) max_size_mb in [prune.budget]; valid keys: max_accuracy_drop, min_top1_agreement, min_cosine"),
    (_minimal(prune={"max_macs": 0.5}), "unknown key(s) max_macs in [prune]; valid keys: max_macs_ratio"),
])
def test_bad_profiles_say_what_is_valid(data, expected):
    with pytest.raises(TargetError) as info:
        target_from_dict(data, "my.toml")
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_target_name_lists_builtins():
    valid = "android, android-executorch, android-llm, cockpit, cockpit-llm, ios, ios-llm, iot-npu"
    with pytest.raises(TargetError, match=f"unknown target 'pixel'; valid targets: {valid}"):
        load_target("pixel")


def test_user_target_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('name = "mine"\n[[variants]]\nformat = "onnx"\nprecision = "int8_dynamic"\n'
                    'budget = { min_sqnr_db = 12.5 }\n')
    target = load_target(str(path))
    assert target.name == "mine" and target.variants[0].budget.min_sqnr_db == 12.5


def test_malformed_toml_is_a_target_error(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("name = [unclosed\n")
    with pytest.raises(TargetError, match="not valid TOML"):
        load_target(str(path))


def test_every_precision_row_has_a_default_budget_judging_parity():
    for fmt, rows in PRECISIONS.items():
        for row in rows.values():
            assert row.budget.min_sqnr_db is not None and row.budget.min_top1_agreement is not None, (fmt, row.id)


def test_pass_options_reach_the_pass_config():
    target = target_from_dict(_minimal(passes={"onnx": ["fold_constants", "simplify"]}, pass_options={"onnx": {
        "fold_constants": {"max_output_elements": 1024}, "simplify": {"skip_fusions": ["gelu"]}}}), "t.toml")
    assert target.pass_configs["onnx"] == {"fold_constants": FoldConstantsConfig(max_output_elements=1024),
                                           "simplify": SimplifyConfig(skip_fusions=("gelu",))}
    assert target_from_dict(target.to_profile(), "manifest").pass_configs == target.pass_configs


def test_the_resolved_target_round_trips_through_the_manifest_profile():
    for name in builtin_target_names():
        target = load_target(name)
        if isinstance(target, LmTarget):
            again = lm_target_from_dict(target.to_profile(), "manifest.json")
            assert again.variants == target.variants and again.to_profile() == target.to_profile()
            continue
        again = target_from_dict(target.to_profile(), "manifest.json")
        assert again.variants == target.variants and again.runtime == target.runtime and again.npu == target.npu


def test_prune_settings_round_trip_and_the_command_line_goes_over_them():
    target = target_from_dict(_minimal(prune={"max_params_ratio": 0.6, "budget": {"min_cosine": 0.98}}), "t.toml")
    assert target.prune.budget.limits() == {"min_cosine": 0.98, "min_top1_agreement": 0.95,  # over the defaults
                                            "max_accuracy_drop": 0.005}
    assert target_from_dict(target.to_profile(), "manifest").prune == target.prune
    overridden = pruned_with(target, ["max_params_ratio=0.5", "recovery_steps=20", "budget.max_accuracy_drop=0.01"])
    assert (overridden.max_params_ratio, overridden.recovery_steps) == (0.5, 20)
    assert overridden.budget.limits() == {"min_cosine": 0.98, "min_top1_agreement": 0.95, "max_accuracy_drop": 0.01}
    plain = target_from_dict(_minimal(), "t.toml")
    assert pruned_with(plain, ["max_macs_ratio=0.5", "budget.min_cosine=0.9"]).budget.limits() == {
        "min_cosine": 0.9, "min_top1_agreement": 0.95, "max_accuracy_drop": 0.005}
    with pytest.raises(TargetError, match="write KEY=VALUE"):
        pruned_with(plain, ["max_macs_ratio"])


def test_a_language_model_prunes_whole_layers_judged_by_perplexity():
    android = load_target("android-llm")
    settings = pruned_with(android, ["max_params_ratio=0.85", "budget.max_ppl_ratio=1.3"])
    assert (settings.units, settings.batch, settings.max_recovery_seconds) == ("layers", 8, 900.0)  # the LM defaults
    assert settings.budget.limits() == {"max_ppl_ratio": 1.3}
    pruned = dataclasses.replace(android, prune=settings)
    assert pruned.needs_calibration and lm_target_from_dict(pruned.to_profile(), "manifest").prune == settings
    for pair, message in (("max_macs_ratio=0.5", "prune.max_macs_ratio is not read for this target: a language "
                                                 "model's multiply-accumulates per token follow its parameters"),
                          ("units=channels", "prune.units 'channels'; choose one of: layers"),
                          ("budget.min_cosine=0.9", "unknown key(s) min_cosine in [prune.budget]; valid keys: "
                                                    "max_ppl_ratio"),
                          ("recovery_steps=10", "[prune] needs a limit to prune towards: max_params_ratio")):
        with pytest.raises(TargetError, match=re.escape(message)):
            pruned_with(android, ["max_params_ratio=0.85", pair] if "limit" not in message else [pair])


def test_language_model_targets_are_data_with_token_level_budgets():
    android = load_target("android-llm")
    assert isinstance(android, LmTarget) and [(v.format, v.precision) for v in android.variants] == [
        ("onnx", "w4"), ("onnx", "w8"), ("executorch", "a8w4"), ("executorch", "a8w8"), ("tflite", "a8w4"),
        ("tflite", "a8w8")]
    assert [v.filename for v in android.variants[2:4]] == ["model.a8w4.pte", "model.a8w8.pte"]
    ios = load_target("ios-llm")
    assert [(v.format, v.precision, v.filename) for v in ios.variants] == [
        ("coreml", "fp16", "model.fp16.mlpackage"), ("coreml", "w4", "model.w4.mlpackage")]
    core_ml_w4 = ios.variants[1].settings  # the weight plan's blocks: GPTQ, exact minimums, an 8-bit table
    assert (core_ml_w4.method, core_ml_w4.symmetric, core_ml_w4.zero_points, core_ml_w4.embedding_bits) == \
        ("gptq", False, "float", 8)
    assert android.lm.cache_length == 256
    # every 4-bit variant: GPTQ and exact block minimums; ONNX and LiteRT one 8-bit table, ExecuTorch a 4-bit one
    assert [(v.settings.embedding_bits, v.settings.symmetric, v.settings.method, v.settings.zero_points)
            for v in android.variants if v.row.bits == 4] == [
        (8, False, "gptq", "float"), (4, False, "gptq", "float"), (8, False, "gptq", "float")]
    # activation smoothing on every variant whose runtime quantizes activations per token or block, except the a8w4
    # ones, which keep a quantized source's own blocks (smoothing rescales the weights off that grid)
    assert [v.settings.smoothing for v in android.variants] == [0.0, 0.6, 0.0, 0.6, 0.0, 0.6]
    # and rotation where int8 activations are per token (ONNX's per block pass without it)
    assert [(v.settings.rotation, v.settings.method) for v in android.variants if v.row.bits == 8] == [
        (0, "rtn"), (128, "gptq"), (128, "gptq")]
    w8 = android.variants[1].budget
    assert w8.max_ppl_ratio == 1.03 and w8.max_repetition_increase == 0.15
    cockpit = load_target("cockpit-llm")
    assert cockpit.variants[0].budget.min_greedy_tokens == 32 and cockpit.variants[0].budget.max_abs == 1e-3
    assert cockpit.variants[1].budget.max_ppl_ratio == 1.01  # the variant's own, over the precision default
    for bad, message in [({"lm": {"cache_size": 1}}, "unknown key 'cache_size' in [lm]"),
                         ({"lm": {"block_size": 48}}, "block_size 48"),
                         ({"lm": {"new_tokens": 300}}, "new_tokens must be smaller than cache_length"),
                         ({"variants": [{"format": "onnx", "precision": "int8"}]}, "not a language-model precision"),
                         ({"variants": [{"format": "tflite", "precision": "w4"}]}, "not a language-model precision "
                          "for tflite; choose one of: fp32, a8w8, a8w4"),
                         ({"variants": [{"format": "tvm", "precision": "w4"}]}, "language models export to onnx, "
                          "executorch, tflite, coreml"),
                         ({"budgets": {"min_sqnr_db": 30}}, "unknown key 'min_sqnr_db' in [budgets]")]:
        data = {"name": "t", "lm": {}, "variants": [{"format": "onnx", "precision": "w4"}]} | bad
        with pytest.raises(TargetError, match=re.escape(message)):
            lm_target_from_dict(data, "t.toml")


def test_a_language_model_target_reads_its_prompts_file(tmp_path):
    (tmp_path / "prompts.txt").write_text("Turn on the seat heating.\n\nHow far to the next charger?\n")
    data = {"name": "t", "lm": {"prompts_file": "prompts.txt"}, "variants": [{"format": "onnx", "precision": "w8"}]}
    target = lm_target_from_dict(data, str(tmp_path / "t.toml"))
    assert target.lm.prompts == ("Turn on the seat heating.", "How far to the next charger?")
    with pytest.raises(TargetError, match="prompts_file .* cannot be read"):
        lm_target_from_dict(data | {"lm": {"prompts_file": "missing.txt"}}, str(tmp_path / "t.toml"))


def test_the_readme_example_target_is_valid():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    example = readme[readme.index('name = "my-phone"'):]
    example = example[: example.index("```")]
    target = target_from_dict(tomllib.loads(example), "README.md")
    assert target.name == "my-phone" and target.variants[0].precision == "int8"


def _weight_setting_cases() -> list[tuple[str, str, str, object]]:
    from targets.lm import LM_PRECISION_ROWS, WEIGHT_SETTINGS

    return [(row.format, row.id, key, value) for row in LM_PRECISION_ROWS for key, (_, values) in
            WEIGHT_SETTINGS.items() for value in values]


@pytest.mark.parametrize(("fmt", "precision_id", "key", "value"), _weight_setting_cases(),
                         ids=[f"{f}-{p}-{k}-{v}" for f, p, k, v in _weight_setting_cases()])
def test_every_weight_setting_is_read_as_given_or_refused_at_load(fmt, precision_id, key, value):
    """Every (LM precision row, weight setting, valid value), given in [lm] and on the variant's own entry:
    a row that reads the setting and can do the value exports with it; any other is one TargetError."""
    from targets.lm import LM_PRECISIONS

    accepted = LM_PRECISIONS[fmt][precision_id].reads.get(key)
    variant = {"format": fmt, "precision": precision_id}
    for data in ({"name": "t", "lm": {key: value}, "variants": [variant]},
                 {"name": "t", "lm": {}, "variants": [variant | {key: value}]}):
        if accepted is not None and any(type(a) is type(value) and a == value for a in accepted):
            assert getattr(lm_target_from_dict(data, "t.toml").variants[0].settings, key) == value
            continue
        refusal = ("is read by none of this target's variants" if key in data["lm"] else "does not read") \
            if accepted is None else "cannot do"
        with pytest.raises(TargetError, match=re.escape(refusal)) as info:
            lm_target_from_dict(data, "t.toml")
        assert "\n" not in str(info.value) and key in str(info.value)


def test_a_target_wide_weight_setting_applies_to_the_variants_that_read_it():
    """[lm] method reaches ONNX w4 and is refused for LiteRT (rtn and gptq only) unless set on the variant's own
    entry."""
    both = [{"format": "onnx", "precision": "w4"}, {"format": "tflite", "precision": "a8w4"}]
    with pytest.raises(TargetError, match=re.escape("variants[1] (tflite a8w4) cannot do [lm] method = 'hqq'; it "
                                                    "takes 'rtn', 'gptq': move it from [lm] to the [[variants]] "
                                                    "entries")):
        lm_target_from_dict({"name": "t", "lm": {"method": "hqq"}, "variants": both}, "t.toml")
    target = lm_target_from_dict({"name": "t", "lm": {"block_size": 64}, "variants": [
        both[0] | {"method": "hqq"}, both[1]]}, "t.toml")
    assert [(v.settings.method, v.settings.block_size) for v in target.variants] == [("hqq", 64), ("rtn", 64)]
    # what nothing says is the default (an 8-bit table) on both
    assert target.variants[1].settings.embedding_bits == 8 and target.variants[0].settings.embedding_bits == 8


def test_recovery_needs_a_pytorch_weight_plan():
    variant = {"format": "onnx", "precision": "w4", "method": "k_quant", "recovery": 50}
    with pytest.raises(TargetError, match=re.escape("recovery learns the scales of a PyTorch weight plan; method "
                                                    "'k_quant' has none")) as info:
        lm_target_from_dict({"name": "t", "lm": {}, "variants": [variant]}, "t.toml")
    assert "\n" not in str(info.value)
    target = lm_target_from_dict({"name": "t", "lm": {}, "variants": [variant | {"method": "gptq"}]}, "t.toml")
    assert target.variants[0].settings.recovery == 50 and target.needs_calibration
