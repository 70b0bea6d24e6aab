"""Block-Hadamard rotation (exporter/quant/rotate.py): exact in float on every decoder family the decode step
takes, a tied head still shares its lookup's tensor, and per-token int8 inputs lose less where a few channels
carry outliers; the LiteRT and ExecuTorch a8w8 artifacts hold the rotated model's plan with the rotations float."""

from __future__ import annotations

import pytest

from tests.lm_models import GENERATION_FAMILIES
from tests.test_smoothing import _with_outliers, int8_tokens


def _int8_output_error(model, tokens) -> float:
    """The relative error of what the linears compute when what their weights meet is int8 per token (a rotated
    linear's input after its rotation), the worst of the decoder linears and the head: a model's own measure,
    where a random model's near-uniform logits hide it."""
    import torch

    errors = []

    def measure(module, inputs, output):
        rotation = getattr(module, "rotation", lambda x: x)
        quantized = torch.nn.functional.linear(int8_tokens(rotation(inputs[0])), module.weight, module.bias)
        errors.append(float((quantized - output).norm() / output.norm()))

    hooks = [m.register_forward_hook(measure) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        model(input_ids=tokens)
    for hook in hooks:
        hook.remove()
    return max(errors)


@pytest.mark.parametrize("family", GENERATION_FAMILIES)
def test_rotation_keeps_the_float_model_and_helpsint8_tokens(family):
    import torch

    from exporter.lm.backend import linear_modules
    from exporter.quant.rotate import RotatedEmbedding, RotatedLinear, rotated_copy

    model = _with_outliers(family)
    tokens = torch.randint(2, 97, (2, 32), generator=torch.Generator().manual_seed(1))
    rotated, record = rotated_copy(model, 32, [*linear_modules(model), "lm_head"])
    with torch.no_grad():
        reference, after = model(input_ids=tokens).logits, rotated(input_ids=tokens).logits
    linears = [m for m in rotated.modules() if isinstance(m, torch.nn.Linear)]
    assert all(isinstance(m, RotatedLinear) for m in linears) and record["rotated_linears"] == len(linears)
    assert record["block_sizes"] == {"32": len(linears)} and record["float_logit_change"] < 1e-4
    assert (after - reference).abs().max() < 1e-4 * reference.abs().max()
    assert not isinstance(model.lm_head, RotatedLinear)  # a copy
    if model.lm_head.weight is model.get_input_embeddings().weight:  # tied: the lookup holds the rotated table
        assert isinstance(rotated.get_input_embeddings(), RotatedEmbedding)
        assert rotated.lm_head.weight is rotated.get_input_embeddings().weight
    errors = [_int8_output_error(candidate, tokens) for candidate in (model, rotated)]
    # each outlier channel spread over its block of 32 (of 64): the worst linear's error 0.41-0.70x of what it was
    assert errors[1] < 0.75 * errors[0], errors


def test_rotation_blocks_divide_the_inputs():
    from exporter.quant.rotate import block_for, hadamard

    assert [block_for(columns, 64) for columns in (576, 1536, 640, 96, 7)] == [64, 64, 64, 32, 1]
    import torch

    matrix = hadamard(16)
    assert torch.allclose(matrix @ matrix, torch.eye(16), atol=1e-6) and torch.equal(matrix, matrix.T)


@pytest.mark.slow
def test_a8w8_artifacts_hold_the_rotated_plan_with_float_rotations(tmp_path):
    """demo:tinylm's .tflite and .pte a8w8 with rotation: every LiteRT int8 weight is the rotated model's plan
    (read back), no rotation matrix is quantized, the manifest says what was rotated, and both pass."""
    import json

    import numpy as np

    from exporter.formats.tflite.planned import read_codes
    from exporter.lm.backend import linear_modules
    from exporter.lm.source import load_causal_lm
    from exporter.quant.plan import Scheme, round_to_nearest
    from exporter.quant.rotate import rotated_copy
    from tests.conftest import run_cli
    from tests.lm_models import lm_target

    target = lm_target(tmp_path / "t.toml", ("executorch/a8w8", "tflite/a8w8"), rotation=32, diagnose="off")
    result = run_cli("export", "--target", target, "--out", tmp_path / "out")
    assert result.code == 0, result.stderr[-2000:]
    folder = tmp_path / "out" / "tinylm" / "test-llm"
    manifest = json.loads((folder / "manifest.json").read_text())
    lm = load_causal_lm("demo:tinylm")
    rotated, _ = rotated_copy(lm.model, 32, [*linear_modules(lm.model), "lm_head"])
    linears = len(lm.model.model.layers) * 7 + 1  # q, k, v, o, gate, up, down per layer, and the head
    for artifact in manifest["artifacts"]:
        assert artifact["quantization"]["activation_rotation"]["rotated_linears"] == linears
    weights = manifest["artifacts"][1]["quantization"]["weights"]
    assert weights == {"from_the_plan": linears, "rounded_by_ai_edge_quantizer": 0, "rotations_in_float": 1}
    codes = read_codes(folder / "model.a8w8.tflite")
    expected = {}
    for path, module in rotated.named_modules():
        if path.startswith("model.layers") and hasattr(module, "rotation"):
            plan = round_to_nearest(module.weight.detach(), Scheme.per_channel(module.weight.shape[1]))
            expected[module.weight.shape] = expected.get(module.weight.shape, []) + [plan.codes.numpy()]
    found = 0
    for tensor in codes.values():
        assert tensor["codes"].shape != (32, 32)  # the rotation stays float
        found += any(np.array_equal(tensor["codes"], c) for c in expected.get(tuple(tensor["codes"].shape), []))
    assert found >= len(lm.model.model.layers) * 7
    report = json.loads((folder / "report.json").read_text())
    assert all(a["metrics"]["kl_mean"] < 0.005 for a in report["artifacts"])  # and both passed (exit code 0)
