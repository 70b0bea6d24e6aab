"""The tensor judge: output parity (max |delta|, SQNR, cosine, top-1 agreement on decisive samples), task
accuracy, latency, size and operator coverage, each artifact run by its own runtime (validators/validate.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from validators import report


class TensorJudge:
    name = "tensor"
    manifest_keys = ("inputs", "outputs")
    columns = report.COLUMNS

    def summary_row(self, artifact: dict) -> list[str]:
        return report.artifact_row(artifact)

    def validate(self, directory: Path, progress: Callable[[str], None], allow_synthetic_eval: bool) -> dict:
        from validators.validate import validate_tensor_directory

        return validate_tensor_directory(directory, progress, allow_synthetic_eval)

    def to_markdown(self, report_: dict, verdict: str) -> str:
        return report.tensor_markdown(report_, verdict)

    def to_html(self, report_: dict, verdict: str, style: str) -> str:
        return report.tensor_html(report_, verdict, style)


JUDGE = TensorJudge()
