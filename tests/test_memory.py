"""The export's own memory: each step's peak (not the largest so far), and the preflight that refuses, before the
model is loaded, a language-model export estimated to need more than the memory it may use."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from exporter import memory
from tests.conftest import run_cli
from tests.lm_models import causal_lm_folder

MB = 1e6


def test_each_step_reports_its_own_peak_and_an_outer_step_the_peaks_inside_it():
    meter = memory.begin()
    with memory.step("outer"):
        with memory.step("large"):
            block = np.ones(int(400 * MB) // 8)  # 400 MB written, so resident
            del block
        with memory.step("small"):
            np.ones(1000)
    record = meter.record()
    steps = record["steps_mb"]
    assert record["per_step"], "this Linux refused the per-step reset"
    assert steps["large"] - steps["small"] >= 350, steps  # the small step does not inherit the large one's peak
    assert steps["outer"] >= steps["large"] and record["peak_rss_mb"] >= steps["outer"]


def test_the_memory_available_is_read_from_the_machine():
    available, where = memory.available_bytes()
    assert 100 * MB < available < 1 << 50 and ("MemAvailable" in where or "cgroup" in where)


def test_an_export_estimated_above_its_memory_limit_is_refused_before_loading(tmp_path):
    """The estimate is read from the source's tensor headers; nothing is loaded, traced or written."""
    from exporter.kinds.causal_lm import KIND, LIBRARIES_BYTES
    from targets import load_target

    folder = causal_lm_folder("llama_gqa_tied", tmp_path / "model", steps=0)
    need = KIND.memory_need(str(folder), load_target("android-llm"))
    assert LIBRARIES_BYTES < need.at_least < need.about < LIBRARIES_BYTES + 200 * MB and "6 variants" in need.how
    done = run_cli("export", "--model", folder, "--target", "android-llm", "--out", tmp_path / "out",
                   "--memory-limit", "0.5")
    assert done.code == 2, done.stderr[-1500:]
    assert f"needs at least {need.at_least / 1e9:.1f} GB, about" in done.stderr and \
        "--memory-limit leaves it 0.5 GB" in done.stderr, done.stderr[-800:]
    assert "loading" not in done.stderr and not (tmp_path / "out").exists()
    # pruning comes first and holds the teacher, the student and its optimizer: above one variant's need
    from targets.lm import lm_target_from_dict
    from targets.prune import pruned_with

    one = lm_target_from_dict({"name": "one", "lm": {}, "variants": [{"format": "onnx", "precision": "fp32"}]}, "t")
    pruned = dataclasses.replace(one, prune=pruned_with(one, ["max_params_ratio=0.8"]))
    unpruned_need, pruned_need = KIND.memory_need(str(folder), one), KIND.memory_need(str(folder), pruned)
    assert pruned_need.about > unpruned_need.about and pruned_need.how.startswith("pruning first"), pruned_need


def test_a_source_of_unknown_size_is_not_estimated_and_one_that_may_not_fit_goes_on_saying_so():
    said = []
    record = memory.preflight(None, 0.5, "demo:tinylm", said.append)
    assert record["checked"] is False and "no estimate before loading" in record["why"] and not said
    with pytest.raises(Exception, match="needs at least 1.5 GB, about 2.0 GB"):
        memory.preflight(memory.Need(15 * 10**8, 2 * 10**9, "two"), 1.0, "model", said.append)
    record = memory.preflight(memory.Need(8 * 10**8, 2 * 10**9, "two"), 1.0, "model", said.append)
    assert record["checked"] and record["at_least_gb"] == 0.8 and len(said) == 1 and "may not fit" in said[0]


def _alive(kind: type) -> int:
    import gc

    gc.collect()
    return sum(isinstance(o, kind) for o in gc.get_objects())


def test_hand_back_frees_the_lowered_programs_torchs_fake_tensor_cache_keeps(tmp_path):
    """torch's fake-tensor dispatch cache holds, in its keys, ExecuTorch's lowered delegates with their weights:
    without hand_back every .pte variant of an export stays alive to its end."""
    import torch
    from executorch.exir.lowered_backend_module import LoweredBackendModule

    from exporter.formats.executorch.backend import lower_methods

    memory.hand_back()
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).eval()
    example = (torch.randn(2, 64),)
    lower_methods({"forward": torch.export.export(model, example, strict=False)}, tmp_path / "m.pte")
    assert _alive(LoweredBackendModule) >= 1  # nothing of ours refers to it any more: the cache does
    memory.hand_back()
    assert _alive(LoweredBackendModule) == 0


def test_a_transformed_copy_is_released_after_the_last_variant_that_reads_it():
    """android-llm: the float model's plans after the .tflite a8w4 (index 4); the smoothed copy after the .pte a8w8
    (index 3), where the rotated copy is made from it; the rotated copy after the last variant."""
    from exporter.kinds.causal_lm.export import _last_readers
    from targets import load_target

    variants = load_target("android-llm").variants
    assert [(v.settings.smoothing, v.settings.rotation) for v in variants] == [
        (0.0, 0), (0.6, 0), (0.0, 0), (0.6, 128), (0.0, 0), (0.6, 128)]
    assert _last_readers(variants) == {(0.0, 0): 4, (0.6, 0): 3, (0.6, 128): 5}
