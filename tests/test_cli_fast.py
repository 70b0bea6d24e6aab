"""The CLI's cheap paths stay cheap: --help and `targets` never import torch."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO, run_cli


def test_help_and_targets_do_not_import_torch():
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom exporter.cli import app\n"
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output\n"
            "r = CliRunner().invoke(app, ['targets']); assert r.exit_code == 0, r.output\n"
            "print(r.output)\n"
            "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'numpy') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "android:" in proc.stdout and "cockpit:" in proc.stdout and "model.int8.onnx" in proc.stdout


def test_usage_errors_exit_2():
    result = run_cli("export")  # --target is required
    assert result.code == 2 and "--target" in result.stderr
