"""The verdict never passes what it did not check: budgets that agree with each other, bounds the
sample count cannot resolve said as such, and references that prove nothing refused."""

from __future__ import annotations

import numpy as np
import pytest

from common.artifact_dir import Reference
from targets import builtin_target_names, load_target
from targets.catalog import INT8_BUDGET, PRECISION_ROWS, PRECISIONS
from targets.profile import implied_cosine, target_from_dict
from tests.conftest import ZOO, run_cli
from validators.budgets import BOUNDS, unjudged
from validators.candidate import CandidateResult, parity_violations
from validators.parity import output_parity, worst_case


def _at_sqnr(sqnr_db: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An output and the worst-case artifact for the cosine at exactly that SQNR: the error turns
    the output as far as its norm allows (the error orthogonal to the artifact's output)."""
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal((16, 10))
    r = 10 ** (-sqnr_db / 20)
    flat = ref.ravel()
    direction = rng.standard_normal(flat.size)
    direction -= direction @ flat / (flat @ flat) * flat
    direction /= np.linalg.norm(direction)
    # out = (1 - r^2) ref + r sqrt(1 - r^2) |ref| d: |out - ref| = r |ref|, out _|_ (out - ref)
    out = (1 - r * r) * flat + r * np.sqrt(1 - r * r) * np.linalg.norm(flat) * direction
    return ref, out.reshape(ref.shape)


def _default(precision: str):
    """A precision's default budget as a target resolves it (min_cosine derived there)."""
    fmt = next(f for f, precisions in PRECISIONS.items() if precision in precisions)
    return target_from_dict({"name": "t", "variants": [{"format": fmt, "precision": precision}]}, "t").variants[0]


BUDGETS = [(f"default {p}", _default(p).budget) for p in dict.fromkeys(r.id for r in PRECISION_ROWS)] + [
    (f"{t} {v.format}/{v.precision}", v.budget) for t in builtin_target_names() for v in load_target(t).variants
    if not t.endswith("-llm")]  # language-model targets are judged token by token (tests/test_lm.py)


def _violations(budget, parity: dict) -> list[str]:
    return parity_violations(parity, budget.limits(), CandidateResult({}, parity, None, []).metrics())


def test_every_limit_of_every_kind_bounds_a_named_metric():
    import dataclasses

    from targets import Budget
    from targets.lm import LmBudget
    from validators.metrics import METRICS

    limits = {f.name for budget in (Budget, LmBudget) for f in dataclasses.fields(budget)}
    assert limits == set(BOUNDS)
    for name, bound in BOUNDS.items():
        assert bound.metric in METRICS, name
        assert name.startswith("max_" if bound.upper else "min_"), name


@pytest.mark.parametrize("name,budget", BUDGETS, ids=[n for n, _ in BUDGETS])
def test_an_output_exactly_at_the_sqnr_bound_meets_the_cosine_bound(name, budget):
    if budget.min_sqnr_db is None:
        pytest.skip("no SQNR bound")
    assert budget.min_cosine == implied_cosine(budget.min_sqnr_db)
    ref, out = _at_sqnr(budget.min_sqnr_db + 1e-9)
    parity = worst_case({"y": output_parity(ref, out, budget.min_sqnr_db)})
    assert parity["sqnr_db"] == pytest.approx(budget.min_sqnr_db, abs=1e-6)
    assert parity["cosine"] == pytest.approx(np.sqrt(1 - 10 ** (-budget.min_sqnr_db / 10)), abs=1e-9)
    violations = _violations(budget, parity)
    assert not [v for v in violations if "cosine" in v or "sqnr" in v], violations


def test_a_target_may_still_set_its_own_cosine():
    target = target_from_dict({"name": "t", "variants": [
        {"format": "onnx", "precision": "int8", "budget": {"min_cosine": 0.999}}]}, "t.toml")
    assert target.variants[0].budget.min_cosine == 0.999 and target.variants[0].budget.min_sqnr_db == 15.0


def test_a_bound_the_sample_count_cannot_resolve_is_said_not_passed():
    budget = INT8_BUDGET  # top-1 agreement >= 0.95: 20 decisive samples needed
    rng = np.random.default_rng(1)

    def logits(n: int) -> np.ndarray:  # a clear winner per sample: every sample is decisive
        return np.eye(5)[rng.integers(0, 5, n)] * 20 + rng.standard_normal((n, 5))

    few = logits(12)
    parity = worst_case({"y": output_parity(few, few.copy(), budget.min_sqnr_db)})
    assert parity["top1_decisive_samples"] == 12 and parity["top1_agreement"] == 1.0
    assert _violations(budget, parity) == []
    notes = unjudged(budget, parity, None)
    assert len(notes) == 1 and "12 of 12 samples" in notes[0] and "20 are needed" in notes[0]
    many = logits(40)
    assert unjudged(budget, worst_case({"y": output_parity(many, many.copy(), budget.min_sqnr_db)}), None) == []
    accuracy = {"drop": 0.0, "samples": 50}  # a drop of 0.01 needs 100 labelled samples
    assert "accuracy drop not judged" in unjudged(budget, worst_case({"y": output_parity(many, many)}), accuracy)[0]


@pytest.mark.parametrize("outputs,said", [
    ({"y": np.zeros((6, 3), np.float32)}, "is zero on every eval sample"),
    ({"y": np.tile(np.array([[1.0, 2.0]], np.float32), (6, 1))}, "is the same on all 6 eval samples"),
    ({"y": np.array([[1.0, np.nan]] * 6, np.float32)}, "holds 6 NaN/Inf value(s)"),
])
def test_a_degenerate_reference_is_named(outputs, said):
    reference = Reference({"x": np.ones((6, 2), np.float32)}, outputs, None)
    assert said in reference.degenerate() and "prove nothing" in reference.degenerate()
    healthy = Reference({"x": np.ones((6, 2), np.float32)}, {"y": np.arange(12.0).reshape(6, 2)}, None)
    assert healthy.degenerate() == ""


@pytest.mark.slow
def test_a_model_whose_outputs_are_zero_is_refused_with_one_line(tmp_path):
    result = run_cli("export", "--model", f"{ZOO}:zero_output", "--target", "android", "--out", tmp_path)
    assert result.code == 2
    assert len(result.error_lines) == 1 and "output 'output' is zero on every eval sample" in result.error_lines[0]
    assert not (tmp_path / "zoo-zero_output").exists()
