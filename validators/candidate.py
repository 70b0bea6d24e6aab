"""One model judged against the reference: the validator's parity, accuracy and budget code behind
one public call, used by `validate` for every artifact and by the exporter's diagnosis stage for
every candidate it tries (auto precision), so both judge the same way."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.artifact_dir import Reference
from common.batching import run_batched
from common.errors import ArtifactError
from targets import Budget, RuntimeSettings
from validators import budgets, parity
from validators.latency import measure_first_batch
from validators.metrics import metrics_block

Run = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


@dataclass(frozen=True)
class ModelIO:
    """How to feed the reference to a model (its input and output names, its fixed batch or None for
    any) and how to judge each output (its kind; inferred from the reference when absent)."""

    inputs: list[str]
    outputs: list[str]
    batch: int | None
    kinds: dict[str, str] = field(default_factory=dict)

    def kind(self, name: str, reference: np.ndarray) -> str:
        return self.kinds.get(name) or parity.infer_output_kind(reference)[0]


@dataclass
class CandidateResult:
    per_output: dict[str, dict]  # output name -> parity metrics
    overall: dict  # the worst case over the outputs
    accuracy: dict | None  # task accuracy, when the reference has labels
    violations: list[str]  # the budget's parity and accuracy limits it misses

    def metrics(self, **measured: float | None) -> dict[str, float]:
        """The named figures (validators/metrics.py) of this judgement, with what else was measured."""
        overall, accuracy = self.overall, self.accuracy or {}
        return metrics_block(max_abs=overall["max_abs"], mean_abs=overall["mean_abs"], cosine=overall["cosine"],
                             sqnr_db=overall["sqnr_db"], top1_agreement=overall["top1_agreement"],
                             accuracy=accuracy.get("artifact"), accuracy_drop=accuracy.get("drop"), **measured)


def parity_violations(overall: dict, limits: dict[str, float], metrics: dict[str, float],
                      why: dict[str, str] | None = None) -> list[str]:
    """NaN/Inf outputs first (no limit needed: garbage), then every limit the figures miss."""
    found = []
    if overall.get("nonfinite_values"):
        found.append(f"the outputs hold {overall['nonfinite_values']} NaN/Inf value(s): the artifact computes "
                     "garbage (a corrupt weight, or an overflow at this precision)")
    return found + budgets.check(limits, metrics, why)


def evaluate(run: Run, reference: Reference, io: ModelIO, budget: Budget) -> CandidateResult:
    """Run a model on the stored eval inputs and judge parity and accuracy against the budget."""
    inputs = {name: reference.inputs[name] for name in io.inputs}
    outputs = dict(zip(io.outputs, run_batched(run, inputs, io.batch), strict=True))
    per_output, problems = {}, []
    for name in io.outputs:
        try:
            expected = reference.outputs[name]
            per_output[name] = parity.output_parity(expected, outputs[name], budget.min_sqnr_db,
                                                    io.kind(name, expected))
        except ValueError as exc:
            problems.append(f"output {name}: {exc}")
    if problems:
        raise ArtifactError("; ".join(problems) + "; the artifact does not match its manifest")
    kinds = {name: metrics["kind"] for name, metrics in per_output.items()}
    accuracy = parity.accuracy(reference.outputs, outputs, reference.labels, kinds) \
        if reference.labels is not None else None
    overall = parity.worst_case(per_output)
    result = CandidateResult(per_output, overall, accuracy, [])
    result.violations = parity_violations(overall, budget.limits(), result.metrics())
    return result


def judge_change(run: Run, reference: Reference, io: ModelIO, budget: Budget) -> tuple[dict[str, float], list[str]]:
    """A model judged for how far it moved from the reference (a pruned model against the unpruned one): top-1
    agreement over every sample, since here the error is the change judged, not noise that excuses a flip."""
    result = evaluate(run, reference, io, Budget())
    metrics = result.metrics()
    if result.overall.get("top1_agreement_all") is not None:
        metrics["top1_agreement"] = result.overall["top1_agreement_all"]
    return metrics, parity_violations(result.overall, budget.limits(), metrics)


class Candidate:
    """A model file of one format judged as the validator judges its artifact: same eval data, same
    runtime settings. What auto precision asks of every model it tries."""

    def __init__(self, fmt: str, reference: Reference, io: ModelIO, budget: Budget, settings: RuntimeSettings):
        self.fmt, self.reference, self.io, self.budget, self.settings = fmt, reference, io, budget, settings

    def violations(self, path: Path) -> list[str]:
        from validators.runtimes import open_session

        return evaluate(open_session(self.fmt, path, 1).run, self.reference, self.io, self.budget).violations

    def latency_ms(self, path: Path) -> float:
        """Median host latency on the first eval batch, as the validator measures it."""
        from validators.runtimes import open_session

        session = open_session(self.fmt, path, self.settings.threads)
        return round(measure_first_batch(session, self.reference.inputs, self.io.batch, self.settings)["median"], 4)
