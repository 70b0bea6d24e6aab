"""Parity metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from validators.parity import SQNR_CAP_DB, accuracy, infer_output_kind, output_parity, worst_case


def test_known_noise_gives_known_sqnr_and_errors():
    ref = np.array([[3.0, 4.0], [0.0, 5.0]])  # signal power sum = 50
    out = ref + np.array([[0.5, 0.0], [0.0, -0.5]])  # noise power sum = 0.5
    m = output_parity(ref, out)
    assert m["sqnr_db"] == pytest.approx(20.0)
    assert m["max_abs"] == 0.5 and m["mean_abs"] == 0.25
    expected_cos = np.sum(ref * out) / (np.linalg.norm(ref) * np.linalg.norm(out))
    assert m["cosine"] == pytest.approx(expected_cos)
    assert m["top1_agreement"] == 1.0 and m["samples"] == 2


def test_identical_outputs_are_capped_not_infinite():
    ref = np.ones((4, 3), np.float32)
    assert output_parity(ref, ref.copy())["sqnr_db"] == SQNR_CAP_DB


def test_top1_agreement_counts_flipped_argmax():
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    out = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    m = output_parity(ref, out, min_sqnr_db=40.0)  # the bound's noise cannot bridge a margin of 1
    assert m["top1_agreement"] == m["top1_agreement_all"] == 0.75 and m["top1_decisive_samples"] == 4


def test_a_flip_between_near_tied_logits_is_within_the_precisions_noise():
    """Two samples whose top-2 margin (0.001) is below what 15 dB of noise can flip are not decisive:
    their flips do not count; the decisive sample's flip does."""
    ref = np.array([[1.0, 0.999, -1], [2.0, 2.001, 0], [3.0, -3.0, 0], [-2.0, 2.0, 0]])
    out = np.array([[0.999, 1.0, -1], [2.001, 2.0, 0], [3.0, -3.0, 0], [2.0, -2.0, 0]])
    m = output_parity(ref, out, min_sqnr_db=15.0)
    threshold = 3 * np.sqrt(2) * np.sqrt(np.mean(ref**2)) * 10 ** (-15 / 20)
    assert m["top1_margin_threshold"] == pytest.approx(threshold)
    assert m["top1_decisive_samples"] == 2 and m["top1_agreement"] == 0.5 and m["top1_agreement_all"] == 0.25


def test_an_embedding_is_judged_by_cosine_not_argmax():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((16, 8))
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    m = output_parity(ref, ref[:, ::-1].copy())  # argmax changes everywhere
    assert m["kind"] == "embedding" and m["top1_agreement"] is None
    probabilities = np.eye(4)[[0, 1, 2, 3, 0]]  # one-hot rows have unit norm too, but are probabilities
    assert output_parity(probabilities, probabilities)["kind"] == "classification"


def test_nan_or_inf_in_an_artifact_has_no_error_figures_and_fails_the_budget():
    from targets.catalog import FP16_BUDGET
    from validators.candidate import CandidateResult, parity_violations

    ref = np.ones((4, 3))
    out = ref.copy()
    out[1, 2], out[2, 0] = np.nan, np.inf
    m = output_parity(ref, out)
    assert m["nonfinite_values"] == 2 and m["sqnr_db"] is None and m["cosine"] is None
    overall = worst_case({"y": m, "z": output_parity(ref, ref.copy())})
    assert overall["sqnr_db"] is None and overall["nonfinite_values"] == 2
    violations = parity_violations(overall, FP16_BUDGET.limits(), CandidateResult({}, overall, None, []).metrics())
    assert violations == ["the outputs hold 2 NaN/Inf value(s): the artifact computes garbage (a corrupt weight, "
                          "or an overflow at this precision)"]


def test_non_classifier_outputs_have_no_agreement():
    assert output_parity(np.ones((5, 1)), np.ones((5, 1)))["top1_agreement"] is None
    assert output_parity(np.ones((5, 2, 2)), np.ones((5, 2, 2)))["top1_agreement"] is None


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differs from the reference"):
        output_parity(np.ones((2, 3)), np.ones((3, 2)))


def test_worst_case_takes_the_worst_of_every_metric():
    a = output_parity(np.array([[1.0, 2.0]]), np.array([[1.0, 2.1]]))
    b = output_parity(np.array([[5.0, 1.0]]), np.array([[4.0, 1.0]]))
    w = worst_case({"a": a, "b": b})
    assert w["max_abs"] == 1.0 and w["sqnr_db"] == min(a["sqnr_db"], b["sqnr_db"])


def test_accuracy_reports_reference_artifact_and_drop():
    labels = np.array([0, 1, 1, 0])
    ref = {"logits": np.array([[2.0, 1], [0, 1], [0, 1], [1, 0]])}  # 4/4 right
    art = {"logits": np.array([[2.0, 1], [1, 0], [0, 1], [1, 0]])}  # 3/4 right
    acc = accuracy(ref, art, labels, {"logits": "classification"})
    assert (acc["reference"], acc["artifact"], acc["drop"]) == (1.0, 0.75, 0.25)


def test_output_kind_is_inferred_conservatively():
    rng = np.random.default_rng(0)
    speaker = np.abs(rng.standard_normal((8, 256)))  # ReLU'd then L2-normalised, as resemblyzer's encoder
    speaker /= np.linalg.norm(speaker, axis=1, keepdims=True)
    pitch = 1 / (1 + np.exp(-rng.standard_normal((8, 360))))  # per-bin sigmoids: not summing to 1
    softmax = np.exp(rng.standard_normal((8, 10)))
    softmax /= softmax.sum(axis=1, keepdims=True)
    assert infer_output_kind(speaker)[0] == "embedding"
    assert infer_output_kind(pitch) == ("classification", "N x C values in [0, 1] (per-class probabilities)")
    assert infer_output_kind(softmax) == ("classification", "rows are probabilities summing to 1")
    assert infer_output_kind(rng.standard_normal((8, 10)))[0] == "classification"  # logits
    assert infer_output_kind(rng.standard_normal((8, 1)))[0] == "tensor"  # one value per sample
    assert infer_output_kind(rng.standard_normal((8, 4, 4)))[0] == "tensor"


def test_the_kind_decides_what_is_judged():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((32, 6))
    out = ref + 0.01 * rng.standard_normal(ref.shape)
    out[:, 0] *= -1  # one coordinate's sign flipped: the angle changes, each value's error is large
    as_embedding = output_parity(ref, out, kind="embedding")
    as_regression = output_parity(ref, out, kind="regression")
    assert as_embedding["top1_agreement"] is None and as_embedding["judged_by"] == ["cosine", "sqnr_db", "max_abs"]
    overall = worst_case({"y": as_regression})
    assert overall["cosine"] is None and overall["judged_by"] == ["max_abs", "sqnr_db"]
    assert worst_case({"y": as_embedding})["cosine"] == pytest.approx(as_embedding["cosine"])
    frames = rng.standard_normal((4, 5, 3))  # per-frame logits: top-1 over the last axis, 20 rows
    judged = output_parity(frames, frames.copy(), kind="classification")
    assert judged["top1_agreement_all"] == 1.0 and judged["top1_decisive_samples"] == 20
