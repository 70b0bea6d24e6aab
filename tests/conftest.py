"""Shared helpers: run the real CLI in a subprocess, and a fast-latency copy of a target."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
ZOO = REPO / "tests" / "zoo.py"

# Under pytest-xdist every core runs a worker: one thread per worker (and per CLI subprocess it starts), or the
# workers' thread pools spin against each other and every conversion slows down. Latency runs still use the
# thread count their target names.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ["OMP_NUM_THREADS"] = "1"


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.startswith("edgeport: error")]


def run_cli(*args: str, cwd: Path = REPO) -> CliResult:
    proc = subprocess.run([sys.executable, "-m", "exporter.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=900)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def fast_target(tmp_path: Path, base: str, **overrides: str) -> Path:
    """A copy of a built-in target with quick latency settings (figures stay real, just fewer runs)."""
    lines = (REPO / "targets" / f"{base}.toml").read_text().splitlines()
    quick = ("warmup_runs", "min_runs", "min_seconds")
    text = "\n".join(ln for ln in lines if not ln.startswith(quick)) + "\n"
    text = text.replace("[runtime]", "[runtime]\nwarmup_runs = 3\nmin_runs = 20\nmin_seconds = 0.05", 1)
    for old, new in overrides.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / f"{base}-fast.toml"
    path.write_text(text)
    return path


def onnx_target(tmp_path: Path) -> Path:
    """The android target's ONNX variants only, for sources litert-torch cannot take (TorchScript)."""
    path = fast_target(tmp_path, "android")
    text = path.read_text()
    path.write_text(text[: text.index('[[variants]]\nformat = "tflite"')])
    return path


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def save_family_data(tmp_path: Path, family: str, samples: int = 48, seed: int = 0) -> tuple[Path, Path]:
    """Eval and calibration .npz files shaped for a zoo model (random but real files)."""
    sys.path.insert(0, str(REPO / "tests"))
    import zoo

    _, examples = zoo.FAMILIES_WITH_DATA[family]()
    rng = np.random.default_rng(seed)
    sample_shape = tuple(examples[0].shape[1:])
    eval_path, calib_path = tmp_path / f"{family}-eval.npz", tmp_path / f"{family}-calib.npz"
    np.savez(eval_path, data=rng.standard_normal((samples, *sample_shape)).astype(np.float32))
    np.savez(calib_path, data=rng.standard_normal((samples, *sample_shape)).astype(np.float32))
    return eval_path, calib_path


@pytest.fixture(scope="session")
def demo_android(tmp_path_factory) -> tuple[CliResult, Path]:
    """One demo export to the android target, shared by the tests that inspect it."""
    out = tmp_path_factory.mktemp("demo")
    result = run_cli("export", "--model", "demo:digits", "--target", fast_target(out, "android"), "--out", out)
    return result, out / "digits" / "android"
