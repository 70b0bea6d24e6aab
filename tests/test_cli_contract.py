"""The command line's contract beyond bad input: exit 3 for a bug, SIGTERM cleans up like Ctrl-C,
a stale staging directory is removed, a missing converter names its pip package, nothing the user
gave is silently ignored, and a verdict on synthetic eval inputs is provisional."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from exporter.data import dataset_from_arrays
from exporter.errors import UserInputError
from exporter.specs import TensorSpec
from exporter.staging import remove_stale, staged_directory
from tests.conftest import REPO, ZOO, fast_target, onnx_target, read_json, run_cli


def _guarded(setup: str, action: str) -> subprocess.CompletedProcess:
    """The CLI's error handling around `action` (a function body), in a fresh interpreter."""
    code = (f"import sys, exporter.cli as cli\n{setup}\ndef action():\n    {action}\n"
            "try:\n    cli._guarded(False, action)\nexcept BaseException as e:\n"
            "    raise SystemExit(getattr(e, 'exit_code', 99))\n")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_an_internal_error_exits_3_with_one_line():
    result = _guarded("", "raise ZeroDivisionError('edgeport bug')")
    assert result.returncode == 3, result.stderr
    assert "internal error: ZeroDivisionError: edgeport bug (rerun with --debug and report it)" in result.stderr


def test_a_reader_that_stops_reading_is_not_an_internal_error():
    """`edgeport targets | head -1`: the closed pipe ends the command quietly with 141, as SIGPIPE ends a Unix
    tool (it was "internal error: BrokenPipeError", exit 3)."""
    setup = "import os\nread_end, write_end = os.pipe()\nos.close(read_end)\nsys.stdout = os.fdopen(write_end, 'w')"
    result = _guarded(setup, "print('android: ...', flush=True)")
    assert result.returncode == 141, result.stderr
    assert result.stderr == ""


def test_a_missing_converter_names_the_pip_package():
    result = _guarded("sys.modules['litert_torch'] = None", "import litert_torch")
    assert result.returncode == 2, result.stderr
    assert "litert-torch is not installed" in result.stderr and "pip install litert-torch" in result.stderr


def test_sigterm_removes_the_staging_directory(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "exporter.cli", "export", "--target",
                             fast_target(tmp_path, "ios"), "--out", out], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    staging = out / "digits"
    deadline = time.monotonic() + 300
    while not any(staging.glob(".ios.partial-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert any(staging.glob(".ios.partial-*")), "the export never started writing"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "terminated; nothing was left half-written" in stderr
    assert not out.exists() or not any(out.rglob("*")), list(out.rglob("*"))


def test_a_killed_exports_staging_directory_is_removed_by_the_next(tmp_path):
    final = tmp_path / "digits" / "android"
    final.parent.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = final.parent / f".android.partial-{dead.pid}-abc"
    (stale / "model.onnx").parent.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    live = final.parent / f".android.partial-{os.getpid()}-def"  # this process is alive: kept
    live.mkdir()
    assert remove_stale(final) == [stale] and live.exists()
    with staged_directory(final) as work:
        (work / "x").write_text("done")
    assert (final / "x").read_text() == "done"


@pytest.mark.slow
@pytest.mark.parametrize("args, fragment", [
    (["--model", "demo:digits", "--weights", "w.pt"], "demo:digits carries its own weights: drop --weights"),
    (["--model", "demo:digits", "--input", "image:1x1x8x8:float32"], "demo:digits has its own example inputs"),
])
def test_arguments_a_source_cannot_use_are_errors(tmp_path, args, fragment):
    result = run_cli("export", *args, "--target", "android", "--out", tmp_path / "out")
    assert result.code == 2 and fragment in result.stderr, result.stderr


def test_lossy_casts_of_given_data_are_said_or_refused():
    spec = [TensorSpec("tokens", [1, 4], "int32")]
    data = dataset_from_arrays({"tokens": np.arange(8, dtype=np.int64).reshape(2, 4)}, spec, "eval", "t.npz")
    assert data.notes == ["eval array 'tokens' converted from int64 to int32 for input 'tokens' (all values fit)"]
    with pytest.raises(UserInputError, match=r"holds values 0..4294967296, beyond input 'tokens''s int32"):
        dataset_from_arrays({"tokens": np.array([[0, 1, 2, 2**32]], np.int64)}, spec, "eval", "t.npz")
    floats = dataset_from_arrays({"x": np.ones((2, 3), np.float64)}, [TensorSpec("x", [1, 3], "float32")],
                                 "calib", "c.npz")
    assert "converted from float64 to float32" in floats.notes[0] and "precision reduced" in floats.notes[0]


@pytest.mark.slow
def test_synthetic_eval_is_provisional_unless_allowed(tmp_path):
    target = onnx_target(tmp_path)
    result = run_cli("export", "--model", f"{ZOO}:mlp", "--target", target, "--out", tmp_path)
    assert result.code == 1, result.stderr
    assert "PROVISIONAL" in result.stdout and "synthetic eval inputs only" in result.stdout
    directory = tmp_path / "zoo-mlp" / "android"
    report = read_json(directory / "report.json")
    assert report["passed"] is False and "synthetic" in report["provisional"]
    assert all(a["budget"]["passed"] for a in report["artifacts"])  # the figures themselves are in budget
    assert run_cli("validate", directory).code == 1
    assert run_cli("validate", directory, "--allow-synthetic-eval").code == 0
    allowed = run_cli("export", "--model", f"{ZOO}:mlp", "--target", target, "--out", tmp_path,
                      "--allow-synthetic-eval")
    assert allowed.code == 0 and read_json(directory / "report.json")["provisional"] == ""


def test_a_provisional_verdict_never_hides_a_missed_budget():
    from validators.report import verdict_word

    def report(passed, provisional, violations):
        return {"passed": passed, "provisional": provisional, "violations": [],
                "artifacts": [{"budget": {"violations": violations}}]}

    assert verdict_word(report(True, "", [])) == "PASSED"
    assert verdict_word(report(False, "synthetic eval inputs only", [])) == "PROVISIONAL"
    missed = ["sqnr_db 9 is below the budget of 15"]
    assert verdict_word(report(False, "synthetic eval inputs only", missed)) == "FAILED"
    assert verdict_word(report(False, "", ["size 3 MiB exceeds the budget of 1 MiB"])) == "FAILED"
