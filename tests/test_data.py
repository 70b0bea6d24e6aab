"""--input specs and --eval/--calib data loading."""

from __future__ import annotations

import numpy as np
import pytest

from exporter.data import load_dataset, synthetic_dataset
from exporter.errors import UserInputError
from exporter.specs import TensorSpec, parse_input_spec

IMAGE = TensorSpec("image", (1, 1, 8, 8), "float32")


def test_parse_input_spec():
    assert parse_input_spec("image:1x3x224x224:float32") == TensorSpec("image", (1, 3, 224, 224), "float32")
    assert parse_input_spec("ids:1x16:int64").dtype == "int64"
    assert parse_input_spec("x:2x4").dtype == "float32"


@pytest.mark.parametrize("text, message", [
    ("image", r"is not NAME:DIMS\[:DTYPE\]"), ("image:1x3xa", r"is not NAME:DIMS\[:DTYPE\]"),
    ("image:1x3:float64", "dtype 'float64' is not one of"), ("image:1x0x2", "at least 1"),
])
def test_bad_input_specs(text, message):
    with pytest.raises(UserInputError, match=message):
        parse_input_spec(text)


def test_single_array_feeds_single_input_whatever_its_key(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, whatever=np.zeros((7, 1, 8, 8), np.float64), labels=np.arange(7))
    data = load_dataset(path, [IMAGE], "eval")
    assert data.samples == 7 and data.inputs["image"].dtype == np.float32 and data.labels.tolist() == list(range(7))
    assert len(data.sha256) == 64


def test_folder_of_npy(tmp_path):
    np.save(tmp_path / "image.npy", np.ones((3, 1, 8, 8), np.float32))
    np.save(tmp_path / "labels.npy", np.array([1, 2, 3]))
    data = load_dataset(tmp_path, [IMAGE], "calib")
    assert data.samples == 3 and data.labels is not None


@pytest.mark.parametrize("arrays, message", [
    ({"image": np.zeros((4, 1, 8, 9), np.float32)}, "has shape (4, 1, 8, 9) but input 'image' takes N x 1x8x8"),
    ({"image": np.zeros((4, 1, 8, 8), np.int32)}, "is int32 but input 'image' is float32"),
    ({"image": np.zeros((4, 1, 8, 8)), "labels": np.zeros(3)}, "disagree on the number of samples"),
])
def test_data_that_does_not_fit_the_model(tmp_path, arrays, message):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    with pytest.raises(UserInputError) as info:
        load_dataset(path, [IMAGE], "eval")
    assert message in str(info.value)


def test_missing_input_names_listed(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, a=np.zeros((2, 3)), b=np.zeros((2, 3)))
    specs = [TensorSpec("x", (1, 3), "float32"), TensorSpec("y", (1, 3), "float32")]
    with pytest.raises(UserInputError, match="lacks array.s. for input.s. x, y; it has a, b"):
        load_dataset(path, specs, "eval")


def test_pickled_npz_is_refused(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, image=np.array([{"a": 1}], dtype=object))
    with pytest.raises(UserInputError, match="cannot be read"):
        load_dataset(path, [IMAGE], "eval")


def test_synthetic_data_is_deterministic_and_respects_int_ranges():
    specs = [IMAGE, TensorSpec("ids", (1, 5), "int64")]
    examples = {"image": np.zeros((1, 1, 8, 8), np.float32), "ids": np.array([[0, 3, 9, 2, 1]])}
    a, b = synthetic_dataset(specs, examples), synthetic_dataset(specs, examples)
    assert a.sha256 == b.sha256 and a.synthetic
    assert a.inputs["ids"].max() <= 9 and a.inputs["ids"].dtype == np.int64
