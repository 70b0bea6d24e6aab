"""export() and validate() for notebooks and scripts, returning the report as typed objects."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from common.errors import EdgeportError

__all__ = ["ArtifactResult", "EdgeportError", "Parity", "Report", "export", "validate"]


@dataclass(frozen=True)
class Parity:
    """An artifact's outputs against the PyTorch original's on the eval data (worst output)."""

    max_abs: float | None
    mean_abs: float | None
    cosine: float | None
    sqnr_db: float | None
    top1_agreement: float | None  # on the decisive samples (see the README's top-1 rule)
    samples: int
    top1_agreement_all: float | None = None
    top1_decisive_samples: int | None = None
    nonfinite_values: int = 0


@dataclass(frozen=True)
class ArtifactResult:
    """One artifact's verdict. `metrics` is the same shape for every model kind (report.json's block, named in
    validators/metrics.py); `parity`, `latency_ms`, `accuracy` and `layers` are a tensor model's detail, None
    or empty for a kind that does not measure them (a language model's detail: Report.json["artifacts"][i]["lm"])."""

    format: str
    precision: str
    path: Path
    bytes: int
    sha256: str
    runtime: str
    metrics: dict[str, float]
    passed: bool
    violations: list[str]
    unjudged: list[str]
    parity: Parity | None = None
    latency_ms: dict | None = None
    accuracy: dict | None = None
    layers: list[dict] = field(default_factory=list)  # per-layer blame, worst first


@dataclass(frozen=True)
class Report:
    directory: Path
    passed: bool
    target: str
    model: dict
    artifacts: list[ArtifactResult]
    json: dict  # report.json as written
    provisional: str = ""  # why the verdict cannot pass: parity on synthetic inputs only

    def artifact(self, fmt: str, precision: str) -> ArtifactResult:
        """The (format, precision) artifact; KeyError naming the ones the report has."""
        for artifact in self.artifacts:
            if (artifact.format, artifact.precision) == (fmt, precision):
                return artifact
        have = ", ".join(f"{a.format}/{a.precision}" for a in self.artifacts) or "none"
        raise KeyError(f"no {fmt}/{precision} artifact in this report; it has {have}")


def _parity(data: dict) -> Parity:
    return Parity(**{f.name: data.get(f.name, f.default if f.default is not MISSING else None) for f in fields(Parity)})


def _report(directory: Path, data: dict) -> Report:
    artifacts = [ArtifactResult(
        format=a["format"], precision=a["precision"], path=directory / a["path"], bytes=a["bytes"],
        sha256=a["sha256"], runtime=a["runtime"], metrics=dict(a["metrics"]), passed=a["budget"]["passed"],
        violations=list(a["budget"]["violations"]), unjudged=list(a["budget"].get("unjudged", [])),
        parity=_parity(a["parity"]) if "parity" in a else None, latency_ms=a.get("latency_ms"),
        accuracy=a.get("accuracy"), layers=a.get("layers", []))
        for a in data["artifacts"]]
    return Report(directory, data["passed"], data["target"], data["model"], artifacts, data,
                  data.get("provisional", ""))


def _stderr(message: str) -> None:
    print(f"edgeport: {message}", file=sys.stderr, flush=True)


def _prune_pairs(settings: dict[str, Any]) -> list[str]:
    """export(prune={...}) as the command line's --prune KEY=VALUE pairs (budget.KEY for the prune budget)."""
    pairs = []
    for key, value in settings.items():
        inner = value.items() if key == "budget" and isinstance(value, dict) else [(None, value)]
        pairs += [f"{key}.{name}={number}" if name else f"{key}={number}" for name, number in inner]
    return pairs


def export(model: Any, example_inputs: Any = None, *, target: str = "android", eval: Any = None,
           calib: Any = None, out: str | Path = "artifacts", name: str | None = None, dynamic_batch: bool = False,
           auto_precision: bool | None = None, allow_synthetic_eval: bool = False,
           output_kinds: dict[str, str] | None = None, inputs: list[str] | None = None,
           weights: str | Path | None = None, trust_pickle: bool = False, memory_limit: float | None = None,
           prune: dict[str, Any] | None = None, progress: Callable[[str], None] | None = _stderr) -> Report:
    """Export `model` (an nn.Module with example_inputs, or a SPEC string as the CLI takes) to a target,
    validate every artifact and return the report. eval / calib: a path (.npz or .npy folder) or a
    dict of arrays keyed by input name, with an optional `labels` array. A missed budget is a Report
    with passed=False (the CLI's exit 1), as is a verdict resting on synthetic eval inputs only (no eval
    given or bundled: `provisional` says so) unless allow_synthetic_eval; bad input raises EdgeportError
    (exit 2). A causal language model goes with a language-model target: export(model, tokenizer,
    target="android-llm"), or a SPEC (demo:tinylm, a Hugging Face folder, a .gguf file); its artifacts'
    metrics are token-level (ppl_ratio, kl_mean, ...; the detail in Report.json["artifacts"][i]["lm"]).
    Every other keyword is the export option of that name (exporter/options.py, the CLI's flag): output_kinds
    {output name: kind} as --output-kind NAME:KIND; inputs ["NAME:1x3x224x224:float32", ...] as --input; weights,
    a state dict for a factory SPEC, as --weights; trust_pickle as --trust-pickle; memory_limit (GB) as
    --memory-limit; prune {key: number} as --prune KEY=VALUE ({"max_macs_ratio": 0.5, "budget": {"min_cosine":
    0.98}})."""
    from exporter.errors import UserInputError
    from exporter.pipeline import ExportOptions, run_export

    if model is None:
        raise UserInputError("export() got no model: pass an nn.Module (with example_inputs) or a SPEC string such "
                             "as 'demo:digits'")
    for role, given in (("eval", eval), ("calib", calib)):
        if given is not None and not isinstance(given, str | Path | dict):
            raise UserInputError(f"{role}= takes a path (.npz, a folder of .npy, or a text file for a language "
                                 f"model) or a dict of arrays keyed by input name, not a {type(given).__name__}; "
                                 f"wrap a lone array as {{'input_name': array}}")
    options = ExportOptions(model=model, target=target, out=Path(out), calib=calib, eval=eval,
                            example_inputs=example_inputs, dynamic_batch=dynamic_batch, name=name,
                            auto_precision=auto_precision, allow_synthetic_eval=allow_synthetic_eval,
                            output_kinds=dict(output_kinds or {}), inputs=list(inputs or []),
                            weights=Path(weights) if weights is not None else None, trust_pickle=trust_pickle,
                            memory_limit=memory_limit, prune=_prune_pairs(prune or {}))
    directory, report = run_export(options, progress or (lambda _: None))
    return _report(directory, report)


def validate(directory: str | Path, progress: Callable[[str], None] | None = _stderr) -> Report:
    """Re-run every artifact of a directory with its runtime against the stored reference; rewrites
    its reports, as `edgeport validate DIR` does."""
    from validators.report import write_reports
    from validators.validate import validate_directory

    directory = Path(directory)
    report = validate_directory(directory, progress or (lambda _: None))
    write_reports(directory, report)
    return _report(directory, report)
