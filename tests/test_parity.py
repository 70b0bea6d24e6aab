"""Parity metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from validators.parity import SQNR_CAP_DB, accuracy, output_parity, worst_case


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
    assert output_parity(ref, out)["top1_agreement"] == 0.75


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
    acc = accuracy(ref, art, labels)
    assert (acc["reference"], acc["artifact"], acc["drop"]) == (1.0, 0.75, 0.25)
