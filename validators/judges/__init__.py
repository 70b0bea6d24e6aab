"""One judge per model kind: it validates what the kind's export wrote and renders the result. validate,
the report, the CLI's summary and the API ask this registry with the manifest or report in hand (its "kind"),
never a kind's name. A judge is one module exposing JUDGE (the Judge below), plus one line here, or
`register` from outside."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from common.errors import ArtifactError

JUDGES = {"tensor": "validators.judges.tensor", "causal-lm": "validators.judges.causal_lm"}

# What every kind's report.json holds (the README's "report.json" section); beside these, a kind's own detail.
REPORT_KEYS = ("kind", "model", "target", "passed", "provisional", "violations", "artifacts")
ARTIFACT_KEYS = ("format", "precision", "path", "bytes", "sha256", "runtime", "metrics", "budget")
BUDGET_KEYS = ("passed", "violations", "limits")


class Judge(Protocol):
    name: str
    manifest_keys: tuple[str, ...]  # beside the keys every manifest has (common/artifact_dir.py)
    columns: tuple[str, ...]  # the CLI's summary table

    def summary_row(self, artifact: dict) -> list[str]: ...

    def validate(self, directory: Path, progress: Callable[[str], None], allow_synthetic_eval: bool) -> dict:
        """Run every artifact of the directory with its runtime against the reference; the report."""

    def to_markdown(self, report: dict, verdict: str) -> str: ...

    def to_html(self, report: dict, verdict: str, style: str) -> str: ...


def register(name: str, module: str) -> None:
    JUDGES[name] = module


def judge_for(document: dict) -> Judge:
    """The judge of a manifest or report; one written before kinds were recorded is a tensor model's."""
    name = document.get("kind", "tensor")
    if name not in JUDGES:
        raise ArtifactError(f"this edgeport has no judge for model kind {name!r} (it knows {', '.join(JUDGES)}); "
                            "validate it with the edgeport that exported it")
    return importlib.import_module(JUDGES[name]).JUDGE


def check_report(report: dict) -> dict:
    """The report, once it holds every shared key and only named metrics: a judge that leaves one out is a
    bug in that judge, raised here rather than found later by `edgeport diff` or the API."""
    from validators.metrics import METRICS

    missing = [k for k in REPORT_KEYS if k not in report]
    for i, artifact in enumerate(report.get("artifacts", [])):
        missing += [f"artifacts[{i}].{k}" for k in ARTIFACT_KEYS if k not in artifact]
        missing += [f"artifacts[{i}].budget.{k}" for k in BUDGET_KEYS if k not in artifact.get("budget", {})]
        missing += [f"artifacts[{i}].metrics.{k} (not in validators.metrics.METRICS)"
                    for k in artifact.get("metrics", {}) if k not in METRICS]
    if missing:
        raise RuntimeError(f"the {report.get('kind')!r} judge wrote a report without {', '.join(missing)}")
    return report
