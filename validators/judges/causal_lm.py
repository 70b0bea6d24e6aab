"""The causal-LM judge: token-level metrics (perplexity ratio, KL, top-1, free-running and forced decoding,
repetition) and speed, each artifact run by its own runtime with its KV cache (validators/lm/)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from validators.lm import report


class CausalLmJudge:
    name = "causal-lm"
    manifest_keys = ("lm",)
    columns = report.COLUMNS

    def summary_row(self, artifact: dict) -> list[str]:
        return report.summary_row(artifact)

    def validate(self, directory: Path, progress: Callable[[str], None], allow_synthetic_eval: bool) -> dict:
        from validators.lm.validate import validate_lm_directory

        return validate_lm_directory(directory, progress)  # the eval is always real text: nothing to allow

    def to_markdown(self, report_: dict, verdict: str) -> str:
        return report.to_markdown(report_, verdict)

    def to_html(self, report_: dict, verdict: str, style: str) -> str:
        return report.to_html(report_, verdict, style)


JUDGE = CausalLmJudge()
